"""Open GeoTIFF/COG/NetCDF files lazily through rioxarray as a canonical cube.

Each file is opened chunked (GeoTIFF/COG through :func:`rioxarray.open_rasterio`, NetCDF through
:func:`xarray.open_dataset` with its CF grid mapping read by rioxarray), its nodata turned into
NaN and its scale/offset applied; the files are then stacked as bands or time steps and, where a
grid is given, warped onto it with odc-geo's Dask-native :func:`~odc.geo.xr.xr_reproject`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array
import dask.base
import numpy as np
import pandas as pd
import rasterio
import rioxarray
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_reproject
from xarray.backends import BackendArray
from xarray.core import indexing as xr_indexing

from xfusion.bands import (
    KIND_COORD,
    OFFSET_COORD,
    SCALE_COORD,
    band_kinds,
    set_band_kinds,
    set_band_scaling,
)
from xfusion.errors import (
    BandError,
    EmptySelectionError,
    GridError,
    InputError,
    SourceError,
)
from xfusion.grids import as_geobox, assign_grid, grid_mismatch, same_grid
from xfusion.io._hrefs import check_local_exists, local_path
from xfusion.io._retry import redact, sanitized
from xfusion.preprocess.resample import _warp_dask
from xfusion.validate import normalize_chunks

__all__ = ["open_raster"]

_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5")
_DEFAULT_CHUNKS = {"time": 1, "band": 1, "y": 1024, "x": 1024}
_CHUNK_DIMS = ("time", "band", "y", "x")
_RESAMPLINGS = ("nearest", "bilinear", "cubic", "average", "mode", "min", "max", "med", "sum")
# the warps that keep class labels and bit flags intact (odc-geo has no bitwise OR)
_VALUE_KEEPING = ("nearest", "mode")
# output chunks (at the file's chunk size) beyond which a warp onto the grid builds xfusion's
# sparse graph instead of odc-geo's one-task-per-chunk graph (kept for smaller grids, so their
# values stay those of odc-geo's xr_reproject)
_SPARSE_FROM_CHUNKS = 4096


def open_raster(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    grid: Any = None,
    band_names: Sequence[str] | None = None,
    chunks: int | tuple[int, int] | Mapping[str, int] | None = None,
    dim: str | None = None,
    times: Sequence[Any] | None = None,
    nodata: float | None = None,
    scale_offset: bool = True,
    resampling: str = "nearest",
    variables: Sequence[str] | None = None,
    kinds: Mapping[str, str] | str | None = None,
) -> xr.DataArray:
    """Open GeoTIFF/COG/NetCDF files as a lazy float32 cube.

    Nothing is read until the cube is computed (file headers are read to learn shapes and grids).

    Parameters
    ----------
    paths : path or sequence of paths
        GeoTIFF/COG files (any format GDAL reads) or NetCDF files (``.nc``); URLs are passed to
        GDAL as they are.
    grid : GeoBox or DataArray, optional
        Warp every file onto this grid (lazily, with odc-geo; projected or geographic, the cube's
        dims are ``y``/``x`` either way). Onto a grid of more than 4096 chunks (the file's chunk
        size) the warp builds :func:`xfusion.resample`'s sparse graph instead: tasks only for
        the chunks the file reaches, one shared all-NaN chunk for the others (within one CRS
        the values equal odc-geo's). A file already on it (within 1e-3 pixel, see
        :func:`xfusion.grids.same_grid`) is taken as it is. By default the files must all lie on
        one grid (within the same tolerance), which the cube keeps.
    band_names : sequence of str, optional
        Names for the bands, in order. By default a band is named by its GDAL description (or its
        NetCDF variable name); failing that, by its file's stem for single-band files and
        ``"<stem>_<n>"`` (1-based) for multi-band ones. With ``dim="time"`` the first file's names
        are used.
    chunks : int, tuple, mapping or "auto", optional
        Dask chunks, in the grammar of :func:`xfusion.validate.normalize_chunks`: an int or
        ``(y, x)`` for the spatial chunk, a 4-tuple for ``(time, band, y, x)``, or a mapping that
        may name ``time``, ``band``, ``y`` and ``x``; ``-1`` or None for a whole dim. Default
        (``"auto"`` or a dim left out) 1024 × 1024 pixels, one band and one file per chunk.
    dim : {"band", "time"}, optional
        How several files stack: ``"band"`` concatenates their bands, ``"time"`` makes each file
        a time step (all files then need the same bands). Default: ``"time"`` when ``times`` is
        given, otherwise ``"band"``.
    times : sequence of datetime-like, optional
        One time per file, for ``dim="time"``. NetCDF files that carry a ``time`` dimension bring
        their own times and need none.
    nodata : float, optional
        A raw value to treat as nodata in addition to the file's own nodata tag (e.g. ``0`` for
        Landsat Level-1 scenes, which declare none).
    scale_offset : bool, default True
        Apply the files' scale/offset (GDAL band scales/offsets, NetCDF ``scale_factor`` and
        ``add_offset``); ``False`` keeps raw values. The ``band_scale``/``band_offset``
        coordinates record what was applied (``1``/``0`` where the file declares no scaling or
        ``scale_offset=False``), so :func:`xfusion.scale` refuses to scale a band twice.
    resampling : str, default "nearest"
        Resampling for the warp onto ``grid`` (nearest, bilinear, cubic, average, mode, min, max,
        med, sum).
    variables : sequence of str, optional
        NetCDF variables to read (default: every variable with ``y`` and ``x`` dimensions).
    kinds : mapping of band name to kind, or one kind, optional
        Declare band kinds (``"continuous"``, ``"categorical"``, ``"flags"``; see
        :mod:`xfusion.bands`), recorded as the ``band_kind`` coordinate so that
        :func:`xfusion.resample` and :func:`xfusion.fuse` treat them accordingly. With
        ``grid``, ``resampling`` must suit every band's kind (``nearest`` or ``mode`` for
        categorical and flag bands, which include the mask presets' band names such as
        ``QA_PIXEL``).

    Returns
    -------
    xarray.DataArray
        Dims ``("band", "y", "x")``, or ``("time", "band", "y", "x")`` when stacked by time;
        float32 with NaN for nodata; pixel-centre ``x``/``y`` and the CRS on ``spatial_ref``.

    Raises
    ------
    MissingFileError
        A local path does not exist.
    SourceError
        A file cannot be opened or has no CRS.
    GridError
        The files lie on different grids and no grid is given, or the grid does not overlap a file.
    BandError
        ``band_names`` does not match the number of bands, or names repeat; ``kinds`` names an
        unknown band; ``resampling`` (with ``grid``) does not suit a band's kind.
    EmptySelectionError
        No paths.

    Examples
    --------
    >>> import numpy as np, rasterio, tempfile, os
    >>> from affine import Affine
    >>> path = os.path.join(tempfile.mkdtemp(), "dem.tif")
    >>> with rasterio.open(path, "w", driver="GTiff", width=4, height=3, count=1, dtype="int16",
    ...                    crs="EPSG:32633", transform=Affine(30, 0, 500000, 0, -30, 4000090),
    ...                    nodata=-1) as dst:
    ...     dst.write(np.array([[[-1, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]], "int16"))
    >>> cube = open_raster(path)
    >>> cube.dims, cube.band.values.tolist()
    (('band', 'y', 'x'), ['dem'])
    >>> cube.isel(band=0, y=0).values
    array([nan,  1.,  2.,  3.], dtype=float32)
    """
    sizes = _chunk_sizes(chunks)
    files = _as_paths(paths)
    if dim is None:
        dim = "time" if times is not None else "band"
    if dim not in ("band", "time"):
        raise InputError(f"dim must be 'band' or 'time'; got {dim!r}")
    if resampling not in _RESAMPLINGS:
        raise InputError(f"unknown resampling {resampling!r}; expected one of {list(_RESAMPLINGS)}")

    opened = [
        _open_one(f, sizes, nodata=nodata, scale_offset=scale_offset, variables=variables)
        for f in files
    ]
    if dim == "time":
        opened = _with_times(opened, files, times)
    elif times is not None:
        raise InputError("times= is only used with dim='time'")

    target = as_geobox(grid) if grid is not None else _common_grid(opened, files)
    placed = [
        _place(da, gbox, target, f, resampling) for (da, gbox), f in zip(opened, files, strict=True)
    ]
    placed = _name_bands(placed, files, band_names, dim)

    if len(placed) == 1:
        cube = placed[0]
    else:
        try:
            cube = xr.concat(placed, dim=dim, join="exact", coords="minimal", compat="override")
        except ValueError as err:
            raise InputError(f"cannot stack the files along {dim!r}: {err}") from err
    if dim == "time" and sizes.get("time") != 1:
        cube = cube.chunk(time=sizes["time"])
    order = ("time", "band", "y", "x") if "time" in cube.dims else ("band", "y", "x")
    cube = assign_grid(cube.transpose(*order), target)
    cube.attrs = {"source": "raster"}
    if kinds is not None:
        cube = set_band_kinds(cube, kinds)
    if grid is not None:
        for band, kind in band_kinds(cube).items():
            allowed = list(_VALUE_KEEPING)
            if kind != "continuous" and resampling not in allowed:
                raise BandError(
                    f"resampling {resampling!r} is not allowed for band {band!r} of kind "
                    f"{kind!r}; allowed for {kind}: {allowed}"
                )
    return cube.astype("float32", copy=False).rename(None)


# --- files -----------------------------------------------------------------------------------


def _as_paths(paths: Any) -> list[str]:
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    try:
        files = [os.fspath(p) for p in paths]
    except TypeError as err:
        raise InputError(f"paths must be a path or a sequence of paths; got {paths!r}") from err
    if not files:
        raise EmptySelectionError("no files to open: paths is empty")
    for f in files:
        check_local_exists(f, "raster")
    return files


def _chunk_sizes(chunks: Any) -> dict[str, int]:
    return {**_DEFAULT_CHUNKS, **normalize_chunks(chunks, _CHUNK_DIMS, "open_raster chunks")}


def _stem(path: str) -> str:
    local = local_path(path)
    return (local if local is not None else Path(path.split("?")[0])).stem


def _open_one(
    path: str,
    sizes: dict[str, int],
    *,
    nodata: float | None,
    scale_offset: bool,
    variables: Sequence[str] | None,
) -> tuple[xr.DataArray, GeoBox]:
    """One file as a float32 ``(band, y, x)`` or ``(time, band, y, x)`` array and its grid."""
    if path.lower().endswith(_NETCDF_SUFFIXES):
        da = _open_netcdf(path, sizes, nodata=nodata, scale_offset=scale_offset, names=variables)
    else:
        da = _open_gdal(path, sizes, nodata=nodata, scale_offset=scale_offset)
    gbox = da.odc.geobox
    if gbox is None or gbox.crs is None:
        raise SourceError(
            redact(
                f"file {path!r} has no CRS or georeferencing; expected a georeferenced raster "
                "(write one with rio.write_crs, or declare it with rioxarray before opening)"
            )
        )
    return da, gbox


def _open_gdal(path: str, sizes: dict[str, int], *, nodata, scale_offset) -> xr.DataArray:
    failure = None
    try:
        with warnings.catch_warnings():
            # Per-band scales/offsets are read from the 'scales'/'offsets' attributes below.
            warnings.filterwarnings("ignore", "(Scales|Offsets) differ across bands")
            # a file without georeferencing is refused below with a SourceError
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            # Not chunked here: the reads are wrapped first, so that a failed one names the file.
            da = rioxarray.open_rasterio(path, cache=False, masked=True, mask_and_scale=False)
    except (rasterio.errors.RasterioError, OSError, ValueError) as err:
        failure = err
    if failure is not None:
        raise SourceError(redact(f"cannot open raster {path!r}: {failure}")) from sanitized(failure)
    if isinstance(da, list | xr.Dataset):
        raise SourceError(
            redact(
                f"file {path!r} holds several subdatasets; open one of them "
                "(e.g. 'NETCDF:file:var')"
            )
        )
    da = _chunk_naming_read_errors(da, path, sizes)
    count = da.sizes["band"]
    descriptions = da.attrs.get("long_name")
    if isinstance(descriptions, str):
        descriptions = (descriptions,)
    if descriptions and len(descriptions) == count and all(descriptions):
        names = [str(d) for d in descriptions]
    elif count == 1:
        names = [_stem(path)]
    else:
        names = [f"{_stem(path)}_{n}" for n in range(1, count + 1)]
    scale = _per_band(da.attrs.get("scales", da.attrs.get("scale_factor", 1.0)), count)
    offset = _per_band(da.attrs.get("offsets", da.attrs.get("add_offset", 0.0)), count)
    da = da.astype("float32", copy=False)
    da = _mask_and_scale(da, nodata, scale, offset, scale_offset)
    da = da.assign_coords(band=names)
    return _record_scaling(da, names, scale, offset, scale_offset)


class _ReadsNamingFile(BackendArray):
    """rioxarray's lazily read array, raising :class:`SourceError` naming the file on failure.

    A file whose header is intact but whose data are not (a truncated download) opens fine and
    fails when read; rasterio's error then often names neither the file nor the block.
    """

    def __init__(self, array: BackendArray, path: str) -> None:
        self.array = array
        self.path = path
        self.shape = array.shape
        self.dtype = array.dtype

    def __getitem__(self, key):
        try:
            return self.array[key]
        except (rasterio.errors.RasterioError, OSError) as err:
            failure = err
        cause = f" ({failure.__cause__})" if failure.__cause__ is not None else ""
        message = f"cannot read raster {self.path!r}: {type(failure).__name__}: {failure}{cause}"
        raise SourceError(redact(message)) from sanitized(failure)


def _chunk_naming_read_errors(da: xr.DataArray, path: str, sizes: dict[str, int]) -> xr.DataArray:
    # rioxarray's layers: CopyOnWriteArray(LazilyIndexedArray(RasterioArrayWrapper)).
    backend = da.variable._data.array.array
    data = xr_indexing.LazilyIndexedArray(_ReadsNamingFile(backend, path))
    try:
        mtime = os.path.getmtime(path)
    except OSError:  # a URL
        mtime = None
    chunks = {"band": sizes["band"], "y": sizes["y"], "x": sizes["x"]}
    # Named like rioxarray's own graph: equal files and chunks give equal Dask keys.
    token = dask.base.tokenize(path, mtime, chunks)
    return da.copy(deep=False, data=data).chunk(
        chunks, name_prefix=f"open_rasterio-{token}", token=token
    )


def _open_netcdf(path: str, sizes: dict[str, int], *, nodata, scale_offset, names) -> xr.DataArray:
    failure = None
    try:
        ds = xr.open_dataset(path, chunks={}, mask_and_scale=False, decode_coords="all")
    except (OSError, ValueError) as err:
        failure = err
    if failure is not None:
        raise SourceError(redact(f"cannot open NetCDF {path!r}: {failure}")) from sanitized(failure)
    spatial = [n for n, v in ds.data_vars.items() if {"y", "x"} <= set(v.dims)]
    if names is None:
        names = spatial
    missing = [n for n in names if n not in spatial]
    if missing:
        raise BandError(
            f"variable {missing[0]!r} not in NetCDF {path!r} (with y/x dims); "
            f"variables are {spatial}"
        )
    if not names:
        raise SourceError(f"NetCDF {path!r} has no variable with 'y' and 'x' dimensions")
    crs = ds.rio.crs
    bands = []
    pairs: list[tuple[float, float]] = []
    for name in names:
        var = ds[name]
        extra = set(var.dims) - {"time", "y", "x"}
        if extra:
            raise SourceError(
                f"NetCDF variable {name!r} of {path!r} has dims {var.dims}; "
                "expected (y, x) or (time, y, x)"
            )
        raw_fill = [var.attrs.get(k, var.encoding.get(k)) for k in ("_FillValue", "missing_value")]
        scale = float(var.attrs.get("scale_factor", 1.0))
        offset = float(var.attrs.get("add_offset", 0.0))
        var = var.astype("float32", copy=False)
        for fill in raw_fill:
            if fill is not None:
                var = var.where(var != np.float32(fill))
        bands.append(_mask_and_scale(var, nodata, [scale], [offset], scale_offset))
        pairs.append((scale, offset))
    da = xr.concat(bands, dim=pd.Index(list(names), name="band"), coords="minimal")
    da = _record_scaling(
        da, list(names), [p[0] for p in pairs], [p[1] for p in pairs], scale_offset
    )
    order = ("time", "band", "y", "x") if "time" in da.dims else ("band", "y", "x")
    da = da.transpose(*order)
    chunking = {d: sizes[d] for d in order}
    da = da.chunk(chunking)
    if crs is None:
        raise SourceError(
            f"NetCDF {path!r} has no CRS; expected a CF grid_mapping variable (rio.write_crs)"
        )
    return da.rio.write_crs(crs)


def _per_band(value: Any, count: int) -> list[float]:
    values = [float(v) for v in value] if isinstance(value, tuple | list) else [float(value)]
    return values * count if len(values) == 1 else values


def _record_scaling(
    da: xr.DataArray, names: list, scale: list[float], offset: list[float], applied: bool
) -> xr.DataArray:
    """Record in ``band_scale``/``band_offset`` the scaling applied: the file's, or none."""
    pairs = [
        (float(s), float(o)) if applied else (1.0, 0.0) for s, o in zip(scale, offset, strict=True)
    ]
    return set_band_scaling(da, dict(zip(names, pairs, strict=True)))


def _mask_and_scale(
    da: xr.DataArray, nodata, scale: list[float], offset: list[float], apply: bool
) -> xr.DataArray:
    if nodata is not None:
        da = da.where(da != np.float32(nodata))
    if apply and any(s != 1 for s in scale) | any(o != 0 for o in offset):
        if "band" in da.dims:
            da = da * xr.DataArray(np.float32(scale), dims="band") + xr.DataArray(
                np.float32(offset), dims="band"
            )
        else:
            da = da * np.float32(scale[0]) + np.float32(offset[0])
    return da


# --- stacking --------------------------------------------------------------------------------


def _with_times(opened, files, times):
    has_time = ["time" in da.dims for da, _ in opened]
    if all(has_time):
        if times is not None:
            raise InputError("the files carry their own 'time' dimension; do not pass times=")
        return opened
    if any(has_time):
        raise InputError("some files have a 'time' dimension and others not; open them separately")
    if times is None:
        raise InputError(f"dim='time' needs times=[...], one per file ({len(files)} files)")
    stamps = pd.to_datetime(list(times))
    if len(stamps) != len(files):
        raise InputError(f"times has {len(stamps)} entries but there are {len(files)} files")
    return [
        (da.expand_dims(time=[stamp]), gbox)
        for (da, gbox), stamp in zip(opened, stamps.values, strict=True)
    ]


def _common_grid(opened, files) -> GeoBox:
    first = opened[0][1]
    for (_, gbox), f in zip(opened[1:], files[1:], strict=True):
        why = grid_mismatch(first, gbox)
        if why is not None:
            raise GridError(
                redact(
                    f"files lie on different grids ({files[0]!r}: {_describe(first)}; "
                    f"{f!r}: {_describe(gbox)}: {why}); pass grid=xf.grid(...) to warp them "
                    "onto one"
                )
            )
    return first


def _describe(gbox: GeoBox) -> str:
    a = gbox.affine
    crs = f"EPSG:{gbox.crs.epsg}" if gbox.crs.epsg is not None else "a custom CRS"
    return f"{crs} {tuple(gbox.shape)} px of {a.a:g} x {-a.e:g} at ({a.c:g}, {a.f:g})"


def _place(da: xr.DataArray, gbox: GeoBox, target: GeoBox, path: str, resampling: str):
    """``da`` on ``target``: as it is when on the same grid (within 1e-3 px), else warped lazily.

    The result has ``y``/``x`` dims whatever the CRS (odc-geo names them ``latitude``/``longitude``
    on a geographic grid); its coordinates are set from ``target`` afterwards.
    """
    if same_grid(gbox, target):
        return _bare(da)
    footprint = gbox.extent.to_crs(target.crs)
    if not footprint.intersects(target.extent):
        bb = target.boundingbox
        raise GridError(
            redact(
                f"the grid {tuple(round(v, 3) for v in bb)} in {target.crs} does not overlap "
                f"file {path!r}"
            )
        )
    chunks = (max(da.chunks[-2]), max(da.chunks[-1])) if da.chunks else (1024, 1024)
    n_chunks = -(-target.shape[0] // chunks[0]) * -(-target.shape[1] // chunks[1])
    if n_chunks > _SPARSE_FROM_CHUNKS:
        # a large canvas (continental, global): xfusion's sparse graph, tasks only for the
        # chunks the file reaches (odc-geo builds one task per chunk, ~250,000 at 0.001 deg)
        data = da.data if isinstance(da.data, dask.array.Array) else dask.array.from_array(da.data)
        out = _warp_dask(data, gbox, target, resampling, chunks)
        lead = {n: c for n, c in da.coords.items() if c.dims and set(c.dims) <= set(da.dims[:-2])}
        return _bare(xr.DataArray(out, dims=(*da.dims[:-2], "y", "x"), coords=lead))
    warped = xr_reproject(da, target, resampling=resampling, dst_nodata=np.nan)
    if "latitude" in warped.dims:
        warped = warped.rename({"latitude": "y", "longitude": "x"})
    return _bare(warped)


def _bare(da: xr.DataArray) -> xr.DataArray:
    keep = {d for d in ("time", "band") if d in da.dims} | {
        c for c in (KIND_COORD, SCALE_COORD, OFFSET_COORD) if c in da.coords
    }
    return da.drop_vars([c for c in da.coords if c not in keep]).astype("float32", copy=False)


def _name_bands(arrays, files, band_names, dim):
    if dim == "time":
        names = list(arrays[0].band.values)
        counts = {a.sizes["band"] for a in arrays}
        if len(counts) != 1:
            raise BandError(
                "dim='time' needs the same number of bands in every file; "
                f"got {[a.sizes['band'] for a in arrays]}"
            )
        total = counts.pop()
    else:
        names = [n for a in arrays for n in a.band.values.tolist()]
        total = len(names)
    if band_names is not None:
        if isinstance(band_names, str):
            band_names = [band_names]
        band_names = [str(n) for n in band_names]
        if len(band_names) != total:
            raise BandError(
                f"band_names has {len(band_names)} names but the files hold {total} bands "
                f"({[str(n) for n in names]})"
            )
        names = band_names
    duplicated = sorted({str(n) for n in names if list(names).count(n) > 1})
    if duplicated:
        raise BandError(f"band names must be unique; {duplicated} repeat (pass band_names=[...])")
    out, start = [], 0
    for a in arrays:
        count = a.sizes["band"]
        if dim == "time":
            out.append(a.assign_coords(band=[str(n) for n in names]))
        else:
            out.append(a.assign_coords(band=[str(n) for n in names[start : start + count]]))
            start += count
    return out
