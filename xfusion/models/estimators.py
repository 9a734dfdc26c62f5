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

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator

from xfusion.errors import BandError, InputError, ModelError
from xfusion.models import persist
from xfusion.models.losses import LossSpec
from xfusion.models.predict import check_band_names
from xfusion.models.unet import (
    PRESETS,
    TARGET_TRANSFORMS,
    apply_tiles,
    build_unet,
    default_halo,
    unet_params,
)

__all__ = ["UNetRegressor", "UNetSegmenter"]

_INPUT_NAMES = ("inputs", "features", "X", "x")
_TARGET_NAMES = ("target", "targets", "labels", "label", "y")
_FOOTPRINT_NAMES = ("footprint", "weights", "weight")


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


def _block_sum(a: np.ndarray, factor: int) -> np.ndarray:
    n, b, h, w = a.shape
    return a.reshape(n, b, h // factor, factor, w // factor, factor).sum(axis=(3, 5))


def _upsample(a: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(a, factor, axis=2), factor, axis=3)


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------


class _UNetEstimator(BaseEstimator):
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
        self, X: Any, y: Any = None, *, validation_data: Any = None, bands=None, footprint=None
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
            Evaluated after every epoch (``val_*`` entries of ``history_``; early stopping
            watches ``val_loss``).
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
        """
        if footprint is None and isinstance(X, xr.Dataset):
            footprint = _pick(X, _FOOTPRINT_NAMES, "footprint")
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
        widths, center = self._architecture_widths()
        mult = 2 ** len(widths)
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
        self._set_target(ya, target_names, xa.shape)
        spec = self._loss_spec()
        config = {
            "architecture": {
                "in_channels": int(xa.shape[1]),
                "out_channels": self._out_channels(),
                "widths": list(widths),
                "center": center,
                "head": self._head,
                "activation": self._activation(),
                "bn_momentum": float(self.bn_momentum),
            },
            "input_mean": mean.tolist(),
            "input_std": std.tolist(),
            **self._output_config(),
        }
        train = (
            self._prepare_x(xa, config),
            self._prepare_y(ya, xa.shape, "training", self._fit_footprint),
        )
        del self._fit_footprint
        val = None
        if validation_data is not None:
            v_fp = None
            if isinstance(validation_data, xr.Dataset):
                v_fp = _pick(validation_data, _FOOTPRINT_NAMES, "footprint")
                vx, vy, v_bands, _ = _training_arrays(validation_data, None)
            else:
                vx, vy, v_bands, _ = _training_arrays(*validation_data)
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
            val = (self._prepare_x(vx, config), self._prepare_y(vy, vx.shape, "validation", v_fp))

        from xfusion.models.train import make_optimizer, train_and_evaluate

        batch_size = min(int(self.batch_size), len(xa))
        steps = max(len(xa) // batch_size, 1) * int(self.epochs)
        tx = make_optimizer(
            self.optimizer,
            float(self.learning_rate),
            momentum=float(self.momentum),
            weight_decay=float(self.weight_decay),
            schedule=self.schedule,
            total_steps=steps,
        )
        model = build_unet(config["architecture"], seed=int(self.seed))
        history = train_and_evaluate(
            model,
            tx,
            train,
            spec=spec,
            epochs=int(self.epochs),
            batch_size=batch_size,
            validation_data=val,
            seed=int(self.seed),
            augment=bool(self.augment),
            patience=self.early_stopping,
            progress=bool(self.progress),
            target_scale=config.get("target_scale"),
        )
        self.config_ = config
        self.params_ = unet_params(model)
        self.history_ = history
        self.metrics_ = {k: v[-1] for k, v in history.items()}
        self.bands_ = x_bands
        self.n_features_in_ = int(xa.shape[1])
        self.tile_multiple_ = mult
        self.default_halo_ = int(self.halo) if self.halo is not None else default_halo(len(widths))
        if self.default_halo_ % mult:
            raise InputError(f"halo must be a multiple of {mult} (2**depth); got {self.halo}")
        self.training_ = {
            "n_samples": len(xa),
            "patch_shape": list(xa.shape[2:]),
            "target_shape": list(ya.shape[1:]),
            "n_validation": 0 if val is None else len(val[0]),
        }
        return self

    def _prepare_x(self, xa: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
        mean = np.asarray(config["input_mean"], np.float32)[None, :, None, None]
        std = np.asarray(config["input_std"], np.float32)[None, :, None, None]
        x = (xa - mean) / std
        return _nhwc(np.where(np.isnan(x), 0.0, x).astype(np.float32))

    # -- inference ----------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise ModelError(f"this {type(self).__name__} is not fitted yet; call fit first")

    def inference_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return ``(config, params)`` for :func:`xfusion.models.unet.apply_tiles`.

        ``config`` is JSON-able (architecture, input normalisation, output kind and target
        scaling or classes); ``params`` a nested dict of numpy arrays.
        """
        self._check_fitted()
        return self.config_, self.params_

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
        self._check_fitted()
        x = np.asarray(X, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != self.n_features_in_:
            names = f" {list(self.bands_)}" if self.bands_ is not None else ""
            raise InputError(
                f"X must be (sample, band, y, x) with {self.n_features_in_} bands"
                f"{names}; got shape {x.shape}"
            )
        size = int(batch_size or self.batch_size)
        config, params = self.inference_state()
        size = min(size, len(x))
        # every batch padded to `size` samples: one compiled program per tile shape; any height
        # and width (the network reflect-pads to multiples of 2**depth, as in training)
        padded = np.pad(x, ((0, -len(x) % size), (0, 0), (0, 0), (0, 0)))
        out = np.concatenate(
            [apply_tiles(config, params, padded[i : i + size]) for i in range(0, len(x), size)]
        )
        return out[: len(x)]

    def _nodata(self, X: np.ndarray) -> np.ndarray:
        return np.isnan(np.asarray(X, dtype=np.float32)).any(axis=1, keepdims=True)

    def predict(self, X: Any, **kwargs: Any):
        """Predict on patches (eager) or on a cube (lazy).

        Parameters
        ----------
        X : numpy.ndarray or xarray.DataArray
            ``(sample, band, y, x)`` numpy array (any height/width; the network reflect-pads
            to multiples of ``2 ** depth`` and crops back), or a
            cube with the training bands, predicted blockwise by
            :func:`xfusion.models.predict.predict` (keyword arguments are passed on).

        Returns
        -------
        numpy.ndarray or xarray.DataArray
            See the class docstring for the bands. NaN where any input band is NaN (numpy).
        """
        if isinstance(X, xr.DataArray):
            from xfusion.models.predict import predict as _predict_cube

            return _predict_cube(X, self, **kwargs)
        if kwargs:
            raise InputError(f"keyword arguments {sorted(kwargs)} apply to cubes only")
        out = self._predict_array(X)
        return np.where(self._nodata(X), np.float32(np.nan), out)

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
                "normalisation": {
                    "input_mean": self.config_["input_mean"],
                    "input_std": self.config_["input_std"],
                    **{
                        k: self.config_[k]
                        for k in ("target_offset", "target_scale")
                        if k in self.config_
                    },
                },
                "training": self.training_,
                "metrics": self.metrics_,
                "history": self.history_,
                "config": self.config_,
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
        build_unet(config["architecture"], params=state)  # raises ModelError on mismatch
        model.config_ = config
        model.params_ = state
        model.history_ = dict(meta["history"])
        model.metrics_ = dict(meta["metrics"])
        model.training_ = dict(meta["training"])
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
        Patience in epochs (on ``val_loss`` when validation data is given, else ``loss``); the
        weights of the best epoch are kept.
    augment : bool
        Random flips and quarter turns of each training patch.
    bn_momentum : float
        Momentum of the BatchNorm running statistics.
    halo : int, optional
        Halo for blockwise prediction (``default_halo_``); default from the depth.
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
        smoothness: float = 0.0,
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
        halo: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.loss = loss
        self.activation = activation
        self.coarse_factor = coarse_factor
        self.huber_delta = huber_delta
        self.target_transform = target_transform
        self.smoothness = smoothness
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

    def _output_config(self) -> dict[str, Any]:
        out = {
            "output": "regression",
            "target_offset": self._target_offset.tolist(),
            "target_scale": self._target_scale.tolist(),
        }
        if self._transform() != "none":
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

    def _predict_array(self, X: np.ndarray) -> np.ndarray:
        return self._apply(X)

    def _restore_extra(self, meta: Mapping[str, Any]) -> None:
        self._target_offset = np.asarray(self.config_["target_offset"], np.float64)
        self._target_scale = np.asarray(self.config_["target_scale"], np.float64)


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
        Patience in epochs (on ``val_loss`` when validation data is given, else ``loss``); the
        weights of the best epoch are kept.
    augment : bool
        Random flips and quarter turns of each training patch.
    bn_momentum : float
        Momentum of the BatchNorm running statistics.
    halo : int, optional
        Halo for blockwise prediction (``default_halo_``); default from the depth.
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

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(sample, output_bands_, y, x)`` for numpy patches (eager).

        NaN where any input band is NaN.
        """
        return np.where(self._nodata(X), np.float32(np.nan), self._apply(X))

    def _predict_array(self, X: np.ndarray) -> np.ndarray:
        proba = self._apply(X)
        classes = np.asarray(self.classes_, np.float32)
        index = (proba[:, :1] > 0.5).astype(int) if len(classes) == 2 else proba.argmax(1)[:, None]
        return classes[index]

    def _restore_extra(self, meta: Mapping[str, Any]) -> None:
        self.classes_ = tuple(self.config_["classes"])


def _label(value: Any) -> str:
    f = float(value)
    return str(int(f)) if f.is_integer() else str(value)
