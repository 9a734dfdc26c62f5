"""Open GeoTIFF/COG/NetCDF files lazily through rioxarray."""

from __future__ import annotations


def open_raster(paths, *, grid=None, band_names=None, chunks=None):
    """Not implemented yet."""
    raise NotImplementedError

