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
    "GRID_TOLERANCE",
    "MAX_PIXELS",
    "as_geobox",
    "assign_grid",
    "check_same_grid",
    "geobox_of",
    "grid",
    "grid_coords",
    "grid_mismatch",
    "plain_coords",
    "same_grid",
    "snap_to_grid",
    "to_stackstac",
    "to_xee",
]

#: Two grids are the same grid when they share CRS and shape and each pixel edge of one lies
#: within this fraction of a pixel of the other's (origin and resolution alike). Every place in
#: xfusion that compares grids uses this one rule (:func:`same_grid`).
GRID_TOLERANCE = 1e-3

#: The largest grid :func:`grid` builds (pixels): a resolution in the wrong unit (1e-9 for 10,
#: metres for degrees) otherwise builds a grid no array could ever fill.
MAX_PIXELS = 10**11

# share of the CRS's area of use (transformed to the CRS) that bounds may extend beyond it on
# each side: real products use a UTM zone well outside its nominal area (USGS keeps southern
# Landsat scenes in northern zones with negative northings; grids reprojected near a zone edge)
_AREA_MARGIN = 1.0


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

    Raises
    ------
    GridError
        Malformed bounds or resolution; an unknown CRS; bounds outside the CRS's area of use
        (pyproj's ``CRS.area_of_use`` transformed into the CRS, extended by its own size on every
        side, so e.g. southern scenes kept in a northern UTM zone pass, but metres given to
        EPSG:4326 do not); a grid of more than :data:`MAX_PIXELS` pixels (a resolution in the
        wrong unit); bounds smaller than one pixel in both directions (degree bounds given to a
        metric CRS). Each message names the values and the CRS's units.

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
    parsed = _parse_crs(crs)
    _check_area_of_use(parsed, (left, bottom, right, top))
    width = max(1, math.ceil((right - left) / xres - 1e-9))
    height = max(1, math.ceil((top - bottom) / yres - 1e-9))
    if width * height > MAX_PIXELS:
        raise GridError(
            f"grid of {height} x {width} pixels (y by x) at resolution {(xres, yres)} is larger "
            f"than the limit of {MAX_PIXELS:.0e} pixels; expected a resolution in the units of "
            f"{_crs_string(parsed)} ({_units(parsed)})"
        )
    if right - left < xres and top - bottom < yres:
        raise GridError(
            f"bounds {(left, bottom, right, top)} span less than one pixel of {(xres, yres)} "
            f"in both directions; expected bounds and resolution in the units of "
            f"{_crs_string(parsed)} ({_units(parsed)})"
            + _degrees_hint(parsed, (left, bottom, right, top))
        )
    affine = Affine(xres, 0.0, left, 0.0, -yres, top)
    return GeoBox((height, width), affine, parsed)


def _units(crs: CRS) -> str:
    return "degrees" if crs.geographic else str(crs.units[0] if crs.units else "unknown units")


def _area_of_use(crs: CRS) -> tuple[float, float, float, float] | None:
    """Return the CRS's area of use in the CRS's units (None when unknown or not transformable)."""
    area = crs.proj.area_of_use
    if area is None:
        return None
    try:
        from pyproj import Transformer

        transformer = Transformer.from_crs("EPSG:4326", crs.proj, always_xy=True)
        box = transformer.transform_bounds(*area.bounds, densify_pts=21)
    except Exception:  # pyproj raises several unrelated types; no check then
        return None
    if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box


def _check_area_of_use(crs: CRS, bounds: tuple[float, float, float, float]) -> None:
    """Refuse bounds outside the CRS's area of use (with a margin), e.g. degrees for a UTM grid."""
    box = _area_of_use(crs)
    if box is None:
        return
    mx, my = _AREA_MARGIN * (box[2] - box[0]), _AREA_MARGIN * (box[3] - box[1])
    lo_x, lo_y, hi_x, hi_y = box[0] - mx, box[1] - my, box[2] + mx, box[3] + my
    if crs.geographic:  # no latitude beyond the poles
        lo_y, hi_y = max(lo_y, -90.0 - 1e-9), min(hi_y, 90.0 + 1e-9)
    left, bottom, right, top = bounds
    if left >= lo_x and right <= hi_x and bottom >= lo_y and top <= hi_y:
        return
    hint = _degrees_hint(crs, bounds)
    raise GridError(
        f"bounds {bounds} lie outside the area of use of {_crs_string(crs)} "
        f"({crs.proj.area_of_use.name.split('.')[0]}), which spans about "
        f"{tuple(round(v) for v in box)} in {_units(crs)} (bounds may extend beyond it by "
        f"{_AREA_MARGIN:.0%} of its size); expected bounds in the units of that CRS{hint}"
    )


