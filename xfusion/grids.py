"""One grid for every source, built on odc-geo's :class:`~odc.geo.geobox.GeoBox`.

A grid is immutable and tokenisable (equal grids give equal Dask keys). :func:`grid` builds one
from bounds, a CRS and a resolution; the adapters turn it into the arguments each backend needs,
so that every source opened on the same grid lines up pixel for pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine
from odc.geo import CRS
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from xfusion.errors import GridError

__all__ = [
    "as_geobox",
    "assign_grid",
    "geobox_of",
    "grid",
    "grid_coords",
    "to_stackstac",
    "to_xee",
]


def _parse_crs(crs: Any) -> CRS:
    try:
        return CRS(crs)
    except Exception as err:  # pyproj raises several unrelated types
        raise GridError(
            f"cannot understand CRS {crs!r}; expected e.g. 'EPSG:32633' or 4326"
        ) from err


def grid(
    bounds: Sequence[float],
    crs: Any,
    resolution: float | tuple[float, float],
) -> GeoBox:
    """Build the grid covering ``bounds`` in ``crs`` at ``resolution``.

    The grid's top-left corner is exactly ``(left, top)``; the width and height are rounded up, so
    the grid covers the bounds entirely (the right/bottom edge may extend by less than a pixel).

    Parameters
    ----------
    bounds : (left, bottom, right, top)
        Bounds in units of ``crs``.
    crs : str, int or CRS
        Anything odc-geo/pyproj understands (``"EPSG:32633"``, ``32633``, WKT).
    resolution : float or (xres, yres)
        Pixel size in CRS units; positive numbers (the y axis always runs north to south).

    Returns
    -------
    odc.geo.geobox.GeoBox

    Examples
    --------
    >>> import xfusion as xf
    >>> g = xf.grid((500000, 4000000, 501000, 4002000), "EPSG:32633", 10)
    >>> g.shape
    Shape2d(x=100, y=200)
    >>> xf.grid.to_xee(g)["shape_2d"]
    (100, 200)
    """
    try:
        left, bottom, right, top = (float(b) for b in bounds)
    except (TypeError, ValueError) as err:
        raise GridError(f"bounds must be (left, bottom, right, top); got {bounds!r}") from err
    if not (right > left and top > bottom):
        raise GridError(
            f"bounds must satisfy left < right and bottom < top; got {(left, bottom, right, top)}"
        )
    xres, yres = (resolution, resolution) if np.isscalar(resolution) else tuple(resolution)
    xres, yres = abs(float(xres)), abs(float(yres))
    if not (xres > 0 and yres > 0) or not (math.isfinite(xres) and math.isfinite(yres)):
        raise GridError(f"resolution must be positive and finite; got {resolution!r}")
    width = max(1, math.ceil((right - left) / xres - 1e-9))
    height = max(1, math.ceil((top - bottom) / yres - 1e-9))
    affine = Affine(xres, 0.0, left, 0.0, -yres, top)
    return GeoBox((height, width), affine, _parse_crs(crs))


def as_geobox(grid_or_like: Any) -> GeoBox:
    """Return the :class:`GeoBox` of a grid, a DataArray/Dataset, or raise :class:`GridError`."""
    if isinstance(grid_or_like, GeoBox):
        return grid_or_like
    if isinstance(grid_or_like, xr.DataArray | xr.Dataset):
        return geobox_of(grid_or_like)
    raise GridError(
        "expected a grid (odc.geo GeoBox from xf.grid) or a cube; "
        f"got {type(grid_or_like).__name__}"
    )


def geobox_of(obj: xr.DataArray | xr.Dataset) -> GeoBox:
    """Return the grid of a cube (from its ``spatial_ref`` and x/y coordinates).

    Raises
    ------
    GridError
        The cube has no ``y``/``x`` coordinates, or no CRS (the message lists what it has).
    """
    gbox = getattr(getattr(obj, "odc", None), "geobox", None)
    if gbox is None or gbox.crs is None:
        coords = sorted(str(c) for c in obj.coords)
        spatial = [{"y", "x"}, {"latitude", "longitude"}]
        if not any(pair <= set(obj.dims) for pair in spatial):
            what = f"no 'y'/'x' dims (dims are {tuple(obj.dims)})"
        elif gbox is None and not any(pair <= set(coords) for pair in spatial):
            what = f"no 'y'/'x' coordinates (coordinates are {coords})"
        else:
            what = f"no CRS (no 'spatial_ref' coordinate with one; coordinates are {coords})"
        raise GridError(
            f"cube has no usable grid: it has {what}; expected 'x'/'y' coordinates and a CRS on "
            "'spatial_ref' (e.g. from xf.open_stac, or cube.rio.write_crs('EPSG:32633'))"
        )
    return gbox


def grid_coords(gbox: GeoBox) -> dict[str, xr.DataArray]:
    """Pixel-centre ``y``/``x`` coordinates and the ``spatial_ref`` coordinate of a grid."""
    return xr_coords(gbox, crs_coord_name="spatial_ref", always_yx=True)


def assign_grid(obj: xr.DataArray, gbox: GeoBox) -> xr.DataArray:
    """Attach ``gbox``'s coordinates and CRS to an array whose last two dims are ``(y, x)``."""
    if obj.shape[-2:] != tuple(gbox.shape):
        raise GridError(
            f"array of spatial shape {obj.shape[-2:]} does not fit grid {tuple(gbox.shape)}"
        )
    return obj.assign_coords(grid_coords(gbox))


def to_xee(gbox: GeoBox) -> dict[str, Any]:
    """Return ``crs``, ``crs_transform``, ``shape_2d`` for ``xr.open_dataset(..., engine="ee")``.

    ``crs_transform`` is Earth Engine's ``[xScale, xShear, xOffset, yShear, yScale, yOffset]``;
    ``shape_2d`` is ``(width, height)``.
    """
    a = gbox.affine
    return {
        "crs": _crs_string(gbox.crs),
        "crs_transform": (a.a, a.b, a.c, a.d, a.e, a.f),
        "shape_2d": (int(gbox.width), int(gbox.height)),
    }


def to_stackstac(gbox: GeoBox) -> dict[str, Any]:
    """Arguments for :func:`stackstac.stack`: ``epsg``, ``resolution``, ``bounds``, ``snap_bounds``.

    Only north-up, axis-aligned grids can be expressed this way; others raise :class:`GridError`.
    """
    a = gbox.affine
    if a.b != 0 or a.d != 0 or a.e >= 0:
        raise GridError("stackstac needs a north-up grid without rotation; got affine " + repr(a))
    epsg = gbox.crs.epsg
    if epsg is None:
        raise GridError(f"stackstac needs a CRS with an EPSG code; got {gbox.crs}")
    bb = gbox.boundingbox
    return {
        "epsg": int(epsg),
        "resolution": (abs(a.a), abs(a.e)),
        "bounds": (bb.left, bb.bottom, bb.right, bb.top),
        "snap_bounds": False,
    }


def _crs_string(crs: CRS) -> str:
    return f"EPSG:{crs.epsg}" if crs.epsg is not None else crs.to_wkt()
