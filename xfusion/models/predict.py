"""Blockwise inference over a cube: pixel models and spatial (tile) models.

One entry point, :func:`predict`, for both kinds of model:

* **pixel models** — anything with ``predict`` (xfusion's :class:`~xfusion.models.Ridge` /
  :class:`~xfusion.models.KernelRidge`, any fitted scikit-learn estimator): every pixel's band
  vector is a sample. Blocks are mapped with ``dask.array.blockwise``; the model is one key of
  the graph shared by all blocks.
* **spatial models** — anything with ``inference_state()`` (the U-Net estimators): each block is
  read with a halo, padded to one shape, cut into tiles, batched, and passed to the model's
  ``apply_tiles(config, params, tiles)``; the halo is trimmed (or overlaps blended).

Both return a lazy DataArray on the input grid for a chunked cube (nothing computes until asked)
and a numpy-backed one for an eager cube.
"""

from __future__ import annotations

import math
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr

from xfusion._kernels import threadpool as _threadpool
from xfusion.errors import BandError, InputError, ModelError, XFusionWarning
from xfusion.models.base import PixelModel, SpatialModel
from xfusion.models.compilation_cache import enable_compilation_cache
from xfusion.validate import check_halo, check_unique_bands, require_bands

__all__ = [
    "check_band_names",
    "class_label",
    "enable_compilation_cache",
    "model_bands",
    "model_n_inputs",
    "predict",
    "set_bands",
]

_SPATIAL = ("band", "y", "x")
_BLENDS = ("trim", "cosine")
_BOUNDARIES = ("reflect", "edge", "constant")
_PRECISIONS = ("fp32", "bf16")  # xfusion.models.inference.PRECISIONS, without importing JAX


# ----------------------------------------------------------------------------------------------
# Validation shared by both kinds of model
# ----------------------------------------------------------------------------------------------


def model_bands(model: Any) -> list[str] | None:
    """Return the band names a model was trained on (``bands_``/``feature_names_in_``) or None.

    xfusion's models record ``bands_`` when fitted from a cube, a DataFrame or named patches
    (or after :func:`set_bands`); scikit-learn estimators record ``feature_names_in_`` when
    fitted on a DataFrame. A model fitted on bare arrays records no names: None.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklearn.linear_model import LinearRegression
    >>> table = pd.DataFrame({"B04": [0.0, 1, 2], "B08": [1.0, 0, 1]})
    >>> m = LinearRegression().fit(table, [0, 1, 2])
    >>> model_bands(m)
    ['B04', 'B08']
    >>> model_bands(LinearRegression().fit(table.to_numpy(), [0, 1, 2])) is None
    True
    """
    for attr in ("bands_", "feature_names_in_"):
        bands = getattr(model, attr, None)
        if bands is not None:
            return [str(b) for b in bands]
    return None


def model_n_inputs(model: Any) -> int | None:
    """Return the number of input bands of a fitted model (``n_features_in_``), or None."""
    n = getattr(model, "n_features_in_", None)
    if n is not None:
        return int(n)
    names = model_bands(model)
    return None if names is None else len(names)


def check_band_names(bands: Any, n: int | None, what: str) -> list[str]:
    """Validate a list of band names: strings, unique, ``n`` of them (when ``n`` is known).

    Raises
    ------
    BandError
        Not a sequence of strings, repeated names, or not ``n`` names.

    Examples
    --------
    >>> check_band_names(("B04", "B08"), 2, "bands")
    ['B04', 'B08']
    >>> check_band_names(["B04"], 2, "bands")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xfusion.errors.BandError: bands names 1 band ['B04'] but the model has 2 inputs; ...
    """
    if isinstance(bands, str | bytes) or not isinstance(bands, Sequence | np.ndarray | pd.Index):
        raise BandError(
            f"{what} must be a list of band names (one per model input, in the model's input "
            f"order); got {bands!r}"
        )
    names = list(bands)
    if not all(isinstance(b, str | np.str_) for b in names):
        raise BandError(f"{what} must be band names (strings); got {names!r}")
    names = [str(b) for b in names]
    repeated = sorted({b for b in names if names.count(b) > 1})
    if repeated:
        raise BandError(f"{what}: band names must be unique; {repeated} repeat in {names}")
    if n is not None and len(names) != n:
        raise BandError(
            f"{what} names {len(names)} band{'s' if len(names) != 1 else ''} {names} but the "
            f"model has {n} inputs; expected one name per model input, in its input order"
        )
    return names


def set_bands(model: Any, bands: Sequence[str]) -> Any:
    """Record the input band names of a fitted model (in its input order); returns the model.

    For a model fitted on bare arrays, which records no names, this says once which cube band
    feeds which input, so that :func:`predict` can check (and reorder) cubes by name. xfusion's
    models have the same as a method (``model.set_bands([...])``, kept by ``save``); for other
    models (scikit-learn estimators) the names are stored as the attribute ``bands_``, which
    :func:`model_bands` reads before ``feature_names_in_``.

    Raises
    ------
    BandError
        The names are not unique strings, one per model input.
    ModelError
        The model is not fitted.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LinearRegression
    >>> m = LinearRegression().fit(np.eye(3)[:, :2], [0.0, 1.0, 2.0])
    >>> model_bands(set_bands(m, ["nir", "red"]))
    ['nir', 'red']
    """
    method = getattr(model, "set_bands", None)
    if callable(method):
        return method(bands)
    _check_fitted(model)
    model.bands_ = check_band_names(bands, model_n_inputs(model), "set_bands")
    return model


