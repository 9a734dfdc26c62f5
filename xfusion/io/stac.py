"""Open STAC items lazily as a canonical cube through stackstac.

The pipeline reads in three steps, like stackstac's own: metadata only (collect the items, resolve
hrefs, pick the assets and the grid, check that everything exists and overlaps), then the graph
(:func:`stackstac.stack` on the grid's exact bounds), then the cube (nodata and scale/offset as
lazy arithmetic, clean coordinates, the grid's own ``x``/``y``/``spatial_ref``).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pystac
import rasterio
import stackstac
import xarray as xr
from affine import Affine
from odc.geo import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import box
from stackstac.rio_reader import AutoParallelRioReader

from xfusion._graph import candidate_chunks, chunk_starts, keep_blocks
from xfusion.bands import (
    BAND_KINDS,
    KIND_COORD,
    named_kind,
    set_band_scaling,
)
from xfusion.errors import (
    BandError,
    EmptySelectionError,
    GridError,
    InputError,
    MissingAssetWarning,
    MissingFileError,
    SourceError,
    XFusionWarning,
)
from xfusion.grids import as_geobox, assign_grid, to_stackstac
from xfusion.grids import grid as make_grid
from xfusion.io._hrefs import check_local_exists, local_href, local_path
from xfusion.io._retry import redact, sanitized
from xfusion.validate import normalize_chunks, require_bands

__all__ = ["open_stac"]

# Media types stackstac can read (one band per asset); used when ``assets`` is not given.
_RASTER_TYPES = ("image/tiff", "image/x.geotiff", "image/vnd.stac.geotiff", "image/jp2")
# spatial chunks beyond which only the chunks the assets reach keep their tasks
_SPARSE_FROM_CHUNKS = 4096
_DEFAULT_CHUNKS = {"time": -1, "band": 1, "y": 512, "x": 512}
_DIMS = ("time", "band", "y", "x")


_ON_ERROR = ("raise", "nan")
# What a failed open or read raises: stackstac's RuntimeError (wrapping rasterio's error), or
# rasterio's and the OS's own errors.
_READ_ERRORS = (RuntimeError, OSError, rasterio.errors.RasterioError)


class _AssetReader(AutoParallelRioReader):
    """stackstac's reader, naming the asset when it cannot be read, or reading it as NaN.

    With ``on_error="raise"`` a failure raises :class:`SourceError` (:class:`MissingFileError`
    for a local file that is gone) naming the asset, its item and its href. With
    ``on_error="nan"`` the failed window reads as NaN and the first failure of the reader issues
    one :class:`XFusionWarning` naming the asset; a file that cannot be opened is not tried again.
    Dask shares one reader per asset between all blocks of a computation, so an unreadable asset
    warns once per computation however many blocks it spans.
    """

    def __init__(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        label: str | None = None,
        on_error: str = "raise",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.label = label or (labels or {}).get(self.url) or "STAC asset"
        self.on_error = on_error
        self._open_failure: str | None = None
        self._warned = False
        self._warn_lock = threading.Lock()

    def read(self, window, **kwargs):
        failure = None
        if self._open_failure is None:
            try:
                return super().read(window, **kwargs)
            except _READ_ERRORS as err:
                failure = err
                if self._dataset is None:  # the file could not be opened: do not try again
                    self._open_failure = self._message(err)
        message = self._open_failure if failure is None else self._message(failure)
        if self.on_error == "raise":
            cause = None if failure is None else sanitized(failure.__cause__ or failure)
            raise self._error_type()(message) from cause
        self._warn_once(message)
        return np.full((int(window.height), int(window.width)), self.fill_value, self.dtype)

    def _message(self, err: BaseException) -> str:
        cause = err.__cause__ or err  # stackstac wraps rasterio's error in a RuntimeError
        text = f"cannot read {self.label} (href {self.url!r}): {type(cause).__name__}: {cause}"
        return redact(text)

    def _error_type(self) -> type[SourceError]:
        path = local_path(self.url)
        return MissingFileError if path is not None and not path.exists() else SourceError

    def _warn_once(self, message: str) -> None:
        with self._warn_lock:
            if self._warned:
                return
            self._warned = True
        warnings.warn(
            f"{message}; its pixels read as NaN (on_error='nan')", XFusionWarning, stacklevel=2
        )

    def __getstate__(self):
        return {**super().__getstate__(), "label": self.label, "on_error": self.on_error}


def open_stac(
    items: Any,
    *,
    grid: Any = None,
    assets: Sequence[str] | Mapping[str, str] | None = None,
    chunks: int | tuple[int, ...] | Mapping[str, int] | None = None,
    scale_offset: bool = True,
    resampling: str = "nearest",
    on_error: str = "raise",
    kinds: Mapping[str, str] | None = None,
) -> xr.DataArray:
    """Open STAC items as a lazy cube with dims ``("time", "band", "y", "x")``.

    Nothing is read until the cube is computed; opening only reads STAC metadata and checks that
    local asset files exist.

    Parameters
    ----------
    items : pystac.Item, dict, pystac.ItemCollection, pystac.Catalog, path, or a sequence of these
        The items. A path (``str`` or :class:`os.PathLike`) names a STAC Item, ItemCollection,
        Collection or Catalog JSON file; a catalog is walked recursively. Relative asset hrefs are
        resolved against the item's own location. Older STAC versions are migrated by pystac.
    grid : GeoBox or DataArray, optional
        Output grid (from :func:`xfusion.grid`, or a cube whose grid to copy). By default the
        items' native grid: their common CRS, the finest resolution of the selected assets and the
        union of their footprints; items in different CRSs then raise :class:`GridError`.
        Onto a grid of more than 4096 spatial chunks, only the chunks the assets' footprints
        reach keep a read task; the others share one all-NaN chunk (the same values, a graph
        that grows with the data, not with the grid).
    assets : sequence of str or mapping of str to str, optional
        Asset keys to read as bands, in this order; a mapping ``{asset_key: band_name}`` also
        renames them. By default every GeoTIFF/JPEG2000 asset.
    chunks : int, tuple, mapping or "auto", optional
        Dask chunks, in the grammar of :func:`xfusion.validate.normalize_chunks`: an int or
        ``(y, x)`` for the spatial chunk, a 4-tuple for ``(time, band, y, x)``, or a mapping by
        dimension name; ``-1`` or None for a whole dim, ``"auto"`` (or a dim left out) for the
        default ``{"time": -1, "band": 1, "y": 512, "x": 512}`` (the whole time series of a
        tile in one chunk, as compositing wants).
    scale_offset : bool, default True
        Apply each asset's ``raster:bands`` ``scale``/``offset`` (or the older ``eo:bands``
        fields) where the items declare them; the ``band_scale``/``band_offset`` coordinates
        record what was applied (see Returns). ``False`` keeps the raw digital numbers (still
        float32 with NaN for nodata). Flag and class bands are never scaled (a declared scale on
        one is ignored with an :class:`~xfusion.errors.XFusionWarning`).
    resampling : str, default "nearest"
        Rasterio resampling used when an asset must be warped onto the grid.
    on_error : {"raise", "nan"}, default "raise"
        What to do with an asset file that cannot be read (missing, corrupt, truncated, refused
        by its server). ``"raise"``: opening raises :class:`MissingFileError` for a local file
        that does not exist, and computing raises :class:`SourceError` (:class:`MissingFileError`
        for a file gone since) naming the item, the asset key and the href. ``"nan"``: nothing is
        checked at opening; when computing, an asset that cannot be opened reads as NaN for its
        item and band (a damaged file that opens: its unreadable blocks), and each such asset
        issues one :class:`~xfusion.errors.XFusionWarning` per computation naming it and the
        cause, however many blocks it spans, so the warnings count the unreadable assets. With a
        distributed scheduler the warnings are issued on the workers (once per asset and worker).
    kinds : mapping of str to str, optional
        Kind of bands by band name (``"continuous"``, ``"categorical"``, ``"flags"``), overriding
        what the metadata say, e.g. ``kinds={"lab": "categorical"}``.

    Returns
    -------
    xarray.DataArray
        float32, NaN where there is no data (``raster:bands`` ``nodata``, the file's own nodata,
        or outside an asset), a ``band`` coordinate of band names, a datetime64 ``time``
        coordinate, pixel-centre ``x``/``y`` and the CRS on ``spatial_ref``. Along ``band`` (see
        :mod:`xfusion.bands`):

        - ``band_kind``: ``"flags"`` for an asset (or its ``raster:bands`` entry) with
          ``classification:bitfields``, ``"categorical"`` with ``classification:classes``, else
          the kind of a known band or asset name (``QA_PIXEL``, ``QA60``, ``SCL`` ..., in any
          case; a file extension as in ``QA_PIXEL.TIF`` is ignored), else ``"continuous"``;
          ``kinds`` overrides it.
        - ``band_scale``/``band_offset``: the scaling actually applied, from the metadata found:
          ``(1, 0)`` when the raw numbers are kept (``scale_offset=False``, no declared scaling,
          or a flag/class band); NaN when the items declare *different* scalings for the band
          (each item is still scaled by its own, but no single pair describes the band, so
          :func:`xfusion.scale` refuses to rescale it). A scaled band is refused by
          :func:`xfusion.scale` too, so reflectance is never scaled twice.

    Warns
    -----
    MissingAssetWarning
        Once per item that lacks some of the selected assets (naming the item and the asset
        keys): those bands are NaN for that item. A missing quality band then makes
        :func:`xfusion.mask_bits` drop (or keep, with ``missing="keep"``) every pixel of it.
    XFusionWarning
        A flag or class band declares a scale/offset (not applied).

    Raises
    ------
    BandError
        A requested asset is in none of the items.
    GridError
        No grid given and the items lack projection information or use several CRSs; or the grid
        does not overlap any asset.
    MissingFileError
        A local asset href names a file that does not exist (with ``on_error="raise"``).
    SourceError
        When computing, with ``on_error="raise"``: an asset cannot be read; the message names it.
    EmptySelectionError
        No items, or no assets selected.
    InputError
        ``on_error`` is not ``"raise"`` or ``"nan"``, or ``items``/``chunks``/``resampling``/
        ``kinds`` are malformed (``kinds`` naming a band not in the cube: :class:`BandError`).

    Examples
    --------
    >>> import numpy as np, pystac, rasterio, datetime, tempfile, os
    >>> from affine import Affine
    >>> path = os.path.join(tempfile.mkdtemp(), "b1.tif")
    >>> transform = Affine(10, 0, 500000, 0, -10, 4000040)
    >>> with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1,
    ...                    dtype="uint16", crs="EPSG:32633", transform=transform) as dst:
    ...     dst.write(np.arange(16, dtype="uint16").reshape(1, 4, 4))
    >>> item = pystac.Item("a", None, None, datetime.datetime(2020, 1, 1), {})
    >>> item.add_asset("b1", pystac.Asset(path, media_type="image/tiff", extra_fields={
    ...     "proj:epsg": 32633, "proj:shape": [4, 4], "proj:transform": list(transform)[:6],
    ...     "raster:bands": [{"scale": 0.5, "nodata": 0}]}))
    >>> cube = open_stac([item])
    >>> cube.dims, cube.dtype.name
    (('time', 'band', 'y', 'x'), 'float32')
    >>> cube.isel(time=0, band=0, y=0).values
    array([nan, 0.5, 1. , 1.5], dtype=float32)
    >>> cube.band_scale.values, cube.band_offset.values, cube.band_kind.values
    (array([0.5]), array([0.]), array(['continuous'], dtype=object))
    """
    if on_error not in _ON_ERROR:
        raise InputError(f"on_error must be one of {list(_ON_ERROR)}; got {on_error!r}")
    chunksize = _stackstac_chunks(chunks)
    stac_items = _collect_items(items)
    if not stac_items:
        raise EmptySelectionError(f"no STAC items to open in {_describe(items)}")
    asset_keys, band_names = _select_assets(stac_items, assets)
    _check_kinds(kinds, band_names)
    footprints = _footprints(stac_items, asset_keys)
    gbox = _native_grid(footprints) if grid is None else as_geobox(grid)
    _check_overlap(footprints, gbox)
    labels: dict[str, list[str]] = {}
    for item in stac_items:
        for key in asset_keys:
            if key in item.assets:
                label = f"asset {key!r} of item {item.id!r}"
                labels.setdefault(item.assets[key].href, []).append(label)
                if on_error == "raise":
                    check_local_exists(item.assets[key].href, label)
    reader = functools.partial(
        _AssetReader,
        labels={href: " and ".join(names) for href, names in labels.items()},
        on_error=on_error,
    )

    try:
        raw = stackstac.stack(
            [_stackstac_dict(item, position) for position, item in enumerate(stac_items)],
            assets=list(asset_keys),
            **to_stackstac(gbox),
            chunksize=chunksize,
            dtype=np.dtype("float32"),
            fill_value=np.float32(np.nan),
            rescale=False,
            sortby_date=False,
            xy_coords="center",
            properties=False,
            band_coords=False,
            resampling=_rasterio_resampling(resampling),
            errors_as_nodata=(),
            reader=reader,
        )
        failure = None
    except ValueError as err:  # stackstac's metadata checks, e.g. multi-band raster:bands
        failure = err
    if failure is not None:
        raise SourceError(redact(f"stackstac cannot stack these items: {failure}")) from sanitized(
            failure
        )

    # stackstac drops items (and assets) that miss the grid entirely; the item ids we gave it are
    # positions, so the surviving items are known, and dropped assets come back as NaN bands.
    kept = [int(i) for i in raw.coords["id"].values]
    if not kept:
        raise GridError(f"the grid {_bounds_text(gbox)} does not overlap any selected asset")
    cube = xr.DataArray(raw.data, dims=_DIMS, coords={"band": list(raw.band.values)})
    if cube.sizes["band"] != len(asset_keys):
        cube = cube.reindex(band=list(asset_keys), fill_value=np.float32(np.nan))
    stac_items = [stac_items[i] for i in kept]
    times = pd.DatetimeIndex([_item_time(item) for item in stac_items])
    cube = cube.assign_coords(time=times.values, band=list(band_names))
    _warn_missing_assets(stac_items, asset_keys, band_names)
    band_kinds = _band_kinds(stac_items, asset_keys, band_names)
    band_kinds = [(kinds or {}).get(n, k) for n, k in zip(band_names, band_kinds, strict=True)]
    cube, scaling = _apply_nodata_scale(
        cube, stac_items, asset_keys, band_names, band_kinds, scale_offset=scale_offset
    )
    cube = assign_grid(cube, gbox)
    cube = cube.assign_coords({KIND_COORD: ("band", np.array(band_kinds, dtype=object))})
    cube = set_band_scaling(cube, dict(zip(band_names, scaling, strict=True)))
    cube.attrs = {"source": "stac"}
    if grid is not None:
        cube = _sparse_on_large_grid(cube, footprints, gbox)
    return cube.rename(None)


def _sparse_on_large_grid(
    cube: xr.DataArray, footprints: list[_Footprint], gbox: GeoBox
) -> xr.DataArray:
    """Keep tasks only for the chunks some asset reaches, on a grid of many chunks.

    stackstac builds one read per chunk; onto a continental or global grid nearly all of them
    read nothing and return NaN. The chunks the assets' footprints (padded by a resampling
    kernel's reach) touch keep their tasks, the others share one all-NaN chunk
    (:func:`xfusion._graph.keep_blocks`). Assets without projection metadata, or footprints
    that cannot be trusted (a pole on a geographic grid), keep the full graph.
    """
    ychunks, xchunks = cube.data.chunks[-2:]
    if len(ychunks) * len(xchunks) <= _SPARSE_FROM_CHUNKS:
        return cube
    ystarts, xstarts = chunk_starts(ychunks), chunk_starts(xchunks)
    blocks: set[tuple[int, int]] = set()
    for footprint in footprints:
        if not footprint.projected:
            return cube
        src = GeoBox(footprint.shape, footprint.affine, CRS(f"EPSG:{int(footprint.epsg)}"))
        found = candidate_chunks(src, gbox, ystarts, xstarts, pad=3)
        if found is None:
            return cube
        blocks.update(zip(found[0].tolist(), found[1].tolist(), strict=True))
    return cube.copy(data=keep_blocks(cube.data, blocks))


# --- metadata: items -------------------------------------------------------------------------


def _bounds_text(gbox: GeoBox) -> str:
    crs = f"EPSG:{gbox.crs.epsg}" if gbox.crs.epsg is not None else "its CRS"
    return f"{tuple(round(v, 3) for v in gbox.boundingbox)} in {crs}"


def _stackstac_dict(item: pystac.Item, position: int) -> dict:
    as_dict = item.to_dict(transform_hrefs=False)
    as_dict["id"] = str(position)
    if item.bbox is not None:  # pystac leaves bbox out when geometry is None
        as_dict["bbox"] = list(item.bbox)
    return as_dict


def _describe(obj: Any) -> str:
    text = redact(repr(obj))
    return text if len(text) < 80 else text[:77] + "..."


def _collect_items(items: Any) -> list[pystac.Item]:
    """Flatten ``items`` into independent pystac Items with absolute hrefs and ``proj:epsg``."""
    found: list[pystac.Item] = []
    _gather(items, found)
    out = []
    for item in found:
        item = item.clone()  # never mutate the caller's objects
        if item.get_self_href() is not None:
            item.make_asset_hrefs_absolute()
        for asset in item.assets.values():
            asset.href = _readable_href(asset.href)
        _translate_proj_code(item.properties)
        for asset in item.assets.values():
            _translate_proj_code(asset.extra_fields)
        out.append(item)
    out.sort(key=_item_time)  # stable: items of the same date keep their order
    return out


def _gather(obj: Any, found: list[pystac.Item]) -> None:
    if isinstance(obj, pystac.Item):
        found.append(obj)
    elif isinstance(obj, pystac.ItemCollection):
        found.extend(obj.items)
    elif isinstance(obj, pystac.Catalog):  # Collection is a Catalog
        found.extend(obj.get_items(recursive=True))
    elif isinstance(obj, Mapping):
        _gather_dict(obj, found)
    elif isinstance(obj, str | os.PathLike):
        _gather(_read_stac_file(obj), found)
    elif isinstance(obj, Iterable) and not isinstance(obj, bytes):
        for element in obj:
            _gather(element, found)
    else:
        raise InputError(
            "items must be pystac Items, item dicts, an ItemCollection, a Catalog/Collection, or "
            f"a path to STAC JSON; got {type(obj).__name__}"
        )


def _gather_dict(obj: Mapping, found: list[pystac.Item]) -> None:
    kind = obj.get("type")
    try:
        if kind == "Feature":
            found.append(pystac.Item.from_dict(dict(obj), migrate=True))
        elif kind == "FeatureCollection":
            found.extend(pystac.ItemCollection.from_dict(dict(obj)).items)
        elif kind in ("Catalog", "Collection"):
            _gather(pystac.read_dict(dict(obj)), found)
        else:
            raise InputError(
                f"a STAC dict must have type 'Feature' or 'FeatureCollection'; got type {kind!r}"
            )
    except (KeyError, pystac.STACError, pystac.STACTypeError) as err:
        raise InputError(f"not a valid STAC item dict ({err!r}): {_describe(obj)}") from err


def _read_stac_file(path: str | os.PathLike) -> Any:
    local = local_path(path)
    if local is not None:
        check_local_exists(path, "STAC JSON")
    try:
        return pystac.read_file(os.fspath(local if local is not None else path))
    except (OSError, ValueError, pystac.STACError, pystac.STACTypeError) as err:
        failure = err
    raise SourceError(redact(f"cannot read STAC JSON {os.fspath(path)!r}: {failure}")) from (
        sanitized(failure)
    )


def _readable_href(href: str) -> str:
    """Return the href as GDAL opens it: ``file:`` URLs and a relative href's escapes decoded.

    A relative href in STAC is a URI reference, so ``"./caf%C3%A9.tif"`` names ``café.tif``;
    made absolute against a local item it is a path still holding the escapes. That path is
    decoded when the literal one does not exist and the decoded one does (a file literally named
    with ``%`` keeps its name).
    """
    readable = local_href(href)
    if readable != href or "%" not in href:
        return readable
    path = local_path(href)
    if path is None or path.exists():
        return href
    decoded = unquote(os.fspath(path))
    return decoded if os.path.exists(decoded) else href


def _translate_proj_code(fields: dict) -> None:
    # stackstac only reads proj:epsg; proj:code ("EPSG:32633") replaced it in projection v2.
    code = fields.get("proj:code")
    if fields.get("proj:epsg") is None and isinstance(code, str):
        authority, _, number = code.partition(":")
        if authority.upper() == "EPSG" and number.isdigit():
            fields["proj:epsg"] = int(number)


def _item_time(item: pystac.Item) -> pd.Timestamp:
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise InputError(f"item {item.id!r} has neither 'datetime' nor 'start_datetime'")
    stamp = pd.Timestamp(when)
    # Naive UTC: xarray and numpy datetime64 carry no time zone.
    return stamp if stamp.tzinfo is None else stamp.tz_convert("UTC").tz_localize(None)


# --- metadata: assets ------------------------------------------------------------------------


def _is_raster_asset(asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").split(";")[0].strip().lower()
    return media in _RASTER_TYPES


def _select_assets(
    items: list[pystac.Item], assets: Sequence[str] | Mapping[str, str] | None
) -> tuple[list[str], list[str]]:
    available: dict[str, None] = {}
    for item in items:
        available.update(dict.fromkeys(item.assets))
    if assets is None:
        keys = [
            k
            for k in available
            if any(_is_raster_asset(i.assets[k]) for i in items if k in i.assets)
        ]
        if not keys:
            raise EmptySelectionError(
                f"no GeoTIFF/JPEG2000 assets in the items; assets are {list(available)} "
                "(name them with assets=[...])"
            )
        names = list(keys)
    else:
        if isinstance(assets, str):
            raise InputError(f"assets must be a list of asset keys; got the string {assets!r}")
        if isinstance(assets, Mapping):
            keys, names = [str(k) for k in assets], [str(v) for v in assets.values()]
        else:
            keys = [str(k) for k in assets]
            names = list(keys)
        if not keys:
            raise EmptySelectionError("assets=[] selects no bands; name at least one asset")
        missing = [k for k in keys if k not in available]
        if missing:
            raise BandError(
                f"asset {missing[0]!r} not in any item; assets are {list(available)}"
                if len(missing) == 1
                else f"assets {missing} not in any item; assets are {list(available)}"
            )
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise BandError(f"band names must be unique; {duplicated} appear more than once")
    return keys, names


class _Footprint:
    """Where one asset of one item lies: its CRS, affine and shape (when known), lon/lat bbox."""

    def __init__(self, item: pystac.Item, key: str) -> None:
        asset = item.assets[key]
        fields, props = asset.extra_fields, item.properties
        self.label = f"asset {key!r} of item {item.id!r}"
        self.epsg = fields.get("proj:epsg", props.get("proj:epsg"))
        transform = fields.get("proj:transform", props.get("proj:transform"))
        shape = fields.get("proj:shape", props.get("proj:shape"))
        self.affine = Affine(*transform[:6]) if transform is not None else None
        self.shape = tuple(int(s) for s in shape) if shape is not None else None
        self.bbox_lonlat = item.bbox

    @property
    def projected(self) -> bool:
        return self.epsg is not None and self.affine is not None and self.shape is not None

    def bounds(self) -> tuple[float, float, float, float]:
        h, w = self.shape
        xs, ys = zip(*(self.affine @ (c, r) for c in (0, w) for r in (0, h)), strict=True)
        return min(xs), min(ys), max(xs), max(ys)

    def geometry(self):
        if self.projected:
            return box(*self.bounds(), CRS(f"EPSG:{int(self.epsg)}"))
        if self.bbox_lonlat is not None:
            return box(*self.bbox_lonlat, "EPSG:4326")
        return None


def _footprints(items: list[pystac.Item], keys: list[str]) -> list[_Footprint]:
    return [_Footprint(item, key) for item in items for key in keys if key in item.assets]


def _native_grid(footprints: list[_Footprint]) -> GeoBox:
    unprojected = [f.label for f in footprints if not f.projected]
    if unprojected:
        raise GridError(
            f"{unprojected[0]} has no projection information (proj:epsg or proj:code, "
            "proj:transform, proj:shape), so its native grid is unknown; pass grid=xf.grid(...)"
        )
    epsgs = sorted({int(f.epsg) for f in footprints})
    if len(epsgs) > 1:
        raise GridError(
            f"items are in several CRSs {[f'EPSG:{e}' for e in epsgs]}; "
            "pass grid=xf.grid(...) to choose one"
        )
    rotated = [f.label for f in footprints if not f.affine.is_rectilinear]
    if rotated:
        raise GridError(f"{rotated[0]} has a rotated grid; pass a north-up grid=xf.grid(...)")
    xres = min(abs(f.affine.a) for f in footprints)
    yres = min(abs(f.affine.e) for f in footprints)
    bounds = np.array([f.bounds() for f in footprints])
    union = (bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max())
    return make_grid(union, f"EPSG:{epsgs[0]}", (xres, yres))


def _check_overlap(footprints: list[_Footprint], gbox: GeoBox) -> None:
    extent = gbox.extent
    known = False
    for footprint in footprints:
        geometry = footprint.geometry()
        if geometry is None:
            continue
        known = True
        try:
            if geometry.to_crs(gbox.crs).intersects(extent):
                return
        except Exception:  # a footprint that cannot be projected may still overlap
            return
    if known:
        raise GridError(
            f"the grid {_bounds_text(gbox)} does not overlap any of the {len(footprints)} "
            "selected assets"
        )


# --- graph and cube --------------------------------------------------------------------------


def _stackstac_chunks(chunks: Any) -> tuple[int, int, int, int]:
    sizes = {**_DEFAULT_CHUNKS, **normalize_chunks(chunks, _DIMS, "open_stac chunks")}
    return tuple(sizes[d] for d in _DIMS)


def _rasterio_resampling(name: str):
    from rasterio.enums import Resampling

    try:
        return Resampling[name]
    except KeyError:
        choices = [r.name for r in Resampling]
        raise InputError(f"unknown resampling {name!r}; expected one of {choices}") from None


def _number(value: Any, default: float) -> float:
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _band_metadata(
    item: pystac.Item, key: str, scale_offset: bool = True
) -> tuple[float, float, float]:
    """``(nodata, scale, offset)`` of one asset; NaN nodata when none is declared.

    With ``scale_offset=False`` the declared scaling is not read (``(1, 0)``).
    """
    asset = item.assets.get(key)
    if asset is None:
        return math.nan, 1.0, 0.0
    entries = []
    for field in ("raster:bands", "eo:bands"):
        listed = asset.extra_fields.get(field)
        if listed and isinstance(listed[0], Mapping):
            entries.append(listed[0])
    # The older layout lists eo:bands on the item and refers to them by name from the asset.
    eo_names = {
        b.get("name") for b in asset.extra_fields.get("eo:bands") or [] if isinstance(b, Mapping)
    }
    entries += [b for b in item.properties.get("eo:bands") or [] if b.get("name") in eo_names]
    nodata, scale, offset = math.nan, None, None
    for entry in entries:
        if math.isnan(nodata) and entry.get("nodata") is not None:
            nodata = _number(entry.get("nodata"), math.nan)
        scale = entry.get("scale") if scale is None else scale
        offset = entry.get("offset") if offset is None else offset
    if asset.extra_fields.get("nodata") is not None and math.isnan(nodata):
        nodata = _number(asset.extra_fields["nodata"], math.nan)
    if not scale_offset:
        return nodata, 1.0, 0.0
    return nodata, _scaling_number(scale, 1.0, item, key), _scaling_number(offset, 0.0, item, key)


def _scaling_number(value: Any, default: float, item: pystac.Item, key: str) -> float:
    """Return a declared scale/offset as a float; a malformed one is an error, not ignored."""
    number = _number(value, math.nan)
    if value is None:
        return default
    what = "scale" if default == 1.0 else "offset"
    if not math.isfinite(number) or (what == "scale" and number == 0):
        raise InputError(
            f"asset {key!r} of item {item.id!r} declares {what} {value!r}; expected a finite "
            f"number{' other than 0' if what == 'scale' else ''} (raster:bands/eo:bands)"
        )
    return number


def _check_kinds(kinds: Any, band_names: list[str]) -> None:
    if kinds is None:
        return
    if not isinstance(kinds, Mapping):
        raise InputError(
            f"kinds must be a mapping of band name to kind ({list(BAND_KINDS)}); got {kinds!r}"
        )
    require_bands(band_names, kinds, by="kinds")
    for name, kind in kinds.items():
        if kind not in BAND_KINDS:
            raise InputError(
                f"kind of band {name!r} must be one of {list(BAND_KINDS)}; got {kind!r}"
            )


def _warn_missing_assets(items: list[pystac.Item], keys: list[str], names: list[str]) -> None:
    """One :class:`MissingAssetWarning` per item lacking selected assets (they read as NaN)."""
    for item in items:
        missing = [(k, n) for k, n in zip(keys, names, strict=True) if k not in item.assets]
        if not missing:
            continue
        listed = ", ".join(repr(k) if k == n else f"{k!r} (band {n!r})" for k, n in missing)
        warnings.warn(
            f"item {item.id!r} has no asset {listed}; "
            f"{'that band reads' if len(missing) == 1 else 'those bands read'} as NaN for this "
            "item (mask_bits/mask_classes drop its pixels when the missing band is the quality "
            "band; choose with their missing= argument)",
            MissingAssetWarning,
            stacklevel=3,
        )


def _declared_kind(asset: pystac.Asset) -> str | None:
    """Return the kind the classification extension declares on an asset or its raster:bands."""
    places = [asset.extra_fields, *(asset.extra_fields.get("raster:bands") or [])[:1]]
    places = [p for p in places if isinstance(p, Mapping)]
    if any(p.get("classification:bitfields") for p in places):
        return "flags"
    if any(p.get("classification:classes") for p in places):
        return "categorical"
    return None


def _band_kinds(items: list[pystac.Item], keys: list[str], names: list[str]) -> list[str]:
    """Kind per band: classification extension, else the band/asset name, else continuous."""
    kinds = []
    for key, name in zip(keys, names, strict=True):
        declared = {_declared_kind(i.assets[key]) for i in items if key in i.assets} - {None}
        if declared:  # bit fields win: a band described both ways still has bits
            kinds.append("flags" if "flags" in declared else "categorical")
        else:
            kinds.append(named_kind(name) or named_kind(key) or "continuous")
    return kinds


def _apply_nodata_scale(
    cube: xr.DataArray,
    items: list[pystac.Item],
    keys: list[str],
    names: list[str],
    kinds: list[str],
    *,
    scale_offset: bool,
) -> tuple[xr.DataArray, list[tuple[float, float] | None]]:
    """Mask the declared nodata and apply the declared scaling; return the scaling per band.

    The scaling of a band is the ``(scale, offset)`` all items holding it declared, ``(1, 0)``
    when the raw numbers are kept, and ``None`` when items declared different ones (each item
    is still scaled by its own). Flag and class bands are never scaled.
    """
    meta = np.array(
        [[_band_metadata(item, key, scale_offset) for key in keys] for item in items], "float64"
    )
    nodata, scale, offset = (meta[..., i].copy() for i in range(3))
    has_asset = np.array([[key in item.assets for key in keys] for item in items], bool)
    dims = ("time", "band")
    if np.isfinite(nodata).any():
        # Raw DN are exact in float32 for the integer types that declare nodata.
        declared = xr.DataArray(nodata.astype("float32"), dims=dims)
        cube = cube.where(cube != declared)
    scaling: list[tuple[float, float] | None] = []
    for b, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        pairs = sorted(
            {
                (float(s), float(o))
                for s, o, h in zip(scale[:, b], offset[:, b], has_asset[:, b], strict=True)
                if h
            }
        )
        if kind != "continuous" and scale_offset and pairs not in ([], [(1.0, 0.0)]):
            warnings.warn(
                f"band {name!r} holds {kind} but its items declare scale/offset {pairs}; "
                "not applied (scaling would destroy its values); the band keeps its raw numbers",
                XFusionWarning,
                stacklevel=3,
            )
        if kind != "continuous" or not scale_offset:
            scale[:, b], offset[:, b] = 1.0, 0.0
            scaling.append((1.0, 0.0))
        else:
            scaling.append(pairs[0] if len(pairs) == 1 else None if pairs else (1.0, 0.0))
    if (scale != 1).any() or (offset != 0).any():
        cube = cube * xr.DataArray(scale.astype("float32"), dims=dims) + xr.DataArray(
            offset.astype("float32"), dims=dims
        )
    return cube.astype("float32", copy=False), scaling
