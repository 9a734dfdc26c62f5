"""Fusing several sources onto one grid.

:func:`fuse` resamples every source (each with its own CRS, resolution and time axis) onto one
grid with a method suited to it, mosaics sources given as several cubes, aligns the time axes and
stacks everything along ``band`` with names ``"source:band"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask.array
import numpy as np
import xarray as xr
from odc.geo.geobox import GeoBox

from xfusion._graph import broadcast_leading, concatenate, data_blocks, rechunk
from xfusion.bands import KIND_COORD, band_kinds, band_scaling, set_band_kinds, set_band_scaling
from xfusion.errors import BandError, EmptySelectionError, InputError
from xfusion.grids import as_geobox, geobox_of
from xfusion.preprocess.resample import RESAMPLING, band_methods, is_coarser, resample
from xfusion.validate import check_unique_bands, check_unique_times

__all__ = ["MOSAIC", "choose_resampling", "fuse", "mosaic_cubes"]

#: Built-in ways to combine the cubes of one source where they overlap.
MOSAIC = ("first", "mean")
_ALIGN = (None, "exact", "nearest")

Mosaic = str | Callable[[list[xr.DataArray]], xr.DataArray]


def fuse(
    sources: Mapping[str, xr.DataArray | Sequence[xr.DataArray]],
    *,
    grid: Any,
    resampling: str | Mapping[str, str] | None = None,
    align: str | None = None,
    mosaic: Mosaic = "first",
    kinds: Mapping[str, str] | None = None,
) -> xr.DataArray:
    """Resample several sources onto one grid and stack them along ``band`` (lazy).

    Every band is resampled as its kind needs (see :func:`xfusion.resample`): the kind comes
    from ``kinds``, else the cube's ``band_kind`` coordinate (e.g. from :func:`xfusion.open_stac`),
    else ``attrs["kind"] == "classes"`` or an integer/bool dtype (categorical), else the band
    name (``QA60``, ``QA_PIXEL``, ``BQA``: flags; ``SCL``: categorical), else continuous. A source
    already on ``grid`` (within 1e-3 pixel) is copied exactly, whatever its kind.

    Parameters
    ----------
    sources : mapping of name to cube or list of cubes
        Each cube has dims ``([time,] [band,] y, x)`` and its own CRS/resolution. A list of
        cubes (e.g. adjacent scenes) is one source mosaicked on the target grid (see
        ``mosaic``); its cubes must share band names and time coordinates.
    grid : GeoBox or cube
        Target grid (from :func:`xfusion.grid`) or a cube whose grid to use.
    resampling : None, str or mapping of source name to str
        A mapping fixes the method of every band of the sources it names; a method that does not
        suit a band's kind (``average`` on flags or classes ...) is refused with
        :class:`BandError`. Every other band follows this rule (``str`` is the method for
        continuous bands that get coarser, default ``None`` = ``"average"``):

        ============ ================== ============
        band kind    coarser            finer/same
        ============ ================== ============
        continuous   ``str``            bilinear
        categorical  mode               nearest
        flags        bitwise_or         nearest
        ============ ================== ============

        "Coarser" compares the target pixel area with the source pixel area in the target CRS.
    align : {None, "exact", "nearest"}
        Time axes. ``None`` (default): every source with a ``time`` dim must have identical
        times, else :class:`InputError`. ``"exact"``: keep the times common to all sources.
        ``"nearest"``: put every source on the times of the first source that has a time
        axis, taking each source's nearest time. Sources without ``time`` (composites, static
        layers) are broadcast along the time axis.
    mosaic : {"first", "mean"} or callable
        How the cubes of a list source combine where they overlap, per pixel, band and time:
        ``"first"`` takes the first valid value in list order, ``"mean"`` averages the valid
        values (an overlap is counted once, not summed). A callable receives the list of cubes
        already resampled onto ``grid`` and returns one cube.
    kinds : mapping, optional
        Band kinds (``"continuous"``, ``"categorical"``, ``"flags"``) by fused band name
        (``{"s2:SCL": "categorical"}``) or by source name for all its bands
        (``{"lab": "categorical"}``).

    Returns
    -------
    xarray.DataArray
        Dims ``([time,] band, y, x)`` on ``grid``, float32, bands named ``"source:band"`` with a
        ``source`` and a ``band_kind`` coordinate along ``band`` (and the sources' recorded
        ``band_scale``/``band_offset``, NaN where a source recorded none, so
        :func:`xfusion.scale` still refuses to scale a band twice); ``attrs["xfusion:provenance"]``
        is a JSON string giving, per source, the original CRS and resolution of each cube, the
        resampling method (one name, or one per band where they differ), the mosaic and the time
        handling. Nothing is computed. Onto a large grid (continental, global) the result is
        sparse like :func:`xfusion.resample`'s: the sources are brought to the chunks of the
        first one and stacked with tasks only for the chunks some source reaches, so the graph
        grows with the data, not with the grid.

    Raises
    ------
    InputError
        Empty or malformed ``sources``, unknown method/source in ``resampling``, unknown
        ``align``/``mosaic``, mismatched time axes (the same times in another order included:
        sort them first), repeated times within a source, an unknown kind.
    EmptySelectionError
        ``align="exact"`` and the sources share no time.
    BandError
        The cubes of a list source have different bands, or a source repeats a band name; a
        method that does not suit a band's kind; ``kinds`` naming an unknown band or source.
    GridError
        A source that cannot be transformed to, or does not overlap, the grid.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xfusion as xf
    >>> def cube(res, value, dtype="float32"):
    ...     g = xf.grid((500000, 0, 500040, 40), "EPSG:32633", res)
    ...     data = np.full((1, *g.shape), value, dtype=dtype)
    ...     return xf.grids.assign_grid(xr.DataArray(data, dims=("band", "y", "x"),
    ...                                              coords={"band": ["b"]}), g)
    >>> fused = xf.fuse({"s2": cube(10, 0.5), "ghsl": cube(20, 3, "uint8")},
    ...                 grid=xf.grid((500000, 0, 500040, 40), "EPSG:32633", 20))
    >>> fused.band.values.tolist(), fused.source.values.tolist()
    (['s2:b', 'ghsl:b'], ['s2', 'ghsl'])
    >>> fused.values[:, 0, 0]
    array([0.5, 3. ], dtype=float32)
    """
    if not isinstance(sources, Mapping) or not sources:
        raise InputError(
            "sources must be a non-empty mapping of name to cube, e.g. {'s2': cube, 'viirs': cube}"
        )
    dst = as_geobox(grid)
    if align not in _ALIGN:
        raise InputError(f"unknown align {align!r}; expected one of {_ALIGN}")
    if not callable(mosaic) and mosaic not in MOSAIC:
        raise InputError(f"unknown mosaic {mosaic!r}; expected one of {MOSAIC} or a callable")
    explicit = _check_resampling(resampling, sources)
    coarser_method = resampling if isinstance(resampling, str) else "average"
    all_cubes = {name: _as_cubes(name, value) for name, value in sources.items()}
    source_kinds = _split_kinds(kinds, all_cubes)

    fused: dict[str, xr.DataArray] = {}
    provenance: dict[str, dict[str, Any]] = {}
    for name, cubes in all_cubes.items():
        cubes = [_with_kinds(cube, source_kinds.get(name, {})) for cube in cubes]
        if name in explicit:
            methods = band_methods(cubes[0], dst, explicit[name])
        else:
            coarser = is_coarser(geobox_of(cubes[0]), dst)
            continuous = coarser_method if coarser else "bilinear"
            methods = band_methods(cubes[0], dst, None, continuous=continuous)
        parts = [resample(cube, dst, methods) for cube in cubes]
        fused[name] = mosaic_cubes(parts, mosaic) if len(parts) > 1 else parts[0]
        grids = [geobox_of(cube) for cube in cubes]
        used = sorted(set(methods.values()))
        provenance[name] = {
            "crs": [_crs_string(g) for g in grids],
            "resolution": [[abs(g.resolution.x), abs(g.resolution.y)] for g in grids],
            "resampling": used[0] if len(used) == 1 else {str(b): m for b, m in methods.items()},
            "bands": [str(b) for b in fused[name].band.values],
            "mosaic": None if len(parts) == 1 else getattr(mosaic, "__name__", mosaic),
        }

    times = _align_times(fused, align, provenance)
    stacked = []
    scaling: dict[str, tuple[float, float] | None] = {}
    for name, cube in fused.items():
        # the scaling recorded per band travels with it (a sum of offset values has no offset)
        sums = provenance[name]["resampling"]
        for band, pair in band_scaling(cube).items():
            method = sums if isinstance(sums, str) else sums.get(str(band))
            if pair is not None and method == "sum" and pair[1] != 0.0:
                pair = None
            scaling[f"{name}:{band}"] = pair
        if times is not None and "time" not in cube.dims:
            cube = _expand_time(cube, times)
        bands = [f"{name}:{b}" for b in cube.band.values]
        keep = {"time", "band", "y", "x", "spatial_ref", KIND_COORD}
        cube = cube.drop_vars([c for c in cube.coords if c not in keep])
        cube = cube.assign_coords(band=bands, source=("band", [name] * len(bands)))
        dims = ("time", "band", "y", "x") if times is not None else ("band", "y", "x")
        stacked.append(cube.transpose(*dims).astype(np.float32))
    out = _concat_bands(stacked)
    if any(pair is not None for pair in scaling.values()):
        out = set_band_scaling(out, scaling)
    out.name = None
    out.attrs = {"xfusion:provenance": json.dumps(provenance)}
    return out


def choose_resampling(cube: xr.DataArray, grid: GeoBox, method: str = "average") -> str:
    """Pick the method for a whole cube of one kind, by dtype (see :func:`fuse`'s table).

    :func:`fuse` itself chooses per band, from each band's kind
    (:func:`xfusion.preprocess.resample.band_methods`).

    Examples
    --------
    >>> import numpy as np, xarray as xr, xfusion as xf
    >>> g10 = xf.grid((500000, 0, 500040, 40), "EPSG:32633", 10)
    >>> c = xf.grids.assign_grid(xr.DataArray(np.zeros((4, 4), "float32"), dims=("y", "x")), g10)
    >>> choose_resampling(c, xf.grid((500000, 0, 500040, 40), "EPSG:32633", 20))
    'average'
    >>> choose_resampling(c.astype("uint8"), xf.grid((500000, 0, 500040, 40), "EPSG:32633", 5))
    'nearest'
    """
    coarser = is_coarser(geobox_of(cube), grid)
    classes = cube.attrs.get("kind") == "classes" or cube.dtype.kind in "iub"
    if classes:
        return "mode" if coarser else "nearest"
    return method if coarser else "bilinear"


def mosaic_cubes(parts: Sequence[xr.DataArray], how: Mosaic = "first") -> xr.DataArray:
    """Combine cubes on one grid where they overlap: ``"first"`` valid value or ``"mean"``.

    With ``"mean"``, only continuous bands are averaged (kinds as in :mod:`xfusion.bands`):
    categorical bands take the first valid value and flag bands the bitwise OR of the valid
    values, so overlapping scenes neither invent classes nor lose flags.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> a = xr.DataArray(np.array([1.0, np.nan, 3.0], "float32"), dims="x")
    >>> b = xr.DataArray(np.array([5.0, 6.0, np.nan], "float32"), dims="x")
    >>> mosaic_cubes([a, b], "first").values
    array([1., 6., 3.], dtype=float32)
    >>> mosaic_cubes([a, b], "mean").values
    array([3., 6., 3.], dtype=float32)
    """
    parts = list(parts)
    if callable(how):
        return how(parts)
    first = parts[0]
    for other in parts[1:]:
        if other.sizes != first.sizes:
            raise InputError(
                "cubes of one source must have the same shape on the grid; "
                f"got {dict(first.sizes)} and {dict(other.sizes)}"
            )
    if how == "first":
        out = first
        for other in parts[1:]:
            out = out.fillna(other)
        return out
    if how == "mean":
        total = sum(p.fillna(0) for p in parts)
        count = sum(p.notnull().astype(np.int16) for p in parts)
        # dividing by a count of 1 where nothing is valid avoids 0/0 (those pixels become NaN)
        mean = (total / count.where(count > 0, 1)).where(count > 0).astype(first.dtype)
        kinds = band_kinds(first) if "band" in first.dims else {}
        if all(k == "continuous" for k in kinds.values()):
            return mean
        # averaging class labels or bit flags invents classes and loses flags
        firsts = mosaic_cubes(parts, "first")
        ored = _bitwise_or(parts).astype(first.dtype)
        kind = xr.DataArray(list(kinds.values()), dims="band")
        return mean.where(kind == "continuous", firsts.where(kind == "categorical", ored))
    raise InputError(f"unknown mosaic {how!r}; expected one of {MOSAIC} or a callable")


def _bitwise_or(parts: Sequence[xr.DataArray]) -> xr.DataArray:
    """Bitwise OR of the valid values of the cubes (NaN where none is valid), lazily."""
    ored = parts[0].fillna(0).astype(np.int64)
    for other in parts[1:]:
        ored = xr.apply_ufunc(np.bitwise_or, ored, other.fillna(0).astype(np.int64), dask="allowed")
    valid = sum(p.notnull().astype(np.int16) for p in parts) > 0
    return ored.where(valid)


def _expand_time(cube: xr.DataArray, times: np.ndarray) -> xr.DataArray:
    """``cube.expand_dims(time=times)``; a sparse grid-change result stays sparse."""
    if isinstance(cube.data, dask.array.Array) and data_blocks(cube.data) is not None:
        data = broadcast_leading(cube.data, len(times))
        coords = {**cube.coords, "time": times}
        return xr.DataArray(
            data, dims=("time", *cube.dims), coords=coords, attrs=cube.attrs, name=cube.name
        )
    return cube.expand_dims(time=times)


def _concat_bands(stacked: list[xr.DataArray]) -> xr.DataArray:
    """``xr.concat`` along ``band``, visiting only the chunks with data of sparse cubes.

    Onto a continental or global grid the resampled sources are sparse Dask arrays
    (:mod:`xfusion._graph`): they are brought to the chunks of the first cube and stacked with
    aliases for their chunks with data, so the graph grows with the data, not the canvas. The
    coordinates and attrs are those ``xr.concat`` gives (computed on a one-pixel corner).
    """
    lazy = all(isinstance(c.data, dask.array.Array) for c in stacked)
    if not lazy or all(data_blocks(c.data) is None for c in stacked):
        return xr.concat(stacked, dim="band", coords="minimal", compat="override", join="override")
    first = stacked[0]
    axis = first.dims.index("band")
    datas = []
    for cube in stacked:
        target = tuple(
            cube.data.chunks[d] if d == axis else first.data.chunks[d] for d in range(first.ndim)
        )
        datas.append(rechunk(cube.data, target))
    data = concatenate(datas, axis)
    corner = [c.isel(y=slice(0, 1), x=slice(0, 1)) for c in stacked]
    small = xr.concat(corner, dim="band", coords="minimal", compat="override", join="override")
    coords = {
        name: coord for name, coord in small.coords.items() if not {"y", "x"} & set(coord.dims)
    }
    coords.update(y=first["y"], x=first["x"])
    return xr.DataArray(data, dims=small.dims, coords=coords, attrs=small.attrs, name=small.name)


def _with_kinds(cube: xr.DataArray, override: Mapping[Any, str]) -> xr.DataArray:
    """``cube`` with a ``band_kind`` coordinate: the override, else as :func:`fuse` documents."""
    if KIND_COORD not in cube.coords:
        classes = cube.attrs.get("kind") == "classes" or cube.dtype.kind in "iub"
        inferred = band_kinds(cube)
        if classes:
            inferred = {b: "categorical" if k == "continuous" else k for b, k in inferred.items()}
        cube = set_band_kinds(cube, inferred)
    return set_band_kinds(cube, dict(override)) if override else cube


def _split_kinds(kinds: Any, cubes: Mapping[str, list[xr.DataArray]]) -> dict[str, dict[Any, str]]:
    """Per source, the kinds given by fused band name (``"s2:SCL"``) or by source name."""
    if kinds is None:
        return {}
    if not isinstance(kinds, Mapping):
        raise InputError(
            f"kinds must be a mapping of band ('source:band') or source name to kind; got "
            f"{type(kinds).__name__}"
        )
    out: dict[str, dict[Any, str]] = {}
    fused_names = {
        f"{name}:{b}": (name, b) for name, cs in cubes.items() for b in cs[0].band.values.tolist()
    }
    for key, kind in kinds.items():
        if key in cubes:
            for b in cubes[key][0].band.values.tolist():
                out.setdefault(key, {})[b] = kind
        elif key in fused_names:
            name, b = fused_names[key]
            out.setdefault(name, {})[b] = kind
        else:
            raise BandError(
                f"kinds names {key!r}, which is neither a source {list(cubes)} nor a band "
                f"{sorted(fused_names)}"
            )
    return out


def _check_resampling(resampling: Any, sources: Mapping[str, Any]) -> dict[str, str]:
    if resampling is None:
        return {}
    if isinstance(resampling, str):
        if resampling not in RESAMPLING:
            raise InputError(
                f"unknown resampling method {resampling!r}; expected one of {RESAMPLING}"
            )
        return {}
    if not isinstance(resampling, Mapping):
        raise InputError(
            f"resampling must be a method name or a mapping of source name to method; "
            f"got {type(resampling).__name__}"
        )
    unknown = [k for k in resampling if k not in sources]
    if unknown:
        raise InputError(
            f"resampling names sources {unknown} that are not in sources {list(sources)}"
        )
    for name, method in resampling.items():
        if method not in RESAMPLING:
            raise InputError(
                f"unknown resampling method {method!r} for source {name!r}; "
                f"expected one of {RESAMPLING}"
            )
    return dict(resampling)


def _as_cubes(name: Any, value: Any) -> list[xr.DataArray]:
    if not isinstance(name, str) or not name:
        raise InputError(f"source names must be non-empty strings; got {name!r}")
    cubes = [value] if isinstance(value, xr.DataArray) else value
    if (
        not isinstance(cubes, Sequence)
        or not cubes
        or not all(isinstance(c, xr.DataArray) for c in cubes)
    ):
        raise InputError(
            f"source {name!r} must be a DataArray or a non-empty list of DataArrays; "
            f"got {type(value).__name__}"
        )
    out = []
    for cube in cubes:
        if "band" not in cube.dims:
            cube = cube.expand_dims(band=[cube.name if cube.name is not None else "value"])
        check_unique_bands(cube, f"fuse: source {name!r}")
        check_unique_times(cube, f"fuse: source {name!r}")
        out.append(cube)
    bands = [list(map(str, c.band.values)) for c in out]
    if any(b != bands[0] for b in bands[1:]):
        raise BandError(f"cubes of source {name!r} must have the same bands; got {bands}")
    timed = ["time" in c.dims for c in out]
    if any(timed) and not (
        all(timed) and all(np.array_equal(c.time.values, out[0].time.values) for c in out[1:])
    ):
        raise InputError(
            f"cubes of source {name!r} must share the same time coordinates to be mosaicked; "
            "composite them first or pass them as separate sources"
        )
    return out


def _align_times(
    fused: dict[str, xr.DataArray], align: str | None, provenance: dict[str, dict[str, Any]]
) -> np.ndarray | None:
    timed = {n: c for n, c in fused.items() if "time" in c.dims}
    if not timed:
        return None
    ref_name, ref = next(iter(timed.items()))
    times = ref.time.values
    if align is None:
        for name, cube in timed.items():
            if not np.array_equal(cube.time.values, times):
                if np.array_equal(np.sort(cube.time.values), np.sort(times)):
                    unsorted = ref_name if _first_unsorted(times) else name
                    values = fused[unsorted].time.values
                    i = _first_unsorted(values)
                    raise InputError(
                        f"sources {ref_name!r} and {name!r} have the same times in another "
                        f"order: the time of {unsorted!r} is not increasing ({values[i]} comes "
                        f"after {values[i - 1]}); expected increasing times: sort it with "
                        "cube.sortby('time')"
                    )
                raise InputError(
                    f"sources have different time axes: {ref_name!r} has {times.size} times "
                    f"{_span(times)}, {name!r} has {cube.time.size} {_span(cube.time.values)}; "
                    "composite them first (xf.composite) or pass align='exact' (common times) "
                    "or align='nearest' (nearest time of each source)"
                )
    elif align == "exact":
        common = times
        for cube in timed.values():
            common = np.intersect1d(common, cube.time.values)
        if common.size == 0:
            raise EmptySelectionError(
                f"align='exact': the sources {list(timed)} have no time in common; "
                "use align='nearest' or composite them first"
            )
        times = common
        for name, cube in timed.items():
            fused[name] = cube.sel(time=times)
    else:
        for name, cube in timed.items():
            if not np.all(np.diff(cube.time.values) > np.timedelta64(0)):
                cube = cube.sortby("time")
            fused[name] = cube.sel(time=times, method="nearest").assign_coords(time=times)
    for name in fused:
        provenance[name]["time"] = (
            "broadcast" if name not in timed else "identical" if align is None else align
        )
    return times


def _first_unsorted(times: np.ndarray) -> int:
    """Index of the first time not later than its predecessor (0 when increasing)."""
    bad = np.flatnonzero(times[1:] <= times[:-1])
    return int(bad[0]) + 1 if bad.size else 0


def _span(times: np.ndarray) -> str:
    return f"({times.min()} .. {times.max()})" if times.size else "()"


def _crs_string(gbox: GeoBox) -> str:
    epsg = gbox.crs.epsg
    return f"EPSG:{epsg}" if epsg is not None else gbox.crs.to_wkt()