def _check_cube(da: Any) -> list[str]:
    if not isinstance(da, xr.DataArray):
        raise InputError(f"predict needs a DataArray cube; got {type(da).__name__}")
    missing = [d for d in _SPATIAL if d not in da.dims]
    if missing:
        raise InputError(f"a cube needs dims {_SPATIAL} (time optional); {da.dims} lacks {missing}")
    if "band" not in da.coords:
        raise BandError("the cube has no 'band' coordinate of band names")
    check_unique_bands(da, "predict")
    return [str(b) for b in da.band.values]


def _how_to_name(model: Any) -> str:
    setter = (
        "model.set_bands([...])"
        if callable(getattr(model, "set_bands", None))
        else "xfusion.models.set_bands(model, [...])"
    )
    return f"predict(cube, model, bands=[...]) or {setter}"


def _feed_bands(cube_bands: list[str], model: Any, bands: Any) -> list[str]:
    """Return the cube bands to feed the model, in its input order (see :func:`predict`)."""
    expected = model_bands(model)
    n = model_n_inputs(model)
    name = type(model).__name__
    if bands is not None:
        if isinstance(bands, Mapping):
            if expected is None:
                raise BandError(
                    f"bands={dict(bands)!r} maps model band names, but this {name} records "
                    f"none (fitted on unnamed arrays); pass a list of the cube bands in the "
                    f"model's input order instead (cube bands are {cube_bands})"
                )
            unknown = [str(k) for k in bands if str(k) not in expected]
            absent = [b for b in expected if b not in {str(k) for k in bands}]
            if unknown or absent:
                raise BandError(
                    f"bands= maps {list(map(str, bands))}, but the model's input bands are "
                    f"{expected}"
                    + (f"; unknown: {unknown}" if unknown else "")
                    + (f"; not mapped: {absent}" if absent else "")
                )
            lookup = {str(k): v for k, v in bands.items()}
            feed = check_band_names([lookup[b] for b in expected], n, "bands")
        else:
            feed = check_band_names(bands, n, "bands")
            if expected is not None and feed != expected:
                raise BandError(
                    f"bands={feed} are not the model's training bands {expected} (a list "
                    f"names the cube bands for the model's inputs in order, and this {name} "
                    f"records its own); map them by name with bands={{model band: cube band}}, "
                    f"or rename the model's inputs with set_bands"
                )
        require_bands(cube_bands, feed, by="bands")
        return feed
    if expected is None:
        count = f"{n} inputs" if n is not None else "its inputs"
        raise BandError(
            f"this {name} was fitted on unnamed arrays ({count}), so which cube band feeds "
            f"which input cannot be checked; cube bands are {cube_bands}. Name the cube bands "
            f"for the model's inputs, in its input order: {_how_to_name(model)} (or fit it on "
            "a DataFrame or cube whose band names it keeps)"
        )
    if n is not None and len(expected) != n:
        raise ModelError(
            f"this {name} records {len(expected)} band names {expected} for {n} inputs"
        )
    if cube_bands == expected:
        return expected
    if set(cube_bands) == set(expected):
        return expected  # same bands in another order: reordered by name
    missing = [b for b in expected if b not in cube_bands]
    extra = [b for b in cube_bands if b not in expected]
    if missing:
        hint = (
            f"; missing {missing}. If the cube names them differently, map them with "
            f"bands={{model band: cube band}} or rename the model's inputs with set_bands"
        )
    else:
        hint = f"; select them with bands={expected} (the cube has extra bands {extra})"
    raise BandError(
        f"cube bands {cube_bands} are not the model's training bands {expected} "
        f"(the same names are required; the order may differ){hint}"
    )


def _check_kinds(da: xr.DataArray, model: Any) -> None:
    """Warn when bands that hold codes (flags, classes) are fed to a model as numbers."""
    from xfusion.bands import band_kinds, describe_kinds

    kinds = {b: k for b, k in band_kinds(da).items() if k != "continuous"}
    if kinds:
        warnings.warn(
            f"bands {describe_kinds(kinds)} are fed to {type(model).__name__} as numbers, but "
            "they hold codes, not continuous values (a model reads bit flags and class labels "
            "as magnitudes); decode flags with mask_bits or one-hot encode classes first, or "
            "mark the bands 'continuous' with xfusion.bands.set_band_kinds if their numbers "
            "are meaningful as such",
            XFusionWarning,
            stacklevel=3,
        )


def _check_fitted(model: Any) -> None:
    """Raise :class:`ModelError` now for an unfitted model, not later inside a Dask task."""
    check = getattr(model, "_check_fitted", None)
    if callable(check):
        check()
        return
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except NotFittedError as err:
        raise ModelError(f"this {type(model).__name__} is not fitted yet; call fit first") from err
    except TypeError:  # not a scikit-learn estimator: nothing to check
        pass


def _output_da(da: xr.DataArray, data, dims: Sequence[str], bands: list[str], name: str):
    coords = {
        k: v for k, v in da.coords.items() if "band" not in v.dims and set(v.dims) <= set(dims)
    }
    out = xr.DataArray(data, dims=tuple(dims), coords=coords, name=name)
    return out.assign_coords(band=bands)


# ----------------------------------------------------------------------------------------------
# Pixel models
# ----------------------------------------------------------------------------------------------


