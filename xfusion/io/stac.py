"""Open STAC items lazily as a canonical cube through stackstac."""

from __future__ import annotations


def open_stac(items, *, grid=None, assets=None, chunks=None, scale_offset=True):
    """Not implemented yet."""
    raise NotImplementedError

