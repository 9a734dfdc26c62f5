"""An offline Earth Engine for tests: the real client library, a fake server.

Earth Engine is initialised offline the way ``ee.apitestcase.ApiTestCase`` does it (no cloud API
resource, the algorithm list shipped with earthengine-api), so real ``ee.ImageCollection`` graphs
can be built and serialised without a network. Only the two network calls are replaced:
``ee.data.computeValue`` and ``ee.data.computePixels``. The replacements interpret the serialised
expression graph (the JSON of ``ee.serializer.encode``) against local numpy arrays and answer
pixel requests on the request's grid (``crsCode``, ``affineTransform``, ``dimensions``) with
nearest-neighbour sampling, as Earth Engine does by default.

Supported server functions: loading images and collections, ``filterDate``, ``filterBounds``,
property filters (``lt``, ``lte``, ``gt``, ``gte``, ``eq``, ``neq``, ``inList``, ``and``, ``or``,
``not``), ``map``, ``iterate``, ``toList``, ``size``, ``first``, ``reduceColumns`` with
``toList``, ``select``, ``rename``, ``addBands``, ``mask``/``updateMask``/``unmask``, per-pixel
arithmetic, comparisons and ``bitwiseAnd``, and ``median``/``mean`` composites. Anything else
raises ``ee.EEException`` naming the function, like the real service for an unknown algorithm.

Examples
--------
>>> import numpy as np, ee
>>> import xfusion as xf
>>> from xfusion.testing.ee import FakeImage, fake_earth_engine
>>> g = xf.grid((0, 0, 40, 40), "EPSG:32633", 10)
>>> img = FakeImage({"B1": np.arange(16, dtype="uint16").reshape(4, 4)}, grid=g)
>>> with fake_earth_engine(images={"TEST/IMAGE": img}) as fake:
...     ee.Image("TEST/IMAGE").bandNames().getInfo()
['B1']
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ee
import numpy as np
import pandas as pd
from affine import Affine
from odc.geo import CRS
from odc.geo.geobox import GeoBox

__all__ = ["FakeEarthEngine", "FakeImage", "fake_earth_engine", "initialize_offline"]

_HTTP_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


_IMAGE_IDS = itertools.count()


class FakeImage:
    """A local image standing in for an Earth Engine asset.

    Parameters
    ----------
    bands : mapping of band name to 2-D array
        Pixel values on ``grid`` (any numpy dtype; NaN in float bands is masked).
    grid : GeoBox
        The native grid of every band.
    time : str, datetime or numpy.datetime64, optional
        Stored as the ``system:time_start`` property (milliseconds since the epoch).
    properties : mapping, optional
        Further image properties (e.g. ``{"CLOUDY_PIXEL_PERCENTAGE": 12.0}``).
    masks : mapping of band name to boolean array, optional
        ``True`` where a band is valid (besides NaN).
    id : str, optional
        ``system:id`` of the image (default: a unique ``fake/image_<n>``).
    """

    def __init__(
        self,
        bands: Mapping[str, np.ndarray],
        *,
        grid: GeoBox,
        time: Any = None,
        properties: Mapping[str, Any] | None = None,
        masks: Mapping[str, np.ndarray] | None = None,
        id: str | None = None,
    ) -> None:
        self.grid = grid
        self.bands = {str(k): np.asarray(v) for k, v in bands.items()}
        for name, arr in self.bands.items():
            if arr.shape != tuple(grid.shape):
                raise ValueError(
                    f"band {name!r} has shape {arr.shape}; grid is {tuple(grid.shape)}"
                )
        self.masks = {str(k): np.asarray(v, dtype=bool) for k, v in (masks or {}).items()}
        self.properties = dict(properties or {})
        if time is not None:
            self.properties["system:time_start"] = _millis(time)
        # Every Earth Engine image has an id; xee reads it together with the time, and without
        # one it falls back to integer positions instead of dates.
        self.properties["system:id"] = id if id is not None else f"fake/image_{next(_IMAGE_IDS)}"


# --------------------------------------------------------------------------------------------
# Server-side values
# --------------------------------------------------------------------------------------------

_Grid = tuple[CRS, Affine, tuple[int, int]]  # crs, affine, (height, width)


@dataclass
class _Band:
    name: str
    dtype: np.dtype
    sample: Callable[[_Grid], tuple[np.ndarray, np.ndarray]]  # -> (values, valid)
    native: GeoBox | None = None  # None: unbounded (constants, composites)

    def renamed(self, name: str) -> _Band:
        return _Band(name, self.dtype, self.sample, self.native)


@dataclass
class _Image:
    bands: list[_Band]
    properties: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [b.name for b in self.bands]

    def footprint(self):
        boxes = [b.native for b in self.bands if b.native is not None]
        if len(boxes) < len(self.bands) or not boxes:
            return None  # unbounded
        geoms = [_lonlat_extent(gb) for gb in boxes]
        out = geoms[0]
        for g in geoms[1:]:
            out = out.union(g)
        return out


@functools.lru_cache(maxsize=256)
def _lonlat_extent(gbox: GeoBox):
    return gbox.extent.to_crs("EPSG:4326").geom


@dataclass
class _Collection:
    images: list[_Image]
    properties: dict[str, Any] = field(default_factory=dict)


def _millis(value: Any) -> int:
    if isinstance(value, int | float | np.integer | np.floating):
        return int(value)
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.value // 1_000_000)


def _error(message: str) -> ee.EEException:
    return ee.ee_exception.EEException(message)


def _apply(a: Affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a.a * x + a.b * y + a.c, a.d * x + a.e * y + a.f


def _native_sampler(arr: np.ndarray, valid: np.ndarray, gbox: GeoBox):
    inverse = ~gbox.affine

    def sample(grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
        crs, affine, (height, width) = grid
        cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        xs, ys = _apply(affine, cols, rows)
        if crs != gbox.crs:
            from pyproj import Transformer

            tr = Transformer.from_crs(crs.proj, gbox.crs.proj, always_xy=True)
            xs, ys = tr.transform(xs, ys)
        ncol, nrow = _apply(inverse, xs, ys)
        ic, ir = np.floor(ncol).astype(np.int64), np.floor(nrow).astype(np.int64)
        inside = (ic >= 0) & (ir >= 0) & (ic < arr.shape[1]) & (ir < arr.shape[0])
        icc, irc = np.clip(ic, 0, arr.shape[1] - 1), np.clip(ir, 0, arr.shape[0] - 1)
        return arr[irc, icc], valid[irc, icc] & inside

    return sample


def _image_from_fake(img: FakeImage) -> _Image:
    bands = []
    for name, arr in img.bands.items():
        valid = img.masks.get(name, np.ones(arr.shape, bool))
        if np.issubdtype(arr.dtype, np.floating):
            valid = valid & ~np.isnan(arr)
        bands.append(_Band(name, arr.dtype, _native_sampler(arr, valid, img.grid), img.grid))
    return _Image(bands, dict(img.properties))


def _constant_image(value: Any) -> _Image:
    values = value if isinstance(value, list | tuple) else [value]
    bands = []
    for i, v in enumerate(values):
        dtype = np.min_scalar_type(v) if float(v).is_integer() else np.dtype(np.float64)

        def sample(grid: _Grid, v=v, dtype=dtype):
            shape = grid[2]
            return np.full(shape, v, dtype=dtype), np.ones(shape, bool)

        bands.append(_Band("constant" if len(values) == 1 else f"constant_{i}", dtype, sample))
    return _Image(bands)


def _band_info(band: _Band) -> dict[str, Any]:
    dt = np.dtype(band.dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        data_type = {
            "type": "PixelType",
            "precision": "int",
            "min": int(info.min),
            "max": int(info.max),
        }
    else:
        data_type = {"type": "PixelType", "precision": "float" if dt.itemsize <= 4 else "double"}
    out: dict[str, Any] = {"id": band.name, "data_type": data_type}
    if band.native is not None:
        a = band.native.affine
        out["crs"] = f"EPSG:{band.native.crs.epsg}"
        out["crs_transform"] = [a.a, a.b, a.c, a.d, a.e, a.f]
        out["dimensions"] = [int(band.native.width), int(band.native.height)]
    else:
        out["crs"] = "EPSG:4326"
        out["crs_transform"] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    return out


def _to_info(value: Any) -> Any:
    """Convert a server value to what ``getInfo`` returns."""
    if isinstance(value, _Image):
        info: dict[str, Any] = {
            "type": "Image",
            "bands": [_band_info(b) for b in value.bands],
            "properties": dict(value.properties),
        }
        if "system:id" in value.properties:
            info["id"] = value.properties["system:id"]
        return info
    if isinstance(value, _Collection):
        return {
            "type": "ImageCollection",
            "bands": [],
            "features": [_to_info(i) for i in value.images],
            "properties": dict(value.properties),
        }
    if isinstance(value, list | tuple):
        return [_to_info(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_info(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if callable(value) or isinstance(value, _Filter):
        raise _error("cannot return a function or filter from computeValue")
    return value


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------


@dataclass
class _Filter:
    test: Callable[[_Image], bool]


def _operands(args: Mapping[str, Any], image: _Image) -> tuple[Any, Any] | None:
    props = image.properties
    if "leftField" in args:
        if args["leftField"] not in props:
            return None
        left = props[args["leftField"]]
    else:
        left = args.get("leftValue")
    if "rightField" in args:
        if args["rightField"] not in props:
            return None
        right = props[args["rightField"]]
    else:
        right = args.get("rightValue")
    return left, right


def _comparison(op: Callable[[Any, Any], bool]):
    def build(**args: Any) -> _Filter:
        def test(image: _Image) -> bool:
            pair = _operands(args, image)
            return pair is not None and bool(op(*pair))

        return _Filter(test)

    return build


def _list_contains(**args: Any) -> _Filter:
    def test(image: _Image) -> bool:
        pair = _operands(args, image)
        return pair is not None and isinstance(pair[0], list | tuple) and pair[1] in pair[0]

    return _Filter(test)


def _date_range_contains(**args: Any) -> _Filter:
    def test(image: _Image) -> bool:
        pair = _operands(args, image)
        if pair is None:
            return False
        (start, end), t = pair
        return start <= _millis(t) < end

    return _Filter(test)


def _intersects(**args: Any) -> _Filter:
    geom = args.get("rightValue")

    def test(image: _Image) -> bool:
        footprint = image.footprint()
        return footprint is None or geom is None or bool(footprint.intersects(geom))

    return _Filter(test)


def _polygon(coordinates: Any, **_: Any):
    import shapely

    rings = coordinates if isinstance(coordinates[0][0], list | tuple) else [coordinates]
    return shapely.Polygon(rings[0], rings[1:])


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _select(input: _Image, bandSelectors: Sequence[Any], newNames: Sequence[str] | None = None):
    names = input.names()
    picked: list[_Band] = []
    for sel in bandSelectors:
        if isinstance(sel, int):
            if not 0 <= sel < len(names):
                raise _error(f"Image.select: band index {sel} out of range.")
            picked.append(input.bands[sel])
            continue
        matches = [b for b in input.bands if re.fullmatch(str(sel), b.name)]
        if not matches:
            raise _error(f"Image.select: Pattern '{sel}' did not match any bands.")
        picked.extend(matches)
    if newNames is not None:
        picked = [b.renamed(n) for b, n in zip(picked, newNames, strict=True)]
    return _Image(picked, dict(input.properties))


def _add_bands(dstImg: _Image, srcImg: _Image, names=None, overwrite=False):
    src = _select(srcImg, names) if names is not None else srcImg
    bands = list(dstImg.bands)
    for band in src.bands:
        taken = {b.name for b in bands}
        if band.name in taken:
            if overwrite:
                bands = [b for b in bands if b.name != band.name]
            else:
                k = 1
                while f"{band.name}_{k}" in taken:
                    k += 1
                band = band.renamed(f"{band.name}_{k}")
        bands.append(band)
    return _Image(bands, dict(dstImg.properties))


def _with_mask(image: _Image, mask: _Image, *, replace: bool) -> _Image:
    out = []
    for i, band in enumerate(image.bands):
        mband = mask.bands[i if len(mask.bands) > 1 else 0]

        def sample(grid, band=band, mband=mband):
            values, valid = band.sample(grid)
            mvals, mvalid = mband.sample(grid)
            keep = (mvals != 0) & mvalid
            return values, keep if replace else (valid & keep)

        out.append(_Band(band.name, band.dtype, sample, band.native))
    return _Image(out, dict(image.properties))


def _mask(image: _Image, mask: _Image | None = None) -> _Image:
    if mask is not None:
        return _with_mask(image, mask, replace=False)
    out = []
    for band in image.bands:

        def sample(grid, band=band):
            _, valid = band.sample(grid)
            return valid.astype(np.uint8), np.ones(valid.shape, bool)

        out.append(_Band(band.name, np.dtype(np.uint8), sample, band.native))
    return _Image(out, dict(image.properties))


def _unmask(input: _Image, value: _Image | None = None, sameFootprint: bool = True):
    fill = value if value is not None else _constant_image(0)
    out = []
    for i, band in enumerate(input.bands):
        fband = fill.bands[i if len(fill.bands) > 1 else 0]
        dtype = np.result_type(band.dtype, fband.dtype)

        def sample(grid, band=band, fband=fband, dtype=dtype):
            values, valid = band.sample(grid)
            fvalues, fvalid = fband.sample(grid)
            out = np.where(valid, values.astype(dtype), fvalues.astype(dtype))
            if sameFootprint:
                # Pixels outside the image's footprint stay masked.
                inside = band.native is None or _inside(band.native, grid)
                return out, valid | (fvalid & inside)
            return out, valid | fvalid

        out.append(_Band(band.name, dtype, sample, band.native))
    return _Image(out, dict(input.properties))


def _inside(gbox: GeoBox, grid: _Grid) -> np.ndarray:
    ones = np.ones(tuple(gbox.shape), bool)
    return _native_sampler(ones, ones, gbox)(grid)[1]


def _binary(func: Callable[[np.ndarray, np.ndarray], np.ndarray], kind: str):
    def build(image1: _Image, image2: _Image) -> _Image:
        n1, n2 = len(image1.bands), len(image2.bands)
        if n1 != n2 and 1 not in (n1, n2):
            raise _error(
                f"Images must have the same number of bands or one band; got {n1} and {n2}."
            )
        base = image1 if n1 >= n2 else image2
        out = []
        for i in range(max(n1, n2)):
            b1 = image1.bands[i if n1 > 1 else 0]
            b2 = image2.bands[i if n2 > 1 else 0]
            if kind == "compare":
                dtype = np.dtype(np.uint8)
            elif kind == "divide":
                dtype = np.result_type(b1.dtype, b2.dtype, np.float32)
            else:
                dtype = np.result_type(b1.dtype, b2.dtype)

            def sample(grid, b1=b1, b2=b2, dtype=dtype):
                v1, m1 = b1.sample(grid)
                v2, m2 = b2.sample(grid)
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = func(v1, v2)
                return np.asarray(values).astype(dtype), m1 & m2

            name = base.bands[i if len(base.bands) > 1 else 0].name
            out.append(_Band(name, dtype, sample, b1.native or b2.native))
        return _Image(out, dict(image1.properties))

    return build


def _reduce_collection(collection: _Collection, reducer: tuple) -> _Image:
    kind = reducer[0]
    if kind not in ("median", "mean"):
        raise _error(f"ImageCollection.reduce: reducer {kind!r} is not supported by the fake")
    if not collection.images:
        return _Image([])
    first = collection.images[0]
    out = []
    for band in first.bands:
        members = [img.bands[img.names().index(band.name)] for img in collection.images]

        def sample(grid, members=members, kind=kind):
            stack = []
            for m in members:
                values, valid = m.sample(grid)
                stack.append(np.where(valid, values.astype(np.float64), np.nan))
            arr = np.stack(stack)
            with np.errstate(all="ignore"), _quiet():
                red = np.nanmedian(arr, axis=0) if kind == "median" else np.nanmean(arr, axis=0)
            return np.nan_to_num(red), ~np.isnan(red)

        out.append(_Band(f"{band.name}_{kind}", np.dtype(np.float64), sample))
    return _Image(out)


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _reduce_columns(collection: _Collection, reducer: tuple, selectors: Sequence[str], **_: Any):
    count = reducer[2] if reducer[0] == "repeat" else 1
    if len(selectors) != count:
        raise _error(
            f"Collection.reduceColumns: reducer expects {count} inputs, got {len(selectors)}"
        )
    rows = [
        [img.properties[s] for s in selectors]
        for img in collection.images
        if all(s in img.properties for s in selectors)
    ]
    columns = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in selectors]
    return {"list": columns if reducer[0] == "repeat" else columns[0]}


def _iterate(collection: _Collection, function: Callable, first: Any):
    acc = first
    for image in collection.images:
        acc = function(image, acc)
    return acc


def _first(collection: _Collection):
    return collection.images[0] if collection.images else None


# --------------------------------------------------------------------------------------------
# The fake service
# --------------------------------------------------------------------------------------------


class FakeEarthEngine:
    """Local answers to ``computeValue``/``computePixels`` with request recording.

    Parameters
    ----------
    collections : mapping of id to sequence of FakeImage, optional
        Assets reachable through ``ee.ImageCollection(id)``.
    images : mapping of id to FakeImage, optional
        Assets reachable through ``ee.Image(id)``.
    collection_properties : mapping of id to mapping, optional
        Collection-level properties (``toDictionary``).

    Attributes
    ----------
    value_requests : list of dict
        The serialised expressions of every ``computeValue`` call.
    pixel_requests : list of dict
        Every ``computePixels`` call: ``expression`` (serialised), ``grid``, ``band_ids``,
        ``dtype`` and ``nbytes`` (bytes of the answer, counting one mask byte per pixel as
        Earth Engine does).
    failures_served : int
        How many injected failures were raised (:meth:`fail_next`, :meth:`fail_each`).
    """

    def __init__(
        self,
        collections: Mapping[str, Sequence[FakeImage]] | None = None,
        images: Mapping[str, FakeImage] | None = None,
        collection_properties: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.collections = {k: list(v) for k, v in (collections or {}).items()}
        self.images = dict(images or {})
        self.collection_properties = {k: dict(v) for k, v in (collection_properties or {}).items()}
        self.value_requests: list[dict[str, Any]] = []
        self.pixel_requests: list[dict[str, Any]] = []
        self.failures_served = 0
        self._failures: dict[str, list[tuple[int, str | None]]] = {
            "computeValue": [],
            "computePixels": [],
        }
        self._fail_each: dict[str, tuple[int, int, str | None]] = {}
        self._attempts: dict[str, dict[str, int]] = {"computeValue": {}, "computePixels": {}}
        self._lock = threading.Lock()

    # -- failure injection ---------------------------------------------------------------
    def fail_next(
        self,
        n: int,
        *,
        status: int = 429,
        call: str = "computePixels",
        message: str | None = None,
    ) -> None:
        """Make the next ``n`` calls of ``call`` fail with an HTTP ``status`` error.

        The error text is ``"<reason> (HTTP <status>)"``, followed by ``": <message>"`` when
        ``message`` is given (e.g. to put a URL or a token into it).
        """
        self._check_call(call)
        with self._lock:
            self._failures[call].extend([(status, message)] * n)

    def fail_each(
        self,
        k: int,
        *,
        status: int = 429,
        call: str = "computePixels",
        message: str | None = None,
    ) -> None:
        """Make every distinct request of ``call`` fail its first ``k`` attempts.

        A request is identified by its content (expression, and for pixels the grid and band
        ids), so a retried request counts as the same one; :meth:`attempts` reports how many
        times each was made. Calls from before this one count as attempts too.
        """
        self._check_call(call)
        with self._lock:
            self._fail_each[call] = (int(k), status, message)

    def attempts(self, call: str = "computePixels") -> dict[str, int]:
        """How many times each distinct request of ``call`` was made (by its canonical JSON)."""
        self._check_call(call)
        with self._lock:
            return dict(self._attempts[call])

    def _check_call(self, call: str) -> None:
        if call not in self._failures:
            raise ValueError(f"call must be 'computeValue' or 'computePixels'; got {call!r}")

    def _maybe_fail(self, call: str, key: str) -> None:
        with self._lock:
            self._attempts[call][key] = attempt = self._attempts[call].get(key, 0) + 1
            if self._failures[call]:
                status, message = self._failures[call].pop(0)
            elif call in self._fail_each and attempt <= self._fail_each[call][0]:
                _, status, message = self._fail_each[call]
            else:
                return
            self.failures_served += 1
        text = f"{_HTTP_REASONS.get(status, 'HTTP error')} (HTTP {status})"
        raise _error(text if message is None else f"{text}: {message}")

    # -- the two network calls -------------------------------------------------------------
    def compute_value(self, obj: Any) -> Any:
        """Stand-in for ``ee.data.computeValue``."""
        encoded = ee.serializer.encode(obj, for_cloud_api=True)
        with self._lock:
            self.value_requests.append(encoded)
        self._maybe_fail("computeValue", _request_key(encoded))
        return _to_info(self.evaluate(encoded))

    def compute_pixels(self, params: Mapping[str, Any]) -> np.ndarray:
        """Stand-in for ``ee.data.computePixels`` (``fileFormat`` ``NUMPY_NDARRAY`` only)."""
        expression = params["expression"]
        if not isinstance(expression, dict):
            expression = ee.serializer.encode(expression, for_cloud_api=True)
        fmt = params.get("fileFormat", "NUMPY_NDARRAY")
        if fmt != "NUMPY_NDARRAY":
            raise _error(f"the fake computePixels only answers NUMPY_NDARRAY; got {fmt!r}")
        grid = params.get("grid")
        if not grid or "affineTransform" not in grid or "dimensions" not in grid:
            raise _error("computePixels needs a grid with 'affineTransform' and 'dimensions'")
        record = {"expression": expression, "grid": grid, "band_ids": params.get("bandIds")}
        with self._lock:
            self.pixel_requests.append(record)
        self._maybe_fail("computePixels", _request_key(record))
        image = self.evaluate(expression)
        if not isinstance(image, _Image):
            raise _error("computePixels: expression is not an Image")
        if params.get("bandIds"):
            image = _select(image, params["bandIds"])
        t = grid["affineTransform"]
        affine = Affine(
            t.get("scaleX", 1.0), t.get("shearX", 0.0), t.get("translateX", 0.0),
            t.get("shearY", 0.0), t.get("scaleY", 1.0), t.get("translateY", 0.0),
        )  # fmt: skip
        shape = (int(grid["dimensions"]["height"]), int(grid["dimensions"]["width"]))
        crs = CRS(grid.get("crsCode", "EPSG:4326"))
        dtype = np.result_type(*[b.dtype for b in image.bands]) if image.bands else np.uint8
        out = np.zeros(shape, dtype=[(b.name, dtype) for b in image.bands])
        for band in image.bands:
            values, valid = band.sample((crs, affine, shape))
            out[band.name] = np.where(valid, values, 0).astype(dtype)
        record["dtype"] = np.dtype(dtype)
        record["nbytes"] = shape[0] * shape[1] * len(image.bands) * (np.dtype(dtype).itemsize + 1)
        return out

    # -- the interpreter -------------------------------------------------------------------
    def evaluate(self, encoded: Mapping[str, Any]) -> Any:
        """Evaluate a serialised expression (``ee.serializer.encode(..., for_cloud_api=True)``)."""
        values = encoded["values"]
        memo: dict[str, Any] = {}

        def node(n: Mapping[str, Any], env: Mapping[str, Any]) -> Any:
            if "constantValue" in n:
                return n["constantValue"]
            if "integerValue" in n:
                return int(n["integerValue"])
            if "valueReference" in n:
                return ref(n["valueReference"], env)
            if "argumentReference" in n:
                return env[n["argumentReference"]]
            if "arrayValue" in n:
                return [node(v, env) for v in n["arrayValue"].get("values", [])]
            if "dictionaryValue" in n:
                return {k: node(v, env) for k, v in n["dictionaryValue"].get("values", {}).items()}
            if "functionDefinitionValue" in n:
                fdef = n["functionDefinitionValue"]

                def closure(*args: Any) -> Any:
                    inner = {**env, **dict(zip(fdef["argumentNames"], args, strict=False))}
                    return ref(fdef["body"], inner)

                return closure
            if "functionInvocationValue" in n:
                inv = n["functionInvocationValue"]
                args = {k: node(v, env) for k, v in inv.get("arguments", {}).items()}
                return self._call(inv["functionName"], args)
            if "nullValue" in n or not n:
                return None
            raise _error(f"the fake cannot evaluate expression node {sorted(n)}")

        def ref(key: str, env: Mapping[str, Any]) -> Any:
            if env:
                return node(values[key], env)
            if key not in memo:
                memo[key] = node(values[key], env)
            return memo[key]

        return ref(encoded["result"], {})

    def _load_collection(self, id: str) -> _Collection:
        if id not in self.collections:
            raise _error(
                f"ImageCollection.load: ImageCollection asset '{id}' not found "
                "(does not exist or caller does not have access)."
            )
        images = [_image_from_fake(i) for i in self.collections[id]]
        return _Collection(images, dict(self.collection_properties.get(id, {})))

    def _load_image(self, id: str) -> _Image:
        if id not in self.images:
            raise _error(
                f"Image.load: Image asset '{id}' not found (does not exist or caller does not "
                "have access)."
            )
        return _image_from_fake(self.images[id])

    def _call(self, name: str, args: dict[str, Any]) -> Any:
        functions = self._functions()
        if name not in functions:
            raise _error(f"the fake Earth Engine does not implement {name!r}")
        return functions[name](**args)

    def _functions(self) -> dict[str, Callable[..., Any]]:
        cmp = _comparison
        return {
            "ImageCollection.load": lambda id, **_: self._load_collection(id),
            "Image.load": lambda id, **_: self._load_image(id),
            "ImageCollection.fromImages": lambda images: _Collection(list(images)),
            "Collection.filter": lambda collection, filter: _Collection(
                [i for i in collection.images if filter.test(i)], collection.properties
            ),
            "Collection.map": lambda collection, baseAlgorithm, **_: _Collection(
                [baseAlgorithm(i) for i in collection.images], collection.properties
            ),
            "Collection.iterate": _iterate,
            "Collection.size": lambda collection: len(collection.images),
            "Collection.first": _first,
            "Collection.toList": lambda collection, count, offset=0: collection.images[
                offset : offset + count
            ],
            "Collection.reduceColumns": _reduce_columns,
            "Element.toDictionary": lambda element, properties=None: {
                k: v
                for k, v in element.properties.items()
                if (properties is None and not k.startswith("system:"))
                or (properties is not None and k in properties)
            },
            "Element.get": lambda object, property: object.properties.get(property),
            "Dictionary.get": lambda dictionary, key, defaultValue=None: dictionary.get(
                key, defaultValue
            ),
            "List.slice": lambda list, start, end=None, step=None: list[start:end:step],
            "Reducer.toList": lambda **_: ("toList",),
            "Reducer.repeat": lambda reducer, count: ("repeat", reducer, count),
            "Reducer.median": lambda **_: ("median",),
            "Reducer.mean": lambda **_: ("mean",),
            "reduce": _reduce_collection,
            "reduce.median": lambda collection: _reduce_collection(collection, ("median",)),
            "reduce.mean": lambda collection: _reduce_collection(collection, ("mean",)),
            "ImageCollection.reduce": _reduce_collection,
            "Filter.dateRangeContains": _date_range_contains,
            "DateRange": lambda start, end=None, timeZone=None: (
                _millis(start),
                _millis(end) if end is not None else _millis(start) + 1,
            ),
            "Date": lambda value, **_: _millis(value),
            "Filter.lessThan": cmp(lambda a, b: a < b),
            "Filter.lessThanOrEquals": cmp(lambda a, b: a <= b),
            "Filter.greaterThan": cmp(lambda a, b: a > b),
            "Filter.greaterThanOrEquals": cmp(lambda a, b: a >= b),
            "Filter.equals": cmp(lambda a, b: a == b),
            "Filter.notEquals": cmp(lambda a, b: a != b),
            "Filter.listContains": _list_contains,
            "Filter.not": lambda filter: _Filter(lambda i, f=filter: not f.test(i)),
            "Filter.and": lambda filters: _Filter(lambda i: all(f.test(i) for f in filters)),
            "Filter.or": lambda filters: _Filter(lambda i: any(f.test(i) for f in filters)),
            "Filter.intersects": _intersects,
            "Feature": lambda geometry=None, metadata=None: geometry,
            "GeometryConstructors.Polygon": _polygon,
            "Image.constant": lambda value: _constant_image(value),
            "Image.select": _select,
            "Image.rename": lambda input, names: _select(
                input, list(range(len(input.bands))), names
            ),
            "Image.bandNames": lambda image: image.names(),
            "Image.addBands": _add_bands,
            "Image.mask": _mask,
            "Image.updateMask": lambda image, mask: _with_mask(image, mask, replace=False),
            "Image.unmask": _unmask,
            "Image.add": _binary(np.add, "arith"),
            "Image.subtract": _binary(np.subtract, "arith"),
            "Image.multiply": _binary(np.multiply, "arith"),
            "Image.divide": _binary(np.divide, "divide"),
            "Image.bitwiseAnd": _binary(np.bitwise_and, "arith"),
            "Image.eq": _binary(np.equal, "compare"),
            "Image.neq": _binary(np.not_equal, "compare"),
            "Image.gt": _binary(np.greater, "compare"),
            "Image.gte": _binary(np.greater_equal, "compare"),
            "Image.lt": _binary(np.less, "compare"),
            "Image.lte": _binary(np.less_equal, "compare"),
            "Image.and": _binary(np.logical_and, "compare"),
            "Image.or": _binary(np.logical_or, "compare"),
        }


def _request_key(request: Mapping[str, Any]) -> str:
    return json.dumps(request, sort_keys=True, default=str)


def initialize_offline(project: str = "offline-project") -> None:
    """Initialise the Earth Engine client without a network, as ``ee.apitestcase`` does.

    The algorithm list comes from the JSON shipped with earthengine-api; no cloud API resource is
    built, so any call that reaches the network fails. Pair it with :class:`FakeEarthEngine`.
    """
    from ee import apitestcase

    ee.Reset()
    ee.data._install_cloud_api_resource = lambda: None
    ee.data.getAlgorithms = apitestcase.GetAlgorithms
    ee.Initialize(None, "", project=project)


_PATCHED = ("computeValue", "computePixels", "getAlgorithms", "_install_cloud_api_resource")


@contextlib.contextmanager
def fake_earth_engine(
    collections: Mapping[str, Sequence[FakeImage]] | None = None,
    images: Mapping[str, FakeImage] | None = None,
    *,
    collection_properties: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[FakeEarthEngine]:
    """Initialise Earth Engine offline and answer its two network calls from local arrays.

    Inside the block ``ee.data.computeValue`` and ``ee.data.computePixels`` are served by a
    :class:`FakeEarthEngine`; on exit the originals are restored and Earth Engine is reset
    (uninitialised).
    """
    saved = {
        name: getattr(ee.data, name)
        for name in (
            "computeValue",
            "computePixels",
            "getAlgorithms",
            "_install_cloud_api_resource",
        )
    }
    fake = FakeEarthEngine(collections, images, collection_properties)
    try:
        initialize_offline()
        ee.data.computeValue = fake.compute_value
        ee.data.computePixels = fake.compute_pixels
        yield fake
    finally:
        for name, func in saved.items():
            setattr(ee.data, name, func)
        ee.Reset()
