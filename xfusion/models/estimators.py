"""scikit-learn style U-Net estimators: :class:`UNetRegressor` and :class:`UNetSegmenter`.

Parameters are stored by ``__init__`` only; ``fit`` learns the input normalisation, trains the
network with :func:`~xfusion.models.train.train_and_evaluate` and returns ``self``; fitted
attributes end in ``_``. ``predict`` is eager on numpy arrays and lazy on cubes (through
:func:`xfusion.models.predict.predict`). ``save(path)`` / :func:`xfusion.models.load_model` store
the model without pickle.

Fitted spatial estimators expose, for blockwise prediction: ``bands_`` (training band order),
``output_bands_``, ``tile_multiple_`` (``2 ** depth``; tiles of sides multiple of it are not
padded),
``default_halo_`` and :meth:`~UNetRegressor.inference_state`, whose ``(config, params)`` feed
:func:`xfusion.models.unet.apply_tiles`.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import BandError, InputError, ModelError
from xfusion.models import persist
from xfusion.models.base import Estimator
from xfusion.models.losses import LossSpec
from xfusion.models.predict import check_band_names
from xfusion.models.unet import (
    NORMS,
    PRESETS,
    TARGET_TRANSFORMS,
    apply_tiles,
    build_unet,
    default_halo,
    member_params,
    unet_params,
)
from xfusion.validate import check_halo

__all__ = ["UNetRegressor", "UNetSegmenter", "target_region_statistics"]

_INPUT_NAMES = ("inputs", "features", "X", "x")
_TARGET_NAMES = ("target", "targets", "labels", "label", "y")
_FOOTPRINT_NAMES = ("footprint", "weights", "weight")
_REGION_NAMES = ("region", "scene")

#: The normalisation keys of a U-Net's config_, saved under the sidecar's "normalisation".
_NORMALISATION = ("input_mean", "input_std", "target_offset", "target_scale")

#: Input standardisation of the U-Net estimators: one mean and standard deviation per band
#: learned in ``fit`` (``"global"``), or the statistics of each region / scene
#: (``"per_region"``).
STANDARDIZE = ("global", "per_region")

#: Target standardisation of :class:`UNetRegressor`: one offset and scale per target band
#: (``"global"``), or those of each region (``"per_region"``), see its docstring.
TARGET_STANDARDIZE = ("global", "per_region")

#: Fewest samples for an automatic validation split (fewer train on everything).
_MIN_SPLIT_SAMPLES = 4


# ----------------------------------------------------------------------------------------------
# Turning patches (Dataset / DataArray / numpy) into arrays
# ----------------------------------------------------------------------------------------------


def _pick(ds: xr.Dataset, names: Sequence[str], what: str) -> xr.DataArray | None:
    for name in names:
        if name in ds.data_vars:
            return ds[name]
    return None


def _as_4d(obj: Any, what: str, *, allow_3d: bool) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """``(sample, band, y, x)`` float32 numpy array and band names (None when unnamed)."""
    names = None
    if isinstance(obj, xr.DataArray):
        spatial = [d for d in ("y", "x") if d in obj.dims]
        lead = [d for d in obj.dims if d not in spatial]
        if len(spatial) != 2 or not 1 <= len(lead) <= 2:
            raise InputError(f"{what} must have dims (sample, band, y, x); got {obj.dims}")
        if len(lead) == 2:
            band_dim = next((d for d in lead if d != "sample"), lead[1])
            sample_dim = next(d for d in lead if d != band_dim)
            obj = obj.transpose(sample_dim, band_dim, "y", "x")
            if band_dim in obj.coords:
                names = tuple(str(b) for b in obj[band_dim].values)
        else:
            obj = obj.transpose(lead[0], "y", "x").expand_dims("band", axis=1)
            if obj.name is not None:
                names = (str(obj.name),)
        arr = np.asarray(obj.data, dtype=np.float32)  # xf: computes the training patches
    else:
        arr = np.asarray(obj, dtype=np.float32)  # xf: computes the training patches
        if arr.ndim == 3 and allow_3d:
            arr = arr[:, None]
        if arr.ndim != 4:
            shape = "(sample, band, y, x)" + (" or (sample, y, x)" if allow_3d else "")
            raise InputError(f"{what} must be {shape}; got shape {arr.shape}")
    return arr, names


def _training_arrays(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray, tuple | None, tuple | None]:
    if isinstance(X, xr.Dataset):
        if y is not None:
            raise InputError("pass either a patches Dataset with a target variable, or X and y")
        inputs = _pick(X, _INPUT_NAMES, "inputs")
        target = _pick(X, _TARGET_NAMES, "target")
        if inputs is None or target is None:
            raise InputError(
                f"patches Dataset needs an input variable (one of {list(_INPUT_NAMES)}) and a "
                f"target variable (one of {list(_TARGET_NAMES)}); got {list(X.data_vars)}"
            )
        X, y = inputs, target
    if y is None:
        raise InputError("a target is required: pass y, or a patches Dataset made with a target")
    xa, bands = _as_4d(X, "X", allow_3d=False)
    ya, target_names = _as_4d(y, "y", allow_3d=True)
    if len(xa) != len(ya):
        raise InputError(f"X has {len(xa)} samples but y has {len(ya)}")
    if len(xa) == 0:
        raise InputError("no training samples")
    return xa, ya, bands, target_names


def _target_labels(n: int) -> tuple[str, ...]:
    return ("target",) if n == 1 else tuple(f"target_{i}" for i in range(n))


def _check_no_inf(a: np.ndarray, names: Sequence[str], what: str) -> None:
    """Raise :class:`InputError` naming the bands of ``(sample, band, y, x)`` that hold ±inf."""
    counts = np.isinf(a).sum(axis=(0, 2, 3))
    if counts.any():
        bad = {str(b): int(c) for b, c in zip(names, counts, strict=True) if c}
        raise InputError(
            f"{what} bands hold infinite values (pixels per band: {bad}); expected finite "
            "values, with NaN for nodata: replace them, e.g. X.where(np.isfinite(X))"
        )


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _block_nanmean(a: np.ndarray, factor: int) -> np.ndarray:
    """Average ``(n, band, H, W)`` over ``factor`` blocks, ignoring NaN (all-NaN blocks → NaN)."""
    n, b, h, w = a.shape
    blocks = a.reshape(n, b, h // factor, factor, w // factor, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(blocks, axis=(3, 5))


def _footprint_array(footprint: Any, xa: np.ndarray, ya: np.ndarray) -> np.ndarray:
    """``(sample, 1 or target bands, H, W)`` float32 weights on the fine grid, checked."""
    fp, _ = _as_4d(footprint, "footprint", allow_3d=True)
    expected = (len(xa), *xa.shape[2:])
    if (fp.shape[0], *fp.shape[2:]) != expected or fp.shape[1] not in (1, ya.shape[1]):
        raise InputError(
            f"footprint has shape {fp.shape}; expected (sample, 1 or {ya.shape[1]} target "
            f"bands, y, x) = ({expected[0]}, 1, {expected[1]}, {expected[2]}) on the fine grid"
        )
    fp = np.where(np.isnan(fp), 0.0, fp).astype(np.float32)
    if np.isinf(fp).any() or (fp < 0).any():
        raise InputError(
            f"footprint weights must be finite and >= 0 (NaN counts as 0); got values from "
            f"{float(fp.min())} to {float(fp.max())}"
        )
    return fp


def _is_missing(label: Any) -> bool:
    """Return whether ``label`` is NaN (no region, never predicted)."""
    try:
        return bool(np.isnan(label))
    except TypeError:
        return False


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def _bad_norm(norm: Any) -> str:
    raise InputError(f"norm must be one of {list(NORMS)}; got {norm!r}")


def _sample_coord(obj: Any, names: Sequence[str]) -> np.ndarray | None:
    """Values of the first per-sample coordinate of ``obj`` among ``names`` (None if none)."""
    if not isinstance(obj, (xr.Dataset, xr.DataArray)):
        return None
    for name in names:
        if name in obj.coords and obj[name].dims == ("sample",):
            return np.asarray(obj[name].values)  # xf: computes a per-sample label (in memory)
    return None


def _sample_labels(obj: Any, given: Any, n: int, what: str, names: Sequence[str]) -> np.ndarray:
    """One label per sample: ``given``, or a per-sample coordinate of ``obj``, or all zeros."""
    labels = _sample_coord(obj, names) if given is None else np.asarray(given)
    if labels is None:
        return np.zeros(n, dtype=np.int64)
    if labels.shape != (n,):
        raise InputError(f"{what} must hold one label per sample ({n}); got shape {labels.shape}")
    return labels


def _pixel_labels(obj: Any, given: Any, shape: tuple[int, ...], what: str) -> np.ndarray | None:
    """Region labels ``(sample, y, x)`` from ``given`` (per sample or per pixel) or ``obj``.

    ``given`` (or, when None, a per-sample ``region``/``scene`` coordinate, else a ``region``
    data variable ``(sample, [1,] y, x)`` of a patches Dataset) as one label per pixel; None
    when there are no labels at all.
    """
    n, h, w = shape
    labels = given
    if labels is None:
        labels = _sample_coord(obj, _REGION_NAMES)
    if labels is None and isinstance(obj, xr.Dataset):
        var = _pick(obj, _REGION_NAMES, "region")
        if var is not None:
            labels = np.asarray(var.data)  # xf: computes the region labels of the patches
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape == (n,):
        return np.broadcast_to(labels[:, None, None], (n, h, w))
    if labels.shape != (n, h, w):
        raise InputError(
            f"{what} must hold one label per sample ({n},) or per pixel ({n}, {h}, {w}); got "
            f"shape {labels.shape}"
        )
    return labels


def _centre_labels(pixels: np.ndarray) -> np.ndarray:
    """One label per sample: that of its centre pixel."""
    return pixels[:, pixels.shape[1] // 2, pixels.shape[2] // 2]


def _label_key(label: Any) -> str:
    """Return the JSON key a region label is stored under (``1``, ``1.0``, ``"1"`` agree)."""
    if isinstance(label, (bool, np.bool_)):
        return str(label)
    try:
        f = float(label)
    except (TypeError, ValueError):
        return str(label)
    return str(int(f)) if f.is_integer() else repr(f)


def _target_region_table(
    ya: np.ndarray, labels: np.ndarray, *, log: bool
) -> dict[str, dict[str, list[float]]]:
    """Per region label: the (``log1p``-transformed) target's mean and std per band."""
    with np.errstate(invalid="ignore"):
        values = np.log1p(ya) if log else ya
    table = {}
    for label in np.unique(labels):
        inside = labels == label
        offset, scale = _reference_statistics(values.transpose(1, 0, 2, 3)[:, inside])
        key = _label_key(label)
        if not np.all(np.isfinite(offset)):
            raise InputError(
                f"target_standardize='per_region': region {key!r} has no finite target pixel in "
                "the training patches; every region label needs at least one"
            )
        table[key] = {"offset": offset.tolist(), "scale": scale.tolist()}
    return table


