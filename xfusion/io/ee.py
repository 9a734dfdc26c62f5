"""Open Earth Engine collections lazily through xee."""

from __future__ import annotations


def open_ee(collection, *, grid, start=None, end=None, bands=None, filters=None, chunks=None):
    """Not implemented yet."""
    raise NotImplementedError