def class_label(value: Any) -> str:
    """Return a class value as band names show it: ``1``, ``1.0`` and ``True`` give ``"1"``.

    Labels sampled from a float cube are floats (``1.0``) while the same classes fitted from
    integers are ints (``1``); the probability band of a class gets one name either way.

    Examples
    --------
    >>> [class_label(v) for v in (1, 1.0, True, 2.5, "urban")]
    ['1', '1', '1', '2.5', 'urban']
    """
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, int | float | np.number):
        f = float(value)
        return str(int(f)) if f.is_integer() else str(value)
    return str(value)


def _check_class_values(model: Any, classes: Any) -> None:
    """Class labels must survive the float32 ``class`` band exactly (NaN marks nodata)."""
    values = np.asarray(classes)
    if values.dtype == bool:
        return
    if not np.issubdtype(values.dtype, np.number):
        raise ModelError(
            f"class labels {list(classes)} are not numeric and cannot be a float32 band; "
            "use proba=True or fit with integer labels"
        )
    as_float = values.astype(np.float32)
    if not np.array_equal(as_float.astype(values.dtype), values):
        lossy = values[as_float.astype(values.dtype) != values]
        raise ModelError(
            f"class labels {lossy[:5].tolist()} of this {type(model).__name__} are not exactly "
            "representable in the float32 'class' band (float32 holds integers exactly up to "
            "2**24 = 16777216); fit with labels 0..k-1 and map them back, or use proba=True"
        )


def _pixel_outputs(model: Any, proba: bool) -> tuple[list[str], str]:
    if proba:
        if not hasattr(model, "predict_proba"):
            raise ModelError(f"{type(model).__name__} has no predict_proba; use proba=False")
        classes = getattr(model, "classes_", None)
        if classes is None:
            raise ModelError(f"{type(model).__name__} has no classes_; is it a fitted classifier?")
        names = [f"proba_{class_label(c)}" for c in classes]
        if len(set(names)) != len(names):  # e.g. classes 1 and "1"
            names = [f"proba_{c}" for c in classes]
        return names, "proba"
    bands = getattr(model, "output_bands_", None)
    if bands is not None:
        return [str(b) for b in bands], "predict"
    if hasattr(model, "cluster_centers_") or hasattr(model, "labels_"):
        return ["cluster"], "predict"
    classes = getattr(model, "classes_", None)
    if classes is not None:
        _check_class_values(model, classes)
        return ["class"], "predict"
    n_out = getattr(model, "n_outputs_", None)
    if n_out is None:
        coef = getattr(model, "coef_", None)
        n_out = 1 if coef is None or np.ndim(coef) < 2 else np.shape(coef)[0]
    n_out = int(n_out)
    return (["prediction"] if n_out == 1 else [f"prediction_{i}" for i in range(n_out)]), "predict"


def _pixel_block(
    block: np.ndarray, model: Any, *, n_out: int, method: str, batch_size: int | None
) -> np.ndarray:
    """(…, band, y, x) → (…, out, y, x); rows with a NaN are never given to the model."""
    block = np.asarray(block)
    lead, (nb, ny, nx) = block.shape[:-3], block.shape[-3:]
    # float64 rows: scikit-learn estimators fitted on float64 reject float32 in places (KMeans)
    rows = np.moveaxis(block, -3, -1).reshape(-1, nb).astype(np.float64)
    valid = np.isfinite(rows).all(axis=1)
    out = np.full((rows.shape[0], n_out), np.nan, dtype=np.float32)
    idx = np.flatnonzero(valid)
    step = batch_size or max(len(idx), 1)
    fn = getattr(model, "predict_proba" if method == "proba" else "predict")
    # An estimator fitted on a named table expects the same column names (else it warns).
    names = getattr(model, "feature_names_in_", None)
    for start in range(0, len(idx), step):
        sel = idx[start : start + step]
        chunk = rows[sel] if names is None else pd.DataFrame(rows[sel], columns=list(names))
        result = np.asarray(fn(chunk))
        out[sel] = result.reshape(len(sel), -1).astype(np.float32)
    out = out.reshape(*lead, ny, nx, n_out)
    return np.moveaxis(out, -1, -3)


def _predict_pixels(da: xr.DataArray, model: Any, *, proba: bool, batch_size: int | None):
    bands, method = _pixel_outputs(model, proba)
    lead = [d for d in da.dims if d not in _SPATIAL]
    dims = (*lead, *_SPATIAL)
    cube = da.transpose(*dims)
    fn = partial(_pixel_block, n_out=len(bands), method=method, batch_size=batch_size)
    if cube.chunks is None:
        return _output_da(da, fn(cube.data, model), dims, bands, "prediction")
    data = cube.data.rechunk({len(lead): -1})
    _threadpool.ensure_registered()  # one BLAS thread per block task on the threaded scheduler
    # The model is one key in the graph: every block task refers to it instead of embedding it.
    model_key = dask.delayed(model, pure=True, traverse=False)
    idx = "abcdefgh"[: len(lead)] + "BYX"
    out = dsa.blockwise(
        fn,
        idx.replace("B", "K"),
        data,
        idx,
        model_key,
        None,
        new_axes={"K": len(bands)},
        concatenate=True,
        dtype=np.float32,
        meta=np.empty((0,) * data.ndim, np.float32),
    )
    return _output_da(da, out, dims, bands, "prediction")


# ----------------------------------------------------------------------------------------------
# Spatial models
# ----------------------------------------------------------------------------------------------


