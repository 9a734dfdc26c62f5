"""Temporal composites."""

from __future__ import annotations


def composite(da, how='median', *, freq=None, start=None, end=None):
    """Not implemented yet."""
    raise NotImplementedError

