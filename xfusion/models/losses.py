"""Losses and metric statistics for training the U-Net (pure JAX, no xarray).

Every loss takes the network output ``pred`` (NHWC) and the target and ignores nodata: NaN
regression targets and negative class indices (the "ignore" label) contribute nothing, so
changing a nodata label changes neither the loss nor its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xfusion.errors import InputError

__all__ = [
    "LossSpec",
    "block_mean",
    "coarse_pair",
    "compute_loss",
    "finalize_metrics",
    "metric_stats",
    "weighted_block_mean",
]

_KINDS = ("mse", "masked_mse", "huber", "bce", "cross_entropy")
_REGRESSION = ("mse", "masked_mse", "huber")
_TRANSFORMS = ("none", "log1p")


@dataclass(frozen=True)
class LossSpec:
    """What to minimise (hashable, so it can be a static argument of a jitted step).

    Parameters
    ----------
    kind : {"mse", "masked_mse", "huber", "bce", "cross_entropy"}
        Regression losses take float targets with NaN as nodata (``"mse"`` expects none;
        ``"huber"`` is quadratic, ``e²/2``, for errors up to ``huber_delta`` and linear beyond,
        so a few extreme targets pull less); ``"bce"`` takes 1 logit and class indices {0, 1};
        ``"cross_entropy"`` one logit per class. Negative class indices are ignored.
    n_classes : int
        Classes of a segmentation target (2 for ``"bce"``).
    coarse_factor : int
        Coarse supervision: the prediction is averaged over ``coarse_factor × coarse_factor``
        blocks before it is compared with the (coarse) target.
    smoothness : float
        Weight of a penalty on squared differences between neighbouring predicted pixels.
    dice_weight : float
        Weight of a soft Dice loss added to BCE / cross-entropy.
    weighted : bool
        Coarse observations with footprints: the target is on the fine grid with ``2·C``
        channels, the ``C`` observed values (one value repeated over each coarse block, NaN
        where the block has no observation) then ``C`` weight maps (>= 0, e.g. 1 inside the
        observation's footprint and 0 outside). The prediction is aggregated per block as
        ``Σ w·pred / Σ w`` (:func:`weighted_block_mean`), the same weights the observation
        averages over; a block with ``Σ w = 0`` is no observation.
    huber_delta : float
        Threshold of the Huber loss (in the units of the normalised target).
    transform : {"none", "log1p"}
        Target transform the network's outputs are in. With ``"log1p"`` and coarse supervision
        the aggregate is taken in linear units: ``expm1(pred·scale + offset)`` is averaged over
        the block (weighted), and ``(log1p(aggregate) - offset) / scale`` is compared with the
        observation (given as normalised ``log1p`` of the linear observation).
    target_offset, target_scale : tuple of float
        Per output band normalisation of the transformed target (only used with ``"log1p"``
        under coarse supervision).
    """

    kind: str = "masked_mse"
    n_classes: int = 0
    coarse_factor: int = 1
    smoothness: float = 0.0
    dice_weight: float = 0.0
    weighted: bool = False
    huber_delta: float = 1.0
    transform: str = "none"
    target_offset: tuple = ()
    target_scale: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InputError(f"loss must be one of {list(_KINDS)}; got {self.kind!r}")
        if int(self.coarse_factor) < 1:
            raise InputError(f"coarse_factor must be a positive int; got {self.coarse_factor}")
        if not float(self.huber_delta) > 0:
            raise InputError(f"huber_delta must be a positive number; got {self.huber_delta}")
        if self.transform not in _TRANSFORMS:
            raise InputError(
                f"target transform must be one of {list(_TRANSFORMS)}; got {self.transform!r}"
            )

    @property
    def regression(self) -> bool:
        """Whether the loss is a regression loss."""
        return self.kind in _REGRESSION

    @property
    def aggregates(self) -> bool:
        """Whether predictions are aggregated to coarse observations before the comparison."""
        return self.coarse_factor > 1 or self.weighted


def block_mean(x: jax.Array, factor: int) -> jax.Array:
    """Average NHWC ``x`` over ``factor × factor`` blocks.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> block_mean(jnp.arange(16.0).reshape(1, 4, 4, 1), 2)[0, :, :, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    if factor == 1:
        return x
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def _block_sum(x: jax.Array, factor: int) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).sum(axis=(2, 4))


def weighted_block_mean(x: jax.Array, weights: jax.Array, factor: int) -> jax.Array:
    """Weighted mean ``Σ w·x / Σ w`` of NHWC ``x`` over ``factor × factor`` blocks.

    ``weights`` has the shape of ``x``; NaN weights count as 0 and a block whose weights sum to
    0 is NaN. Gradients stay finite (no ``0/0`` on the differentiated path).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> w = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0].set(1.0).at[0, 1, 1].set(1.0)
    >>> weighted_block_mean(x, w, 2)[0, :, :, 0].tolist()
    [[2.5, nan], [nan, nan]]
    """
    weights = jnp.where(jnp.isnan(weights), 0.0, weights)
    total = _block_sum(weights, factor)
    num = _block_sum(weights * x, factor)
    return jnp.where(total > 0, num / jnp.where(total > 0, total, 1.0), jnp.nan)


def coarse_pair(spec: LossSpec, pred: jax.Array, target: jax.Array) -> tuple:
    """Return the prediction aggregated as the target was observed, and the target (NHWC).

    Without coarse supervision both are returned as given. With ``coarse_factor > 1`` the
    prediction is averaged over blocks (weighted by the footprint channels of ``target`` when
    ``spec.weighted``; in linear units when ``spec.transform == "log1p"``); the returned target
    has NaN where there is no observation.
    """
    if not spec.aggregates:
        return pred, target
    f = int(spec.coarse_factor)
    c = pred.shape[-1]
    log = spec.transform == "log1p"
    if log:
        offset = jnp.asarray(spec.target_offset, pred.dtype)
        scale = jnp.asarray(spec.target_scale, pred.dtype)
        lin = jnp.expm1(pred * scale + offset)
    else:
        lin = pred
    if spec.weighted:
        values, weights = target[..., :c], target[..., c:]
        agg = weighted_block_mean(lin, weights, f)
        obs = block_mean(values, f)
        obs = jnp.where(jnp.isnan(agg), jnp.nan, obs)
        agg = jnp.where(jnp.isnan(agg), 0.0, agg)
    else:
        agg, obs = block_mean(lin, f), target
    if log:  # back to the model's (normalised log1p) units; the aggregate is > -1
        agg = (jnp.log1p(jnp.maximum(agg, -1.0 + 1e-6)) - offset) / scale
    return agg, obs


def _pointwise(spec: LossSpec, err: jax.Array) -> jax.Array:
    if spec.kind == "huber":
        delta = float(spec.huber_delta)
        a = jnp.abs(err)
        return jnp.where(a <= delta, 0.5 * err**2, delta * (a - 0.5 * delta))
    return err**2


def _soft_dice(prob: jax.Array, onehot: jax.Array, valid: jax.Array) -> jax.Array:
    v = valid[..., None]
    inter = jnp.sum(prob * onehot * v, axis=(0, 1, 2))
    total = jnp.sum((prob + onehot) * v, axis=(0, 1, 2))
    return 1.0 - jnp.mean((2.0 * inter + 1.0) / (total + 1.0))


def compute_loss(spec: LossSpec, pred: jax.Array, target: jax.Array) -> jax.Array:
    """Scalar loss of ``pred`` (NHWC network output) against ``target``.

    ``target`` is NHWC float with NaN for nodata (regression; at the coarse resolution when
    ``spec.coarse_factor > 1``, or on the fine grid with footprint weight channels when
    ``spec.weighted``, see :class:`LossSpec`) or NHW int class indices with negative values
    ignored (segmentation).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> pred = jnp.zeros((1, 2, 2, 1))
    >>> target = jnp.array([1.0, 3.0, jnp.nan, jnp.nan]).reshape(1, 2, 2, 1)
    >>> float(compute_loss(LossSpec("masked_mse"), pred, target))
    5.0
    """
    if spec.regression:
        fine = pred
        pred, target = coarse_pair(spec, pred, target)
        valid = ~jnp.isnan(target)
        err = jnp.where(valid, pred - jnp.where(valid, target, 0.0), 0.0)
        loss = jnp.sum(_pointwise(spec, err)) / jnp.maximum(jnp.sum(valid), 1)
        if spec.smoothness:
            dy = jnp.mean((fine[:, 1:] - fine[:, :-1]) ** 2)
            dx = jnp.mean((fine[:, :, 1:] - fine[:, :, :-1]) ** 2)
            loss = loss + spec.smoothness * (dx + dy)
        return loss
    valid = target >= 0
    labels = jnp.where(valid, target, 0)
    if spec.kind == "bce":
        logits = pred[..., 0]
        per_pixel = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
        prob = jax.nn.sigmoid(pred)
        onehot = labels[..., None].astype(pred.dtype)
    else:
        per_pixel = optax.softmax_cross_entropy_with_integer_labels(pred, labels)
        prob = jax.nn.softmax(pred, axis=-1)
        onehot = jax.nn.one_hot(labels, pred.shape[-1], dtype=pred.dtype)
    loss = jnp.sum(jnp.where(valid, per_pixel, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    if spec.dice_weight:
        loss = loss + spec.dice_weight * _soft_dice(prob, onehot, valid)
    return loss


def metric_stats(spec: LossSpec, pred: jax.Array, target: jax.Array) -> jax.Array:
    """Additive per-batch statistics from which :func:`finalize_metrics` derives the metrics.

    Regression: per output band ``[count, Σe², Σ|e|, Σy, Σy²]`` (shape ``(bands, 5)``);
    segmentation: the confusion matrix ``(true, predicted)`` of the valid pixels.
    """
    if spec.regression:
        pred, target = coarse_pair(spec, pred, target)
        valid = ~jnp.isnan(target)
        y = jnp.where(valid, target, 0.0)
        err = jnp.where(valid, pred - y, 0.0)
        axes = (0, 1, 2)
        return jnp.stack(
            [
                jnp.sum(valid, axis=axes).astype(jnp.float32),
                jnp.sum(err**2, axis=axes),
                jnp.sum(jnp.abs(err), axis=axes),
                jnp.sum(y, axis=axes),
                jnp.sum(y**2, axis=axes),
            ],
            axis=-1,
        )
    k = max(spec.n_classes, 2)
    predicted = (pred[..., 0] > 0).astype(jnp.int32) if spec.kind == "bce" else pred.argmax(-1)
    valid = (target >= 0)[..., None, None]
    t = jax.nn.one_hot(target, k, dtype=jnp.float32)[..., :, None]
    p = jax.nn.one_hot(predicted, k, dtype=jnp.float32)[..., None, :]
    return jnp.sum(jnp.where(valid, t * p, 0.0), axis=(0, 1, 2))


def finalize_metrics(spec: LossSpec, stats: np.ndarray, target_scale=None) -> dict[str, float]:
    """Metrics from summed :func:`metric_stats`.

    Regression: ``rmse``, ``mae`` (in target units: multiplied by ``target_scale`` per band) and
    ``r2``, averaged over output bands. Segmentation: ``accuracy``; ``f1`` and ``iou`` of the
    positive class (binary) or their means over classes present (multi-class).

    Examples
    --------
    >>> import numpy as np
    >>> conf = np.array([[3.0, 1.0], [0.0, 4.0]])  # rows: truth, columns: prediction
    >>> finalize_metrics(LossSpec("bce", n_classes=2), conf)
    {'accuracy': 0.875, 'f1': 0.888..., 'iou': 0.8}
    """
    stats = np.asarray(stats, dtype=np.float64)
    if spec.regression:
        n, sse, sae, sy, syy = stats.T
        scale = np.ones_like(n) if target_scale is None else np.asarray(target_scale, np.float64)
        n_safe = np.maximum(n, 1)
        ss_tot = syy - sy**2 / n_safe
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(ss_tot > 0, 1.0 - sse / ss_tot, np.nan)
        return {
            "rmse": float(np.mean(np.sqrt(sse / n_safe) * np.abs(scale))),
            "mae": float(np.mean(sae / n_safe * np.abs(scale))),
            "r2": float(np.mean(r2)),
        }
    conf = stats
    tp = np.diag(conf)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    accuracy = float(tp.sum() / max(conf.sum(), 1))
    if spec.kind == "bce":
        return {"accuracy": accuracy, "f1": float(f1[1]), "iou": float(iou[1])}
    return {"accuracy": accuracy, "f1": float(np.nanmean(f1)), "iou": float(np.nanmean(iou))}
