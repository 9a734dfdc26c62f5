"""Open Earth Engine collections lazily through xee, on an exact grid.

The pipeline reads in three steps: build the server-side ``ee.ImageCollection`` (date, bounds and
property filters, band selection), read its metadata (one ``computeValue`` round trip made by
xee: size, band types, times), then hand xee a store whose requests are sized against Earth
Engine's 48 MB ``computePixels`` limit for the bands' real data type and retried with bounded
exponential backoff on 429/5xx. Pixels are only requested when the cube is computed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import ee
import numpy as np
import pandas as pd
import xarray as xr
from odc.geo.geobox import GeoBox
from xarray.backends import store as backends_store
from xarray.core import indexing as xr_indexing
from xarray.core import utils as xr_utils
from xee import ext as xee_ext

from xfusion.bands import set_band_scaling
from xfusion.errors import (
    BandError,
    EmptySelectionError,
    GridError,
    InputError,
    RequestTooLargeError,
    SourceError,
)
from xfusion.grids import as_geobox, assign_grid, to_xee
from xfusion.io._retry import Backoff, call_with_retry, redact, sanitized
from xfusion.validate import normalize_chunks

__all__ = ["MAX_GRID_SIDE", "REQUEST_BYTE_LIMIT", "Backoff", "open_ee"]

#: Earth Engine rejects ``computePixels`` answers larger than this (48 MiB).
REQUEST_BYTE_LIMIT = 48 * 2**20
#: Earth Engine rejects grids with more pixels than this along a side.
MAX_GRID_SIDE = 32_768
#: Smallest request tile (pixels per side) worth making; below it per-request overhead dominates.
MIN_TILE = 16
_DEFAULT_TILE = 512
#: xee's fill for masked pixels (turned into NaN); an int32 that no reflectance product uses.
_MASK_VALUE = int(np.iinfo(np.int32).max)

_FILTERS = {
    "lt": ee.Filter.lt,
    "lte": ee.Filter.lte,
    "gt": ee.Filter.gt,
    "gte": ee.Filter.gte,
    "eq": ee.Filter.eq,
    "neq": ee.Filter.neq,
    "in": ee.Filter.inList,
}


def open_ee(
    collection: str | ee.ImageCollection | ee.Image,
    *,
    grid: GeoBox | xr.DataArray,
    start: Any = None,
    end: Any = None,
    bands: str | Sequence[str] | None = None,
    filters: Mapping[str, tuple[str, Any]] | None = None,
    chunks: int | tuple[int, ...] | Mapping[str, int] | str | None = None,
    request_byte_limit: int = REQUEST_BYTE_LIMIT,
    retry: Backoff | None = None,
) -> xr.DataArray:
    """Open an Earth Engine collection or image as a lazy cube on ``grid``.

    Earth Engine must be initialised first (``ee.Authenticate()`` once, then
    ``ee.Initialize(project="my-cloud-project")``). Opening reads metadata only; pixels are
    requested with ``computePixels`` when the cube is computed, each request at most
    ``request_byte_limit`` bytes for the bands' real data type, transient failures (429 rate
    limits, 5xx, dropped connections) retried on the ``retry`` schedule, for the metadata request
    and every pixel request alike. Messages never quote tokens, keys or ``Authorization``
    headers from upstream errors (see :func:`xfusion.io._retry.redact`).

    Parameters
    ----------
    collection : str, ee.ImageCollection or ee.Image
        A collection id (``"COPERNICUS/S2_SR_HARMONIZED"``) or an already-built collection or
        image, for server-side pre-processing composed by the user.
    grid : GeoBox or cube
        The output grid (:func:`xfusion.grid`); requests use its exact CRS, transform and shape.
    start, end : str or datetime-like, optional
        Keep images with ``start <= system:time_start < end`` (UTC).
    bands : str or sequence of str, optional
        Bands to read, in this order (default: all bands of the first image).
    filters : mapping, optional
        Image property filters, ``{"CLOUDY_PIXEL_PERCENTAGE": ("lt", 20)}``; operators are
        ``lt``, ``lte``, ``gt``, ``gte``, ``eq``, ``neq`` and ``in`` (value a list).
    chunks : int, tuple, mapping or "auto", optional
        Dask chunks, in the grammar of :func:`xfusion.validate.normalize_chunks`: an int or
        ``(y, x)`` for the spatial chunk, a 4-tuple for ``(time, band, y, x)``, or a mapping by
        dim name (``time``, ``band``, ``y``, ``x``); -1 or None for the whole dim. By default
        (``"auto"`` or a dim left out) 512×512 pixels and as many images as fit Dask's
        ``array.chunk-size``.
        Requests are split further, inside each task, to respect ``request_byte_limit``.
    request_byte_limit : int
        Bytes per ``computePixels`` request, one mask byte per pixel included.
    retry : Backoff, optional
        Retry schedule for transient failures, per request (default ``Backoff()``: 5 retries,
        delays from 0.5 s doubling up to 30 s, 25 % jitter, no timeout). For example
        ``Backoff(max_retries=8, max_delay=60, timeout=300)`` retries each request up to 8 times
        and starts no retry later than 300 s after its first attempt. ``Backoff`` is
        importable from ``xfusion.io.ee``.

    Returns
    -------
    xarray.DataArray
        ``("time", "band", "y", "x")`` float32 (``("band", "y", "x")`` for an ``ee.Image``),
        NaN where Earth Engine masks pixels, pixel-centre coordinates of ``grid`` and its CRS on
        ``spatial_ref``. The values are the numbers Earth Engine stores (e.g. Landsat
        Collection-2 digital numbers): the ``band_scale``/``band_offset`` coordinates record
        ``1``/``0`` (nothing applied, see :mod:`xfusion.bands`), so apply the product's scaling
        with ``.xf.scale(...)``.

    Raises
    ------
    SourceError
        Earth Engine is not initialised, the collection does not exist, or the service fails:
        a non-transient error at once, a transient one once the retries are spent (or the
        ``retry.timeout`` would pass). The message names the request (collection, bands and,
        for pixels, the images and the row/column window of the grid) and the number of
        attempts. Raised when the cube is opened (metadata) or computed (pixels).
    EmptySelectionError
        The date range is empty or no image matches the filters and the grid's footprint.
    GridError
        The grid is rotated or wider/taller than 32,768 pixels.
    RequestTooLargeError
        Even the smallest request would exceed ``request_byte_limit``.
    BandError, InputError
        Unknown bands, malformed filters or chunks.

    Examples
    --------
    >>> import numpy as np, xfusion as xf
    >>> from xfusion.testing.ee import FakeImage, fake_earth_engine
    >>> g = xf.grid((0, 0, 40, 40), "EPSG:32633", 10)
    >>> img = FakeImage({"B4": np.ones((4, 4), "uint16")}, grid=g, time="2020-06-01")
    >>> with fake_earth_engine({"S2": [img]}):
    ...     cube = xf.open_ee("S2", grid=g, start="2020-01-01", end="2021-01-01")
    ...     print(cube.dims, cube.dtype, float(cube.sum()))
    ('time', 'band', 'y', 'x') float32 16.0
    """
    gbox = _check_grid(grid)
    backoff = retry if retry is not None else Backoff()
    if not isinstance(backoff, Backoff):
        raise InputError(
            "retry must be an xfusion.io.ee.Backoff, e.g. Backoff(max_retries=3, timeout=60); "
            f"got {type(retry).__name__}"
        )
    if not isinstance(request_byte_limit, int | np.integer) or request_byte_limit <= 0:
        raise InputError(
            f"request_byte_limit must be a positive integer; got {request_byte_limit!r}"
        )
    band_list = _check_bands(bands)
    user_chunks = normalize_chunks(chunks, ("time", "band", "y", "x"), "open_ee chunks")
    if not ee.data.is_initialized():
        raise SourceError(
            "Earth Engine is not initialised; run ee.Authenticate() once and "
            "ee.Initialize(project='your-cloud-project') before xf.open_ee"
        )

    is_image = isinstance(collection, ee.Image)
    description = _describe(collection)
    ee_collection = _build_collection(
        collection, gbox=gbox, start=start, end=end, bands=band_list, filters=filters
    )
    store_kwargs = {
        **to_xee(gbox),
        "chunks": user_chunks,
        "request_byte_limit": int(request_byte_limit),
        "backoff": backoff,
        "description": description,
        "bands": band_list,
    }
    with warnings.catch_warnings():
        # A single composite image has no acquisition time; xee warns and numbers it instead.
        warnings.filterwarnings("ignore", message="Unable to retrieve", category=UserWarning)
        ds = xr.open_dataset(
            ee_collection, engine=_EarthEngineBackend, chunks={}, store_kwargs=store_kwargs
        )
    names = [str(v) for v in ds.data_vars]
    cube = ds[names].to_dataarray(dim="band").transpose("time", "band", "y", "x")
    cube = cube.assign_coords(band=np.array(names, dtype=str))
    cube = assign_grid(cube.drop_vars(["y", "x"]), gbox)
    # Earth Engine serves the stored numbers (e.g. Landsat Collection-2 DN): nothing is rescaled,
    # and saying so lets `scale` and `index` tell raw numbers from physical values.
    cube = set_band_scaling(cube, dict.fromkeys(names, (1.0, 0.0)))
    cube.attrs = {"source": "earthengine", "collection": description}
    cube.name = None
    if "band" in user_chunks:
        cube = cube.chunk({"band": user_chunks["band"]})
    if is_image:
        cube = cube.isel(time=0, drop=True)
    return cube


# --------------------------------------------------------------------------------------------
# Validation and the server-side collection
# --------------------------------------------------------------------------------------------


def _check_grid(grid: Any) -> GeoBox:
    gbox = as_geobox(grid)
    a = gbox.affine
    if a.b != 0 or a.d != 0:
        raise GridError(
            f"Earth Engine requests need an axis-aligned grid; got affine {tuple(a)[:6]}"
        )
    if gbox.width > MAX_GRID_SIDE or gbox.height > MAX_GRID_SIDE:
        raise GridError(
            f"grid of {gbox.width}x{gbox.height} px (width x height) exceeds Earth Engine's limit "
            f"of {MAX_GRID_SIDE} px per side; use a coarser resolution or split the area"
        )
    return gbox


def _check_bands(bands: Any) -> list[str] | None:
    if bands is None:
        return None
    band_list = [bands] if isinstance(bands, str) else list(bands)
    if not band_list or not all(isinstance(b, str) for b in band_list):
        raise InputError(f"bands must be a band name or a non-empty list of names; got {bands!r}")
    duplicates = sorted({b for b in band_list if band_list.count(b) > 1})
    if duplicates:
        raise BandError(f"bands must be unique; {duplicates} repeated in {band_list}")
    return band_list


def _describe(collection: Any) -> str:
    if isinstance(collection, str):
        return collection
    func = getattr(collection, "func", None)
    args = getattr(collection, "args", None) or {}
    if func is not None and getattr(func, "getSignature", None) is not None:
        name = func.getSignature().get("name", "")
        if name in ("ImageCollection.load", "Image.load") and isinstance(args.get("id"), str):
            return args["id"]
    return f"the given {type(collection).__name__}"


def _millis(value: Any, what: str) -> int:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be a date such as '2020-01-31'; got {value!r}") from err
    if ts is pd.NaT:
        raise InputError(f"{what} must be a date such as '2020-01-31'; got {value!r}")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.value // 1_000_000)


def _property_filter(prop: Any, spec: Any) -> ee.Filter:
    if not isinstance(prop, str):
        raise InputError(f"filter keys must be property names; got {prop!r}")
    if not (isinstance(spec, tuple | list) and len(spec) == 2):
        raise InputError(
            f"filter for {prop!r} must be (operator, value), e.g. ('lt', 20); got {spec!r}"
        )
    op, value = spec
    if op not in _FILTERS:
        raise InputError(
            f"unknown filter operator {op!r} for property {prop!r}; "
            f"expected one of {list(_FILTERS)}"
        )
    if op == "in":
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise InputError(f"filter 'in' for {prop!r} needs a list of values; got {value!r}")
        value = list(value)
    return _FILTERS[op](prop, value)


def _build_collection(
    collection: Any,
    *,
    gbox: GeoBox,
    start: Any,
    end: Any,
    bands: list[str] | None,
    filters: Mapping[str, tuple[str, Any]] | None,
) -> ee.ImageCollection:
    if filters is not None and not isinstance(filters, Mapping):
        raise InputError(
            f"filters must be a mapping like {{'CLOUDY': ('lt', 20)}}; got {filters!r}"
        )
    prop_filters = [_property_filter(p, s) for p, s in (filters or {}).items()]
    t0 = _millis(start, "start") if start is not None else None
    t1 = _millis(end, "end") if end is not None else None
    if t0 is not None and t1 is not None and t0 >= t1:
        raise EmptySelectionError(
            f"empty date range: start {start!r} is not before end {end!r} (end is exclusive)"
        )

    if isinstance(collection, ee.Image):
        if prop_filters or t0 is not None or t1 is not None:
            raise InputError(
                "start, end and filters select images of a collection; got a single ee.Image "
                "(wrap it in ee.ImageCollection([...]) to filter it)"
            )
        image = collection.select(bands) if bands else collection
        return ee.ImageCollection([image])
    if isinstance(collection, str):
        if not collection:
            raise InputError("collection id must not be empty, e.g. 'COPERNICUS/S2_SR_HARMONIZED'")
        col = ee.ImageCollection(collection)
    elif isinstance(collection, ee.ImageCollection):
        col = collection
    else:
        raise InputError(
            "collection must be an Earth Engine id, an ee.ImageCollection or an ee.Image; "
            f"got {type(collection).__name__}"
        )

    if t0 is not None and t1 is not None:
        col = col.filterDate(t0, t1)
    elif t0 is not None:
        col = col.filter(ee.Filter.gte("system:time_start", t0))
    elif t1 is not None:
        col = col.filter(ee.Filter.lt("system:time_start", t1))
    col = col.filterBounds(_footprint(gbox))
    for flt in prop_filters:
        col = col.filter(flt)
    if bands:
        col = col.select(bands)
    return col


def _footprint(gbox: GeoBox) -> ee.Geometry:
    """Return the grid's extent as a planar polygon in EPSG:4326 (densified by odc-geo)."""
    geom = gbox.extent.to_crs("EPSG:4326").geom
    ring = [[float(x), float(y)] for x, y in geom.exterior.coords]
    return ee.Geometry.Polygon([ring], None, False)


