"""The training loop (optax) for Flax NNX networks on in-memory patches.

:func:`train_and_evaluate` runs epochs of shuffled mini-batches with optional dihedral
augmentation, evaluates per epoch, keeps a history of losses and metrics, stops early, and
raises :class:`~xfusion.errors.ModelError` when the loss stops being finite. Hot loops use
``nnx.split``/``nnx.merge`` around :func:`jax.jit`; the step is compiled once per (network,
optimiser, loss, batch shape) and reused across fits, and across processes through JAX's
persistent compilation cache (:func:`~xfusion.models.compilation_cache.enable_compilation_cache`).
With fixed seeds the result is
bit-for-bit reproducible on CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from xfusion._kernels.augment import dihedral
from xfusion.errors import InputError, ModelError
from xfusion.models.compilation_cache import enable_compilation_cache
from xfusion.models.losses import LossSpec, compute_loss, finalize_metrics, metric_stats

__all__ = [
    "best_epoch",
    "dihedral",
    "evaluate",
    "make_optimizer",
    "recalibrate_batchnorm",
    "train_and_evaluate",
]

_OPTIMIZERS = ("sgd", "adam", "adamw")
_SCHEDULES = ("constant", "cosine", "exponential")


def make_optimizer(
    name: str = "sgd",
    learning_rate: float = 0.01,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    total_steps: int = 1,
) -> optax.GradientTransformation:
    """Build an optax optimiser; cached, so equal settings give the same object (and jitted steps).

    Parameters
    ----------
    name : {"sgd", "adam", "adamw"}
        SGD with ``momentum`` (the night-lights workflow's best), Adam, or AdamW with
        ``weight_decay``.
    learning_rate : float
        Initial learning rate.
    schedule : {"constant", "cosine", "exponential"}
        Cosine decay to 0 over ``total_steps``, or exponential decay to 1 % over ``total_steps``.

    Examples
    --------
    >>> tx = make_optimizer("adam", 1e-3, schedule="cosine", total_steps=100)
    >>> tx is make_optimizer("adam", 1e-3, schedule="cosine", total_steps=100)
    True
    """
    # canonical arguments, so settings that do not matter do not make a new optimiser
    return _make_optimizer(
        name,
        float(learning_rate),
        float(momentum) if name == "sgd" else 0.0,
        float(weight_decay) if name == "adamw" else 0.0,
        schedule,
        max(int(total_steps), 1) if schedule != "constant" else 1,
    )


@functools.lru_cache(maxsize=32)
def _make_optimizer(name, learning_rate, momentum, weight_decay, schedule, total_steps):
    if name not in _OPTIMIZERS:
        raise InputError(f"optimizer must be one of {list(_OPTIMIZERS)}; got {name!r}")
    if schedule not in _SCHEDULES:
        raise InputError(f"schedule must be one of {list(_SCHEDULES)}; got {schedule!r}")
    if not learning_rate > 0:
        raise InputError(f"learning_rate must be positive; got {learning_rate}")
    steps = total_steps
    if schedule == "cosine":
        lr = optax.cosine_decay_schedule(learning_rate, steps)
    elif schedule == "exponential":
        lr = optax.exponential_decay(learning_rate, steps, 0.01)
    else:
        lr = learning_rate
    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    if name == "adam":
        return optax.adam(lr)
    return optax.adamw(lr, weight_decay=weight_decay)


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple:
    square = x.shape[1] == x.shape[2]
    ks = rng.integers(0, 8, len(x)) if square else rng.choice([0, 2, 4, 6], len(x))
    # patches are (y, x, band): the package's one dihedral numbering on axes 0 and 1
    x = np.stack([dihedral(xi, k, axes=(0, 1)) for xi, k in zip(x, ks, strict=True)])
    y = np.stack([dihedral(yi, k, axes=(0, 1)) for yi, k in zip(y, ks, strict=True)])
    return x, y


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "spec"))
def _train_step(graphdef, tx, spec, params, rest, opt_state, x, y):
    def loss_fn(p):
        # fresh Variable objects for this trace level (BatchNorm mutates its statistics)
        model = nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest))
        pred = model(x)
        new_rest = nnx.state(model, nnx.Not(nnx.Param))
        return compute_loss(spec, pred, y), (new_rest, metric_stats(spec, pred, y))

    (loss, (rest, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state, loss, stats


@functools.partial(jax.jit, static_argnums=0)
def _init_optimizer(tx, params):
    return tx.init(params)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _eval_step(graphdef, spec, params, rest, x, y):
    pred = nnx.merge(graphdef, params, rest)(x)
    return compute_loss(spec, pred, y), metric_stats(spec, pred, y)


def _pad_batch(x: np.ndarray, y: np.ndarray, size: int, spec: LossSpec) -> tuple:
    missing = size - len(x)
    if missing <= 0:
        return x, y
    x = np.concatenate([x, np.zeros((missing, *x.shape[1:]), x.dtype)])
    fill = np.nan if spec.regression else -1
    y = np.concatenate([y, np.full((missing, *y.shape[1:]), fill, y.dtype)])
    return x, y


def evaluate(
    model: nnx.Module,
    data: tuple[np.ndarray, np.ndarray],
    *,
    spec: LossSpec,
    batch_size: int = 16,
    target_scale=None,
) -> dict[str, float]:
    """Loss and metrics of ``model`` (in eval mode) on ``data = (x, y)``.

    ``x`` is NHWC float32 (normalised, no NaN); ``y`` as for
    :func:`~xfusion.models.losses.compute_loss`. The last batch is padded with nodata targets
    so one batch shape is compiled. Metrics as in :func:`~xfusion.models.losses.finalize_metrics`.
    """
    x, y = data
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch_size = min(batch_size, len(x))
    total, weight, stats = 0.0, 0, None
    for start in range(0, len(x), batch_size):
        xb, yb = _pad_batch(
            x[start : start + batch_size], y[start : start + batch_size], batch_size, spec
        )
        loss, s = _eval_step(graphdef, spec, params, rest, xb, yb)
        n = min(batch_size, len(x) - start)
        total += float(loss) * n
        weight += n
        s = np.asarray(s)
        stats = s if stats is None else stats + s
    return {
        "loss": total / max(weight, 1),
        **finalize_metrics(spec, np.asarray(stats), target_scale),
    }


def train_and_evaluate(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    train_data: tuple[np.ndarray, np.ndarray],
    *,
    spec: LossSpec,
    epochs: int = 10,
    batch_size: int = 16,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
    augment: bool = False,
    patience: int | None = None,
    progress: bool = True,
    target_scale=None,
    callback: Callable[[int, dict[str, float]], Any] | None = None,
    recalibrate: int = 0,
) -> dict[str, list[float]]:
    """Train ``model`` in place on in-memory data and return the per-epoch history.

    Parameters
    ----------
    model : nnx.Module
        The network (NHWC in, NHWC out), updated in place; on return it holds the weights of the
        best epoch (lowest ``val_loss``, or ``loss`` without validation data) and is in eval mode.
    tx : optax.GradientTransformation
        The optimiser, e.g. from :func:`make_optimizer`.
    train_data, validation_data : (x, y)
        ``x`` float32 NHWC normalised without NaN; ``y`` the target as
        :func:`~xfusion.models.losses.compute_loss` expects (NaN / negative labels = nodata).
    spec : LossSpec
        Loss (and metric) definition.
    epochs, batch_size : int
        Each epoch visits the shuffled samples in full batches (the remainder is dropped, as the
        composition of the batches changes every epoch; a dataset smaller than ``batch_size``
        forms one batch).
    seed : int
        Seed of the shuffling and augmentation.
    augment : bool
        Random flips and quarter turns per sample (flips only for non-square patches).
    patience : int, optional
        Stop after this many epochs without improvement.
    progress : bool
        Show a progress bar over the epochs.
    target_scale : sequence of float, optional
        Per-band scale of normalised regression targets, to report RMSE/MAE in target units.
    callback : callable, optional
        Called as ``callback(epoch, record)`` after each epoch.
    recalibrate : int
        With validation data and BatchNorm: before each epoch's validation, set the BatchNorm
        statistics to those of this many (un-augmented) training samples, the first of a
        fixed permutation (:func:`recalibrate_batchnorm`), so the validation loss is that of
        the network as it will predict, not of lagging moving averages; the kept epoch holds
        these statistics. 0 (default) evaluates with the moving averages.

    Returns
    -------
    dict of lists
        ``loss`` and the training metrics (from the training-mode predictions of each step), and
        the same prefixed ``val_`` when ``validation_data`` is given; one value per epoch run.

    Raises
    ------
    ModelError
        When the loss becomes NaN or infinite.
    """
    x, y = train_data
    if len(x) != len(y) or len(x) == 0:
        raise InputError(f"need as many targets as inputs, at least one; got {len(x)} and {len(y)}")
    enable_compilation_cache()  # the same network, loss and batch shape compile once per machine
    batch_size = min(int(batch_size), len(x))
    rng = np.random.default_rng(seed)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = _init_optimizer(tx, params)
    history: dict[str, list[float]] = {}
    monitor = "val_loss" if validation_data is not None else "loss"
    best, best_state, waited = np.inf, None, 0
    calibration = None
    if recalibrate and validation_data is not None:
        pick = np.random.default_rng(seed).permutation(len(x))[: int(recalibrate)]
        calibration = x[np.sort(pick)]
    bar = tqdm(range(int(epochs)), desc="training", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        order = rng.permutation(len(x))
        total, stats, steps = 0.0, None, 0
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = np.sort(order[start : start + batch_size])
            xb, yb = x[idx], y[idx]
            if augment:
                xb, yb = _augment(xb, yb, rng)
            # numpy batches go straight to the jitted step (jnp.asarray would compile per shape)
            params, rest, opt_state, loss, s = _train_step(
                graphdef, tx, spec, params, rest, opt_state, xb, yb
            )
            loss = float(loss)
            if not np.isfinite(loss):
                raise ModelError(
                    f"training loss became {loss} at epoch {epoch + 1}, step {steps + 1}; "
                    "lower the learning rate or check the inputs and targets for extreme values"
                )
            total += loss
            s = np.asarray(s)
            stats = s if stats is None else stats + s
            steps += 1
        record = {"loss": total / steps, **finalize_metrics(spec, np.asarray(stats), target_scale)}
        kept = (params, rest)
        if validation_data is not None:
            nnx.update(model, params, rest)
            if calibration is not None:
                stats = _pooled_batchnorm_statistics(model, calibration, batch_size)
                if stats is not None:
                    nnx.update(model, stats)
                    kept = (params, nnx.state(model, nnx.Not(nnx.Param)))
            val = evaluate(
                model, validation_data, spec=spec, batch_size=batch_size, target_scale=target_scale
            )
            model.train()
            record.update({f"val_{k}": v for k, v in val.items()})
        for key, value in record.items():
            history.setdefault(key, []).append(value)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if "loss" in k})
        if callback is not None:
            callback(epoch, record)
        if record[monitor] < best:
            best, waited = record[monitor], 0
            best_state = jax.tree.map(np.asarray, kept)
        else:
            waited += 1
            if patience is not None and waited >= patience:
                break
    bar.close()
    nnx.update(model, *(best_state if best_state is not None else (params, rest)))
    model.eval()
    return history


def best_epoch(history: dict[str, list[float]]) -> int:
    """Index of the epoch :func:`train_and_evaluate` kept: the first minimum of the monitor.

    The monitor is ``val_loss`` when the history has it, else ``loss``.

    Examples
    --------
    >>> best_epoch({"loss": [3.0, 1.0, 2.0], "val_loss": [2.0, 2.5, 1.5]})
    2
    """
    values = np.asarray(history["val_loss" if "val_loss" in history else "loss"], float)
    values = np.where(np.isnan(values), np.inf, values)
    return int(np.argmin(values))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _batch_statistics(graphdef, state, x):
    model = nnx.merge(graphdef, state)
    model(x)  # train mode, momentum 0: every BatchNorm's running statistics := batch statistics
    return nnx.state(model, nnx.BatchStat)


def _pooled_batchnorm_statistics(model: nnx.Module, x: np.ndarray, batch_size: int):
    """Pooled BatchNorm input statistics of ``model`` over ``x`` (None without BatchNorm).

    Returns the model's ``BatchStat`` state holding them; the model itself is unchanged
    (its momenta and mode are restored).
    """
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    if not layers:
        return None
    if len(x) == 0:
        raise InputError("recalibrating BatchNorm needs at least one sample")
    momenta = [m.momentum for m in layers]
    modes = [m.use_running_average for m in layers]
    for m in layers:
        m.momentum = 0.0
        m.use_running_average = False
    try:
        graphdef, state = nnx.split(model)
        size = min(int(batch_size), len(x))
        first: dict[tuple, np.ndarray] = {}  # per layer: Σ n·mean
        second: dict[tuple, np.ndarray] = {}  # per layer: Σ n·(var + mean²) = Σ n·E[x²]
        for start in range(0, len(x), size):
            xb = np.ascontiguousarray(x[start : start + size], dtype=np.float32)
            pure = nnx.to_pure_dict(_batch_statistics(graphdef, state, xb))
            flat = nnx.traversals.flatten_mapping(pure)
            n = len(xb)
            for layer in {path[:-1] for path in flat}:
                mean = np.asarray(flat[(*layer, "mean")], np.float64)
                var = np.asarray(flat[(*layer, "var")], np.float64)
                first[layer] = first.get(layer, 0.0) + n * mean
                second[layer] = second.get(layer, 0.0) + n * (var + mean * mean)
    finally:
        for m, momentum, mode in zip(layers, momenta, modes, strict=True):
            m.momentum = momentum
            m.use_running_average = mode
    total = float(len(x))
    pooled = {}
    for layer, s1 in first.items():
        mean = s1 / total
        pooled[(*layer, "mean")] = mean.astype(np.float32)
        pooled[(*layer, "var")] = np.maximum(second[layer] / total - mean * mean, 0.0).astype(
            np.float32
        )
    new = nnx.state(model, nnx.BatchStat)
    nnx.replace_by_pure_dict(new, nnx.traversals.unflatten_mapping(pooled))
    return new


def recalibrate_batchnorm(model: nnx.Module, x: np.ndarray, *, batch_size: int = 16) -> int:
    """Recompute the BatchNorm running statistics of ``model`` from ``x``, in place.

    One pass over ``x`` (NHWC, normalised, no NaN; un-augmented training patches) in training
    mode: every BatchNorm layer's running mean and variance become the pooled statistics of
    its inputs over all of ``x`` (the mean of the batch means, and of the batch second moments
    minus the squared mean, weighted by batch size), instead of the exponential moving average
    over augmented batches of changing weights that training leaves behind. With one batch
    (``batch_size >= len(x)``) they are exactly the batch statistics of ``x``. The weights are
    not changed; the model is left in eval mode.

    Returns
    -------
    int
        The number of BatchNorm layers recalibrated (0 for a network without BatchNorm).

    Examples
    --------
    >>> import numpy as np
    >>> from xfusion.models.unet import build_unet
    >>> net = build_unet({"in_channels": 1, "widths": [2], "center": 2})
    >>> x = np.random.default_rng(0).normal(3.0, 1.0, (4, 8, 8, 1)).astype("float32")
    >>> recalibrate_batchnorm(net, x)  # two per block: encoder, centre, decoder
    6
    """
    stats = _pooled_batchnorm_statistics(model, x, batch_size)
    if stats is not None:
        nnx.update(model, stats)
    model.eval()
    return len([m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)])
