"""U-Net inference options: BatchNorm folded into the convolutions, and bf16 compute.

Both act on the ``(config, params)`` pair of a fitted U-Net (``estimator.inference_state()``)
and are what :func:`xfusion.models.predict.predict` does for ``fold_batchnorm=True`` and
``precision="bf16"``:

* :func:`fold_batchnorm` rewrites every ``convolution → BatchNorm`` pair as one convolution
  (the network's ``norm`` becomes ``"none"``). In eval mode BatchNorm is an affine map per
  channel, so the folded network computes the same function with fewer operations: exact up to
  float32 rounding.
* :func:`apply_tiles` runs the network in ``config["precision"]``: ``"fp32"`` (default) or
  ``"bf16"`` (weights and activations in bfloat16, normalisation of the inputs and the output
  scaling in float32). bfloat16 keeps float32's range but 8 bits of mantissa, so outputs differ
  from float32 by about 1 % of their spread; the ``unet`` benchmark records the maximum
  absolute difference on its scene. It pays off where the hardware has bfloat16 units (GPUs,
  CPUs with AMX or AVX-512-BF16); elsewhere XLA emulates it and it can be slower.

The network's state is put on the device once per ``params`` object and process (a small
cache), not once per call.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xfusion.errors import InputError, ModelError
from xfusion.models.unet import abstract_unet, build_unet, checked_tiles

__all__ = [
    "BATCHNORM_EPSILON",
    "PRECISIONS",
    "apply_tiles",
    "device_apply",
    "fold_batchnorm",
    "inference_options",
]

#: Compute precisions of :func:`apply_tiles` (``config["precision"]``).
PRECISIONS = ("fp32", "bf16")

#: ``epsilon`` of the U-Net's BatchNorm layers (Flax's default), used when folding them.
BATCHNORM_EPSILON = 1e-5

_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def _fold_pair(conv: Mapping[str, Any], bn: Mapping[str, Any], eps: float) -> dict[str, Any]:
    """One convolution followed by an eval-mode BatchNorm, as one convolution (float64 maths)."""
    kernel = np.asarray(conv["kernel"], np.float64)  # (kh, kw, cin, cout)
    bias = np.asarray(conv.get("bias", 0.0), np.float64)
    scale = np.asarray(bn.get("scale", 1.0), np.float64)
    shift = np.asarray(bn.get("bias", 0.0), np.float64)
    factor = scale / np.sqrt(np.asarray(bn["var"], np.float64) + eps)
    return {
        "kernel": (kernel * factor).astype(np.float32),
        "bias": np.broadcast_to(
            (bias - np.asarray(bn["mean"], np.float64)) * factor + shift, kernel.shape[-1:]
        ).astype(np.float32),
    }


def fold_batchnorm(
    config: Mapping[str, Any], params: Mapping[str, Any], *, epsilon: float = BATCHNORM_EPSILON
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fold every BatchNorm of a U-Net into the convolution before it.

    In eval mode ``BN(conv(x)) = γ·(W∗x + b − μ)/√(σ² + ε) + β``, which is the convolution
    with kernel ``W·s`` and bias ``(b − μ)·s + β``, ``s = γ/√(σ² + ε)`` per output channel.
    The result is the same network with ``norm="none"`` (no normalisation layers, biased
    convolutions), computing the same function up to float32 rounding with two fewer
    element-wise passes per convolution. The folding is done in float64.

    Parameters
    ----------
    config : dict
        ``config`` of ``estimator.inference_state()`` (its ``architecture`` is read).
    params : dict
        The network's state (nested dict of arrays, BatchNorm statistics included).
    epsilon : float
        The BatchNorm layers' epsilon (the U-Net uses Flax's default, 1e-5).

    Returns
    -------
    (dict, dict)
        ``config`` with ``architecture["norm"] = "none"``, and the folded parameters. A network
        already without normalisation is returned as it is.

    Raises
    ------
    ModelError
        The network normalises with GroupNorm (statistics of each input, which do not fold),
        or ``params`` lacks a BatchNorm layer the architecture has.

    Examples
    --------
    >>> import numpy as np
    >>> from xfusion.models.unet import build_unet, unet_params
    >>> arch = {"in_channels": 2, "widths": [4], "center": 8}
    >>> config = {"architecture": arch, "output": "regression"}
    >>> folded_config, folded = fold_batchnorm(config, unet_params(build_unet(arch)))
    >>> folded_config["architecture"]["norm"], sorted(folded["center"])
    ('none', ['conv1', 'conv2'])
    """
    arch = dict(config.get("architecture", {}))
    norm = str(arch.get("norm", "batch"))
    if norm == "none":
        return dict(config), dict(params)
    if norm != "batch":
        raise ModelError(
            f"only BatchNorm folds into the convolutions; this network has norm={norm!r} "
            "(GroupNorm normalises with each input's own statistics)"
        )

    def walk(node: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("bn1", "bn2"):
                continue
            conv_of = {"conv1": "bn1", "conv2": "bn2"}
            if key in conv_of and isinstance(value, Mapping) and "kernel" in value:
                bn = node.get(conv_of[key])
                if not isinstance(bn, Mapping) or "mean" not in bn or "var" not in bn:
                    raise ModelError(
                        f"parameters have a {key!r} convolution without its BatchNorm "
                        f"{conv_of[key]!r} (mean and var); is this a norm='batch' U-Net?"
                    )
                out[key] = _fold_pair(value, bn, epsilon)
            elif isinstance(value, Mapping):
                out[key] = walk(value)
            else:
                out[key] = value
        return out

    arch["norm"] = "none"
    return {**config, "architecture": arch}, walk(params)


def inference_options(
    config: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    precision: str = "fp32",
    fold: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(config, params)`` of a U-Net with the inference options applied.

    ``fold=True`` folds the BatchNorm layers (:func:`fold_batchnorm`); ``precision`` is
    recorded as ``config["precision"]`` and the parameters are cast to it once here, so
    :func:`apply_tiles` does not cast them on every call.

    Raises
    ------
    InputError
        ``precision`` is not one of :data:`PRECISIONS`.
    ModelError
        ``config`` does not describe a U-Net (no ``architecture``), or see
        :func:`fold_batchnorm`.

    Examples
    --------
    >>> from xfusion.models.unet import build_unet, unet_params
    >>> arch = {"in_channels": 2, "widths": [4], "center": 8}
    >>> config, params = inference_options({"architecture": arch, "output": "regression"},
    ...                                    unet_params(build_unet(arch)), precision="bf16")
    >>> config["precision"], params["head"]["kernel"].dtype
    ('bf16', dtype(bfloat16))
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {list(PRECISIONS)}; got {precision!r}")
    if not isinstance(config, Mapping) or "architecture" not in config:
        got = sorted(config) if isinstance(config, Mapping) else type(config).__name__
        raise ModelError(
            "inference options (precision, fold_batchnorm) apply to xfusion U-Nets, whose "
            f"config has an 'architecture'; got config {got}"
        )
    if fold:
        config, params = fold_batchnorm(config, params)
    dtype = _DTYPES[precision]
    cast = jax.tree.map(lambda a: np.asarray(a).astype(dtype), dict(params))
    return {**config, "precision": precision}, cast


# ----------------------------------------------------------------------------------------------
# The apply function
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _program(architecture_json: str, output: str, transform: str, precision: str):
    """Graph definition and jitted apply for one architecture, head and precision (cached)."""
    model = abstract_unet(json.loads(architecture_json))
    model.eval()
    graphdef, _ = nnx.split(model)
    dtype = _DTYPES[precision]

    def apply(state, x, mean, std, offset, scale):
        x = jnp.transpose(x, (0, 2, 3, 1))
        x = (x - mean) / std
        x = jnp.where(jnp.isnan(x), 0.0, x).astype(dtype)
        state = jax.tree.map(lambda a: a.astype(dtype), state)  # no-op for a cast state
        y = nnx.merge(graphdef, state)(x).astype(jnp.float32)
        if output == "regression":
            y = y * scale + offset
            if transform == "log1p":
                y = jnp.expm1(y)
        elif output == "binary":
            y = jax.nn.sigmoid(y)
        else:
            y = jax.nn.softmax(y, axis=-1)
        return jnp.transpose(y, (0, 3, 1, 2))

    return graphdef, jax.jit(apply)


_states_lock = threading.Lock()
_states: dict[tuple[int, str], tuple[Any, Any]] = {}
_MAX_STATES = 4


def _device_state(architecture_json: str, params: Mapping[str, Any]):
    """Return the network state of ``params`` on the device, built once per params object."""
    key = (id(params), architecture_json)
    with _states_lock:
        hit = _states.get(key)
        if hit is not None and hit[0] is params:  # the same object, not a reused id
            return hit[1]
    model = build_unet(json.loads(architecture_json), params=params)
    _, state = nnx.split(model)
    with _states_lock:
        while len(_states) >= _MAX_STATES:
            _states.pop(next(iter(_states)))
        _states[key] = (params, state)  # holds params, so its id is not reused meanwhile
    return state


def apply_tiles(config: Mapping[str, Any], params: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """Apply a fitted U-Net to a batch of tiles in ``config["precision"]``.

    The same contract as :func:`xfusion.models.unet.apply_tiles` (``(n, band, h, w)`` float32
    tiles in, ``(n, out, h, w)`` float32 out), plus ``config["precision"]`` (``"fp32"`` or
    ``"bf16"``, default ``"fp32"``) and a network state kept on the device between calls with
    the same ``params`` object. :func:`inference_options` prepares ``(config, params)``.

    Examples
    --------
    >>> import numpy as np
    >>> from xfusion.models.unet import build_unet, unet_params
    >>> arch = {"in_channels": 2, "widths": [4], "center": 8}
    >>> config = {"architecture": arch, "input_mean": [0, 0], "input_std": [1, 1],
    ...           "output": "regression", "target_offset": [0.0], "target_scale": [1.0]}
    >>> config, params = inference_options(config, unet_params(build_unet(arch)), fold=True)
    >>> apply_tiles(config, params, np.zeros((3, 2, 8, 8), np.float32)).shape
    (3, 1, 8, 8)
    """
    x, arch, output, transform = checked_tiles(config, x)
    precision = config.get("precision") or "fp32"
    if precision not in PRECISIONS:
        raise ModelError(f"config 'precision' must be one of {list(PRECISIONS)}; got {precision!r}")
    arch_json = json.dumps(arch, sort_keys=True)
    _, fn = _program(arch_json, output, transform, precision)
    state = _device_state(arch_json, params)
    n_out = int(arch.get("out_channels", 1))
    constants = [
        np.broadcast_to(np.asarray(config.get(name, default), np.float32), (n,)).copy()
        for name, default, n in (
            ("input_mean", 0.0, x.shape[1]),
            ("input_std", 1.0, x.shape[1]),
            ("target_offset", 0.0, n_out),
            ("target_scale", 1.0, n_out),
        )
    ]
    return np.asarray(fn(state, x, *constants))


def device_apply(config: Mapping[str, Any], params: Mapping[str, Any]):
    """Return ``f(x) -> y`` applying the U-Net to device arrays, without host copies.

    ``x`` is ``(n, band, h, w)`` float32 (a ``jax.Array`` already on the device, or numpy),
    ``y`` the ``jax.Array`` :func:`apply_tiles` would return, left on the device and not waited
    for (call ``block_until_ready``). For measuring the model alone (the ``unet`` benchmark's
    GPU mode) and for pipelines that keep data on the accelerator.

    Examples
    --------
    >>> import numpy as np
    >>> from xfusion.models.unet import build_unet, unet_params
    >>> arch = {"in_channels": 2, "widths": [4], "center": 8}
    >>> config, params = inference_options(
    ...     {"architecture": arch, "output": "regression"}, unet_params(build_unet(arch)))
    >>> f = device_apply(config, params)
    >>> f(np.zeros((1, 2, 8, 8), np.float32)).block_until_ready().shape
    (1, 1, 8, 8)
    """
    arch = config.get("architecture", {})
    output = config.get("output", "regression")
    transform = config.get("target_transform") or "none"
    precision = config.get("precision") or "fp32"
    arch_json = json.dumps(arch, sort_keys=True)
    _, fn = _program(arch_json, output, transform, precision)
    state = _device_state(arch_json, params)
    n_in, n_out = int(arch.get("in_channels", 1)), int(arch.get("out_channels", 1))
    constants = [
        jax.device_put(np.broadcast_to(np.asarray(config.get(name, default), np.float32), (n,)))
        for name, default, n in (
            ("input_mean", 0.0, n_in),
            ("input_std", 1.0, n_in),
            ("target_offset", 0.0, n_out),
            ("target_scale", 1.0, n_out),
        )
    ]
    return lambda x: fn(state, x, *constants)