def _degrees_hint(crs: CRS, bounds: tuple[float, float, float, float]) -> str:
    if crs.geographic or not all(abs(v) <= 360 for v in bounds):
        return ""
    return "; these bounds look like degrees: pass crs='EPSG:4326' or project them first"


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
    _check_regular(obj)
    return gbox


def _lattice(obj: Any, other: Any = None) -> tuple[tuple[int, int], Affine, Any]:
    """``((ny, nx), affine, crs or None)`` of a grid or cube (a cube may lack a CRS)."""
    if isinstance(obj, GeoBox):
        return (int(obj.shape[0]), int(obj.shape[1])), obj.affine, obj.crs
    if not isinstance(obj, xr.DataArray | xr.Dataset):
        raise GridError(f"expected a grid (GeoBox) or a cube; got {type(obj).__name__}")
    gbox = getattr(getattr(obj, "odc", None), "geobox", None)
    if gbox is not None and gbox.crs is not None:
        _check_regular(obj)
        return (int(gbox.shape[0]), int(gbox.shape[1])), gbox.affine, gbox.crs
    dims = _spatial_dims(obj)
    if dims is None:
        raise GridError(f"expected a cube with 'y' and 'x' dims; got dims {tuple(obj.dims)}")
    shape = (int(obj.sizes[dims[0]]), int(obj.sizes[dims[1]]))
    fallback = _lattice(other)[1] if other is not None else None
    steps = []
    for i, dim in enumerate(dims):
        if dim not in obj.coords:
            raise GridError(f"cube has no {dim!r} coordinate to place it on a grid")
        axis = _regular_axis(obj[dim].values, dim)
        if axis is None:  # one pixel: its size comes from the other grid, else 1
            size = (fallback.e if i == 0 else fallback.a) if fallback is not None else 1.0
            axis = (float(obj[dim].values[0]), size)
        steps.append(axis)
    (y0, dy), (x0, dx) = steps
    return shape, Affine(dx, 0.0, x0 - dx / 2, 0.0, dy, y0 - dy / 2), None


def grid_mismatch(a: Any, b: Any, *, tol: float = GRID_TOLERANCE) -> str | None:
    """Say how grid ``b`` differs from grid ``a``, or return None when they are the same grid.

    ``a`` and ``b`` are grids (GeoBox) or cubes (a cube without a CRS is compared on its
    coordinates only). They are the same grid when their CRSs are equal (or one is unknown),
    their shapes are equal and every pixel edge of ``b`` lies within ``tol`` pixels of the
    corresponding edge of ``a`` (so origins and resolutions agree to a small fraction of a pixel
    across the whole grid; coordinates differing in the 15th digit are the same grid).
    """
    shape_a, aff_a, crs_a = _lattice(a, b)
    shape_b, aff_b, crs_b = _lattice(b, a)
    if crs_a is not None and crs_b is not None and crs_a != crs_b:
        return f"CRS {_crs_string(crs_b)} differs from {_crs_string(crs_a)}"
    if shape_a != shape_b:
        return f"shape {shape_b} (y, x) differs from {shape_a}"
    ny, nx = shape_a
    inverse = ~aff_a
    worst = 0.0
    for col, row in ((0, 0), (nx, 0), (0, ny), (nx, ny)):
        pc, pr = inverse * (aff_b * (col, row))
        worst = max(worst, abs(pc - col), abs(pr - row))
    if not worst <= tol:
        return (
            f"pixel edges differ by up to {worst:.3g} pixels (tolerance {tol:g}): origin "
            f"({aff_b.c!r}, {aff_b.f!r}) vs ({aff_a.c!r}, {aff_a.f!r}), pixel size "
            f"({aff_b.a!r}, {aff_b.e!r}) vs ({aff_a.a!r}, {aff_a.e!r})"
        )
    return None


def same_grid(a: Any, b: Any, *, tol: float = GRID_TOLERANCE) -> bool:
    """Whether two grids or cubes lie on the same grid (see :func:`grid_mismatch`).

    Examples
    --------
    >>> import xfusion as xf
    >>> g = xf.grid((500000, 0, 500300, 300), "EPSG:32633", 10)
    >>> same_grid(g, xf.grid((500000 + 1e-9, 0, 500300, 300), "EPSG:32633", 10 + 1e-14))
    True
    >>> same_grid(g, xf.grid((500001, 0, 500300, 300), "EPSG:32633", 10))
    False
    """
    return grid_mismatch(a, b, tol=tol) is None