def _spatial_parts(model: Any):
    """``(apply_tiles, config, params)`` of a spatial model."""
    state = model.inference_state()
    if isinstance(state, Mapping):
        config, params = state["config"], state["params"]
    else:
        config, params = state
    apply = getattr(model, "apply_tiles", None)
    if apply is None:
        apply = getattr(sys.modules.get(type(model).__module__), "apply_tiles", None)
    if apply is None:
        from xfusion.models.unet import apply_tiles as apply
    return apply, config, params


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _cosine_ramp(size: int, halo: int) -> np.ndarray:
    """1-D weights of a block read with ``halo`` px each side (``size`` = interior + 2·halo).

    Neighbouring blocks overlap by ``2·halo`` px. Each block's weight is 0 over its outer
    ``halo // 2`` px (predicted with the least context), rises as ``sin²`` over the next
    ``2·halo − 2·(halo // 2)`` px and is 1 inside, so the two weights of an overlap add up to 1.
    """
    w = np.ones(size)
    margin = halo // 2
    ramp = 2 * halo - 2 * margin
    t = (np.arange(ramp) + 0.5) / ramp
    rise = np.sin(0.5 * np.pi * t) ** 2
    w[:margin] = 0.0
    w[margin : margin + ramp] = rise
    w[size - margin :] = 0.0
    w[size - margin - ramp : size - margin] = rise[::-1]
    return w


_first_call_lock = threading.Lock()
_warm: set[tuple[Any, ...]] = set()


def _apply_once_per_shape(apply, config, params, batch: np.ndarray) -> np.ndarray:
    """Call ``apply``; the first call per (function, config, shape) holds a lock.

    Threads that reach a new shape together would otherwise each trace and compile it.
    """
    key = (id(apply), id(config), batch.shape)
    if key in _warm:
        return np.asarray(apply(config, params, batch), dtype=np.float32)
    with _first_call_lock:
        out = np.asarray(apply(config, params, batch), dtype=np.float32)
        _warm.add(key)
    return out


def _spatial_block(
    block: np.ndarray,
    config: Any,
    params: Any,
    *,
    apply,
    n_out: int,
    halo: int,
    tile: int,
    batch_size: int,
    lead_shape: tuple[int, ...],
    blend: str,
) -> np.ndarray:
    """Predict one block read with a ``halo``.

    ``block`` is ``(…, band, H, W)`` with ``H = interior + 2·halo``; the interior is a multiple
    of ``tile``. The leading dims are padded to ``lead_shape`` and tiles batched to
    ``batch_size`` so the model always sees ``(batch_size, band, tile + 2·halo, …)``. Returns the
    interior ``(…, out, interior_y, interior_x)``, or the whole ``H × W`` weighted by cosine ramps
    when ``blend="cosine"`` (neighbouring blocks are summed afterwards).
    """
    enable_compilation_cache()
    block = np.asarray(block, dtype=np.float32)
    lead = block.shape[:-3]
    nb, hh, ww = block.shape[-3:]
    flat = block.reshape(-1, nb, hh, ww)
    n_lead = flat.shape[0]
    full_lead = math.prod(lead_shape)
    iy, ix = hh - 2 * halo, ww - 2 * halo
    ty, tx = iy // tile, ix // tile
    size = tile + 2 * halo
    tiles = [
        flat[i, :, a * tile : a * tile + size, b * tile : b * tile + size]
        for i in range(n_lead)
        for a in range(ty)
        for b in range(tx)
    ]
    pad_tiles = full_lead * ty * tx - len(tiles)
    empty = np.zeros((nb, size, size), np.float32)
    tiles += [empty] * pad_tiles
    results = []
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        batch += [empty] * (batch_size - len(batch))
        pred = _apply_once_per_shape(apply, config, params, np.stack(batch))
        if pred.shape != (batch_size, n_out, size, size):
            raise ModelError(
                f"apply_tiles returned shape {pred.shape}; expected "
                f"{(batch_size, n_out, size, size)}"
            )
        results.append(pred)
    pred = np.concatenate(results)[: n_lead * ty * tx].reshape(n_lead, ty, tx, n_out, size, size)
    nodata = np.isnan(flat).any(axis=1)  # (n_lead, H, W)
    if blend == "trim":
        core = pred[..., halo : halo + tile, halo : halo + tile]
        out = core.transpose(0, 3, 1, 4, 2, 5).reshape(n_lead, n_out, iy, ix)
        inner = nodata[:, None, halo : halo + iy, halo : halo + ix]
        out[np.broadcast_to(inner, out.shape)] = np.nan
        return out.reshape(*lead, n_out, iy, ix)
    # cosine: stitch the tiles (trimmed), keep the halo from the outer tiles, weight the block
    out = np.empty((n_lead, n_out, hh, ww), np.float32)
    for a in range(ty):
        for b in range(tx):
            y0 = 0 if a == 0 else halo + a * tile
            y1 = hh if a == ty - 1 else halo + (a + 1) * tile
            x0 = 0 if b == 0 else halo + b * tile
            x1 = ww if b == tx - 1 else halo + (b + 1) * tile
            out[:, :, y0:y1, x0:x1] = pred[
                :, a, b, :, y0 - a * tile : y1 - a * tile, x0 - b * tile : x1 - b * tile
            ]
    out = np.where(nodata[:, None], np.float32(0), out)
    weight = np.outer(_cosine_ramp(hh, halo), _cosine_ramp(ww, halo)).astype(np.float32)
    valid = (~nodata[:, None]).astype(np.float32) * weight
    stacked = np.concatenate([out * weight, valid], axis=1)  # last channel: weights
    return stacked.reshape(*lead, n_out + 1, hh, ww)