# --------------------------------------------------------------------------------------------
# Request sizing
# --------------------------------------------------------------------------------------------


def _ee_dtype(data_type: Mapping[str, Any]) -> np.dtype:
    """Return the numpy dtype of an Earth Engine ``PixelType`` (integers from their value range)."""
    precision = data_type.get("precision", data_type.get("type"))
    if precision == "double":
        return np.dtype(np.float64)
    if precision == "float":
        return np.dtype(np.float32)
    lo, hi = data_type.get("min"), data_type.get("max")
    if lo is None or hi is None:
        return np.dtype(np.int64)
    return np.result_type(np.min_scalar_type(int(lo)), np.min_scalar_type(int(hi)))


def _request_itemsize(band_types: Sequence[Mapping[str, Any]], mask_value: float) -> int:
    """Bytes per pixel of one band in a request, after xee's ``unmask(mask_value)``."""
    fill = np.min_scalar_type(mask_value)
    return max(np.result_type(_ee_dtype(t), fill).itemsize for t in band_types)


def _dask_chunk_bytes() -> int:
    return int(dask.utils.parse_bytes(dask.config.get("array.chunk-size")))


def _plan_chunks(
    n_images: int,
    height: int,
    width: int,
    itemsize: int,
    *,
    chunks: Mapping[str, int],
    limit: int,
) -> tuple[dict[str, int], dict[str, int]]:
    """Dask chunks (by dim) and xee request chunks (``index``/``height``/``width``).

    A request holds one band of ``index`` images over ``height`` x ``width`` pixels and costs
    ``itemsize + 1`` bytes per pixel (Earth Engine adds a mask byte). Request tiles start at the
    Dask chunk and are halved (the longer side first) until a request fits ``limit``.
    """

    def full(dim: str, size: int, default: int) -> int:
        value = chunks.get(dim, default)
        return size if value == -1 else max(1, min(int(value), size))

    ch, cw = full("y", height, _DEFAULT_TILE), full("x", width, _DEFAULT_TILE)
    fit_time = max(1, _dask_chunk_bytes() // (ch * cw * 4))
    ct = full("time", n_images, min(n_images, fit_time))

    per_pixel = itemsize + 1
    min_h, min_w = min(MIN_TILE, ch), min(MIN_TILE, cw)
    if min_h * min_w * per_pixel > limit:
        raise RequestTooLargeError(
            f"the smallest Earth Engine request (1 image, {min_h}x{min_w} px, {per_pixel} bytes "
            f"per pixel = {min_h * min_w * per_pixel} bytes) exceeds the request limit of "
            f"{limit} bytes"
        )
    th, tw = ch, cw
    while th * tw * per_pixel > limit:
        if th >= tw and th > min_h:
            th = max(min_h, math.ceil(th / 2))
        else:
            tw = max(min_w, math.ceil(tw / 2))
    ti = max(1, min(ct, limit // (th * tw * per_pixel)))
    return {"time": ct, "y": ch, "x": cw}, {"index": ti, "height": th, "width": tw}


# --------------------------------------------------------------------------------------------
# The xee store: retries, error translation, request sizing
# --------------------------------------------------------------------------------------------


def _translate(err: Exception, description: str, bands: list[str] | None) -> Exception:
    message = redact(err)
    lowered = message.lower()
    if "did not match any bands" in lowered:
        return BandError(f"band(s) {bands} not all in {description!r}: {message}")
    if "not found" in lowered or "does not exist" in lowered:
        return SourceError(f"Earth Engine collection or image {description!r} not found: {message}")
    return SourceError(f"Earth Engine failed to read {description!r}: {message}")


class _RetryingPixels:
    """``computePixels`` with bounded backoff (xee's ``pixels_getter`` hook).

    ``request`` describes the request in messages: collection, band, images and pixel window.
    """

    def __init__(self, backoff: Backoff, request: str) -> None:
        self.backoff = backoff
        self.request = request

    def __getitem__(self, params: dict[str, Any]) -> np.ndarray:
        what = f"computePixels for {self.request}"
        try:
            return call_with_retry(
                ee.data.computePixels, params, backoff=self.backoff, what=what,
                catch=(ee.ee_exception.EEException, ConnectionError, TimeoutError),
            )  # fmt: skip
        except SourceError:
            raise
        except Exception as err:  # a non-transient answer: any failure of the service call
            failure = err
        # Raised outside the except block so that the unredacted error is not the context.
        raise SourceError(redact(f"{what} failed after 1 attempt: {failure}")) from sanitized(
            failure
        )


class _BackendArray(xee_ext.EarthEngineBackendArray):
    """xee's array for one band, naming each tile's request for messages."""

    def _make_tile(self, tile_index):
        tile_idx, (istart, iend, *bbox) = tile_index
        target_image = self._slice_collection(slice(istart, iend))
        request = self.store.describe_request(self.variable_name, istart, iend, bbox)
        return tile_idx, self.store.image_to_array(
            target_image, grid=self.store.project(tuple(bbox)), dtype=self.dtype, request=request
        )


class _EarthEngineStore(xee_ext.EarthEngineStore):
    """xee's store with retries on xee's own hooks and requests sized by the real dtype."""

    def __init__(
        self,
        image_collection: ee.ImageCollection,
        *,
        crs: str,
        crs_transform: tuple[float, ...],
        shape_2d: tuple[int, int],
        chunks: Mapping[str, int],
        request_byte_limit: int,
        backoff: Backoff,
        description: str,
        bands: list[str] | None,
    ) -> None:
        self.xf_backoff = backoff
        self.xf_description = description
        self.xf_bands = bands
        super().__init__(
            image_collection,
            crs=crs,
            crs_transform=tuple(crs_transform),
            shape_2d=tuple(shape_2d),
            request_byte_limit=request_byte_limit,
            mask_value=_MASK_VALUE,
            # Retries happen in _RetryingPixels, only for transient errors.
            getitem_kwargs={"max_retries": 0},
        )
        itemsize = _request_itemsize(
            [b["data_type"] for b in self._img_info["bands"]], self.mask_value
        )
        width, height = self.shape_2d
        dask_chunks, io_chunks = _plan_chunks(
            self.n_images, height, width, itemsize, chunks=chunks, limit=request_byte_limit
        )
        self.request_itemsize = itemsize
        self.chunks = io_chunks
        self.preferred_chunks = dask_chunks

    @xee_ext.functools.cached_property
    def get_info(self) -> dict[str, Any]:
        base = xee_ext.EarthEngineStore.get_info.func
        bands = f", bands {self.xf_bands}" if self.xf_bands else ""
        what = (
            f"computeValue for the metadata of {self.xf_description!r}{bands} "
            "(image count, properties, band types)"
        )
        try:
            info = call_with_retry(
                base, self, backoff=self.xf_backoff, what=what,
                catch=(ee.ee_exception.EEException, ConnectionError, TimeoutError),
            )  # fmt: skip
            failure = None
        except ee.ee_exception.EEException as err:
            failure = err
        if failure is not None:
            # Raised outside the except block so that the unredacted error is not the context.
            raise _translate(failure, self.xf_description, self.xf_bands) from sanitized(failure)
        if not info.get("size") or not info.get("first"):
            raise EmptySelectionError(
                f"no image of {self.xf_description!r} matches the date range, filters and the "
                "grid's footprint"
            )
        return info

    def open_store_variable(self, name: str) -> xr.Variable:
        variable = super().open_store_variable(name)
        data = xr_indexing.LazilyIndexedArray(_BackendArray(name, self))
        return xr.Variable(variable.dims, data, variable.attrs, variable.encoding)

    def describe_request(self, band: str, istart: int, iend: int, bbox: Sequence[int]) -> str:
        """Name one pixel request: collection, band, images and the grid's row/column window."""
        wmin, hmin, wmax, hmax = (int(v) for v in bbox)
        ids = [str(i) for i in (self.image_ids or [])[istart:iend]]
        if iend - istart == 1:
            images = f"image {istart}" + (f" ({ids[0]!r})" if ids else "")
        else:
            images = f"images {istart}-{iend - 1}" + (
                f" ({ids[0]!r} to {ids[-1]!r})" if ids else ""
            )
        return (
            f"{self.xf_description!r}, band {band!r}, {images} of {self.n_images}, "
            f"rows {hmin}:{hmax}, cols {wmin}:{wmax}"
        )

    def image_to_array(self, image, pixels_getter=None, dtype=np.float32, request=None, **kwargs):
        getter = _RetryingPixels(self.xf_backoff, request or repr(self.xf_description))
        return super().image_to_array(image, pixels_getter=getter, dtype=dtype, **kwargs)


class _EarthEngineBackend(xee_ext.EarthEngineBackendEntrypoint):
    """xarray backend building :class:`_EarthEngineStore`; xee does the tiling and stitching."""

    open_dataset_parameters = ("filename_or_obj", "drop_variables", "store_kwargs")

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: ee.ImageCollection,
        *,
        drop_variables: Any = None,
        store_kwargs: dict[str, Any],
    ) -> xr.Dataset:
        store = _EarthEngineStore(filename_or_obj, **store_kwargs)
        with xr_utils.close_on_error(store):
            return backends_store.StoreBackendEntrypoint().open_dataset(
                store, drop_variables=drop_variables
            )