def target_region_statistics(
    target: Any, regions: Any, *, transform: str = "none"
) -> dict[str, dict[str, list[float]]]:
    """Mean and standard deviation of ``target`` over the pixels of each region label; computes.

    The statistics that ``UNetRegressor(target_standardize="per_region")`` standardises a
    region's target with: give them to ``fit(..., target_statistics=)`` so training uses the
    statistics of whole regions (not only of the pixels the patches happen to cover), the
    same ones :meth:`UNetRegressor.predict` computes from ``target_reference`` for the region
    it predicts.

    Parameters
    ----------
    target : array-like or xarray.DataArray
        ``(band, y, x)`` (or ``(y, x)`` for one band) target values, NaN for nodata.
    regions : array-like or xarray.DataArray
        ``(y, x)`` labels on the same grid (NaN: no region).
    transform : {"none", "log1p"}
        The model's ``target_transform``: the statistics are those of ``log1p(target)``.

    Returns
    -------
    dict
        ``{label: {"offset": [mean per band], "scale": [std per band]}}`` (std 0 → 1),
        labels as strings (``1.0`` → ``"1"``); labels without a finite target are left out.

    Examples
    --------
    >>> target_region_statistics(np.array([[1.0, 3.0], [10.0, 30.0]]), np.array([[0, 0], [1, 1]]))
    {'0': {'offset': [2.0], 'scale': [1.0]}, '1': {'offset': [20.0], 'scale': [10.0]}}
    """
    t = np.asarray(getattr(target, "data", target), np.float64)  # xf: computes the statistics
    labels = np.asarray(getattr(regions, "data", regions))  # xf: computes the region labels
    if t.ndim == labels.ndim:
        t = t[None]
    if t.shape[1:] != labels.shape:
        raise InputError(
            f"target is {t.shape[1:]} px per band and regions {labels.shape}; expected the "
            "same grid"
        )
    if transform not in TARGET_TRANSFORMS:
        raise InputError(f"transform must be one of {list(TARGET_TRANSFORMS)}; got {transform!r}")
    if transform == "log1p":
        with np.errstate(invalid="ignore"):
            t = np.log1p(t)
    table = {}
    for label in np.unique(labels):
        if _is_missing(label):
            continue
        values = t[:, labels == label]
        if np.isfinite(values).any():
            offset, scale = _reference_statistics(values)
            table[_label_key(label)] = {"offset": offset.tolist(), "scale": scale.tolist()}
    return table