@dataclass(frozen=True)
class SpatialPlan:
    """How a cube is cut into blocks and tiles for a spatial model (metadata only, no data).

    Attributes
    ----------
    shape : (int, int)
        Height and width of the cube.
    halo : int
        Context read around every block (px), a multiple of the model's ``tile_multiple_``.
    tile : int
        Side of the square tiles given to the model.
    block : (int, int)
        Interior height and width of a block, multiples of ``tile``.
    padding : (int, int)
        Zeros added at the bottom and right (beyond the halo) so the blocks divide the cube.
    lead_chunks : tuple of tuple of int
        Chunks of the leading (time) dims; every block is padded to their largest size.
    batch_size : int
        Tiles per ``apply_tiles`` call.
    n_out : int
        Output bands of the model.
    blend, boundary : str
        See :func:`predict`.
    dtype : str
        Of the input given to the model and of the result.
    """

    shape: tuple[int, int]
    halo: int
    tile: int
    block: tuple[int, int]
    padding: tuple[int, int]
    lead_chunks: tuple[tuple[int, ...], ...]
    batch_size: int
    n_out: int
    blend: str
    boundary: str
    dtype: str = "float32"

    @property
    def lead_shape(self) -> tuple[int, ...]:
        """Leading dims of every block (edge blocks are padded to it)."""
        return tuple(max(c) for c in self.lead_chunks)

    @property
    def blocks(self) -> tuple[int, int]:
        """Number of blocks along y and x."""
        return tuple(  # type: ignore[return-value]
            (n + p) // c for n, p, c in zip(self.shape, self.padding, self.block, strict=True)
        )

    @property
    def input_chunks(self) -> tuple[Any, ...]:
        """Chunks of the halo-padded input: ``[h + c, c, …, c, c + h]`` along y and x.

        With ``dask.array.overlap`` of depth ``halo`` every block is then ``c + 2·halo``.
        """

        def axis(n: int, p: int, c: int) -> tuple[int, ...]:
            chunks = [c] * ((n + p) // c)
            chunks[0] += self.halo
            chunks[-1] += self.halo
            return tuple(chunks)

        ys, xs = (axis(*a) for a in zip(self.shape, self.padding, self.block, strict=True))
        return (*self.lead_chunks, -1, ys, xs)

    @property
    def block_result(self) -> tuple[int, int, int]:
        """Bands, height and width of one block's result before blending.

        The interior ``(n_out, cy, cx)`` for ``blend="trim"``; for ``"cosine"`` the whole block
        read with its halo, weighted, plus the weights: ``(n_out + 1, cy + 2h, cx + 2h)``.
        """
        cy, cx = self.block
        if self.blend == "trim":
            return self.n_out, cy, cx
        return self.n_out + 1, cy + 2 * self.halo, cx + 2 * self.halo

    @property
    def output_chunks(self) -> tuple[tuple[int, ...], ...]:
        """Chunks of the result before it is cropped to :attr:`shape`."""
        (nyb, nxb), (cy, cx) = self.blocks, self.block
        return (*self.lead_chunks, (self.n_out,), (cy,) * nyb, (cx,) * nxb)


def _spatial_plan(
    cube: xr.DataArray,
    model: Any,
    *,
    n_out: int,
    halo: int | None,
    tile: int | None,
    batch_size: int | None,
    blend: str,
    boundary: str,
) -> SpatialPlan:
    """Check the arguments of a spatial prediction and size its blocks and tiles."""
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    multiple = int(getattr(model, "tile_multiple_", 1) or 1)
    # the one halo rule (xfusion.validate.check_halo); a halo given here is rounded up to the
    # model's tile multiple, the model's own default_halo_ is one already
    if halo is None:
        halo = check_halo(int(getattr(model, "default_halo_", 0) or 0), multiple, round_up=True)
    else:
        halo = check_halo(halo, multiple, shape=(ny, nx), round_up=True)
    if blend not in _BLENDS:
        raise InputError(f"blend must be one of {_BLENDS}; got {blend!r}")
    if boundary not in _BOUNDARIES:
        raise InputError(f"boundary must be one of {_BOUNDARIES}; got {boundary!r}")
    if blend == "cosine" and halo == 0:
        raise InputError("blend='cosine' needs a halo > 0 (the overlap that is blended)")
    n_lead = cube.ndim - 3
    lazy = cube.chunks is not None
    # Interior block size: the user's chunking rounded to the tile, at least the halo; an
    # eager cube is one block.
    cy, cx = (max(cube.chunks[-2]), max(cube.chunks[-1])) if lazy else (ny, nx)
    if tile is None:
        tile = max(_round_up(max(cy, halo, 1), multiple), _round_up(max(cx, halo, 1), multiple))
        if lazy:  # square tiles of the larger chunk side; blocks one tile each
            cy = cx = tile
    else:
        tile = _round_up(int(tile), multiple)
        cy = _round_up(max(min(cy, ny), halo, 1), tile)
        cx = _round_up(max(min(cx, nx), halo, 1), tile)
    if not lazy:
        cy, cx = _round_up(ny, tile), _round_up(nx, tile)
    lead_chunks = cube.chunks[:n_lead] if lazy else tuple((s,) for s in cube.shape[:n_lead])
    lead_shape = tuple(max(c) for c in lead_chunks)
    tiles_per_block = math.prod(lead_shape) * (cy // tile) * (cx // tile)
    batch_size = int(batch_size or tiles_per_block)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1; got {batch_size}")
    return SpatialPlan(
        shape=(ny, nx),
        halo=halo,
        tile=tile,
        block=(cy, cx),
        padding=(_round_up(ny, cy) - ny, _round_up(nx, cx) - nx),
        lead_chunks=tuple(tuple(c) for c in lead_chunks),
        batch_size=batch_size,
        n_out=n_out,
        blend=blend,
        boundary=boundary,
    )


def _predict_eager(plan: SpatialPlan, fn, data: np.ndarray, config: Any, params: Any):
    """Predict an eager cube as one block: pad it, predict it, crop (normalise the blend)."""
    (ny, nx), h = plan.shape, plan.halo
    padded = _pad_edges(np.asarray(data, dtype=plan.dtype), h, plan.padding, plan.boundary)
    result = fn(padded, config, params)
    if plan.blend == "cosine":
        return _normalise(result, plan.n_out)[..., h : h + ny, h : h + nx].astype(plan.dtype)
    return result[..., :ny, :nx].astype(plan.dtype)


def _predict_blockwise(plan: SpatialPlan, fn, data: dsa.Array, config: Any, params: Any):
    """Build the graph: halo-overlapped blocks, one ``fn`` task per block, blended or trimmed."""
    (ny, nx), h = plan.shape, plan.halo
    n_lead = len(plan.lead_chunks)
    data = data.astype(plan.dtype).rechunk({n_lead: -1})
    padded = _pad_edges(data, h, plan.padding, plan.boundary).rechunk(plan.input_chunks)
    depth = {padded.ndim - 2: h, padded.ndim - 1: h}
    overlapped = dsa.overlap.overlap(padded, depth=depth, boundary="none") if h else padded
    # config and params are one key each, shared by every block task
    config_key = dask.delayed(config, pure=True, traverse=False)
    params_key = dask.delayed(params, pure=True, traverse=False)
    idx = "abcdefgh"[:n_lead] + "BYX"
    bands, by, bx = plan.block_result
    meta = np.empty((0,) * data.ndim, plan.dtype)
    out = dsa.blockwise(
        fn,
        idx.replace("B", "K"),
        overlapped,
        idx,
        config_key,
        None,
        params_key,
        None,
        new_axes={"K": bands},
        adjust_chunks={"Y": lambda _: by, "X": lambda _: bx},
        concatenate=True,
        dtype=plan.dtype,
        meta=meta,
    )
    if plan.blend == "cosine":
        depth2 = {out.ndim - 2: 2 * h, out.ndim - 1: 2 * h}
        gathered = dsa.overlap.overlap(out, depth=depth2, boundary="none")
        out = gathered.map_blocks(
            _blend_sum,
            halo=h,
            n_out=plan.n_out,
            nblocks=plan.blocks,
            chunks=plan.output_chunks,
            dtype=plan.dtype,
            meta=meta,
        )
    return out[..., :ny, :nx]


def _predict_spatial(
    da: xr.DataArray,
    model: Any,
    *,
    halo: int | None,
    tile: int | None,
    batch_size: int | None,
    blend: str,
    boundary: str,
    precision: str = "fp32",
    fold_batchnorm: bool = False,
):
    apply, config, params = _spatial_parts(model)
    if precision != "fp32" or fold_batchnorm:
        from xfusion.models import inference, unet

        if apply is not unet.apply_tiles:
            raise ModelError(
                "precision and fold_batchnorm apply to xfusion U-Nets (applied with "
                f"xfusion.models.unet.apply_tiles); {type(model).__name__} has its own apply_tiles"
            )
        config, params = inference.inference_options(
            config, params, precision=precision, fold=fold_batchnorm
        )
        apply = inference.apply_tiles
    out_bands = [str(b) for b in getattr(model, "output_bands_", ["prediction"])]
    dims = (*[d for d in da.dims if d not in _SPATIAL], *_SPATIAL)
    cube = da.transpose(*dims)
    plan = _spatial_plan(
        cube,
        model,
        n_out=len(out_bands),
        halo=halo,
        tile=tile,
        batch_size=batch_size,
        blend=blend,
        boundary=boundary,
    )
    fn = partial(
        _spatial_block,
        apply=apply,
        n_out=plan.n_out,
        halo=plan.halo,
        tile=plan.tile,
        batch_size=plan.batch_size,
        lead_shape=plan.lead_shape,
        blend=plan.blend,
    )
    run = _predict_eager if cube.chunks is None else _predict_blockwise
    return _output_da(da, run(plan, fn, cube.data, config, params), dims, out_bands, "prediction")


def _pad_edges(arr, halo: int, extra: tuple[int, int], mode: str):
    """Pad the last two axes by ``halo`` with ``mode``, then by ``extra`` (end only) with zeros.

    The zeros beyond ``halo`` are only ever seen by pixels outside the cube (cropped later).
    Reflection wider than the array is done in steps, the same way for numpy and Dask.
    """
    lib = dsa if isinstance(arr, dsa.Array) else np
    lead = [(0, 0)] * (arr.ndim - 2)
    done = 0
    while done < halo:
        if mode == "constant":
            step = halo - done
            arr = lib.pad(arr, [*lead, (step, step), (step, step)], mode="constant")
        else:
            size = min(arr.shape[-2:])
            step = min(halo - done, size - 1) if mode == "reflect" and size > 1 else halo - done
            use = mode if mode != "reflect" or size > 1 else "edge"
            arr = lib.pad(arr, [*lead, (step, step), (step, step)], mode=use)
        done += step
    if any(extra):
        arr = lib.pad(arr, [*lead, (0, extra[0]), (0, extra[1])], mode="constant")
    return arr


def _blend_sum(
    block: np.ndarray,
    *,
    halo: int,
    n_out: int,
    nblocks: tuple[int, int],
    block_info=None,
) -> np.ndarray:
    """Sum a weighted block with the overlapping parts of its neighbours; normalise; trim.

    ``block`` comes from ``dask.array.overlap`` with depth ``2·halo`` over blocks of weighted
    predictions ``(…, out + 1, I + 2h, I + 2h)``; along y and x it is
    ``[2h of previous | own I + 2h | 2h of next]``, the neighbour parts absent at the edges.
    """
    loc = block_info[0]["chunk-location"]
    iy_, ix_ = loc[-2], loc[-1]
    h2 = 2 * halo

    def axis_parts(index: int, nblock: int, length: int):
        has_prev = index > 0
        has_next = index < nblock - 1
        start = h2 if has_prev else 0
        stop = length - (h2 if has_next else 0)
        return has_prev, has_next, start, stop

    hy, ny_, y0, y1 = axis_parts(iy_, nblocks[0], block.shape[-2])
    hx, nx_, x0, x1 = axis_parts(ix_, nblocks[1], block.shape[-1])
    own = block[..., y0:y1, x0:x1].copy()
    # Own block covers [-h, I + h) around its interior; previous block's last 2h rows cover
    # [-h, h); the next block's first 2h rows cover [I - h, I + h).
    for dy, ys, yd in ((-1, slice(0, y0), slice(0, h2)), (1, slice(y1, None), slice(-h2, None))):
        if (dy == -1 and hy) or (dy == 1 and ny_):
            own[..., yd, :] += block[..., ys, x0:x1]
    for dx, xs, xd in ((-1, slice(0, x0), slice(0, h2)), (1, slice(x1, None), slice(-h2, None))):
        if (dx == -1 and hx) or (dx == 1 and nx_):
            own[..., :, xd] += block[..., y0:y1, xs]
    for ys, yd, yok in ((slice(0, y0), slice(0, h2), hy), (slice(y1, None), slice(-h2, None), ny_)):
        for xs, xd, xok in (
            (slice(0, x0), slice(0, h2), hx),
            (slice(x1, None), slice(-h2, None), nx_),
        ):
            if yok and xok:
                own[..., yd, xd] += block[..., ys, xs]
    return _normalise(own, n_out)[..., halo:-halo, halo:-halo]


def _normalise(stacked: np.ndarray, n_out: int) -> np.ndarray:
    """Weighted sums (channels ``:n_out``) divided by the weights (last channel); NaN at 0."""
    values, weight = stacked[..., :n_out, :, :], stacked[..., n_out:, :, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, values / weight, np.nan).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def predict(
    da: xr.DataArray,
    model: PixelModel | SpatialModel,
    *,
    halo: int | None = None,
    tile: int | None = None,
    batch_size: int | None = None,
    proba: bool = False,
    blend: str = "trim",
    boundary: str = "reflect",
    bands: Sequence[str] | Mapping[str, str] | None = None,
    precision: str = "fp32",
    fold_batchnorm: bool = False,
) -> xr.DataArray:
    """Apply a fitted model to every pixel (or tile) of a cube, lazily and blockwise.

    Which cube band feeds which model input is always checked by name, with one rule for every
    model (xfusion's ``Ridge``, ``KernelRidge``, ``UNetRegressor``, ``UNetSegmenter`` and any
    scikit-learn estimator):

    * a model fitted from a cube, a DataFrame or named patches keeps its band names
      (:func:`model_bands`: ``bands_``, or scikit-learn's ``feature_names_in_``); the cube must
      hold exactly those bands, in any order (they are reordered by name);
    * a model fitted on bare arrays records no names, and a cube is refused until the names are
      given: ``bands=[...]`` here, or once with ``model.set_bands([...])`` (or
      :func:`set_bands` for a scikit-learn estimator), which ``save`` keeps.

    Parameters
    ----------
    da : xarray.DataArray
        Cube ``(band, y, x)`` or ``(time, band, y, x)`` holding the model's input bands.
    model : PixelModel or SpatialModel
        A **pixel model** (:class:`~xfusion.models.base.PixelModel`: has ``predict``; xfusion
        ``Ridge``/``KernelRidge`` or any fitted scikit-learn estimator) or a **spatial model**
        (:class:`~xfusion.models.base.SpatialModel`: has ``inference_state()`` returning
        ``(config, params)`` and an ``apply_tiles(config, params, tiles)`` function, attributes
        ``bands_``, ``output_bands_``, ``tile_multiple_``, ``default_halo_``).
    halo : int, optional
        Spatial models: context read around every block (px), rounded up to ``tile_multiple_``
        (the rule of :func:`xfusion.validate.check_halo`, which a U-Net's ``fit`` applies to its
        own ``halo`` before training); default the model's ``default_halo_``. Blockwise equals
        whole-array prediction where the model's receptive field fits inside the halo.
    tile : int, optional
        Spatial models: side of the square tiles given to the model (a multiple of
        ``tile_multiple_``); default one tile per block.
    batch_size : int, optional
        Spatial models: tiles per ``apply_tiles`` call (default all tiles of a block); pixel
        models: rows per ``predict`` call (default all valid pixels of a block).
    proba : bool
        Pixel classifiers: return ``predict_proba`` as bands ``"proba_<class>"``.
    blend : {"trim", "cosine"}
        Spatial models: drop the halo of every block's prediction (``"trim"``), or weight each
        block's prediction with ``sin²``/``cos²`` ramps across the central part of the
        ``2·halo`` overlap with its neighbours and sum (``"cosine"``, which softens seams where
        the halo is smaller than the receptive field; exact where the receptive field is at
        most ``halo // 2``).
    boundary : {"reflect", "edge", "constant"}
        Spatial models: how the cube is padded beyond its edges (``"constant"`` pads with 0).
    bands : list of str or dict, optional
        The cube bands to feed the model, in the model's input order (a subset of the cube's
        bands); checked against the cube, the model's number of inputs and, when the model
        records names, against those names. A dict ``{model band: cube band}`` maps the
        recorded names to differently named cube bands (``{"B04": "s2:B04", ...}``).
    precision : {"fp32", "bf16"}
        xfusion U-Nets: compute in float32 (default) or bfloat16 (weights and activations;
        input normalisation and output scaling stay float32). bf16 changes the outputs by about
        1 % of their spread (the ``unet`` benchmark records the maximum absolute difference on
        its scene) and is faster only where the hardware has bfloat16 units (GPUs; on CPUs XLA
        may emulate it); see :mod:`xfusion.models.inference`.
    fold_batchnorm : bool
        xfusion U-Nets: fold every BatchNorm into the convolution before it
        (:func:`xfusion.models.inference.fold_batchnorm`): the same function up to float32
        rounding, fewer operations per pixel.

    Returns
    -------
    xarray.DataArray
        float32 ``(…, band, y, x)`` on the input grid, with ``band`` the model's output bands
        (``output_bands_``; ``"class"`` for classifiers — labels as float —, ``"cluster"`` for
        clusterers, ``"prediction"`` otherwise). NaN where any input band is NaN. Lazy for a
        chunked cube, numpy-backed for an eager one.

    Raises
    ------
    InputError
        ``da`` lacks ``band``/``y``/``x`` dims, or ``halo``/``tile``/``batch_size``/``blend``/
        ``boundary``/``precision`` are invalid (a given ``halo`` larger than the cube's smaller
        side included), or ``precision``/``fold_batchnorm`` are given for a pixel model.
    BandError
        The cube lacks (or has more than) the model's recorded bands, the model records no
        band names and ``bands`` is not given, ``bands`` disagrees with the cube or the model,
        or band names repeat. The message names the cube's bands, the model's and the fix.

    Warns
    -----
    XFusionWarning
        A band fed to the model is not ``"continuous"`` (``band_kind`` ``"flags"`` or
        ``"categorical"``, see :mod:`xfusion.bands`): its numbers are codes, not magnitudes.
    ModelError
        The model is not fitted or cannot be applied.

    Notes
    -----
    The model (pixel) or its ``config``/``params`` (spatial) are single keys of the Dask graph,
    shared by all blocks; on a ``distributed`` cluster they are shipped to each worker once.
    Spatial blocks are padded to one shape and tiles batched to ``batch_size``, so the jitted
    function compiles once per cube; JAX's persistent compilation cache is enabled in every
    process (:func:`enable_compilation_cache`). For JAX models run one thread per worker on CPU
    (XLA has its own thread pool); on GPU one worker process per GPU with
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so workers do not grab all memory.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from sklearn.linear_model import LinearRegression
    >>> rng = np.random.default_rng(0)
    >>> cube = xr.DataArray(rng.random((2, 4, 6), dtype=np.float32), dims=("band", "y", "x"),
    ...                     coords={"band": ["B04", "B08"]}).chunk({"y": 2})
    >>> model = LinearRegression().fit(rng.random((20, 2)), rng.random(20))
    >>> pred = predict(cube, model, bands=["B04", "B08"])  # fitted on unnamed columns
    >>> pred.dims, pred.band.values.tolist(), pred.chunks[1]
    (('band', 'y', 'x'), ['prediction'], (2, 2))
    >>> predict(cube, model)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xfusion.errors.BandError: this LinearRegression was fitted on unnamed arrays (2 inputs), ...
    >>> named = set_bands(model, ["B08", "B04"])  # now cubes are matched by name
    >>> swapped = predict(cube.sel(band=["B08", "B04"]), named)
    >>> bool((swapped == predict(cube, named)).all())
    True
    """
    cube_bands = _check_cube(da)
    if precision not in _PRECISIONS:
        raise InputError(f"precision must be one of {list(_PRECISIONS)}; got {precision!r}")
    spatial = isinstance(model, SpatialModel)
    if not spatial and not isinstance(model, PixelModel):
        raise ModelError(
            f"{type(model).__name__} has neither predict (pixel model) nor inference_state "
            "(spatial model)"
        )
    _check_fitted(model)
    feed = _feed_bands(cube_bands, model, bands)
    if feed != cube_bands:
        da = da.sel(band=feed)
    _check_kinds(da, model)
    if spatial:
        if proba:
            raise InputError("proba=True is for pixel classifiers; spatial models set their output")
        return _predict_spatial(
            da,
            model,
            halo=halo,
            tile=tile,
            batch_size=batch_size,
            blend=blend,
            boundary=boundary,
            precision=precision,
            fold_batchnorm=bool(fold_batchnorm),
        )
    if precision != "fp32" or fold_batchnorm:
        raise InputError(
            "precision and fold_batchnorm apply to spatial models (xfusion U-Nets); "
            f"{type(model).__name__} is a pixel model"
        )
    return _predict_pixels(da, model, proba=proba, batch_size=batch_size)
