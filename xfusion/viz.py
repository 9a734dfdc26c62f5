"""Quicklooks and interactive maps."""

from __future__ import annotations


def plot_rgb(da, bands=None, *, stretch=(2, 98), ax=None):
    """Not implemented yet."""
    raise NotImplementedError


def explore(da, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError

