"""Resampling a cube onto another grid, lazily.

Two engines sit behind :func:`resample`:

* **aligned aggregation** — when the target grid has the same CRS, no rotation, a pixel size that
  is an integer multiple ``k`` of the source's and an origin on the source pixel lattice (the
  common "10 m → 1 km" case, and sub-windows of the source at ``k = 1``), ``average``, ``sum``,
  ``min``, ``max`` and ``mode`` run through a nan-aware numba kernel
  (:mod:`xfusion._kernels.aggregate`) on a tile-intersection graph: each output chunk reads the
  input chunks it overlaps without copying them, so input chunks need not be multiples of ``k``.
* **warping** — everything else (CRS changes, fractional factors, going finer, ``nearest``,
  ``bilinear``, ``cubic``) runs GDAL (``rasterio.warp.reproject``) per output chunk on a
  tile-intersection graph whose source windows are padded by the kernel's reach (so chunk edges
  equal the whole-array warp, which odc-geo's chunked ``xr_reproject`` does not guarantee for
  ``cubic``), with NaN declared as nodata on both sides so NaN is never averaged as 0.

Output chunks are chosen explicitly (see ``chunks`` in :func:`resample`) rather than inherited, so
small input tiles do not turn into tiny output chunks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping
from functools import partial
from typing import Any, TypeVar

import dask
import dask.array
import numpy as np
import rasterio.warp
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from xfusion._graph import (
    DataNode,
    SparseChunkLayer,
    Task,
    TaskRef,
    candidate_chunks,
    chunk_starts,
    no_gc,
    reproject_rois,
    without_legacy_layers,
)
from xfusion._kernels.aggregate import aggregate_blocks, aggregate_pieces
from xfusion.bands import KIND_COORD, band_kinds, set_band_kinds
from xfusion.errors import BandError, GridError, InputError
from xfusion.grids import GRID_TOLERANCE, as_geobox, geobox_of, same_grid
from xfusion.validate import (
    check_float_nodata,
    declared_nodata,
    normalize_chunks,
    require_bands,
)

__all__ = ["KIND_METHODS", "RESAMPLING", "band_methods", "is_aligned", "is_coarser", "resample"]

T_Xarray = TypeVar("T_Xarray", xr.DataArray, xr.Dataset)

# rasterio's in-memory warp datasets report a missing geotransform when several threads warp at
# once, although every call passes explicit transforms (results equal the single-threaded warp,
# which tests check); silence only that message from rasterio.warp.
warnings.filterwarnings(
    "ignore",
    message="Dataset has no geotransform, gcps, or rpcs",
    category=NotGeoreferencedWarning,
    module="rasterio.warp",
)

#: Resampling methods understood by :func:`resample`.
RESAMPLING = ("average", "sum", "mode", "nearest", "bilinear", "cubic", "min", "max", "bitwise_or")

#: Methods allowed for each band kind (:mod:`xfusion.bands`): averaging or interpolating class
#: labels invents classes, and averaging bit flags loses them.
KIND_METHODS: dict[str, tuple[str, ...]] = {
    "continuous": ("average", "sum", "mode", "nearest", "bilinear", "cubic", "min", "max"),
    "categorical": ("mode", "nearest"),
    "flags": ("bitwise_or", "nearest", "mode"),
}
# the method of each kind when none is given: (aggregating, otherwise)
_DEFAULT_METHODS = {"categorical": ("mode", "nearest"), "flags": ("bitwise_or", "nearest")}

_KERNEL_METHODS = ("average", "sum", "mode", "min", "max", "bitwise_or")
# methods that pick one of the input values (a declared integer fill value becomes NaN first)
_VALUE_KEEPING = ("nearest", "mode")
# output chunks along (y, x) as the user set them: None where chosen automatically
_OutputChunks = tuple[int | None, int | None] | None

# source pixels read beyond a chunk's footprint: the reach of each method's kernel
_PADDING = {
    "nearest": 1,
    "bilinear": 2,
    "cubic": 3,
    "average": 1,
    "sum": 1,
    "mode": 1,
    "min": 1,
    "max": 1,
    "bitwise_or": 1,
    "med": 1,
}
_MIN_CHUNK = 256
_MAX_CHUNK = 2048
# error threshold (source pixels) of GDAL's approximate coordinate transformer
_WARP_TOLERANCE = 0.125
# tolerance (in pixels) when deciding that an offset is a whole number of pixels: the one
# "same grid" tolerance of xfusion.grids
_TOL = GRID_TOLERANCE


def resample(
    da: T_Xarray,
    grid_or_like: Any,
    resampling: str | Mapping[Hashable, str] | None = None,
    *,
    kinds: Mapping[Hashable, str] | str | None = None,
    chunks: int | tuple[int, int] | Mapping[str, int] | str | None = None,
) -> T_Xarray:
    """Resample a cube onto another grid (lazy on chunked input), each band as its kind needs.

    Every band has a kind (:mod:`xfusion.bands`): ``continuous``, ``categorical`` or ``flags``,
    from the cube's ``band_kind`` coordinate (set by :func:`xfusion.open_stac` from STAC
    metadata), the names of the mask presets (``QA60``, ``QA_PIXEL``, ``BQA``: flags; ``SCL``:
    categorical; see :data:`xfusion.bands.NAMED_KINDS`) or ``kinds=``; unknown means continuous.
    By default (``resampling=None``) each band gets the method of its kind:

    =============== ================================ ==========================
    kind            aggregating (target coarser)     otherwise (finer, same)
    =============== ================================ ==========================
    continuous      ``average``                      ``average``
    categorical     ``mode``                         ``nearest``
    flags           ``bitwise_or`` (any fine pixel   ``nearest``
                    flagged flags the coarse one)
    =============== ================================ ==========================

    A cube without a ``band_kind`` coordinate whose dtype is integer or bool (or whose
    ``attrs["kind"]`` is ``"classes"``) gets the categorical defaults for its bands that would
    otherwise be continuous: integer cubes are mostly class labels (an explicit method is still
    allowed on them).

    A method asked for explicitly must suit the kind (:data:`KIND_METHODS`): averaging,
    summing or interpolating a categorical or flag band is refused. Onto an identical grid
    (:func:`xfusion.grids.same_grid`: within 1e-3 pixel) the result is an exact copy of the data,
    whatever the method, with the target grid's coordinates.

    Parameters
    ----------
    da : xarray.DataArray or xarray.Dataset
        Cube with spatial dims ``(y, x)`` (or ``(latitude, longitude)``) last (any leading dims,
        e.g. ``time``, ``band``) and a CRS on ``spatial_ref``; NaN is nodata. A Dataset is
        resampled variable by variable (variables without spatial dims pass through).
    grid_or_like : GeoBox or cube
        Target grid (from :func:`xfusion.grid`) or a cube whose grid to match.
    resampling : str, mapping of band name to str, or None
        ``None`` (default): the method of each band's kind (table above). A str is the method
        for every band; a mapping fixes the method of the bands it names (the others get their
        kind's default). Methods: ``average`` is area-weighted over the valid pixels; ``sum``
        adds the valid pixels (on aligned grids the total is conserved exactly); ``mode`` is
        the most frequent valid value (ties broken as GDAL does); ``bitwise_or`` ORs the valid
        pixels of a block (flags only); ``min``/``max``; going finer, ``nearest``, ``bilinear``
        or ``cubic``.
    kinds : mapping of band name to kind, or one kind, optional
        Override the kind of some bands (``"continuous"``, ``"categorical"``, ``"flags"``), e.g.
        ``{"label": "categorical"}``; for a Dataset, a variable without ``band`` is named by
        the variable name (in ``resampling`` too). The result carries the ``band_kind``
        coordinate whenever the input has one or ``kinds`` is given.
    chunks : int, (int, int), mapping or "auto", optional
        Output chunk size along ``(y, x)``, in the grammar of
        :func:`xfusion.validate.normalize_chunks` (an int for both sides, ``(y, x)``, a mapping
        ``{"y": ..., "x": ...}``; -1 or None for a whole side). By default (``"auto"`` or a side
        left out) the input chunk size scaled to the target resolution, raised to at least 256
        pixels (as a whole multiple where the scaled size is an integer), capped at 2048 pixels
        and so that one task reads at most about Dask's ``array.chunk-size`` of input.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        On the target grid: dims ``(..., y, x)``, ``y``/``x``/``spatial_ref`` coordinates of the
        grid, leading coordinates (``band_kind`` included) and attrs kept; float32 (float64
        stays float64; float16 and integers become float32, float16 because neither numba nor
        GDAL computes in it, integers so NaN can mark empty pixels;
        ``mode``/``nearest``/``min``/``max``/``bitwise_or`` keep the values). An integer cube
        that declares a nodata value (``_FillValue``/``nodata``) and whose bands all use
        ``mode``, ``nearest`` or ``bitwise_or`` has it turned into NaN first (and dropped from
        the attrs), so the fill value is neither a class nor a set of flags. Chunked in, chunked
        out; nothing is computed. An in-memory cube whose result would exceed Dask's
        ``array.chunk-size`` (128 MiB by default; e.g. any cube onto a global 0.001° grid)
        gives a lazy result too, instead of allocating it.

    Raises
    ------
    InputError
        Unknown ``resampling``, a cube without ``y``/``x`` dims, or (for every method but
        ``nearest`` and ``mode``) an integer continuous cube that declares a nodata value
        (``_FillValue``/``nodata`` attribute), which would be averaged in as data.
    BandError
        A method not allowed for a band's kind (the message names the band, its kind and the
        methods allowed), or ``resampling``/``kinds`` naming a band the cube does not have.
    GridError
        No usable grid (irregular ``x``/``y`` spacing included), a target CRS the cube's CRS
        cannot be transformed to, or a target grid that does not overlap the cube.

    Notes
    -----
    Agreement with GDAL (``rasterio.warp.reproject`` with ``src_nodata=dst_nodata=nan``), tested
    for every method:

    * aligned integer factors (numba kernel): ``average``/``sum`` within float32 rounding
      (rtol 1e-5), ``min``/``max``/``mode`` exactly (``mode`` breaks ties as GDAL does);
    * everything else is GDAL itself, per output chunk, with ``XSCALE=YSCALE=1`` so
      ``bilinear``/``cubic`` interpolate with a one-pixel radius whatever the scale change (as
      odc-geo does, GDAL #7750; use ``average`` to go coarser): equal to the whole-array warp.
      ``bitwise_or`` off an aligned grid (GDAL has no such method) warps one 0/1 plane per bit
      present with ``max``, so a target pixel holds every flag of the source pixels it covers.

    Chunked and eager input give the same result: exactly within one CRS (each chunk reads its
    source window padded by the kernel's reach, unlike a footprint-only tile intersection); across
    CRSs GDAL's approximate coordinate transformer (error below 0.125 px) depends on the chunk, so
    interpolated values differ slightly (below 1e-3 of the data range on smooth fields).

    Large grids: the graph has a task only for the output chunks the source reaches (its
    footprint padded by the kernel's reach); every other chunk is an alias of one shared
    all-NaN chunk per chunk shape (:class:`xfusion._graph.SparseChunkLayer`), so the graph is
    built in time proportional to the chunks with data, whatever the size of the canvas. A
    16 × 16 px cube onto a global 0.001° grid (360000 × 180000 px, ~990,000 chunks) has one
    task; its graph builds in well under a second. Operations applied afterwards chunk by
    chunk (arithmetic, ``where``) still run once per chunk when computed; write large
    results with :func:`xfusion.write_zarr`, where the all-NaN chunks are Zarr's fill value.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xfusion as xf
    >>> g10 = xf.grid((500000, 0, 500040, 40), "EPSG:32633", 10)
    >>> data = np.arange(16, dtype="float32").reshape(1, 4, 4)
    >>> cube = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": ["B04"]})
    >>> cube = xf.grids.assign_grid(cube, g10)
    >>> out = xf.resample(cube, xf.grid((500000, 0, 500040, 40), "EPSG:32633", 20))
    >>> out.values[0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)

    A bit-flag band keeps every flag of the block (a cirrus bit set in one of four pixels):

    >>> qa = np.array([[[21824, 21824], [21824, 54596]]], dtype="float32")
    >>> qa = xf.grids.assign_grid(xr.DataArray(qa, dims=("band", "y", "x"),
    ...                                        coords={"band": ["QA_PIXEL"]}),
    ...                           xf.grid((500000, 0, 500020, 20), "EPSG:32633", 10))
    >>> xf.resample(qa, xf.grid((500000, 0, 500020, 20), "EPSG:32633", 20)).values.ravel()
    array([54596.], dtype=float32)
    >>> flags_average = xf.resample(qa, qa, "average")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xfusion.errors.BandError: resampling 'average' is not allowed for band 'QA_PIXEL' of kind...
    """
    _check_method_arg(resampling)
    sizes = normalize_chunks(chunks, ("y", "x"), "resample chunks")
    if isinstance(da, xr.Dataset):
        dst = as_geobox(grid_or_like)
        chunks = _output_chunks(sizes, dst)
        _check_names_in_dataset(da, resampling, kinds)
        out_vars = {}
        for name, var in da.data_vars.items():
            if {"y", "x"} <= set(var.dims) or {"latitude", "longitude"} <= set(var.dims):
                out_vars[name] = _resample_da(
                    var,
                    dst,
                    _only_bands(resampling, var),
                    _only_bands(kinds, var),
                    chunks,
                )
            elif not set(var.dims) & {"y", "x", "latitude", "longitude"}:
                out_vars[name] = var
        return xr.Dataset(out_vars, attrs=da.attrs)
    if not isinstance(da, xr.DataArray):
        raise InputError(f"expected an xarray DataArray or Dataset; got {type(da).__name__}")
    dst = as_geobox(grid_or_like)
    return _resample_da(da, dst, resampling, kinds, _output_chunks(sizes, dst))


def band_methods(
    da: xr.DataArray,
    grid_or_like: Any,
    resampling: str | Mapping[Hashable, str] | None = None,
    *,
    kinds: Mapping[Hashable, str] | str | None = None,
    continuous: str = "average",
) -> dict[Hashable, str]:
    """Return the method :func:`resample` applies to each band, checked against the kinds.

    Parameters
    ----------
    da : xarray.DataArray
        Cube (band names are the keys; a cube without ``band`` has the key ``None``).
    grid_or_like : GeoBox or cube
        Target grid: whether it is coarser decides the categorical and flag defaults.
    resampling : str, mapping of band name to str, or None
        As in :func:`resample`.
    kinds : mapping or str, optional
        As in :func:`resample`.
    continuous : str
        Method of continuous bands that ``resampling`` leaves to their kind.

    Raises
    ------
    BandError
        A method not allowed for a band's kind, or a band name the cube does not have.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xfusion as xf
    >>> g = xf.grid((500000, 0, 500040, 40), "EPSG:32633", 10)
    >>> cube = xf.grids.assign_grid(xr.DataArray(np.zeros((3, 4, 4), "float32"),
    ...     dims=("band", "y", "x"), coords={"band": ["B04", "QA60", "label"]}), g)
    >>> band_methods(cube, xf.grid((500000, 0, 500040, 40), "EPSG:32633", 20),
    ...              kinds={"label": "categorical"})
    {'B04': 'average', 'QA60': 'bitwise_or', 'label': 'mode'}
    >>> band_methods(cube, xf.grid((500000, 0, 500040, 40), "EPSG:32633", 5), "bilinear",
    ...              kinds={"QA60": "continuous", "label": "continuous"})
    {'B04': 'bilinear', 'QA60': 'bilinear', 'label': 'bilinear'}
    """
    _check_method_arg(resampling)
    if continuous not in KIND_METHODS["continuous"]:
        raise InputError(
            f"unknown method {continuous!r} for continuous bands; expected one of "
            f"{KIND_METHODS['continuous']}"
        )
    if kinds is not None:
        da = set_band_kinds(da, kinds)
    dst = as_geobox(grid_or_like)
    return _methods(da, geobox_of(da), dst, resampling, continuous)


def is_coarser(src: GeoBox, dst: GeoBox) -> bool:
    """Whether ``dst``'s pixels are larger than ``src``'s (areas compared in ``dst``'s CRS).

    Raises
    ------
    GridError
        ``src``'s CRS cannot be transformed to ``dst``'s.
    """
    try:
        src_area = src.extent.to_crs(dst.crs).area / (src.shape[0] * src.shape[1])
    except Exception as err:  # pyproj/shapely raise several unrelated types
        raise GridError(
            f"cannot transform the cube's CRS {_crs_name(src)} to the grid's CRS "
            f"{_crs_name(dst)}: {err}"
        ) from err
    dst_area = abs(dst.affine.a * dst.affine.e - dst.affine.b * dst.affine.d)
    return math.isfinite(src_area) and dst_area > src_area * (1 + 1e-6)


def _check_method_arg(resampling: Any) -> None:
    if resampling is None:
        return
    if isinstance(resampling, Mapping):
        for band, method in resampling.items():
            if not isinstance(method, str) or method not in RESAMPLING:
                raise InputError(
                    f"unknown resampling method {method!r} for band {band!r}; expected one of "
                    f"{RESAMPLING}"
                )
        return
    if not isinstance(resampling, str) or resampling not in RESAMPLING:
        raise InputError(
            f"unknown resampling method {resampling!r}; expected one of {RESAMPLING}, a mapping "
            "of band name to method, or None (each band's kind decides)"
        )


def _band_names(da: xr.DataArray) -> list[Hashable]:
    return list(band_kinds(da))


def _check_names_in_dataset(ds: xr.Dataset, resampling: Any, kinds: Any) -> None:
    known: set[Hashable] = set()
    for name, var in ds.data_vars.items():
        known.update(_band_names(var) if "band" in var.dims else [name])
    for what, given in (("resampling", resampling), ("kinds", kinds)):
        if isinstance(given, Mapping):
            require_bands(sorted(map(str, known)), given, "any variable", by=what)


def _only_bands(given: Any, var: xr.DataArray) -> Any:
    if not isinstance(given, Mapping):
        return given
    if "band" not in var.dims:  # a variable without bands is named by the variable
        return {None: given[var.name]} if var.name in given else None
    names = set(_band_names(var))
    return {b: m for b, m in given.items() if b in names} or None


def _methods(
    da: xr.DataArray, src: GeoBox, dst: GeoBox, resampling: Any, continuous: str = "average"
) -> dict[Hashable, str]:
    kinds = band_kinds(da)
    if isinstance(resampling, Mapping):
        require_bands(list(kinds), resampling, by="resampling")
        asked: dict[Hashable, str | None] = {b: resampling.get(b) for b in kinds}
    else:
        asked = dict.fromkeys(kinds, resampling)
    # without recorded kinds, an integer (or attrs["kind"] == "classes") cube is taken for class
    # labels when choosing a default; an explicit method is not refused on that guess
    classes = KIND_COORD not in da.coords and (
        da.dtype.kind in "iub" or da.attrs.get("kind") == "classes"
    )
    coarser: bool | None = None
    out: dict[Hashable, str] = {}
    for band, kind in kinds.items():
        method = asked[band]
        if method is None:
            if kind == "continuous" and classes:
                kind = "categorical"
            if kind == "continuous":
                method = continuous
            else:
                if coarser is None:
                    coarser = is_coarser(src, dst)
                method = _DEFAULT_METHODS[kind][0 if coarser else 1]
        elif method not in KIND_METHODS[kind]:
            named = band if band is not None or da.name is None else da.name
            raise BandError(
                f"resampling {method!r} is not allowed for band {named!r} of kind {kind!r}; "
                f"allowed for {kind}: {list(KIND_METHODS[kind])} (or resampling=None for the "
                "kind's default; change a band's kind with kinds={...})"
            )
        out[band] = method
    return out


def _output_chunks(sizes: dict[str, int], dst: GeoBox) -> _OutputChunks:
    """Return the ``(y, x)`` output chunks set (-1: the whole side), None where automatic."""
    if not sizes:
        return None
    return tuple(
        None if dim not in sizes else (side if sizes[dim] == -1 else sizes[dim])
        for dim, side in zip(("y", "x"), dst.shape, strict=True)
    )


def _with_auto(chunks: _OutputChunks, auto: tuple[int, int]) -> tuple[int, int]:
    """Return the ``(y, x)`` output chunks, the automatic size along a side left unset."""
    if chunks is None:
        return auto
    return tuple(a if c is None else c for c, a in zip(chunks, auto, strict=True))


def _spatial_last(da: xr.DataArray) -> xr.DataArray:
    for ydim, xdim in (("y", "x"), ("latitude", "longitude")):
        if ydim in da.dims and xdim in da.dims:
            lead = [d for d in da.dims if d not in (ydim, xdim)]
            da = da.transpose(*lead, ydim, xdim)
            return da.rename({ydim: "y", xdim: "x"}) if ydim != "y" else da
    raise InputError(f"cube must have spatial dims ('y', 'x'); got dims {tuple(da.dims)}")


def _check_overlap(src: GeoBox, dst: GeoBox) -> None:
    try:
        footprint = src.extent.to_crs(dst.crs)
        bbox = footprint.boundingbox
    except Exception as err:  # pyproj/shapely raise several unrelated types
        raise GridError(
            f"cannot transform the cube's CRS {_crs_name(src)} to the grid's CRS {_crs_name(dst)}: "
            f"{err}"
        ) from err
    if footprint.is_empty or not all(math.isfinite(v) for v in bbox):
        raise GridError(
            f"cannot transform the cube's extent from {_crs_name(src)} to {_crs_name(dst)}: "
            "the cube lies outside the area of use of the grid's CRS"
        )
    if not footprint.intersects(dst.extent):
        raise GridError(
            f"target grid does not overlap the cube: grid bounds {tuple(dst.boundingbox)[:4]} "
            f"in {_crs_name(dst)}, cube bounds {tuple(bbox)[:4]} in the same CRS"
        )


def _crs_name(gbox: GeoBox) -> str:
    epsg = gbox.crs.epsg
    return f"EPSG:{epsg}" if epsg is not None else str(gbox.crs)


def _int_ratio(value: float) -> int | None:
    r = round(value)
    return int(r) if abs(value - r) <= _TOL else None


def is_aligned(src: GeoBox, dst: GeoBox) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Whether ``dst`` aggregates ``src`` over aligned integer blocks.

    Returns ``((ky, kx), (row, col))`` — the factors and the source pixel index of ``dst``'s
    top-left corner — or ``None`` when the grids are not aligned (different CRS, rotation,
    non-integer factor or an origin off the source pixel lattice).

    Examples
    --------
    >>> import xfusion as xf
    >>> src = xf.grid((500000, 0, 501000, 1000), "EPSG:32633", 10)
    >>> is_aligned(src, xf.grid((500100, 0, 501000, 900), "EPSG:32633", 30))
    ((3, 3), (10, 10))
    >>> is_aligned(src, xf.grid((500005, 0, 501000, 1000), "EPSG:32633", 30)) is None
    True
    """
    if src.crs != dst.crs:
        return None
    sa, da_ = src.affine, dst.affine
    if sa.b != 0 or sa.d != 0 or da_.b != 0 or da_.d != 0:
        return None
    kx, ky = round(da_.a / sa.a), round(da_.e / sa.e)
    if kx < 1 or ky < 1:
        return None
    # the factor's error accumulates over the target grid: its far edge must stay on the lattice
    if abs(da_.a / sa.a - kx) * dst.shape[1] > _TOL or abs(da_.e / sa.e - ky) * dst.shape[0] > _TOL:
        return None
    col, row = _int_ratio((da_.c - sa.c) / sa.a), _int_ratio((da_.f - sa.f) / sa.e)
    if col is None or row is None:
        return None
    return (ky, kx), (row, col)


def _one_chunk(data: np.ndarray) -> dask.array.Array:
    """Wrap ``data`` in a one-chunk Dask array held by a task-spec node.

    ``dask.array.from_array`` stores a one-chunk array as a legacy graph value, which makes Dask
    list every key of every layer when culling, a million for a global canvas.
    """
    name = "xf-array-" + tokenize(data)
    key = (name,) + (0,) * data.ndim
    graph = HighLevelGraph.from_collections(name, {key: DataNode(key, data)}, dependencies=())
    return dask.array.Array(graph, name, chunks=tuple((n,) for n in data.shape), dtype=data.dtype)


def _nbytes(data: Any, dst: GeoBox) -> int:
    """Bytes of ``data`` resampled onto ``dst``."""
    return math.prod(data.shape[:-2]) * dst.shape[0] * dst.shape[1] * np.dtype(data.dtype).itemsize


def _chunk_limit_elems() -> int:
    limit = dask.config.get("array.chunk-size", "128MiB")
    return int(dask.utils.parse_bytes(limit)) if isinstance(limit, str) else int(limit)


def _auto_chunk(inherited: float, size: int, cap: int) -> int:
    """Output chunk along one axis from the input chunk scaled to the output resolution."""
    base = max(1, math.ceil(inherited - _TOL))
    if base < _MIN_CHUNK:
        # a whole multiple keeps output chunk edges on input chunk edges when they line up
        base = base * math.ceil(_MIN_CHUNK / base)
    return max(1, min(base, _MAX_CHUNK, max(cap, math.ceil(inherited)), size))


def _lead_block_elems(data: Any) -> int:
    if isinstance(data, dask.array.Array):
        return max(1, math.prod(max(c) if c else 1 for c in data.chunks[:-2]))
    return max(1, math.prod(data.shape[:-2]))


def _resample_da(
    da: xr.DataArray,
    dst: GeoBox,
    resampling: Any,
    kinds: Any,
    chunks: _OutputChunks,
) -> xr.DataArray:
    da = _spatial_last(da)
    if kinds is not None:
        da = set_band_kinds(da, kinds)
    if da.dtype == np.float16:
        da = da.astype(np.float32)
    src = geobox_of(da)
    _check_overlap(src, dst)
    methods = _methods(da, src, dst, resampling)
    da = _mask_class_nodata(da, methods)
    for method in methods.values():
        if method not in _VALUE_KEEPING and method != "bitwise_or":
            check_float_nodata(da, f"resample(resampling={method!r})")
    if da.dtype.kind != "f":
        da = da.astype(np.float32)
    if same_grid(src, dst):
        # an identical grid is an exact copy: no kernel could improve on the data
        return _wrap(da, da.data, dst)
    groups: dict[str, list[int]] = {}
    for i, method in enumerate(methods.values()):
        groups.setdefault(method, []).append(i)
    if len(groups) == 1:
        (method,) = groups
        return _resample_one(da, src, dst, method, chunks)
    parts = [
        _resample_one(da.isel(band=idx), src, dst, method, chunks) for method, idx in groups.items()
    ]
    order = [i for idx in groups.values() for i in idx]
    out = xr.concat(parts, dim="band", coords="minimal", compat="override", join="override")
    if order != sorted(order):
        out = out.isel(band=np.argsort(order))
    return out


def _mask_class_nodata(da: xr.DataArray, methods: Mapping[Hashable, str]) -> xr.DataArray:
    """Turn an integer cube's declared nodata into NaN when every band keeps values (lazily).

    With ``mode``, ``nearest`` and ``bitwise_or`` the fill value would otherwise pass for a
    class, a value or a set of flags.
    """
    if da.dtype.kind not in "iub":
        return da
    found = declared_nodata(da)
    if found is None or any(m not in (*_VALUE_KEEPING, "bitwise_or") for m in methods.values()):
        return da
    value = found[1]
    attrs = {
        k: v for k, v in da.attrs.items() if k not in ("_FillValue", "nodata", "missing_value")
    }
    out = da.astype(np.float32).where(da != value)
    out.attrs = attrs
    out.encoding = {k: v for k, v in da.encoding.items() if k not in ("_FillValue",)}
    return out


def _resample_one(
    da: xr.DataArray,
    src: GeoBox,
    dst: GeoBox,
    method: str,
    chunks: _OutputChunks,
) -> xr.DataArray:
    data = da.data
    lazy = isinstance(data, dask.array.Array)
    if not lazy and _nbytes(data, dst) > _chunk_limit_elems():
        # an in-memory cube onto a grid too large to hold in one array (a continental or global
        # canvas): the result is a sparse Dask array instead of a MemoryError
        data = _one_chunk(data)
        da = da.copy(data=data)
        lazy = True
    aligned = is_aligned(src, dst)
    if aligned is not None and aligned[0] == (1, 1):
        # the same pixel lattice: a crop or pad, exact for every method
        method = "max"
    elif method not in _KERNEL_METHODS:
        aligned = None

    itemsize = np.dtype(da.dtype).itemsize
    lead_elems = _lead_block_elems(data)
    if aligned is not None:
        (ky, kx), offset = aligned
        if lazy:
            if chunks is None or None in chunks:
                # bound the *input* read by one task
                side = math.sqrt(_chunk_limit_elems() / itemsize / lead_elems)
                chunks = _with_auto(
                    chunks,
                    (
                        _auto_chunk(max(data.chunks[-2]) / ky, dst.shape[0], int(side // ky)),
                        _auto_chunk(max(data.chunks[-1]) / kx, dst.shape[1], int(side // kx)),
                    ),
                )
            out = _aggregate_dask(data, (ky, kx), offset, tuple(dst.shape), method, chunks)
        else:
            out = aggregate_blocks(
                data, (ky, kx), method, offset=offset, out_shape=tuple(dst.shape), dtype=da.dtype
            )
    else:
        out = _warp(da, src, dst, method, chunks, itemsize, lead_elems)
    return _wrap(da, out, dst)


def _wrap(da: xr.DataArray, data: Any, dst: GeoBox) -> xr.DataArray:
    lead_dims = da.dims[:-2]
    coords: dict[Hashable, Any] = {
        name: coord
        for name, coord in da.coords.items()
        if set(coord.dims) <= set(lead_dims) and name != "spatial_ref"
    }
    coords.update(xr_coords(dst, crs_coord_name="spatial_ref", always_yx=True))
    return xr.DataArray(
        data, dims=(*lead_dims, "y", "x"), coords=coords, attrs=dict(da.attrs), name=da.name
    )


def _warp(
    da: xr.DataArray,
    src: GeoBox,
    dst: GeoBox,
    method: str,
    chunks: _OutputChunks,
    itemsize: int,
    lead_elems: int,
) -> Any:
    data = da.data
    if not isinstance(data, dask.array.Array):
        return _warp_block(data, src, dst, method)
    if chunks is None or None in chunks:
        # input chunk size expressed in output pixels, via the mean pixel area in the target CRS
        # (units differ between CRSs, e.g. metres and degrees)
        src_px = src.extent.to_crs(dst.crs).area / (src.shape[0] * src.shape[1])
        scale = math.sqrt(src_px / abs(dst.affine.a * dst.affine.e))
        cap = int(math.sqrt(_chunk_limit_elems() / itemsize / lead_elems))
        chunks = _with_auto(
            chunks,
            (
                _auto_chunk(max(data.chunks[-2]) * scale, dst.shape[0], cap),
                _auto_chunk(max(data.chunks[-1]) * scale, dst.shape[1], cap),
            ),
        )
    return _warp_dask(data, src, dst, method, chunks)


def _warp_block(data: np.ndarray, src: GeoBox, dst: GeoBox, method: str) -> np.ndarray:
    """GDAL warp of every ``(y, x)`` plane of ``data`` from ``src`` onto ``dst``; NaN is nodata."""
    # GDAL fills the output with nodata itself (INIT_DEST), so it is not pre-filled here
    out = np.empty((*data.shape[:-2], *dst.shape), dtype=data.dtype)
    planes_in = data.reshape((-1, *data.shape[-2:]))
    planes_out = out.reshape((-1, *dst.shape))
    # one plane per call: with several bands GDAL shares validity between them
    for plane_in, plane_out in zip(planes_in, planes_out, strict=True):
        if method == "bitwise_or":
            _warp_bitwise_or(plane_in, plane_out, src, dst)
        else:
            _warp_plane(plane_in, plane_out, src, dst, method)
    return out


def _warp_bitwise_or(plane_in: np.ndarray, plane_out: np.ndarray, src: GeoBox, dst: GeoBox) -> None:
    """Bitwise OR over each target pixel's footprint: one 0/1 plane per bit present, ``max``.

    GDAL has no OR; the maximum of a bit's 0/1 plane over a footprint is that bit's OR. A
    validity plane (0 where valid) gives NaN where no valid source pixel is covered.
    """
    valid = ~np.isnan(plane_in)
    bits = plane_in[valid].astype(np.int64)
    present = int(np.bitwise_or.reduce(bits)) if bits.size else 0
    flat = np.where(valid, plane_in, 0).astype(np.int64)
    base = np.where(valid, np.float32(0), np.float32(np.nan)).astype(np.float32)
    acc = np.empty(plane_out.shape, dtype=np.float32)
    _warp_plane(base, acc, src, dst, "max")
    total = acc.astype(np.float64)
    bit = 0
    while present >> bit:
        if (present >> bit) & 1:
            plane = np.where(valid, ((flat >> bit) & 1).astype(np.float32), np.float32(np.nan))
            warped = np.empty(plane_out.shape, dtype=np.float32)
            _warp_plane(plane, warped, src, dst, "max")
            total += np.where(warped > 0, float(1 << bit), 0.0)
        bit += 1
    plane_out[...] = total


def _warp_plane(
    plane_in: np.ndarray, plane_out: np.ndarray, src: GeoBox, dst: GeoBox, method: str
) -> None:
    rasterio.warp.reproject(
        plane_in,
        plane_out,
        src_transform=src.affine,
        src_crs=str(src.crs),
        dst_transform=dst.affine,
        dst_crs=str(dst.crs),
        resampling=Resampling[method],
        src_nodata=np.nan,
        dst_nodata=np.nan,
        init_dest_nodata=True,
        # Dask runs one task per core; GDAL's own threads would only compete with them
        num_threads=1,
        # the approximate transformer's error threshold (pixels): GDAL's and odc-geo's
        tolerance=_WARP_TOLERANCE,
        # interpolate with a 1-pixel radius whatever the scale change (as odc-geo does, see
        # GDAL #7750): use "average" to go coarser
        XSCALE=1,
        YSCALE=1,
    )


def _warp_task(src, dst, method, roi, dst_roi, plan, *blocks):
    # the grids of the window and the chunk are sliced here rather than when building the graph
    # (GeoBox slicing is most of a graph's build time, and nothing next to a warp)
    (r0, r1, c0, c1), (y0, y1, x0, x1) = roi, dst_roi
    window = np.empty((*blocks[0].shape[:-2], r1 - r0, c1 - c0), dtype=blocks[0].dtype)
    for blk, (ys, xs, wy, wx) in zip(blocks, plan, strict=True):
        window[..., wy, wx] = blk[..., ys, xs]
    return _warp_block(window, src[r0:r1, c0:c1], dst[y0:y1, x0:x1], method)


def _overlaps(bounds: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Range ``[first, last)`` of the input chunks along one axis each ``[lo, hi)`` overlaps."""
    first = np.maximum(np.searchsorted(bounds, lo, side="right") - 1, 0)
    last = np.minimum(np.searchsorted(bounds, hi, side="left"), len(bounds) - 1)
    return first, last


def _pieces(bounds: list[int], first: int, last: int, lo: int, hi: int) -> list:
    """(input chunk, slice in it, slice in the window) for the chunks ``first..last-1``."""
    found = []
    for b in range(first, last):
        b0, b1 = bounds[b], bounds[b + 1]
        p0, p1 = max(lo, b0), min(hi, b1)
        if p1 > p0:
            found.append((b, slice(p0 - b0, p1 - b0), slice(p0 - lo, p1 - lo)))
    return found


def _out_chunks(size: int, chunk: int) -> tuple[int, ...]:
    return tuple(min(chunk, size - s) for s in range(0, size, chunk))


def _sparse_array(
    name: str,
    chunks: tuple[tuple[int, ...], ...],
    dtype: np.dtype,
    tasks: dict,
    data: dask.array.Array,
) -> dask.array.Array:
    """Dask array with ``tasks`` for the chunks data reach, a shared NaN chunk elsewhere."""
    layer = SparseChunkLayer(name, chunks, dtype, tasks)
    graph = without_legacy_layers(
        HighLevelGraph.from_collections(name, layer, dependencies=(data,))
    )
    return dask.array.Array(
        graph, name, chunks=chunks, dtype=dtype, meta=np.empty((0,) * len(chunks), dtype)
    )


def _warp_dask(
    data: dask.array.Array, src: GeoBox, dst: GeoBox, method: str, chunks: tuple[int, int]
) -> dask.array.Array:
    """Warp ``data`` (``(..., y, x)`` on ``src``) onto ``dst`` lazily, a GDAL method by name.

    The sparse graph of :func:`_warp_graph`; also what :func:`xfusion.open_raster` uses onto
    large grids.
    """
    with no_gc():
        return _warp_graph(data, src, dst, method, chunks)


def _warp_graph(
    data: dask.array.Array, src: GeoBox, dst: GeoBox, method: str, chunks: tuple[int, int]
) -> dask.array.Array:
    """Sparse tile-intersection graph: each output chunk data reach warps its padded window.

    Unlike a plain footprint intersection, the source window is padded by the interpolation
    kernel's reach, so chunked results equal the whole-array warp at chunk edges. Only the
    chunks the padded source footprint touches are visited (:func:`xfusion._graph.
    candidate_chunks`), their windows computed in one vectorised call
    (:func:`xfusion._graph.reproject_rois`, equal to odc-geo's ``compute_reproject_roi`` per
    chunk); every other chunk is the shared all-NaN chunk of :class:`xfusion._graph.
    SparseChunkLayer`.
    """
    pad = _PADDING[method]
    ybounds = chunk_starts(data.chunks[-2])
    xbounds = chunk_starts(data.chunks[-1])
    ychunks = _out_chunks(dst.shape[0], chunks[0])
    xchunks = _out_chunks(dst.shape[1], chunks[1])
    ystarts, xstarts = chunk_starts(ychunks), chunk_starts(xchunks)
    lead_chunks = data.chunks[:-2]
    dtype = data.dtype
    name = "xf-warp-" + tokenize(data, src, dst, method, chunks)
    src_name = data.name  # a Dask array's keys are (name, *block_index)

    found = candidate_chunks(src, dst, ystarts, xstarts, pad)
    if found is None:  # no trustworthy footprint: every chunk is a candidate
        grid_y, grid_x = np.meshgrid(
            np.arange(len(ychunks)), np.arange(len(xchunks)), indexing="ij"
        )
        found = (grid_y.ravel(), grid_x.ravel())
    blocks_y, blocks_x = found
    rois = reproject_rois(src, dst, ystarts, xstarts, blocks_y, blocks_x, pad)
    keep = (rois[:, 1] > rois[:, 0]) & (rois[:, 3] > rois[:, 2])
    blocks_y, blocks_x, rois = blocks_y[keep], blocks_x[keep], rois[keep]
    yfirst, ylast = _overlaps(ybounds, rois[:, 0], rois[:, 1])
    xfirst, xlast = _overlaps(xbounds, rois[:, 2], rois[:, 3])
    ylist, xlist = ybounds.tolist(), xbounds.tolist()
    tasks: dict[Any, Any] = {}
    lead_blocks = list(np.ndindex(*(len(c) for c in lead_chunks)))
    rows = zip(
        blocks_y.tolist(),
        blocks_x.tolist(),
        rois.tolist(),
        yfirst.tolist(),
        ylast.tolist(),
        xfirst.tolist(),
        xlast.tolist(),
        strict=True,
    )
    for by, bx, roi, fy, ly, fx, lx in rows:
        yparts = _pieces(ylist, fy, ly, roi[0], roi[1])
        xparts = _pieces(xlist, fx, lx, roi[2], roi[3])
        if not (yparts and xparts):
            continue
        y0, x0 = int(ystarts[by]), int(xstarts[bx])
        dst_roi = (y0, y0 + ychunks[by], x0, x0 + xchunks[bx])
        plan = tuple((ys, xs, wy, wx) for _, ys, wy in yparts for _, xs, wx in xparts)
        func = partial(_warp_task, src, dst, method, tuple(roi), dst_roi, plan)
        for lead_idx in lead_blocks:
            key = (name, *lead_idx, by, bx)
            deps = [
                TaskRef((src_name, *lead_idx, iy, ix)) for iy, _, _ in yparts for ix, _, _ in xparts
            ]
            tasks[key] = Task(key, func, *deps)
    return _sparse_array(name, (*lead_chunks, ychunks, xchunks), dtype, tasks, data)


def _aggregate_task(plan, out_shape, factor, method, dtype, *blocks):
    pieces = [
        (blk[..., ys, xs], row, col) for blk, (ys, xs, row, col) in zip(blocks, plan, strict=True)
    ]
    return aggregate_pieces(pieces, out_shape, factor, method, dtype)


def _axis_plan(
    src_chunks: tuple[int, ...], k: int, offset: int, out_size: int, out_chunk: int
) -> tuple[tuple[int, ...], list[list[tuple[int, slice, int]]]]:
    """For each output chunk along an axis: (input chunk index, slice in it, offset in block)."""
    bounds = np.cumsum((0, *src_chunks))
    n = int(bounds[-1])
    out_chunks = _out_chunks(out_size, out_chunk)
    plans = []
    start = 0
    for size in out_chunks:
        lo = offset + start * k  # source index of the output block's first pixel
        s0, s1 = max(lo, 0), min(lo + size * k, n)
        plan = []
        if s1 > s0:
            first = int(np.searchsorted(bounds, s0, side="right")) - 1
            for b in range(first, len(src_chunks)):
                b0, b1 = int(bounds[b]), int(bounds[b + 1])
                if b0 >= s1:
                    break
                p0, p1 = max(s0, b0), min(s1, b1)
                if p1 > p0:
                    plan.append((b, slice(p0 - b0, p1 - b0), p0 - lo))
        plans.append(plan)
        start += size
    return out_chunks, plans


def _aggregate_dask(
    data: dask.array.Array,
    factor: tuple[int, int],
    offset: tuple[int, int],
    out_yx: tuple[int, int],
    method: str,
    chunks: tuple[int, int],
) -> dask.array.Array:
    with no_gc():
        return _aggregate_graph(data, factor, offset, out_yx, method, chunks)


def _aggregate_graph(
    data: dask.array.Array,
    factor: tuple[int, int],
    offset: tuple[int, int],
    out_yx: tuple[int, int],
    method: str,
    chunks: tuple[int, int],
) -> dask.array.Array:
    """Sparse graph: a task for each output chunk whose blocks cover input pixels.

    The rows and columns of output chunks that input reaches are found per axis
    (:func:`_axis_plan`); every other chunk is the shared all-NaN chunk of
    :class:`xfusion._graph.SparseChunkLayer`.
    """
    ky, kx = factor
    dtype = data.dtype
    ychunks, yplans = _axis_plan(data.chunks[-2], ky, offset[0], out_yx[0], chunks[0])
    xchunks, xplans = _axis_plan(data.chunks[-1], kx, offset[1], out_yx[1], chunks[1])
    lead_chunks = data.chunks[:-2]
    name = "xf-aggregate-" + tokenize(data, factor, offset, out_yx, method, chunks)
    src_name = data.name  # a Dask array's keys are (name, *block_index)

    rows = [(by, plan) for by, plan in enumerate(yplans) if plan]
    cols = [(bx, plan) for bx, plan in enumerate(xplans) if plan]
    tasks: dict[Any, Any] = {}
    for lead_idx in np.ndindex(*(len(c) for c in lead_chunks)):
        lead_shape = tuple(c[i] for c, i in zip(lead_chunks, lead_idx, strict=True))
        for by, yplan in rows:
            for bx, xplan in cols:
                out_shape = (*lead_shape, ychunks[by], xchunks[bx])
                plan, deps = [], []
                for iy, ys, row in yplan:
                    for ix, xs, col in xplan:
                        plan.append((ys, xs, row, col))
                        deps.append(TaskRef((src_name, *lead_idx, iy, ix)))
                key = (name, *lead_idx, by, bx)
                func = partial(_aggregate_task, tuple(plan), out_shape, factor, method, dtype)
                tasks[key] = Task(key, func, *deps)
    return _sparse_array(name, (*lead_chunks, ychunks, xchunks), dtype, tasks, data)