def _checked_statistics(
    given: Mapping[Any, Any], labels: Sequence[str], n_out: int
) -> dict[str, dict[str, list[float]]]:
    """``target_statistics`` of ``fit``, keyed like the labels and checked."""
    if not isinstance(given, Mapping):
        raise InputError(f"target_statistics must be a dict by region label; got {type(given)}")
    table = {}
    for label, stats in given.items():
        try:
            offset = np.asarray(stats["offset"], np.float64).reshape(-1)
            scale = np.asarray(stats["scale"], np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                f"target_statistics[{label!r}] must be {{'offset': [...], 'scale': [...]}}; got "
                f"{stats!r}"
            ) from err
        if offset.shape != (n_out,) or scale.shape != (n_out,):
            raise InputError(
                f"target_statistics[{label!r}] holds {offset.size} offsets and {scale.size} "
                f"scales; expected {n_out} (one per target band)"
            )
        if not (np.isfinite(offset).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise InputError(
                f"target_statistics[{label!r}] must be finite with scales > 0; got {stats!r}"
            )
        table[_label_key(label)] = {"offset": offset.tolist(), "scale": scale.tolist()}
    missing = [k for k in labels if k not in table]
    if missing:
        raise InputError(
            f"target_statistics lacks the regions {missing} of the training patches; it has "
            f"{sorted(table)}"
        )
    return table


def _reference_statistics(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nan-aware mean and std per band of ``(band, pixels...)`` values (std 0 → 1)."""
    flat = values.reshape(values.shape[0], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmean(flat, axis=1).astype(np.float64)
        s = np.nanstd(flat, axis=1).astype(np.float64)
    return m, np.where(s > 0, s, 1.0)


def _lookup(labels: np.ndarray, keys: Sequence[str], values: np.ndarray) -> np.ndarray:
    """``values[k]`` for every label whose key is ``keys[k]`` (NaN where none is)."""
    index = {k: i for i, k in enumerate(keys)}
    uniq, inverse = np.unique(labels, return_inverse=True)
    pos = np.array([index.get(_label_key(u), -1) for u in uniq], dtype=np.int64)[inverse]
    pos = pos.reshape(labels.shape)
    table = np.concatenate([values, np.full((1, *values.shape[1:]), np.nan)])
    return table[pos]


def _sample_positions(obj: Any) -> np.ndarray | None:
    """``(sample, 2)`` pixel offsets (row, col) of patches cut by ``patches`` (None if absent)."""
    rows, cols = _sample_coord(obj, ("row",)), _sample_coord(obj, ("col",))
    if rows is None or cols is None:
        return None
    return np.stack([rows, cols], axis=1).astype(np.int64)


def _region_statistics(xa: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``(sample, band)`` mean and std: those of the sample's region, per band."""
    mean = np.empty(xa.shape[:2], np.float64)
    std = np.empty(xa.shape[:2], np.float64)
    for label in np.unique(groups):
        members = groups == label
        m, s = _band_statistics(xa[members], f"region {label!r}")
        mean[members], std[members] = m, s
    return mean, std


def _band_statistics(xa: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """nan-aware mean and std per band of ``(…, band, y, x)`` samples (std 0 → 1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = np.nanmean(xa, axis=(0, 2, 3)).astype(np.float64)
        s = np.nanstd(xa, axis=(0, 2, 3)).astype(np.float64)
    if not np.all(np.isfinite(m)):
        empty = [i for i, v in enumerate(m) if not np.isfinite(v)]
        raise InputError(
            f"input bands at positions {empty} have no valid (non-NaN) pixel in {what}; "
            "per-region standardisation needs at least one finite value per band and region"
        )
    return m, np.where(s > 0, s, 1.0)


def _standardise(xa: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """NHWC float32 ``(x - mean) / std`` with NaN → 0; ``mean``/``std`` per band or per sample."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    shape = (1, -1, 1, 1) if mean.ndim == 1 else (*mean.shape, 1, 1)
    x = (xa - mean.reshape(shape)) / std.reshape(shape)
    return _nhwc(np.where(np.isnan(x), 0.0, x).astype(np.float32))


def _spatial_split(
    n: int,
    shape: tuple[int, int],
    *,
    positions: np.ndarray | None,
    groups: np.ndarray,
    fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, str, np.ndarray | None]:
    """Training and validation sample indices, holding out whole spatial blocks.

    With patch positions (``row``/``col``): the cube is cut into square blocks of twice the
    patch side (the patch side when that gives fewer than 5 blocks), per region label; whole
    blocks, drawn with ``seed``, are held out until they hold ``fraction`` of the samples. The
    other patches train, with the pixels that a held-out patch covers masked out of their
    target: the returned ``(train, h, w)`` mask (None without positions), so no target pixel
    is used for both. Without positions every patch is its own block.
    Returns ``(train, validation, how, mask)``.
    """
    if isinstance(fraction, bool) or not 0 <= float(fraction) < 1:
        raise InputError(f"validation_fraction must be in [0, 1); got {fraction!r}")
    everything = np.arange(n)
    if float(fraction) == 0:
        return everything, everything[:0], "none (validation_fraction=0)", None
    if n < _MIN_SPLIT_SAMPLES:
        reason = f"none (fewer than {_MIN_SPLIT_SAMPLES} samples)"
        return everything, everything[:0], reason, None
    h, w = int(shape[0]), int(shape[1])
    _, group_index = np.unique(groups, return_inverse=True)
    blocks, how = None, "whole patches (no positions)"
    if positions is not None:
        centre_r, centre_c = positions[:, 0] + h // 2, positions[:, 1] + w // 2
        for side in (2 * max(h, w), max(h, w)):
            keys = np.stack([group_index, centre_r // side, centre_c // side], axis=1)
            _, blocks = np.unique(keys, axis=0, return_inverse=True)
            blocks = blocks.ravel()
            if blocks.max() + 1 >= 5:
                break
        how = f"spatial blocks of {side} px"
        if blocks.max() + 1 < 2:
            blocks, how = None, "whole patches (all patches in one block)"
    spatial = blocks is not None
    if blocks is None:
        blocks = everything
    rng = np.random.default_rng(seed)
    wanted = max(1, round(float(fraction) * n))
    held = np.zeros(n, dtype=bool)
    for block in rng.permutation(blocks.max() + 1):
        if held.sum() >= wanted:
            break
        candidate = held | (blocks == block)
        if candidate.all():
            continue
        held = candidate
    train, val = np.flatnonzero(~held), np.flatnonzero(held)
    if len(train) < 1 or len(val) < 1:
        reason = "none (no spatially separate split possible)"
        return everything, everything[:0], reason, None
    if not spatial:
        return train, val, how, None
    # pixels of each training patch that a held-out patch (same region) covers
    mask = np.zeros((len(train), h, w), dtype=bool)
    for k, i in enumerate(train):
        same = val[group_index[val] == group_index[i]]
        dr = positions[same, 0] - positions[i, 0]
        dc = positions[same, 1] - positions[i, 1]
        for r, c in zip(dr, dc, strict=True):
            if abs(r) < h and abs(c) < w:
                mask[k, max(r, 0) : min(r + h, h), max(c, 0) : min(c + w, w)] = True
    return train, val, how, mask


def _block_sum(a: np.ndarray, factor: int) -> np.ndarray:
    n, b, h, w = a.shape
    return a.reshape(n, b, h // factor, factor, w // factor, factor).sum(axis=(3, 5))


def _upsample(a: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(a, factor, axis=2), factor, axis=3)


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------


class _UNetEstimator(Estimator):
    """Shared machinery of the U-Net estimators (not public)."""

    _head = "regression"

    # -- configuration ------------------------------------------------------------------------

    def _architecture_widths(self) -> tuple[tuple[int, ...], int]:
        if self.widths is not None:
            widths = tuple(int(w) for w in self.widths)
            center = self.center
        else:
            if self.preset not in PRESETS:
                raise InputError(f"preset must be one of {sorted(PRESETS)}; got {self.preset!r}")
            widths = tuple(PRESETS[self.preset]["widths"])
            center = self.center if self.center is not None else PRESETS[self.preset]["center"]
        center = 2 * widths[-1] if center is None else int(center)
        return widths, center

    def _check_spatial(self, shape: tuple[int, ...], mult: int, what: str) -> None:
        # any patch size trains (the network pads to multiples of 2**depth and crops back);
        # under coarse supervision the sides must hold whole coarse cells
        f = self._factor() if hasattr(self, "_factor") else 1
        if shape[-2] % f or shape[-1] % f:
            raise InputError(
                f"{what} patches are {shape[-2]}×{shape[-1]} px; with coarse_factor={f} their "
                f"sides must be multiples of {f} (whole coarse cells): choose a patch size that "
                f"is a multiple of {f}, e.g. {max(shape[-2] // f, 1) * f} px"
            )

    # -- fit ----------------------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        validation_data: Any = None,
        bands=None,
        footprint=None,
        regions=None,
        target_statistics=None,
    ):
        """Train on patches; computes (the patches are loaded into memory).

        Parameters
        ----------
        X : xarray.Dataset, xarray.DataArray or numpy.ndarray
            The Dataset of ``cube.xf.patches(target=..., ...)`` (variables ``inputs`` and
            ``target``, dims ``(sample, band, y, x)``), or inputs ``(sample, band, y, x)``.
        y : array-like, optional
            Targets ``(sample, [band,] y, x)`` when ``X`` is not a patches Dataset.
        validation_data : Dataset or (X, y), optional
            Evaluated after every epoch (``val_*`` entries of ``history_``; the kept epoch and
            early stopping watch ``val_loss``). Without it, ``validation_fraction`` of the
            samples are held out as whole spatial blocks (see Notes).
        bands : sequence of str, optional
            Band names when ``X`` carries none (numpy input). A model fitted without names
            records ``bands_ = None`` and needs them (``bands=`` of ``predict``, or
            :meth:`set_bands`) before it predicts on a cube.
        footprint : array-like, optional
            Regression under coarse supervision only: per fine pixel, the weight (>= 0; a
            boolean footprint mask is 1 inside, 0 outside) with which each coarse observation
            averages the fine field, ``(sample, [1 or target bands,] y, x)`` on the fine grid.
            Taken from a patches Dataset's ``footprint`` (or ``weights``) variable when not
            given. See :class:`UNetRegressor`.
        regions : array-like, optional
            One region / scene label per sample, for ``standardize="per_region"`` (each
            region's inputs standardised by its own band statistics) and to keep validation
            blocks inside one region. Taken from a per-sample ``region`` (or ``scene``)
            coordinate of ``X`` when not given; without either, all samples are one region.
            ``target_standardize="per_region"`` also takes one label per pixel
            ``(sample, y, x)`` (here or as a ``region`` variable of a patches Dataset).
        target_statistics : dict, optional
            ``target_standardize="per_region"`` only: ``{label: {"offset": [...], "scale":
            [...]}}``, each region's target mean and standard deviation per band (of
            ``log1p(target)`` with that transform), e.g. from
            :func:`target_region_statistics` over whole regions; every label of the patches
            must be there. Default: the statistics of the training patches' target pixels.

        Returns
        -------
        self

        Raises
        ------
        InputError
            Malformed inputs: not ``(sample, band, y, x)`` (a channels-last array is named as
            such), band names that do not match the bands, patch sides that are not multiples
            of ``coarse_factor``, a band of ``X`` or of the target with no finite value, ±inf in
            ``X`` or the target (the message names the bands), labels outside the classes, a
            malformed ``footprint``. Patches of any size train: the network pads them.
        ModelError
            The training loss becomes NaN or infinite (the message names the epoch and step).

        Notes
        -----
        Missing values: NaN input pixels take their band's training mean (0 after the
        standardisation), so a patch with a few NaN pixels still trains; NaN target pixels
        (and ``ignore_value`` labels) are left out of the loss and the metrics, except with
        ``loss="mse"``, which refuses them. The input mean and standard deviation are computed
        over the finite pixels only.

        Validation: without ``validation_data`` and with ``validation_fraction`` > 0 (default
        0.2), whole spatial blocks are held out. For patches cut by ``cube.xf.patches`` (their
        ``row``/``col`` coordinates give their position) the cube is cut into square blocks of
        twice the patch side (per region), whole blocks drawn with ``seed`` are held out until
        they hold the fraction of the samples, and the other patches train with the target
        pixels that a held-out patch covers masked out (ignored; whole coarse cells under
        coarse supervision), so no target pixel is used for both. Patches without positions
        (numpy arrays) are held out whole, each its own block: pass a patches Dataset when
        patches overlap. With fewer than 4 samples nothing is held out. The split is the same
        for every ensemble member; ``training_["validation"]`` says how it was made and
        ``training_["train_index"]`` / ``["validation_index"]`` list the samples of each set.
        The kept weights are those of the epoch with the lowest validation loss (evaluated in
        eval mode on un-augmented patches, with BatchNorm statistics recomputed from the
        training patches when ``recalibrate_bn``), ``best_epoch_``; without validation, of
        the lowest training loss.
        """
        # the architecture and the halo are checked first: a bad halo must not cost a training run
        widths, center = self._architecture_widths()
        mult = 2 ** len(widths)
        halo = default_halo(len(widths)) if self.halo is None else check_halo(self.halo, mult)
        if footprint is None and isinstance(X, xr.Dataset):
            footprint = _pick(X, _FOOTPRINT_NAMES, "footprint")
        source = X
        xa, ya, x_bands, target_names = _training_arrays(X, y)
        self._fit_footprint = None if footprint is None else _footprint_array(footprint, xa, ya)
        if bands is not None:
            x_bands = tuple(str(b) for b in bands)
        if x_bands is not None and len(x_bands) != xa.shape[1]:
            hint = ""
            if xa.shape[-1] == len(x_bands):
                hint = (
                    " (the array looks channels-last, (sample, y, x, band): "
                    "transpose it with X.transpose(0, 3, 1, 2))"
                )
            raise InputError(
                f"{len(x_bands)} band names {list(x_bands)} for X of shape {xa.shape}, which has "
                f"{xa.shape[1]} bands; expected X as (sample, band, y, x){hint}"
            )
        self._check_spatial(xa.shape, mult, "training")
        if x_bands is not None:
            x_bands = tuple(check_band_names(x_bands, None, "input band names"))
        # positional names for messages only: an unnamed model records no band names
        shown = x_bands or tuple(f"band_{i}" for i in range(xa.shape[1]))
        _check_no_inf(xa, shown, "input")
        _check_no_inf(ya, target_names or _target_labels(ya.shape[1]), "target")

        with warnings.catch_warnings():  # an all-NaN band is reported just below
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(xa, axis=(0, 2, 3)).astype(np.float64)
            std = np.nanstd(xa, axis=(0, 2, 3)).astype(np.float64)
        if not np.all(np.isfinite(mean)):
            empty = [b for b, m in zip(shown, mean, strict=True) if not np.isfinite(m)]
            raise InputError(
                f"input bands {empty} have no valid (non-NaN) pixel in the patches; expected at "
                "least one finite value per band"
            )
        std = np.where(std > 0, std, 1.0)
        per_region = self._standardize() == "per_region"
        pixels = _pixel_labels(source, regions, (len(xa), *xa.shape[2:]), "regions")
        per_sample = None if regions is None or np.ndim(regions) == 1 else _centre_labels(pixels)
        if per_sample is None and regions is None and pixels is not None:
            if _sample_coord(source, _REGION_NAMES) is None:  # a per-pixel region variable
                per_sample = _centre_labels(pixels)
        groups = _sample_labels(
            source, regions if per_sample is None else per_sample, len(xa), "regions",
            _REGION_NAMES,
        )  # fmt: skip
        self._labels = pixels
        self._given_statistics = target_statistics
        self._set_target(ya, target_names, xa.shape)
        del self._given_statistics
        spec = self._loss_spec()
        n_members = _positive_int(self.n_members, "n_members")
        norm = self.norm if self.norm in NORMS else _bad_norm(self.norm)
        config = {
            "architecture": {
                "in_channels": int(xa.shape[1]),
                "out_channels": self._out_channels(),
                "widths": list(widths),
                "center": center,
                "head": self._head,
                "activation": self._activation(),
                "bn_momentum": float(self.bn_momentum),
                "norm": norm,
            },
            "input_mean": mean.tolist(),
            "input_std": std.tolist(),
            **self._output_config(),
        }
        if n_members > 1:
            config["n_members"] = n_members
        if getattr(self, "linear_skip", False):  # only then: other configs stay as they were
            config["architecture"]["linear_skip"] = True
        if per_region:
            config["standardize"] = "per_region"
            x_mean, x_std = _region_statistics(xa, groups)
        else:
            x_mean, x_std = mean, std
        x_all = _standardise(xa, x_mean, x_std)
        y_all = self._prepare_y(ya, xa.shape, "training", self._fit_footprint)
        del self._fit_footprint
        self._labels = None
        val = None
        if validation_data is not None:
            how = "given"
            v_fp = None
            if isinstance(validation_data, xr.Dataset):
                v_fp = _pick(validation_data, _FOOTPRINT_NAMES, "footprint")
                vx, vy, v_bands, _ = _training_arrays(validation_data, None)
                v_source = validation_data
            else:
                vx, vy, v_bands, _ = _training_arrays(*validation_data)
                v_source = validation_data[0]
            if vx.shape[1] != xa.shape[1]:
                raise InputError(
                    f"validation inputs have {vx.shape[1]} bands; expected {xa.shape[1]}"
                )
            if x_bands is not None and v_bands is not None and tuple(v_bands) != x_bands:
                raise BandError(
                    f"validation bands {list(v_bands)} are not the training bands "
                    f"{list(x_bands)} (same names in the same order are required)"
                )
            _check_no_inf(vx, shown, "validation input")
            _check_no_inf(vy, target_names or _target_labels(vy.shape[1]), "validation target")
            self._check_spatial(vx.shape, mult, "validation")
            if v_fp is not None:
                v_fp = _footprint_array(v_fp, vx, vy)
            if per_region:
                v_groups = _sample_labels(v_source, None, len(vx), "regions", _REGION_NAMES)
                v_mean, v_std = _region_statistics(vx, v_groups)
            else:
                v_mean, v_std = mean, std
            self._labels = _pixel_labels(
                v_source, None, (len(vx), *vx.shape[2:]), "validation regions"
            )
            val = (
                _standardise(vx, v_mean, v_std),
                self._prepare_y(vy, vx.shape, "validation", v_fp),
            )
            self._labels = None
            train = (x_all, y_all)
            train_index = np.arange(len(xa))
        else:
            split = _spatial_split(
                len(xa),
                xa.shape[2:],
                positions=_sample_positions(source),
                groups=groups,
                fraction=self.validation_fraction,
                seed=int(self.seed),
            )
            train_index, val_index, how, held_pixels = split
            y_train = y_all[train_index]
            if held_pixels is not None:  # no target pixel both trains and validates
                y_train = self._mask_targets(y_train, held_pixels)
                keep = ~held_pixels.all(axis=(1, 2))
                train_index, y_train = train_index[keep], y_train[keep]
                self._masked_pixels = int(held_pixels[keep].sum())
            train = (x_all[train_index], y_train)
            if len(val_index):
                val = (x_all[val_index], y_all[val_index])

        from xfusion.models.train import (
            best_epoch,
            evaluate,
            make_optimizer,
            recalibrate_batchnorm,
            train_and_evaluate,
        )

        n_train = len(train[0])
        batch_size = min(int(self.batch_size), n_train)
        steps = max(n_train // batch_size, 1) * int(self.epochs)
        tx = make_optimizer(
            self.optimizer,
            float(self.learning_rate),
            momentum=float(self.momentum),
            weight_decay=float(self.weight_decay),
            schedule=self.schedule,
            total_steps=steps,
        )
        recalibrate = bool(self.recalibrate_bn) and norm == "batch"
        members, histories, best, recalibrated = [], [], [], []
        for member in range(n_members):
            seed = int(self.seed) + member
            model = build_unet(config["architecture"], seed=seed)
            history = train_and_evaluate(
                model,
                tx,
                train,
                spec=spec,
                epochs=int(self.epochs),
                batch_size=batch_size,
                validation_data=val,
                seed=seed,
                augment=bool(self.augment),
                patience=self.early_stopping,
                progress=bool(self.progress),
                target_scale=config.get("target_scale"),
                recalibrate=min(n_train, 4 * batch_size) if recalibrate else 0,
            )
            if recalibrate:
                recalibrate_batchnorm(model, train[0], batch_size=batch_size)
                if val is not None:
                    after = evaluate(model, val, spec=spec, batch_size=batch_size)
                    recalibrated.append(float(after["loss"]))
            members.append(unet_params(model))
            histories.append(history)
            best.append(best_epoch(history))
        self.config_ = config
        ensemble = {"members": {str(i): p for i, p in enumerate(members)}}
        self.params_ = members[0] if n_members == 1 else ensemble
        self.history_ = histories[0]
        self.best_epoch_ = best[0] if n_members == 1 else tuple(best)
        self.metrics_ = {k: v[-1] for k, v in histories[0].items()}
        self.bands_ = x_bands
        self.n_features_in_ = int(xa.shape[1])
        self.tile_multiple_ = mult
        self.default_halo_ = halo
        self.training_ = {
            "n_samples": len(xa),
            "patch_shape": list(xa.shape[2:]),
            "target_shape": list(ya.shape[1:]),
            "n_validation": 0 if val is None else len(val[0]),
            "n_train": n_train,
            "validation": how,
            "best_epoch": best if n_members > 1 else best[0],
            "batchnorm_recalibrated": recalibrate,
        }
        if validation_data is None:
            self.training_["masked_target_pixels"] = int(getattr(self, "_masked_pixels", 0))
            self.__dict__.pop("_masked_pixels", None)
            self.training_["train_index"] = [int(i) for i in train_index]
            self.training_["validation_index"] = [int(i) for i in val_index]
        if recalibrated:
            self.training_["val_loss_recalibrated"] = (
                recalibrated if n_members > 1 else recalibrated[0]
            )
        if n_members > 1:
            self.training_["member_histories"] = histories
        return self

    def _standardize(self) -> str:
        if self.standardize not in STANDARDIZE:
            raise InputError(
                f"standardize must be one of {list(STANDARDIZE)}; got {self.standardize!r}"
            )
        return self.standardize

    def _prepare_x(self, xa: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
        return _standardise(xa, np.asarray(config["input_mean"]), np.asarray(config["input_std"]))

    # -- inference ----------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise ModelError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def inference_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return ``(config, params)`` for :func:`xfusion.models.unet.apply_tiles`.

        ``config`` is JSON-able (architecture, input normalisation, output kind and target
        scaling or classes); ``params`` a nested dict of numpy arrays (for an ensemble,
        ``{"members": {"0": ..., ...}}``, see :func:`~xfusion.models.unet.member_params`).

        Raises
        ------
        ModelError
            The model standardises per region (``standardize="per_region"``): its input
            statistics are those of the cube it predicts, so it has no fixed state; use
            ``model.predict(cube)`` or ``model.for_region(cube)``. Likewise for
            ``target_standardize="per_region"``, whose target scale comes from the region
            predicted: ``model.for_region(cube, target=...)``.
        """
        self._check_fitted()
        if self.config_.get("target_standardize") == "per_region":
            raise ModelError(
                f"this {type(self).__name__} standardises its target per region "
                "(target_standardize='per_region'): the target scale of the region it predicts "
                "must be given; use model.predict(X, target_reference=...) or "
                "model.for_region(X, target=...) (or region=<a label seen in fit>)"
            )
        if self.config_.get("standardize") == "per_region":
            raise ModelError(
                f"this {type(self).__name__} standardises its inputs per region "
                "(standardize='per_region'): predict with model.predict(cube), which uses the "
                "cube's band statistics, or take model.for_region(cube) (statistics of that "
                "region) and predict with it"
            )
        return self.config_, self.params_

    def for_region(self, X: Any, *, bands=None, target=None, region=None):
        """Return a copy with the statistics of one region fixed; computes.

        For ``standardize="per_region"`` models: the copy's input mean and standard deviation
        are those of ``X`` (a cube ``(band, y, x)`` or more leading dims, with the model's
        bands, or a numpy ``(sample, band, y, x)`` array), over all its finite pixels; it
        predicts any cube or array with them, e.g. tiles of one scene, and works with
        ``xf.predict``. ``bands`` maps the model's bands to the cube's as in ``predict``.

        For ``target_standardize="per_region"`` regressors, the region's target offset and
        scale: the mean and standard deviation (of ``log1p`` with that transform) of
        ``target``, the target as observed over this region (a cube or array, e.g. the coarse
        product resampled to the grid, the kind of target the model was trained on), or the
        training statistics of ``region``, a label seen in ``fit``. One of them is required.

        A model with global standardisation is returned unchanged.

        Raises
        ------
        ModelError
            A per-region target without ``target`` or a known ``region``.
        InputError
            ``target``/``region`` given to a model that does not standardise its target per
            region, or a ``target`` without any finite value.
        """
        self._check_fitted()
        out = self._for_target(target, region)
        if out.config_.get("standardize") != "per_region":
            return out
        return out._for_inputs(X, bands)

    def _for_target(self, target: Any, region: Any):
        """Return a copy with the target scale fixed (``self`` without a per-region target)."""
        if self.config_.get("target_standardize") != "per_region":
            if target is not None or region is not None:
                raise InputError(
                    "target= and region= apply to models fitted with "
                    "target_standardize='per_region'; this one standardises its target globally"
                )
            return self
        table = self.config_["target_regions"]
        if target is not None:
            t = target.data if isinstance(target, xr.DataArray) else target
            t = np.asarray(t, np.float64)  # xf: computes the region's target statistics
            n_out = len(self.config_["target_offset"])
            if isinstance(target, xr.DataArray) and "band" in target.dims:
                t = np.moveaxis(t, target.dims.index("band"), 0)
            elif t.ndim == 4:  # (sample, band, y, x)
                t = np.moveaxis(t, 1, 0)
            else:
                t = t.reshape(1, -1) if n_out == 1 else t
            if t.shape[0] != n_out:
                raise InputError(
                    f"target holds {t.shape[0]} bands; the model predicts {n_out} "
                    f"({list(self.output_bands_)})"
                )
            if self.config_.get("region_target_transform") == "log1p":
                with np.errstate(invalid="ignore"):
                    t = np.log1p(t)
            offset, scale = _reference_statistics(t)
            if not np.all(np.isfinite(offset)):
                raise InputError("target has no finite value over the region; expected some")
        elif region is not None and _label_key(region) in table:
            offset = np.asarray(table[_label_key(region)]["offset"])
            scale = np.asarray(table[_label_key(region)]["scale"])
        else:
            seen = sorted(table)
            what = "no region" if region is None else f"region {_label_key(region)!r}"
            raise ModelError(
                f"this {type(self).__name__} standardises its target per region and was given "
                f"{what} seen in fit (seen: {seen}) and no target=: the target scale of a "
                "region cannot be known from the inputs. Pass target= (the target as observed "
                "over the region, e.g. the coarse product resampled to the grid) or region=<a "
                "label seen in fit>"
            )
        out = copy.copy(self)
        config = {
            k: v
            for k, v in self.config_.items()
            if k not in ("target_standardize", "target_regions", "region_target_transform")
        }
        config.update(target_offset=offset.tolist(), target_scale=scale.tolist())
        if self.config_.get("region_target_transform"):
            config["target_transform"] = self.config_["region_target_transform"]
        out.config_ = config
        return out

    def _standardised(self):
        """Return a copy predicting the region-standardised target (offset 0, scale 1)."""
        out = copy.copy(self)
        config = {
            k: v
            for k, v in self.config_.items()
            if k not in ("target_standardize", "target_regions", "region_target_transform")
        }
        out.config_ = config
        return out

    def _for_inputs(self, X: Any, bands=None):
        """Return a copy standardising inputs with the band statistics of ``X`` (computes)."""
        self._check_fitted()
        if self.config_.get("standardize") != "per_region":
            return self
        if isinstance(X, xr.DataArray):
            names = list(self.bands_) if self.bands_ is not None else None
            if bands is not None:
                names = (
                    [str(bands.get(b, b)) for b in self.bands_]
                    if isinstance(bands, Mapping) and self.bands_ is not None
                    else [str(b) for b in bands]
                )
            if names is None:
                raise BandError(
                    f"this {type(self).__name__} was fitted without band names: pass bands= "
                    "(the cube's bands in the model's input order) or call set_bands first"
                )
            missing = [b for b in names if b not in X["band"].values]
            if missing:
                raise BandError(
                    f"bands {missing} not in cube; bands are {X['band'].values.tolist()}"
                )
            cube = X.sel(band=names).astype(np.float32)
            other = [d for d in cube.dims if d != "band"]
            mean, std = cube.mean(other, skipna=True), cube.std(other, skipna=True)
            stats = xr.concat([mean, std], "statistic")
            values = np.asarray(stats.data, np.float64)  # xf: computes the cube's band stats
            mean, std = values[0], np.where(values[1] > 0, values[1], 1.0)
            if not np.all(np.isfinite(mean)):
                raise InputError(f"bands {names} of the cube have no finite pixel")
        else:
            x = np.asarray(X, dtype=np.float32)
            if x.ndim != 4 or x.shape[1] != self.n_features_in_:
                raise InputError(
                    f"X must be (sample, band, y, x) with {self.n_features_in_} bands; "
                    f"got shape {x.shape}"
                )
            mean, std = _band_statistics(x, "X")
        out = copy.copy(self)
        config = {k: v for k, v in self.config_.items() if k != "standardize"}
        config.update(input_mean=mean.tolist(), input_std=std.tolist(), region_statistics=True)
        out.config_ = config
        return out

    def members(self) -> list:
        """Each ensemble member as a fitted model of its own (one for ``n_members=1``).

        The members share the normalisation, band names and settings; a member ``i`` was
        trained with seed ``seed + i``. E.g. the spread of a cube prediction:
        ``xr.concat([m.predict(cube) for m in model.members()], "member").std("member")``.
        """
        self._check_fitted()
        out = []
        config = {k: v for k, v in self.config_.items() if k != "n_members"}
        for params in member_params(self.config_, self.params_):
            member = copy.copy(self)
            member.config_ = config
            member.params_ = params
            member.n_members = 1
            out.append(member)
        return out

    def set_bands(self, bands: Sequence[str]):
        """Name the model's input bands, in its input order; returns ``self``.

        A model fitted on bare arrays records no band names, and cube prediction refuses a
        cube until it knows which band feeds which input: name them once here (or pass
        ``bands=`` to every ``predict``). Names set here replace recorded ones and are kept by
        :meth:`save`.

        Raises
        ------
        BandError
            Not one unique string per input band (``n_features_in_``).
        ModelError
            The model is not fitted.
        """
        self._check_fitted()
        self.bands_ = tuple(check_band_names(bands, int(self.n_features_in_), "set_bands"))
        return self

    def _apply(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        return self._outputs(X, batch_size)[0]

    def _outputs(self, X: np.ndarray, batch_size: int | None = None) -> tuple:
        """Member mean and standard deviation of the network outputs (target units / proba)."""
        self._check_fitted()
        x = np.asarray(X, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != self.n_features_in_:
            names = f" {list(self.bands_)}" if self.bands_ is not None else ""
            raise InputError(
                f"X must be (sample, band, y, x) with {self.n_features_in_} bands"
                f"{names}; got shape {x.shape}"
            )
        size = int(batch_size or self.batch_size)
        config, params = self._for_inputs(x).inference_state()
        size = min(size, len(x))
        # every batch padded to `size` samples: one compiled program per tile shape; any height
        # and width (the network reflect-pads to multiples of 2**depth, as in training)
        padded = np.pad(x, ((0, -len(x) % size), (0, 0), (0, 0), (0, 0)))
        parts = [
            apply_tiles(config, params, padded[i : i + size], return_std=True)
            for i in range(0, len(x), size)
        ]
        mean = np.concatenate([p[0] for p in parts])[: len(x)]
        return mean, np.concatenate([p[1] for p in parts])[: len(x)]

    def _nodata(self, X: np.ndarray) -> np.ndarray:
        return np.isnan(np.asarray(X, dtype=np.float32)).any(axis=1, keepdims=True)

    def predict(
        self,
        X: Any,
        *,
        return_std: bool = False,
        regions: Any = None,
        target_reference: Any = None,
        **kwargs: Any,
    ):
        """Predict on patches (eager) or on a cube (lazy).

        Parameters
        ----------
        X : numpy.ndarray or xarray.DataArray
            ``(sample, band, y, x)`` numpy array (any height/width; the network reflect-pads
            to multiples of ``2 ** depth`` and crops back), or a
            cube with the training bands, predicted blockwise by
            :func:`xfusion.models.predict.predict` (keyword arguments are passed on).
        return_std : bool
            numpy input only: also return the standard deviation of the ensemble members'
            outputs (in target units; of the probabilities for a segmenter; zeros for
            ``n_members=1``). For a cube, the prediction is the member mean; the spread is
            ``xr.concat([m.predict(cube) for m in model.members()], "member").std("member")``.
        regions : array-like or xarray.DataArray, optional
            ``target_standardize="per_region"`` regressors only: the region label of every
            sample ``(sample,)`` or pixel ``(sample, y, x)`` (numpy), or a ``(y, x)`` label
            cube on the grid of ``X``. Each region's target offset and scale come from
            ``target_reference`` over that region's pixels, or, without it, from ``fit`` (labels
            seen there only).
        target_reference : array-like or xarray.DataArray, optional
            ``target_standardize="per_region"`` only: the target as observed where ``X`` is
            predicted (e.g. the coarse product resampled to the grid, as the training target
            was made), the same shape as the prediction. Without ``regions``, all of ``X`` is
            one region.

        Returns
        -------
        numpy.ndarray or xarray.DataArray, or a pair of numpy arrays with ``return_std``
            See the class docstring for the bands. NaN where any input band is NaN (numpy).
            With ``standardize="per_region"`` the inputs are standardised with the band
            statistics of ``X`` (the cube's are computed first); with
            ``target_standardize="per_region"`` the region statistics are computed first too.

        Raises
        ------
        ModelError
            ``target_standardize="per_region"`` and a region with neither a
            ``target_reference`` nor training statistics (a label not seen in ``fit``).
        """
        if getattr(self, "config_", {}).get("target_standardize") == "per_region":
            return self._predict_regions(X, return_std, regions, target_reference, kwargs)
        if regions is not None or target_reference is not None:
            raise InputError(
                "regions= and target_reference= apply to models fitted with "
                "target_standardize='per_region'"
            )
        if isinstance(X, xr.DataArray):
            if return_std:
                raise InputError(
                    "return_std applies to numpy input; for a cube take the spread of "
                    "model.members() predictions (see predict's docstring)"
                )
            from xfusion.models.predict import predict as _predict_cube

            model = self._for_inputs(X, bands=kwargs.get("bands"))
            return _predict_cube(X, model, **kwargs)
        if kwargs:
            raise InputError(f"keyword arguments {sorted(kwargs)} apply to cubes only")
        mean, std = self._outputs(X)
        nodata = self._nodata(X)
        out = np.where(nodata, np.float32(np.nan), self._finish(mean))
        if not return_std:
            return out
        return out, np.where(nodata, np.float32(np.nan), std)

    def _predict_regions(
        self, X: Any, return_std: bool, regions: Any, reference: Any, kwargs: dict
    ) -> Any:
        """Prediction of a ``target_standardize="per_region"`` model (see :meth:`predict`)."""
        if return_std:
            raise InputError(
                "return_std is not available with target_standardize='per_region'; take the "
                "spread of model.members() predictions"
            )
        cube = isinstance(X, xr.DataArray)
        if regions is None:
            if cube:
                model = self.for_region(X, bands=kwargs.get("bands"), target=reference)
                return model.predict(X, **kwargs)
            if kwargs:
                raise InputError(f"keyword arguments {sorted(kwargs)} apply to cubes only")
            return self.for_region(X, target=reference).predict(X)
        table = self.config_["target_regions"]
        keys = list(table)
        offsets = np.array([table[k]["offset"] for k in keys], np.float64)
        scales = np.array([table[k]["scale"] for k in keys], np.float64)
        log = self.config_.get("region_target_transform") == "log1p"
        n_out = offsets.shape[1]
        if cube:
            if not isinstance(regions, xr.DataArray):
                raise InputError("regions must be a (y, x) label cube to predict a cube")
            labels_da = regions.squeeze(drop=True) if regions.ndim > 2 else regions
            labels = np.asarray(labels_da.data)  # xf: computes the region labels
            ref = None
            if reference is not None:
                ref = (
                    reference.transpose(..., "y", "x")
                    if isinstance(reference, xr.DataArray)
                    else reference
                )
                ref = np.asarray(getattr(ref, "data", ref), np.float64)  # xf: computes stats
                ref = ref.reshape(-1, *labels.shape)
        else:
            x = np.asarray(X, np.float32)
            labels = np.asarray(regions)
            if labels.ndim == 4 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.shape == (len(x),):
                labels = np.broadcast_to(labels[:, None, None], (len(x), *x.shape[2:]))
            if labels.shape != (len(x), *x.shape[2:]):
                raise InputError(
                    f"regions must hold one label per sample ({len(x)},) or per pixel "
                    f"{(len(x), *x.shape[2:])}; got shape {labels.shape}"
                )
            ref = None
            if reference is not None:
                ref = np.moveaxis(np.asarray(reference, np.float64), 1, 0)  # (band, n, y, x)
        wanted = [u for u in np.unique(labels) if not _is_missing(u)]
        found_keys, found_off, found_scale, unknown = [], [], [], []
        for u in wanted:
            key = _label_key(u)
            values = None
            if ref is not None:
                inside = labels == u
                values = ref[:, inside]
                if log:
                    with np.errstate(invalid="ignore"):
                        values = np.log1p(values)
                if not np.isfinite(values).any():
                    values = None
            if values is not None:
                m, sd = _reference_statistics(values)
            elif key in table:
                m, sd = offsets[keys.index(key)], scales[keys.index(key)]
            else:
                unknown.append(key)
                continue
            found_keys.append(key)
            found_off.append(m)
            found_scale.append(sd)
        if unknown:
            raise ModelError(
                f"regions {unknown} were not seen in fit and have no finite target_reference "
                "pixel: their target scale cannot be known from the inputs; pass "
                "target_reference= (the target as observed there, e.g. the coarse product "
                f"resampled to the grid). Regions seen in fit: {keys}"
            )
        off_t = np.array(found_off, np.float64).reshape(-1, n_out)
        sc_t = np.array(found_scale, np.float64).reshape(-1, n_out)
        zmodel = self._standardised()

        def finish(z: Any, lab: Any) -> Any:
            off = np.moveaxis(_lookup(lab, found_keys, off_t), -1, -3)
            sc = np.moveaxis(_lookup(lab, found_keys, sc_t), -1, -3)
            out = z * sc + off
            return (np.expm1(out) if log else out).astype(np.float32)

        if not cube:
            return finish(zmodel.predict(X), labels)
        z = zmodel.predict(X, **kwargs)
        lab = labels_da.transpose("y", "x")
        lab = lab.chunk({d: z.chunksizes[d] for d in ("y", "x")}) if z.chunks else lab

        def block(zz: np.ndarray, ll: np.ndarray) -> np.ndarray:  # (..., y, x, band), (y, x)
            out = zz * _lookup(ll, found_keys, sc_t) + _lookup(ll, found_keys, off_t)
            return (np.expm1(out) if log else out).astype(np.float32)

        out = xr.apply_ufunc(
            block,
            z,
            lab,
            input_core_dims=[["band"], []],
            output_core_dims=[["band"]],
            dask="parallelized",
            output_dtypes=[np.float32],
        )
        return out.transpose(*z.dims).rename(z.name)

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike):
        """Save to directory ``path`` (weights as Flax msgpack + ``model.json``; no pickle).

        Returns the path; reload with :func:`xfusion.models.load_model`.
        """
        self._check_fitted()
        return persist.write_model(
            path,
            self,
            state=self.params_,
            fmt="msgpack",
            extra={
                # the input and target normalisation are stored once, under "normalisation";
                # "config" is the rest of what apply_tiles needs (_from_saved joins them)
                "normalisation": {k: self.config_[k] for k in _NORMALISATION if k in self.config_},
                "training": self.training_,
                "metrics": self.metrics_,
                "history": self.history_,
                "config": {k: v for k, v in self.config_.items() if k not in _NORMALISATION},
                "tile_multiple": self.tile_multiple_,
                "default_halo": self.default_halo_,
            },
        )

    @classmethod
    def _from_saved(cls, meta: Mapping[str, Any], state: Mapping[str, Any]):
        params = dict(meta["params"])
        if isinstance(params.get("widths"), list):
            params["widths"] = tuple(params["widths"])
        model = cls(**params)
        config = meta.get("config")
        if not isinstance(config, dict) or "architecture" not in config:
            raise ModelError("model.json lacks the network 'config'")
        # format 3 keeps the normalisation under "normalisation" only; format 2 had it in both
        config = {
            **config,
            **{k: v for k, v in meta["normalisation"].items() if k in _NORMALISATION},
        }
        missing = [k for k in ("input_mean", "input_std") if k not in config]
        if missing:
            raise ModelError(f"model.json lacks the input normalisation {missing}")
        for member in member_params(config, state):  # raises ModelError on a mismatch
            build_unet(config["architecture"], params=member)
        model.config_ = config
        model.params_ = state
        model.history_ = dict(meta["history"])
        model.metrics_ = dict(meta["metrics"])
        model.training_ = dict(meta["training"])
        best = model.training_.get("best_epoch")
        if best is None:  # saved before the kept epoch was recorded
            from xfusion.models.train import best_epoch

            best = best_epoch(model.history_) if model.history_.get("loss") else 0
        model.best_epoch_ = tuple(best) if isinstance(best, list) else int(best)
        model.n_features_in_ = int(config["architecture"]["in_channels"])
        model.bands_ = tuple(meta["bands"]) or None  # [] : fitted on unnamed arrays
        if model.bands_ is not None and len(model.bands_) != model.n_features_in_:
            raise ModelError(
                f"model.json names {len(model.bands_)} bands {list(model.bands_)} for a network "
                f"with {model.n_features_in_} input channels"
            )
        model.output_bands_ = tuple(meta["output_bands"])
        model.tile_multiple_ = int(meta["tile_multiple"])
        model.default_halo_ = int(meta["default_halo"])
        model._restore_extra(meta)
        return model

    def _restore_extra(self, meta: Mapping[str, Any]) -> None:
        pass


class UNetRegressor(_UNetEstimator):
    """U-Net regression of one or more target bands from input bands.

    Parameters
    ----------
    loss : {"masked_mse", "mse", "huber"}
        Mean squared error over the valid target pixels (NaN targets ignored), or over all
        pixels (NaN targets are then an error), or the Huber loss over the valid pixels
        (quadratic up to ``huber_delta``, linear beyond: robust to heavy-tailed targets).
    huber_delta : float
        Threshold of the Huber loss, in standard deviations of the (transformed) target, as
        the loss is computed on the standardised target.
    target_transform : {"none", "log1p"}
        ``"log1p"`` fits the network on ``log1p(target)`` and returns ``expm1`` of its output,
        for heavy-tailed targets such as radiances; targets below -1 are refused
        (:class:`~xfusion.errors.InputError`). The transform is stored with the model, so a
        saved and loaded model predicts the same. Under coarse supervision the aggregate is
        still taken in linear units: the fine prediction is transformed back with ``expm1``,
        averaged over the block (with the footprint weights), and ``log1p`` of that mean is
        compared with ``log1p`` of the observation — the coarse observation is a mean of the
        linear field, and the mean of logs is not the log of the mean. ``history_`` metrics
        are then in (standardised-back) ``log1p`` units.
    activation : {"linear", "sigmoid"}
        Output activation. Targets are standardised (linear) or scaled to [0, 1] (sigmoid) with
        statistics learned in ``fit``; predictions are returned in the target's units.
    coarse_factor : int, optional
        Coarse supervision (downscaling): the prediction averaged over
        ``coarse_factor × coarse_factor`` blocks is compared with the target, given either on
        the coarse grid (``patch / coarse_factor`` px) or on the fine grid (block-averaged).
        Independent of the patch size and the depth: patch sides must be multiples of the
        factor (a 100 px patch takes factor 10 or 100), not of ``2 ** depth``.

        **Footprints.** A coarse observation often covers only part of its cell (e.g. one
        value per 3 km tile observed over 10-25 % of it). Give the per-pixel weights of each
        observation as ``fit(..., footprint=w)`` (fine grid; a boolean mask, or weights >= 0;
        or a ``footprint`` variable of the patches Dataset): the prediction is then averaged
        with the same weights as the observation, ``Σ w·pred / Σ w`` per coarse cell, before
        the comparison (cells with ``Σ w = 0`` are no observation). A fine-grid target with
        NaN outside the footprint gets the weights from its NaN pattern (observed pixels
        weight 1, times ``footprint`` when given) and each observation is the weighted mean of
        the target, so the target and the prediction are averaged over the same pixels. A
        fully observed fine-grid target and a coarse target without footprint keep the
        plain block mean. Irregular observations (a fine-grid mask of any shape and one value
        each) train as one patch per observation: ``coarse_factor`` = the patch side, the
        target ``(sample, 1, 1, 1)``, the mask as ``footprint``.
    smoothness : float
        Weight of a penalty on squared differences of neighbouring predicted pixels.
    linear_skip : bool
        Add a pixel-level linear path from the standardised input bands to the output (a 1×1
        convolution, initialised to zero, added to the U-Net's output): the model is then a
        per-pixel linear regression plus the U-Net's spatial correction, trained together.
        Under coarse supervision the linear part is the relationship that a coarse-trained
        pixel ridge would learn, and it is what transfers to the pixels inside new tiles; the
        U-Net adds what the linear part misses. Off by default (the network is then exactly
        the plain U-Net).
    preset : {"small", "seed"}
        Architecture when ``widths`` is None: ``"small"`` (16-32-64, centre 128; CPU-friendly)
        or ``"seed"`` (32-64-128-256-512, centre 1024).
    widths : sequence of int, optional
        Encoder widths (depth = its length); overrides ``preset``.
    center : int, optional
        Centre block width (default: the preset's, or twice the last width).
    optimizer : {"sgd", "adam", "adamw"}
    learning_rate, momentum, weight_decay : float
        Momentum applies to SGD, weight decay to AdamW.
    schedule : {"constant", "cosine", "exponential"}
        Learning-rate schedule over all training steps.
    batch_size, epochs : int
    early_stopping : int, optional
        Patience in epochs (on ``val_loss`` when there is validation data, by default the
        automatic spatial split, else ``loss``); the weights of the best epoch are kept.
    augment : bool
        Random flips and quarter turns of each training patch.
    bn_momentum : float
        Momentum of the BatchNorm running statistics.
    norm : {"batch", "group", "none"}
        Normalisation after each convolution: BatchNorm (default), GroupNorm (no batch
        statistics: the same in training and prediction, independent of the batch), or none.
    recalibrate_bn : bool
        With ``norm="batch"``, recompute the BatchNorm running statistics after training from
        one pass over the un-augmented training patches
        (:func:`~xfusion.models.train.recalibrate_batchnorm`), so prediction uses the
        statistics of the kept weights, not a moving average over augmented batches of
        earlier weights. Default on.
    validation_fraction : float
        Fraction of the samples held out, as whole spatial blocks, to choose the epoch when
        ``fit`` gets no ``validation_data`` (0 disables it). See :meth:`fit`.
    n_members : int
        Ensemble size: members are trained with seeds ``seed``, ``seed + 1``, …; ``predict``
        returns their mean (of values, or of probabilities), ``return_std=True`` also their
        spread; :meth:`members` gives each member as a model of its own.
    standardize : {"global", "per_region"}
        Input standardisation: one mean and standard deviation per band learned in ``fit``
        (``"global"``), or ``"per_region"``: every region / scene standardised with its own
        band statistics (``fit(regions=)`` or a ``region`` coordinate of the patches; in
        prediction, the statistics of the cube or array being predicted), so scenes whose
        brightness differs by a constant factor give the network the same input. Cube
        prediction then computes the cube's band means and standard deviations first (one
        pass), see :meth:`for_region`; predict one region or scene per call.
    halo : int, optional
        Halo for blockwise prediction (``default_halo_``); default from the depth. A multiple
        of ``2**depth`` (:func:`xfusion.validate.check_halo`), checked when ``fit`` starts,
        before any training step.
    seed : int
        Seeds the initialisation, shuffling and augmentation: equal seeds give identical weights.
    progress : bool
        Progress bar over epochs.

    Attributes
    ----------
    bands_, output_bands_ : tuple of str
        Input bands in training order (None when fitted on unnamed arrays: name them with
        :meth:`set_bands` or ``predict(..., bands=)``); output band names (the target's, or
        ``"prediction"``).
    tile_multiple_, default_halo_ : int
        ``2 ** depth``: tiles of sides multiple of it need no padding (any size works, the
        network reflect-pads); the halo for blockwise prediction.
    history_ : dict of lists
        Per epoch ``loss``, ``rmse``, ``mae``, ``r2`` (and ``val_*``); RMSE/MAE in target units,
        on the coarse grid (the footprint-weighted aggregates) under coarse supervision, in
        ``log1p`` units with ``target_transform="log1p"``.
    config_, params_ : dict
        The network description and weights (see :meth:`inference_state`).
    best_epoch_ : int or tuple of int
        Index (into the ``history_`` lists) of the epoch whose weights were kept: the lowest
        ``val_loss`` (else ``loss``); one per member for an ensemble.
    training_ : dict
        How the model was trained: sample counts, ``validation`` (how the validation set was
        made), ``train_index``/``validation_index`` (automatic split), ``best_epoch``,
        ``batchnorm_recalibrated``, ``val_loss_recalibrated`` (the validation loss after the
        final recalibration), ``member_histories`` (ensembles).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(8, 2, 8, 8)).astype("float32")
    >>> model = UNetRegressor(widths=(4,), epochs=2, progress=False).fit(X, X[:, :1] * 2)
    >>> model.predict(X).shape
    (8, 1, 8, 8)

    Coarse supervision with footprints: one value per 4×4 cell, observed over its left half.

    >>> fp = np.zeros((8, 1, 8, 8), bool)
    >>> fp[..., :2] = fp[..., 4:6] = True
    >>> coarse = np.ones((8, 1, 2, 2), "float32")
    >>> model = UNetRegressor(widths=(4,), coarse_factor=4, epochs=1, progress=False)
    >>> model.fit(X, coarse, footprint=fp).predict(X).shape
    (8, 1, 8, 8)
    """

    _head = "regression"

    def __init__(
        self,
        *,
        loss: str = "masked_mse",
        activation: str = "linear",
        coarse_factor: int | None = None,
        huber_delta: float = 1.0,
        target_transform: str = "none",
        target_standardize: str = "global",
        smoothness: float = 0.0,
        linear_skip: bool = False,
        preset: str = "small",
        widths: Sequence[int] | None = None,
        center: int | None = None,
        optimizer: str = "sgd",
        learning_rate: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        schedule: str = "constant",
        batch_size: int = 16,
        epochs: int = 10,
        early_stopping: int | None = None,
        augment: bool = True,
        bn_momentum: float = 0.9,
        norm: str = "batch",
        recalibrate_bn: bool = True,
        validation_fraction: float = 0.2,
        n_members: int = 1,
        standardize: str = "global",
        halo: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.loss = loss
        self.activation = activation
        self.coarse_factor = coarse_factor
        self.huber_delta = huber_delta
        self.target_transform = target_transform
        self.target_standardize = target_standardize
        self.smoothness = smoothness
        self.linear_skip = linear_skip
        self.preset = preset
        self.widths = widths
        self.center = center
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.batch_size = batch_size
        self.epochs = epochs
        self.early_stopping = early_stopping
        self.augment = augment
        self.bn_momentum = bn_momentum
        self.norm = norm
        self.recalibrate_bn = recalibrate_bn
        self.validation_fraction = validation_fraction
        self.n_members = n_members
        self.standardize = standardize
        self.halo = halo
        self.seed = seed
        self.progress = progress

    def _activation(self) -> str:
        return self.activation

    def _out_channels(self) -> int:
        return len(self.output_bands_)

    def _transform(self) -> str:
        t = "none" if self.target_transform is None else self.target_transform
        if t not in TARGET_TRANSFORMS:
            raise InputError(
                f"target_transform must be one of {list(TARGET_TRANSFORMS)}; got "
                f"{self.target_transform!r}"
            )
        return t

    def _loss_spec(self) -> LossSpec:
        if self.loss not in ("mse", "masked_mse", "huber"):
            raise InputError(f"loss must be 'mse', 'masked_mse' or 'huber'; got {self.loss!r}")
        if not float(self.huber_delta) > 0:
            raise InputError(f"huber_delta must be a positive number; got {self.huber_delta}")
        f = self._factor()
        weighted = bool(getattr(self, "_weighted", False))
        # the linear-units aggregate needs the normalisation; only then is it part of the spec
        log = self._transform() == "log1p" and (f > 1 or weighted)
        return LossSpec(
            self.loss,
            coarse_factor=f,
            smoothness=float(self.smoothness),
            weighted=weighted,
            huber_delta=float(self.huber_delta),
            transform="log1p" if log else "none",
            target_offset=tuple(float(v) for v in self._target_offset) if log else (),
            target_scale=tuple(float(v) for v in self._target_scale) if log else (),
        )

    def _factor(self) -> int:
        f = 1 if self.coarse_factor is None else int(self.coarse_factor)
        if f < 1:
            raise InputError(f"coarse_factor must be a positive int; got {self.coarse_factor}")
        return f

    def _set_target(self, ya: np.ndarray, names: tuple | None, x_shape: tuple) -> None:
        if self.activation not in ("linear", "sigmoid"):
            raise InputError(f"activation must be 'linear' or 'sigmoid'; got {self.activation!r}")
        self.output_bands_ = names or (
            ("prediction",)
            if ya.shape[1] == 1
            else tuple(f"prediction_{i}" for i in range(ya.shape[1]))
        )
        if self.loss == "mse" and np.isnan(ya).any():
            raise InputError("the target has NaN (nodata) pixels; use loss='masked_mse'")
        footprint = getattr(self, "_fit_footprint", None)
        f = self._factor()
        fine = tuple(ya.shape[2:]) == tuple(x_shape[2:])
        self._weighted = footprint is not None or (f > 1 and fine and bool(np.isnan(ya).any()))
        if self._transform() == "log1p":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                low = np.nanmin(ya) if np.isfinite(ya).any() else np.nan
            if low < -1:
                raise InputError(
                    f"target_transform='log1p' needs targets >= -1; the target's minimum is "
                    f"{float(low):g}: shift the target or use target_transform='none'"
                )
            ya = np.log1p(ya)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if self.activation == "sigmoid":
                lo, hi = np.nanmin(ya, axis=(0, 2, 3)), np.nanmax(ya, axis=(0, 2, 3))
                offset, scale = lo, hi - lo
            else:
                offset, scale = np.nanmean(ya, axis=(0, 2, 3)), np.nanstd(ya, axis=(0, 2, 3))
        if not np.all(np.isfinite(offset)):
            empty = [b for b, o in zip(self.output_bands_, offset, strict=True) if np.isnan(o)]
            raise InputError(
                f"target bands {empty} have no valid (non-NaN) pixel in the patches; expected "
                "at least one finite target value per band"
            )
        self._target_offset = offset.astype(np.float64)
        self._target_scale = np.where(scale > 0, scale, 1.0).astype(np.float64)
        self._target_regions = None
        if self._target_standardize() == "per_region":
            labels = getattr(self, "_labels", None)
            if labels is None:
                raise InputError(
                    "target_standardize='per_region' needs region labels: fit(..., regions=) "
                    "with one label per sample or per pixel, a per-sample 'region' coordinate "
                    "or a 'region' variable (sample, y, x) of the patches Dataset"
                )
            if self.activation != "linear" or f > 1 or self._weighted:
                raise InputError(
                    "target_standardize='per_region' works with activation='linear' on fine "
                    f"targets; got activation={self.activation!r}, coarse_factor="
                    f"{self.coarse_factor!r}" + (" and a footprint" if self._weighted else "")
                )
            # ``ya`` is already log1p-transformed here when the model transforms its target
            table = _target_region_table(ya, labels, log=False)
            given = getattr(self, "_given_statistics", None)
            if given is not None:
                table = _checked_statistics(given, sorted(table), ya.shape[1])
            self._target_regions = table
            self._target_offset = np.zeros_like(self._target_offset)
            self._target_scale = np.ones_like(self._target_scale)
        elif getattr(self, "_given_statistics", None) is not None:
            raise InputError(
                "target_statistics applies to target_standardize='per_region'; this model "
                "standardises its target globally"
            )

    def _target_standardize(self) -> str:
        value = getattr(self, "target_standardize", "global")
        if value not in TARGET_STANDARDIZE:
            raise InputError(
                f"target_standardize must be one of {list(TARGET_STANDARDIZE)}; got {value!r}"
            )
        return value

    def _output_config(self) -> dict[str, Any]:
        out = {
            "output": "regression",
            "target_offset": self._target_offset.tolist(),
            "target_scale": self._target_scale.tolist(),
        }
        if self._target_regions is not None:
            out["target_standardize"] = "per_region"
            out["target_regions"] = self._target_regions
            if self._transform() != "none":
                out["region_target_transform"] = self._transform()
        elif self._transform() != "none":
            out["target_transform"] = self._transform()
        return out

    def _prepare_y(
        self, ya: np.ndarray, x_shape: tuple, what: str, footprint: np.ndarray | None = None
    ) -> np.ndarray:
        f = self._factor()
        h, w = x_shape[2:]
        if ya.shape[1] != len(self.output_bands_):
            raise InputError(
                f"{what} target has {ya.shape[1]} bands; expected {len(self.output_bands_)}"
            )
        fine = ya.shape[2:] == (h, w)
        if not fine and (f == 1 or ya.shape[2:] != (h // f, w // f)):
            expected = f"{h}×{w}" + (f" or {h // f}×{w // f} (coarse)" if f > 1 else "")
            raise InputError(
                f"{what} target is {ya.shape[2]}×{ya.shape[3]} px; expected {expected}"
            )
        log = self._transform() == "log1p"
        if log and np.nanmin(ya, initial=0.0) < -1:
            raise InputError(
                f"target_transform='log1p' needs {what} targets >= -1; got a minimum of "
                f"{float(np.nanmin(ya)):g}"
            )
        offset = np.asarray(self._target_offset, np.float32)[None, :, None, None]
        scale = np.asarray(self._target_scale, np.float32)[None, :, None, None]
        table = getattr(self, "_target_regions", None)
        if table is not None:  # per-region offset and scale, pixel by pixel
            labels = getattr(self, "_labels", None)
            if labels is None:
                raise InputError(
                    f"{what} targets need region labels with target_standardize='per_region' "
                    "(a per-sample 'region' coordinate or a 'region' variable of the patches)"
                )
            keys = list(table)
            unseen = sorted({_label_key(u) for u in np.unique(labels)} - set(keys))
            if unseen:
                raise InputError(
                    f"{what} regions {unseen} are not among the training regions {keys}"
                )
            offs = np.array([table[k]["offset"] for k in keys], np.float32)
            scs = np.array([table[k]["scale"] for k in keys], np.float32)
            offset = np.moveaxis(_lookup(labels, keys, offs), -1, 1).astype(np.float32)
            scale = np.moveaxis(_lookup(labels, keys, scs), -1, 1).astype(np.float32)

        def normalise(a: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore"):
                a = np.log1p(a) if log else a
            return ((a - offset) / scale).astype(np.float32)

        if not getattr(self, "_weighted", False):
            if fine and f > 1:
                # fully observed fine targets: plain block mean (of the linear values)
                ya = _block_nanmean(ya, f)
            return _nhwc(normalise(ya))
        # footprints: fine-grid values (one per coarse block) and weights, 2·C channels
        n_out = ya.shape[1]
        weights = np.ones((len(ya), n_out, h, w), np.float32)
        if footprint is not None:
            weights = weights * footprint
        if fine:
            observed = np.isfinite(ya)
            weights = np.where(observed, weights, 0.0).astype(np.float32)
            total = _block_sum(weights, f)
            num = _block_sum(weights * np.where(observed, ya, 0.0), f)
            with np.errstate(invalid="ignore", divide="ignore"):
                obs = np.where(total > 0, num / np.where(total > 0, total, 1.0), np.nan)
        else:
            obs = ya
        values = _upsample(normalise(obs), f)
        return _nhwc(np.concatenate([values, weights], axis=1).astype(np.float32))

    def _finish(self, mean: np.ndarray) -> np.ndarray:
        return mean

    def _mask_targets(self, y: np.ndarray, held: np.ndarray) -> np.ndarray:
        """Targets (as prepared) with the ``held`` ``(n, h, w)`` fine pixels made nodata.

        Under coarse supervision a coarse cell touching a held pixel is dropped whole (NaN
        observation, or zero footprint weights).
        """
        f = self._factor()
        n, h, w = held.shape
        cells = held.reshape(n, h // f, f, w // f, f).any(axis=(2, 4)) if f > 1 else held
        y = y.copy()
        if getattr(self, "_weighted", False):
            n_out = y.shape[-1] // 2
            fine = np.repeat(np.repeat(cells, f, axis=1), f, axis=2) if f > 1 else cells
            y[..., n_out:][fine] = 0.0
        else:
            y[cells] = np.nan
        return y

    def _restore_extra(self, meta: Mapping[str, Any]) -> None:
        self._target_offset = np.asarray(self.config_["target_offset"], np.float64)
        self._target_scale = np.asarray(self.config_["target_scale"], np.float64)
        self._target_regions = self.config_.get("target_regions")


class UNetSegmenter(_UNetEstimator):
    """U-Net segmentation into two (binary) or more classes.

    Parameters
    ----------
    ignore_value : float, optional
        Label value meaning "no data" (cloud, partial water ...), ignored by the loss and the
        metrics — it never becomes a class. NaN labels are always ignored.
    dice_weight : float
        Weight of a soft Dice loss added to the binary / categorical cross-entropy.
    preset : {"small", "seed"}
        Architecture when ``widths`` is None: ``"small"`` (16-32-64, centre 128; CPU-friendly)
        or ``"seed"`` (32-64-128-256-512, centre 1024).
    widths : sequence of int, optional
        Encoder widths (depth = its length); overrides ``preset``.
    center : int, optional
        Centre block width (default: the preset's, or twice the last width).
    optimizer : {"sgd", "adam", "adamw"}
    learning_rate, momentum, weight_decay : float
        Momentum applies to SGD, weight decay to AdamW.
    schedule : {"constant", "cosine", "exponential"}
        Learning-rate schedule over all training steps.
    batch_size, epochs : int
    early_stopping : int, optional
        Patience in epochs (on ``val_loss`` when there is validation data, by default the
        automatic spatial split, else ``loss``); the weights of the best epoch are kept.
    augment : bool
        Random flips and quarter turns of each training patch.
    bn_momentum : float
        Momentum of the BatchNorm running statistics.
    norm : {"batch", "group", "none"}
        Normalisation after each convolution: BatchNorm (default), GroupNorm (no batch
        statistics: the same in training and prediction, independent of the batch), or none.
    recalibrate_bn : bool
        With ``norm="batch"``, recompute the BatchNorm running statistics after training from
        one pass over the un-augmented training patches
        (:func:`~xfusion.models.train.recalibrate_batchnorm`), so prediction uses the
        statistics of the kept weights, not a moving average over augmented batches of
        earlier weights. Default on.
    validation_fraction : float
        Fraction of the samples held out, as whole spatial blocks, to choose the epoch when
        ``fit`` gets no ``validation_data`` (0 disables it). See :meth:`fit`.
    n_members : int
        Ensemble size: members are trained with seeds ``seed``, ``seed + 1``, …; ``predict``
        returns their mean (of values, or of probabilities), ``return_std=True`` also their
        spread; :meth:`members` gives each member as a model of its own.
    standardize : {"global", "per_region"}
        Input standardisation: one mean and standard deviation per band learned in ``fit``
        (``"global"``), or ``"per_region"``: every region / scene standardised with its own
        band statistics (``fit(regions=)`` or a ``region`` coordinate of the patches; in
        prediction, the statistics of the cube or array being predicted), so scenes whose
        brightness differs by a constant factor give the network the same input. Cube
        prediction then computes the cube's band means and standard deviations first (one
        pass), see :meth:`for_region`; predict one region or scene per call.
    halo : int, optional
        Halo for blockwise prediction (``default_halo_``); default from the depth. A multiple
        of ``2**depth`` (:func:`xfusion.validate.check_halo`), checked when ``fit`` starts,
        before any training step.
    seed : int
        Seeds the initialisation, shuffling and augmentation: equal seeds give identical weights.
    progress : bool
        Progress bar over epochs.

    Attributes
    ----------
    classes_ : tuple
        The label values seen in training (sorted); two classes train one logit with binary
        cross-entropy, more classes one logit per class with cross-entropy.
    bands_, output_bands_ : tuple of str
        Input bands (None when fitted on unnamed arrays, see :meth:`set_bands`); probability
        bands: ``("proba_<positive class>",)`` for two classes,
        ``"proba_<class>"`` per class otherwise. ``predict_proba`` and cube prediction return
        these probabilities; ``predict`` on numpy returns the most likely class value.
    history_ : dict of lists
        Per epoch ``loss``, ``accuracy``, ``f1``, ``iou`` (positive class, or means over
        classes) and ``val_*``.
    best_epoch_ : int or tuple of int
        Index (into the ``history_`` lists) of the epoch whose weights were kept: the lowest
        ``val_loss`` (else ``loss``); one per member for an ensemble.
    training_ : dict
        How the model was trained: sample counts, ``validation`` (how the validation set was
        made), ``train_index``/``validation_index`` (automatic split), ``best_epoch``,
        ``batchnorm_recalibrated``, ``val_loss_recalibrated`` (the validation loss after the
        final recalibration), ``member_histories`` (ensembles).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype("float32")
    >>> model = UNetSegmenter(widths=(4,), epochs=2, progress=False).fit(X, X > 0)
    >>> model.classes_, model.predict(X).shape
    ((0.0, 1.0), (8, 1, 8, 8))
    """

    _head = "segmentation"

    def __init__(
        self,
        *,
        ignore_value: float | None = None,
        dice_weight: float = 0.0,
        preset: str = "small",
        widths: Sequence[int] | None = None,
        center: int | None = None,
        optimizer: str = "sgd",
        learning_rate: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        schedule: str = "constant",
        batch_size: int = 16,
        epochs: int = 10,
        early_stopping: int | None = None,
        augment: bool = True,
        bn_momentum: float = 0.9,
        norm: str = "batch",
        recalibrate_bn: bool = True,
        validation_fraction: float = 0.2,
        n_members: int = 1,
        standardize: str = "global",
        halo: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.ignore_value = ignore_value
        self.dice_weight = dice_weight
        self.preset = preset
        self.widths = widths
        self.center = center
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.batch_size = batch_size
        self.epochs = epochs
        self.early_stopping = early_stopping
        self.augment = augment
        self.bn_momentum = bn_momentum
        self.norm = norm
        self.recalibrate_bn = recalibrate_bn
        self.validation_fraction = validation_fraction
        self.n_members = n_members
        self.standardize = standardize
        self.halo = halo
        self.seed = seed
        self.progress = progress

    def _activation(self) -> str:
        return "linear"

    def _out_channels(self) -> int:
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    def _loss_spec(self) -> LossSpec:
        kind = "bce" if len(self.classes_) == 2 else "cross_entropy"
        return LossSpec(kind, n_classes=len(self.classes_), dice_weight=float(self.dice_weight))

    def _valid_labels(self, ya: np.ndarray) -> np.ndarray:
        valid = ~np.isnan(ya)
        if self.ignore_value is not None:
            valid &= ya != np.float32(self.ignore_value)
        return valid

    def _set_target(self, ya: np.ndarray, names: tuple | None, x_shape: tuple) -> None:
        if ya.shape[1] != 1:
            raise InputError(f"segmentation needs one label band; got {ya.shape[1]}")
        classes = np.unique(ya[self._valid_labels(ya)])
        if len(classes) < 2:
            raise InputError(
                f"segmentation needs at least two classes in the labels; found {classes.tolist()}"
                + (f" (ignore_value={self.ignore_value})" if self.ignore_value is not None else "")
            )
        self.classes_ = tuple(c.item() for c in classes)
        self.output_bands_ = (
            (f"proba_{_label(self.classes_[1])}",)
            if len(classes) == 2
            else tuple(f"proba_{_label(c)}" for c in self.classes_)
        )

    def _output_config(self) -> dict[str, Any]:
        return {
            "output": "binary" if len(self.classes_) == 2 else "multiclass",
            "classes": list(self.classes_),
        }

    def _prepare_y(
        self, ya: np.ndarray, x_shape: tuple, what: str, footprint: np.ndarray | None = None
    ) -> np.ndarray:
        if footprint is not None:
            raise InputError(
                "footprint applies to coarse-supervised UNetRegressor only; got one for "
                "UNetSegmenter"
            )
        if ya.shape[1] != 1 or ya.shape[2:] != x_shape[2:]:
            raise InputError(
                f"{what} labels must be one band of {x_shape[2]}×{x_shape[3]} px; "
                f"got {ya.shape[1:]}"
            )
        valid = self._valid_labels(ya)
        classes = np.asarray(self.classes_, np.float32)
        index = np.searchsorted(classes, np.where(valid, ya, classes[0]))
        index = np.clip(index, 0, len(classes) - 1)
        known = valid & (classes[index] == ya)
        if (valid & ~known).any():
            unknown = np.unique(ya[valid & ~known]).tolist()
            raise InputError(
                f"{what} labels {unknown[:10]} are not among the classes {list(self.classes_)}"
            )
        return np.where(known, index, -1)[:, 0].astype(np.int32)

    def predict_proba(self, X: np.ndarray, *, return_std: bool = False) -> np.ndarray:
        """Class probabilities ``(sample, output_bands_, y, x)`` for numpy patches (eager).

        NaN where any input band is NaN. For an ensemble the members' mean probability; with
        ``return_std`` also their standard deviation.
        """
        mean, std = self._outputs(X)
        nodata = self._nodata(X)
        proba = np.where(nodata, np.float32(np.nan), mean)
        if not return_std:
            return proba
        return proba, np.where(nodata, np.float32(np.nan), std)

    def _mask_targets(self, y: np.ndarray, held: np.ndarray) -> np.ndarray:
        """Class indices ``(n, h, w)`` with the ``held`` pixels ignored (-1)."""
        return np.where(held, -1, y).astype(y.dtype)

    def _finish(self, proba: np.ndarray) -> np.ndarray:
        classes = np.asarray(self.classes_, np.float32)
        index = (proba[:, :1] > 0.5).astype(int) if len(classes) == 2 else proba.argmax(1)[:, None]
        return classes[index]

    def _restore_extra(self, meta: Mapping[str, Any]) -> None:
        self.classes_ = tuple(self.config_["classes"])


def _label(value: Any) -> str:
    f = float(value)
    return str(int(f)) if f.is_integer() else str(value)
