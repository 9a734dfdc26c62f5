"""Irregular coarse observations: footprints (polygons or masks) and values → training patches.

A coarse observation is a value plus its **footprint**, the weights with which it averages the
fine field (a satellite sounding, a flight track, a field parcel). Observations on a regular
coarse grid train :class:`xfusion.models.UNetRegressor` with ``coarse_factor`` and
``fit(..., footprint=)``; irregular ones (any shape, any place, overlapping each other or
crossing chunk boundaries) train as **one patch per observation**: the footprint is rasterised
to a weight map on the fine grid, a square patch of the input cube is cut around it, and the
observation becomes a ``(1, 1)`` coarse target whose cell is the whole patch
(``coarse_factor`` = the patch side). :func:`rasterize_footprints` gives the weight maps,
:func:`footprint_patches` the patches Dataset that ``UNetRegressor.fit`` takes as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
import xarray as xr

from xfusion.errors import InputError
from xfusion.grids import geobox_of

__all__ = ["footprint_patches", "match_coarse", "rasterize_footprints", "varying_bands"]

_WEIGHTS = ("center", "touched", "area")
#: sub-pixels per side used by ``weights="area"`` to measure the covered fraction of a pixel
_AREA_SUPERSAMPLE = 8


def _geometries(observations: Any, crs: Any) -> list[Any]:
    """Shapely geometries in ``crs`` from a GeoDataFrame/GeoSeries, shapely or GeoJSON-like."""
    import shapely.geometry

    geoms = getattr(observations, "geometry", None)
    if geoms is not None and hasattr(observations, "crs"):  # GeoDataFrame / GeoSeries
        if observations.crs is None:
            raise InputError(
                "the footprints' GeoDataFrame has no CRS; set it (gdf.set_crs(...)) so the "
                f"footprints can be put on the cube's grid ({crs})"
            )
        geoms = list(observations.to_crs(crs).geometry)
    else:
        geoms = list(observations)
    out = []
    for i, g in enumerate(geoms):
        if hasattr(g, "__geo_interface__") and not isinstance(
            g, shapely.geometry.base.BaseGeometry
        ):
            g = g.__geo_interface__
        if isinstance(g, dict):
            g = shapely.geometry.shape(g)
        if not isinstance(g, shapely.geometry.base.BaseGeometry) or g.is_empty:
            raise InputError(
                f"footprint {i} is {type(g).__name__}{' (empty)' if hasattr(g, 'is_empty') else ''}"
                "; expected a non-empty polygon (shapely geometry or GeoJSON-like mapping)"
            )
        out.append(g)
    return out


def _raster_one(geom: Any, shape: tuple[int, int], transform: Any, how: str) -> np.ndarray:
    """Weights of one geometry on a ``shape`` window with ``transform`` (float32)."""
    from affine import Affine
    from rasterio.features import rasterize

    if how == "area":
        k = _AREA_SUPERSAMPLE
        fine = rasterize(
            [(geom, 1)],
            out_shape=(shape[0] * k, shape[1] * k),
            transform=transform * Affine.scale(1.0 / k),
            fill=0,
            dtype="uint8",
        )
        return fine.reshape(shape[0], k, shape[1], k).mean(axis=(1, 3)).astype(np.float32)
    mask = rasterize(
        [(geom, 1)],
        out_shape=shape,
        transform=transform,
        fill=0,
        all_touched=how == "touched",
        dtype="uint8",
    )
    return mask.astype(np.float32)


def _check_weights(weights: str) -> str:
    if weights not in _WEIGHTS:
        raise InputError(f"weights must be one of {list(_WEIGHTS)}; got {weights!r}")
    return weights


def rasterize_footprints(
    observations: Any, like: xr.DataArray | xr.Dataset, *, weights: str = "area"
) -> xr.DataArray:
    """Rasterise footprint polygons to weight maps on the grid of ``like`` (eager).

    Parameters
    ----------
    observations : GeoDataFrame, GeoSeries or sequence of geometries
        One footprint per observation: shapely geometries or GeoJSON-like mappings in the CRS
        of ``like``, or a GeoDataFrame/GeoSeries with a CRS (reprojected to ``like``'s CRS).
    like : DataArray or Dataset
        Cube whose grid (``spatial_ref`` and x/y coordinates) the weights are put on. Only its
        grid is read, never its data.
    weights : {"area", "center", "touched"}
        Weight of a pixel: the fraction of its area inside the footprint (``"area"``, measured
        on 8×8 sub-pixels; right for footprints a few pixels wide), 1 where its centre is
        inside (``"center"``), or 1 where the footprint touches it (``"touched"``).

    Returns
    -------
    DataArray
        ``(observation, y, x)`` float32 weights in [0, 1] on ``like``'s grid. Overlapping
        footprints each keep their own map.

    Raises
    ------
    InputError
        A footprint that is not a non-empty geometry, a GeoDataFrame without a CRS, or an
        unknown ``weights``.

    Examples
    --------
    >>> import shapely
    >>> import xfusion as xf
    >>> cube = xf.datasets.synthetic_scene("downscale", size=40)["modis"].isel(time=0)
    >>> x0, y1 = float(cube.x[0]) - 500, float(cube.y[0]) + 500   # the grid's top-left corner
    >>> square = shapely.box(x0 + 2000, y1 - 5000, x0 + 6000, y1 - 2000)  # 4 × 3 km
    >>> w = rasterize_footprints([square], cube)
    >>> w.dims, float(w.sum())
    (('observation', 'y', 'x'), 12.0)
    """
    how = _check_weights(weights)
    box = geobox_of(like)
    geoms = _geometries(observations, box.crs)
    maps = (
        np.stack([_raster_one(g, box.shape, box.affine, how) for g in geoms])
        if geoms
        else (np.zeros((0, *box.shape), np.float32))
    )
    coords = {"observation": np.arange(len(geoms)), "y": like.y, "x": like.x}
    if "spatial_ref" in like.coords:
        coords["spatial_ref"] = like.spatial_ref
    return xr.DataArray(maps, dims=("observation", "y", "x"), coords=coords, name="footprint")


def _mask_array(masks: Any, shape: tuple[int, int]) -> np.ndarray:
    a = np.asarray(masks.data if isinstance(masks, xr.DataArray) else masks)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != tuple(shape):
        raise InputError(
            f"footprint masks have shape {a.shape}; expected (observation, y, x) on the cube's "
            f"grid, (n, {shape[0]}, {shape[1]})"
        )
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)) or (a < 0).any():
        raise InputError("footprint weights must be finite and >= 0 (a boolean mask is 0/1)")
    return a


def footprint_patches(
    cube: xr.DataArray,
    footprints: Any,
    values: Any,
    *,
    size: int | None = None,
    margin: int = 8,
    multiple: int = 1,
    weights: str = "area",
    min_coverage: float = 1.0,
    target_name: str = "target",
) -> xr.Dataset:
    """Training patches for coarse supervision by irregular observations; computes.

    Every observation (a footprint and one value) becomes one sample: a ``size × size`` patch
    of ``cube`` centred on the footprint's bounding box (shifted inside the cube at its
    edges), the footprint's weights on that patch, and the value as its target. Train
    :class:`~xfusion.models.UNetRegressor` on it with ``coarse_factor=size``: the fine
    prediction averaged with the footprint's weights is compared with the value, whatever the
    footprint's shape, and wherever it lies (across chunk or tile boundaries, overlapping
    other footprints: each observation keeps its own weights). The patches carry their
    ``row``/``col`` offsets, so the model's automatic spatial validation split keeps
    overlapping observations on one side.

    This function computes: it reads the cube's windows under the footprints (one
    ``dask.compute`` for all of them).

    Parameters
    ----------
    cube : DataArray
        Input features ``(band, y, x)`` on the fine grid (select the observations' date
        first for a time series).
    footprints : GeoDataFrame, sequence of geometries, or array-like of masks
        Polygons (see :func:`rasterize_footprints`), or weights on the cube's grid
        ``(observation, y, x)`` (boolean masks or weights >= 0).
    values : array-like or str
        One observed value per footprint (the weighted mean of the fine field over it), or the
        name of the GeoDataFrame column holding them. NaN values are dropped.
    size : int, optional
        Patch side in pixels. Default: the largest footprint's bounding box plus ``margin`` on
        each side, rounded up to ``multiple``. A footprint larger than ``size`` is an error.
    margin : int
        Context pixels around the largest footprint for the default ``size``.
    multiple : int
        Round the default ``size`` up to a multiple of this (e.g. ``2 ** depth`` of the U-Net
        to avoid padding).
    weights : {"area", "center", "touched"}
        Rasterisation of polygons (ignored for masks), see :func:`rasterize_footprints`.
    min_coverage : float
        Observations with less than this fraction of their footprint's weight inside the cube
        are dropped (the value averages pixels the cube lacks); 1 keeps whole footprints only.
    target_name : str
        Name of the target band.

    Returns
    -------
    xarray.Dataset
        ``inputs (sample, band, y, x)``; ``target (sample, target_band, y, x)``: the value on
        the footprint (weight > 0), NaN elsewhere; ``footprint (sample, y, x)`` (float32
        weights); per-sample coordinates ``observation`` (index in
        the input table), ``row``/``col`` (patch offsets in the cube) and ``x0``/``y0``
        (top-left corner in the cube's CRS); ``attrs["n_dropped"]`` counts the observations
        left out (NaN value, too little coverage, or an empty footprint).

    Raises
    ------
    InputError
        A cube that is not ``(band, y, x)``, a number of values that differs from the number of
        footprints, masks not on the cube's grid, a ``size`` smaller than a footprint or larger
        than the cube, or no observation left.

    Examples
    --------
    >>> import numpy as np
    >>> import xfusion as xf
    >>> cube = xf.datasets.synthetic_scene("downscale", size=40)["modis"].isel(time=0)
    >>> masks = np.zeros((2, 40, 40), bool)
    >>> masks[0, 3:9, 5:8] = masks[1, 20:23, 30:39] = True   # two irregular footprints
    >>> ds = footprint_patches(cube, masks, [1.2, 0.7], margin=2)
    >>> ds["inputs"].shape, ds["target"].shape, float(ds["footprint"][1].sum())
    ((2, 2, 13, 13), (2, 1, 13, 13), 27.0)
    >>> model = xf.models.UNetRegressor(widths=(4,), coarse_factor=13, epochs=1, progress=False)
    >>> model.fit(ds).predict(ds["inputs"].values).shape
    (2, 1, 13, 13)
    """
    if set(cube.dims) != {"band", "y", "x"}:
        raise InputError(
            f"cube has dims {tuple(cube.dims)}; expected (band, y, x): select the observations' "
            "date first (cube.sel(time=...))"
        )
    cube = cube.transpose("band", "y", "x")
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    if isinstance(values, str):
        if not hasattr(footprints, "columns") or values not in footprints.columns:
            raise InputError(
                f"values={values!r} names a column, but footprints is not a table with it"
            )
        values = footprints[values].to_numpy()
    vals = np.asarray(values, np.float64).ravel()
    polygons = not isinstance(footprints, np.ndarray | xr.DataArray) and not (
        isinstance(footprints, Sequence)
        and len(footprints)
        and isinstance(footprints[0], np.ndarray)
    )
    if polygons:
        how = _check_weights(weights)
        box = geobox_of(cube)
        geoms = _geometries(footprints, box.crs)
        n_obs = len(geoms)
    else:
        maps = _mask_array(footprints, (ny, nx))
        n_obs = len(maps)
    if len(vals) != n_obs:
        raise InputError(f"{len(vals)} values for {n_obs} footprints; expected one value each")
    if not 0 < float(min_coverage) <= 1:
        raise InputError(f"min_coverage must be in (0, 1]; got {min_coverage}")

    # per observation: its pixel bounding box and total weight (whole footprint, inside or not)
    boxes, totals, inside_totals = [], [], []
    for i in range(n_obs):
        if polygons:
            g = geoms[i]
            c0, r0, c1, r1 = _pixel_bounds(g, box.affine)
            win = _raster_one(g, (r1 - r0, c1 - c0), box.affine * _translate(c0, r0), how)
            total = float(win.sum())
            rr0, cc0 = max(r0, 0), max(c0, 0)
            rr1, cc1 = min(r1, ny), min(c1, nx)
            inside = (
                float(win[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0].sum())
                if rr1 > rr0 and cc1 > cc0
                else 0.0
            )
        else:
            rows, cols = np.nonzero(maps[i])
            total = inside = float(maps[i].sum())
            r0, r1 = (int(rows.min()), int(rows.max()) + 1) if rows.size else (0, 0)
            c0, c1 = (int(cols.min()), int(cols.max()) + 1) if cols.size else (0, 0)
        boxes.append((max(r0, 0), min(r1, ny), max(c0, 0), min(c1, nx)))
        totals.append(total)
        inside_totals.append(inside)
    totals, inside_totals = np.array(totals), np.array(inside_totals)
    with np.errstate(invalid="ignore", divide="ignore"):
        coverage = np.where(totals > 0, inside_totals / np.where(totals > 0, totals, 1), 0.0)
    keep = np.isfinite(vals) & (inside_totals > 0) & (coverage >= float(min_coverage) - 1e-6)
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        raise InputError(
            f"no observation left of {n_obs}: each needs a finite value and at least "
            f"{min_coverage:.0%} of its footprint inside the cube ({ny}×{nx} px)"
        )
    extent = max(max(b[1] - b[0], b[3] - b[2]) for b in (boxes[i] for i in kept))
    if size is None:
        size = extent + 2 * int(margin)
        size = -(-size // int(multiple)) * int(multiple)
        size = min(size, ny, nx)
    size = int(size)
    if size < extent or size > min(ny, nx):
        raise InputError(
            f"size {size} px does not hold the observations: the largest footprint spans "
            f"{extent} px and the cube is {ny}×{nx} px; expected {extent} <= size <= "
            f"{min(ny, nx)}"
        )

    rows, cols, fps = [], [], []
    for i in kept:
        r0, r1, c0, c1 = boxes[i]
        row = int(np.clip((r0 + r1 - size) // 2, 0, ny - size))
        col = int(np.clip((c0 + c1 - size) // 2, 0, nx - size))
        if polygons:
            fp = _raster_one(geoms[i], (size, size), box.affine * _translate(col, row), how)
        else:
            fp = maps[i, row : row + size, col : col + size]
        rows.append(row)
        cols.append(col)
        fps.append(fp)
    data = cube.data
    cuts = [data[:, r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)]
    (cuts,) = dask.compute(cuts)  # xf: computes the windows under the footprints only
    footprint = np.stack(fps).astype(np.float32)
    target = np.where(footprint > 0, vals[kept].astype(np.float32)[:, None, None], np.nan)
    target = target[:, None].astype(np.float32)
    rows_a, cols_a = np.array(rows, np.int64), np.array(cols, np.int64)
    affine = geobox_of(cube).affine
    x0 = affine.c + affine.a * cols_a + affine.b * rows_a
    y0 = affine.f + affine.d * cols_a + affine.e * rows_a
    ds = xr.Dataset(
        {
            "inputs": (("sample", "band", "y", "x"), np.stack(cuts).astype(np.float32)),
            # the value on the footprint, NaN elsewhere: UNetRegressor takes a fine-grid target's
            # weights from its NaN pattern times the footprint, so each coarse observation is
            # exactly the value, averaged with the footprint's weights
            "target": (("sample", "target_band", "y", "x"), target),
            "footprint": (("sample", "y", "x"), footprint),
        },
        coords={
            "sample": np.arange(kept.size),
            "band": cube.band.values,
            "target_band": [target_name],
            "observation": ("sample", kept.astype(np.int64)),
            "row": ("sample", rows_a),
            "col": ("sample", cols_a),
            "x0": ("sample", x0),
            "y0": ("sample", y0),
        },
        attrs={"n_dropped": int(n_obs - kept.size), "coarse_factor": size},
    )
    return ds


def _translate(col: int, row: int) -> Any:
    from affine import Affine

    return Affine.translation(col, row)


def _pixel_bounds(geom: Any, affine: Any) -> tuple[int, int, int, int]:
    """``(col0, row0, col1, row1)``: the pixel window holding ``geom`` (may exceed the grid)."""
    inv = ~affine
    minx, miny, maxx, maxy = geom.bounds
    corners = [inv * (x, y) for x in (minx, maxx) for y in (miny, maxy)]
    cs, rs = [c for c, _ in corners], [r for _, r in corners]
    return (
        int(np.floor(min(cs))),
        int(np.floor(min(rs))),
        int(np.ceil(max(cs))),
        int(np.ceil(max(rs))),
    )


_MATCH_METHODS = ("shift", "scale")


def match_coarse(
    fine: xr.DataArray,
    coarse: xr.DataArray,
    *,
    footprint: xr.DataArray | None = None,
    method: str = "shift",
) -> xr.DataArray:
    """Adjust a fine field so every coarse cell's (footprint-weighted) mean equals its observation.

    The physical constraint of downscaling, enforced after prediction: per coarse cell,
    ``"shift"`` adds ``obs - Σ w·fine / Σ w`` to the cell's fine pixels; ``"scale"``
    multiplies them by ``obs / (Σ w·fine / Σ w)`` (for positive fields: keeps the sign and the
    relative pattern). The pattern inside a cell is kept; cells with no observation (NaN) or
    no weight (``Σ w = 0``), and a ``"scale"`` whose weighted mean is not positive, are left
    as they are. Lazy: a chunked ``fine`` gives a chunked result and nothing computes.

    Parameters
    ----------
    fine : DataArray
        The fine field, ``(..., y, x)``.
    coarse : DataArray
        The observations on the coarse grid, ``(..., y / factor, x / factor)`` with the same
        leading dims (a ``band`` of size 1 is matched by position when its name differs).
    footprint : DataArray, optional
        Weights of each observation on the fine grid, broadcastable to ``fine`` (e.g. the
        ``(time, 1, y, x)`` footprint of a series); default: uniform (the whole cell).
    method : {"shift", "scale"}
        Additive or multiplicative adjustment.

    Returns
    -------
    DataArray
        ``fine`` adjusted, with its coordinates.

    Raises
    ------
    InputError
        Grids that are not an integer coarsening of each other, or an unknown ``method``.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> fine = xr.DataArray(np.arange(16.0).reshape(4, 4), dims=("y", "x"))
    >>> coarse = xr.DataArray([[1.0, 2.0], [3.0, 4.0]], dims=("y", "x"))
    >>> out = match_coarse(fine, coarse)
    >>> out.coarsen(y=2, x=2).mean().values.tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    >>> float(out[0, 1] - out[0, 0]) == float(fine[0, 1] - fine[0, 0])   # pattern kept
    True
    """
    if method not in _MATCH_METHODS:
        raise InputError(f"method must be one of {list(_MATCH_METHODS)}; got {method!r}")
    ny, nx = fine.sizes["y"], fine.sizes["x"]
    cy, cx = coarse.sizes["y"], coarse.sizes["x"]
    factor = ny // cy if cy else 0
    if factor < 1 or ny != cy * factor or nx != cx * factor:
        raise InputError(
            f"the fine field ({ny}×{nx} px) is not the coarse field ({cy}×{cx}) times an "
            "integer factor"
        )
    # by position along each dim: the footprint and the observations are on the same grids
    # and dates as the field, possibly with other band names ("weight") or float coordinates
    values = xr.DataArray(fine.data, dims=fine.dims)
    if footprint is None:
        weights = xr.ones_like(values)
    else:
        missing = [d for d in footprint.dims if d not in fine.dims]
        if missing:
            raise InputError(
                f"footprint has dims {tuple(footprint.dims)}; expected dims of the fine field "
                f"{tuple(fine.dims)}"
            )
        weights = xr.DataArray(footprint.data, dims=footprint.dims).fillna(0.0)
        weights = weights * xr.ones_like(values)
    cells = {"y": factor, "x": factor}
    total = weights.coarsen(cells).sum()
    mean = (weights * values).coarsen(cells).sum() / total.where(total > 0)
    obs = xr.DataArray(coarse.data, dims=coarse.dims)
    if method == "shift":
        change = (obs - mean).fillna(0.0)
    else:
        change = (obs / mean.where(mean > 0)).fillna(1.0)
    change = change.transpose(*[d for d in fine.dims if d in change.dims])
    data = change.data
    for axis in (-2, -1):
        data = data.repeat(factor, axis=axis)  # numpy and dask arrays alike, lazily for dask
    up = xr.DataArray(data, dims=change.dims).transpose(*fine.dims).data
    adjusted = fine.copy(data=fine.data + up if method == "shift" else fine.data * up)
    return adjusted.astype(fine.dtype).rename(fine.name)


def varying_bands(
    inputs: Any,
    coarse_factor: int | None = None,
    *,
    bands: Sequence[str] | None = None,
    min_ratio: float = 0.3,
) -> list[str]:
    """Input bands that vary inside coarse cells, for coarse supervision; computes.

    Under coarse supervision the labels are cell means, so a band that is (nearly) constant
    inside every cell (weather from a coarse reanalysis, a coarse field resampled by nearest
    neighbour, a per-scene constant) can explain the labels on its own: the network then fits
    the cell means through it and learns nothing about the pattern inside the cells, which is
    what downscaling is for. This keeps the bands whose mean standard deviation inside the
    cells is at least ``min_ratio`` times their standard deviation between cell means. It
    looks at the inputs only, never at the target.

    Measured on the real CFIS SIF tiles (``benchmarks/bench_sif_cfis.py``): the three NLDAS
    weather bands have ratios of 0 to 0.2 and every reflectance and crop-fraction band about
    0.5 or more; dropping the weather raised the correlation of the U-Net's within-tile pattern with
    the airborne truth from -0.17 / 0.19 to 0.33 / 0.30 on two development splits.

    Parameters
    ----------
    inputs : DataArray or array-like
        Patches ``(sample, band, y, x)`` (a ``band`` coordinate gives the names).
    coarse_factor : int, optional
        Side of a coarse cell in pixels; default the whole patch (one cell per sample).
    bands : sequence of str, optional
        Band names for unnamed arrays (default ``band_0``, ``band_1``, …).
    min_ratio : float
        Smallest within-cell / between-cell standard deviation ratio kept.

    Returns
    -------
    list of str
        The names of the bands kept, in input order.

    Raises
    ------
    InputError
        Inputs that are not ``(sample, band, y, x)``, a factor that does not divide the patch
        sides, a wrong number of band names, or no band left.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(6, 3, 8, 8))
    >>> X[:, 1] = rng.normal(size=(6, 1, 1))     # constant inside every 8×8 patch
    >>> varying_bands(X, bands=["red", "weather", "nir"])
    ['red', 'nir']
    """
    if isinstance(inputs, xr.DataArray):
        if bands is None and "band" in inputs.coords:
            bands = [str(b) for b in inputs.band.values]
        inputs = inputs.data
    a = np.asarray(inputs, np.float64)  # xf: computes the patches' band statistics
    if a.ndim != 4:
        raise InputError(f"inputs must be (sample, band, y, x); got shape {a.shape}")
    n, b, h, w = a.shape
    f_y, f_x = (h, w) if coarse_factor is None else (int(coarse_factor),) * 2
    if f_y < 1 or h % f_y or w % f_x:
        raise InputError(f"coarse_factor {coarse_factor} does not divide the {h}×{w} patches")
    names = list(bands) if bands is not None else [f"band_{i}" for i in range(b)]
    if len(names) != b:
        raise InputError(f"{len(names)} band names for {b} bands")
    cells = a.reshape(n, b, h // f_y, f_y, w // f_x, f_x).transpose(1, 0, 2, 4, 3, 5)
    cells = cells.reshape(b, -1, f_y * f_x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        within = np.nanmean(np.nanstd(cells, axis=2), axis=1)
        between = np.nanstd(np.nanmean(cells, axis=2), axis=1)
    ratio = np.where(between > 0, within / np.where(between > 0, between, 1.0), np.inf)
    ratio = np.where(within > 0, ratio, 0.0)
    kept = [name for name, r in zip(names, ratio, strict=True) if r >= float(min_ratio)]
    if not kept:
        raise InputError(
            f"no band varies inside the coarse cells (within/between ratios "
            f"{dict(zip(names, np.round(ratio, 3).tolist(), strict=True))}, min_ratio "
            f"{min_ratio})"
        )
    return kept