def check_same_grid(a: Any, b: Any, what: str = "the second cube") -> None:
    """Raise :class:`GridError` naming ``what`` and the difference if ``b`` is off ``a``'s grid."""
    why = grid_mismatch(a, b)
    if why is not None:
        raise GridError(f"{what} is not on the cube's grid: {why}; resample it onto the grid first")


def snap_to_grid(obj: xr.DataArray, like: Any, what: str = "the second cube") -> xr.DataArray:
    """Return ``obj`` with the exact ``y``/``x`` coordinates of ``like`` (a grid or a cube).

    ``obj`` must be on ``like``'s grid within :data:`GRID_TOLERANCE` (else :class:`GridError`
    naming ``what``); its coordinates are then replaced by ``like``'s, so that xarray's
    alignment on coordinates keeps every pixel instead of a sliver. Latitude/longitude dims keep
    their names. Values are not touched; nothing is computed.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xfusion as xf
    >>> g = xf.grid((500000, 0, 500030, 30), "EPSG:32633", 10)
    >>> a = assign_grid(xr.DataArray(np.zeros((3, 3)), dims=("y", "x")), g)
    >>> b = a.assign_coords(x=a.x + 1e-9)
    >>> bool((snap_to_grid(b, a).x == a.x).all())
    True
    """
    check_same_grid(like, obj, what)
    dims = _spatial_dims(obj)
    if dims is None:  # pragma: no cover - _lattice refused it already
        raise GridError(f"{what} has no 'y'/'x' dims; got {tuple(obj.dims)}")
    if isinstance(like, GeoBox):
        coords = grid_coords(like)
        values = {dims[0]: coords["y"].values, dims[1]: coords["x"].values}
        extra = {"spatial_ref": coords["spatial_ref"]}
    else:
        like_dims = _spatial_dims(like)
        values = {d: like[ld].values for d, ld in zip(dims, like_dims, strict=True)}
        extra = {"spatial_ref": like.coords["spatial_ref"]} if "spatial_ref" in like.coords else {}
    if "spatial_ref" not in obj.coords:
        extra = {}
    return obj.assign_coords({**{d: (d, v) for d, v in values.items()}, **extra})


def _regular_axis(values: np.ndarray, dim: str) -> tuple[float, float] | None:
    """``(first pixel centre, step)`` of a 1-D coordinate, or None for a single pixel.

    Raises :class:`GridError` when the spacing is not regular: every centre must lie within
    :data:`GRID_TOLERANCE` of a pixel of the line through the first and last centres.
    """
    values = np.asarray(values, dtype="float64")
    if values.size < 2:
        return None
    step = (values[-1] - values[0]) / (values.size - 1)
    drift = np.abs(values - (values[0] + step * np.arange(values.size)))
    if step == 0 or not np.all(np.isfinite(values)) or drift.max() > GRID_TOLERANCE * abs(step):
        diffs = np.diff(values)
        raise GridError(
            f"{dim} coordinates are not regularly spaced: the spacing ranges from "
            f"{diffs.min():g} to {diffs.max():g}; expected one pixel size along {dim!r} "
            "(a grid needs regular spacing: resample irregular data onto xf.grid(...) first)"
        )
    return float(values[0]), float(step)


def _spatial_dims(obj: xr.DataArray | xr.Dataset) -> tuple[str, str] | None:
    for ydim, xdim in (("y", "x"), ("latitude", "longitude")):
        if ydim in obj.dims and xdim in obj.dims:
            return ydim, xdim
    return None


def _check_regular(obj: xr.DataArray | xr.Dataset) -> None:
    dims = _spatial_dims(obj)
    if dims is None:
        return
    for dim in dims:
        if dim in obj.coords and obj[dim].ndim == 1:
            _regular_axis(obj[dim].values, dim)


def grid_coords(gbox: GeoBox) -> dict[str, xr.DataArray]:
    """Pixel-centre ``y``/``x`` coordinates and the ``spatial_ref`` coordinate of a grid."""
    return xr_coords(gbox, crs_coord_name="spatial_ref", always_yx=True)


def plain_coords(obj: xr.DataArray) -> xr.DataArray:
    """Return ``obj`` with only its dimension coordinates and ``spatial_ref`` (its grid).

    Scalar and auxiliary coordinates left by selections and fusion (``source``, a selected
    ``time``) are dropped, so cubes from different steps concatenate and write to Zarr alike.
    Lazy.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.zeros((2, 3)), dims=("y", "x"), coords={"time": 0, "y": [1, 2]})
    >>> list(plain_coords(cube).coords)
    ['y']
    """
    keep = {*obj.dims, "spatial_ref"}
    return obj.drop_vars([c for c in obj.coords if c not in keep])


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
