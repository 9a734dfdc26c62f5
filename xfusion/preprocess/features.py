"""Standardisation and spectral indices."""

from __future__ import annotations


def standardize(da, mean=None, std=None):
    """Not implemented yet."""
    raise NotImplementedError


def index(da, name):
    """Not implemented yet."""
    raise NotImplementedError

