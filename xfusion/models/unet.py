"""The U-Net (Flax NNX) and the tile-level inference entry point used by blockwise prediction.

The module holds the architecture only: :class:`UNet`, its building blocks, the presets, and
:func:`apply_tiles`, the jitted function that applies a fitted network (described by a JSON-able
``config`` and a nested dict of numpy ``params``) to a batch of tiles. Training lives in
:mod:`xfusion.models.train`, the scikit-learn style estimators in
:mod:`xfusion.models.estimators`.

Layout: the estimators and :func:`apply_tiles` take ``(sample, band, y, x)`` arrays; inside the
network tensors are NHWC, as XLA's convolutions prefer.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xfusion.errors import InputError, ModelError

__all__ = [
    "NORMS",
    "PRESETS",
    "TARGET_TRANSFORMS",
    "ConvBlock",
    "UNet",
    "abstract_unet",
    "apply_tiles",
    "build_unet",
    "compile_count",
    "default_halo",
    "depth_to_space",
    "group_count",
    "init_params",
    "member_params",
    "pad_to_multiple",
    "receptive_field_radius",
    "unet_params",
]

#: Encoder widths and centre width of the named architectures. ``"seed"`` is the night-lights
#: U-Net (32-64-128-256-512 with a 1024 centre, depth 5); ``"small"`` is a CPU-friendly depth-3
#: network with the same structure.
PRESETS: dict[str, dict[str, Any]] = {
    "seed": {"widths": (32, 64, 128, 256, 512), "center": 1024},
    "small": {"widths": (16, 32, 64), "center": 128},
}

_HEADS = ("regression", "segmentation")
_ACTIVATIONS = ("linear", "sigmoid")


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
    """Rearrange channels into ``block × block`` spatial neighbourhoods (NHWC).

    ``(N, H, W, block·block·C) → (N, block·H, block·W, C)``. Channel ``(dy·block + dx)·C + c`` of
    input pixel ``(i, j)`` becomes channel ``c`` of output pixel ``(block·i + dy, block·j + dx)``,
    the ordering of TensorFlow's ``depth_to_space`` (DCR). A 1×1 convolution to ``4·C`` channels
    followed by this is a 2×2 stride-2 transposed convolution, without XLA's slow path for the
    latter.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(8.0).reshape(1, 1, 1, 8)  # 4 positions x 2 channels
    >>> depth_to_space(x)[0, :, :, 0].tolist()
    [[0.0, 2.0], [4.0, 6.0]]
    """
    n, h, w, c = x.shape
    if c % (block * block):
        raise InputError(f"depth_to_space needs channels divisible by {block * block}; got {c}")
    out = c // (block * block)
    x = x.reshape(n, h, w, block, block, out)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * block, w * block, out)


#: Normalisation layers of :class:`ConvBlock`: BatchNorm (the default), GroupNorm, or none
#: (identity; the convolutions keep their biases), e.g. for a network whose BatchNorm has been
#: folded into its convolutions.
NORMS = ("batch", "group", "none")


def group_count(features: int, max_groups: int = 8) -> int:
    """Return the GroupNorm group count for ``features`` channels: largest divisor ≤ ``max_groups``.

    Examples
    --------
    >>> group_count(16), group_count(24), group_count(5)
    (8, 8, 5)
    """
    return max(g for g in range(1, min(max_groups, features) + 1) if features % g == 0)


def _norm_layer(norm: str, features: int, bn_momentum: float, rngs: nnx.Rngs):
    if norm == "batch":
        return nnx.BatchNorm(features, momentum=bn_momentum, rngs=rngs)
    if norm == "group":
        return nnx.GroupNorm(features, num_groups=group_count(features), rngs=rngs)
    return None


class ConvBlock(nnx.Module):
    """Two 3×3 convolutions, each followed by a normalisation and ReLU.

    ``norm="batch"`` (BatchNorm, layers ``bn1``/``bn2``), ``"group"`` (GroupNorm with
    :func:`group_count` groups, layers ``gn1``/``gn2``) or ``"none"`` (no normalisation layer).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bn_momentum: float = 0.9,
        norm: str = "batch",
        rngs: nnx.Rngs,
    ) -> None:
        if norm not in NORMS:
            raise InputError(f"norm must be one of {list(NORMS)}; got {norm!r}")
        init = nnx.initializers.he_normal()
        self.norm = norm
        self.conv1 = nnx.Conv(in_features, out_features, (3, 3), kernel_init=init, rngs=rngs)
        norm1 = _norm_layer(norm, out_features, bn_momentum, rngs)
        self.conv2 = nnx.Conv(out_features, out_features, (3, 3), kernel_init=init, rngs=rngs)
        norm2 = _norm_layer(norm, out_features, bn_momentum, rngs)
        if norm == "batch":  # parameter names of networks saved before the option existed
            self.bn1, self.bn2 = norm1, norm2
        elif norm == "group":
            self.gn1, self.gn2 = norm1, norm2

    def _norm(self, index: int, x: jax.Array) -> jax.Array:
        if self.norm == "batch":
            return (self.bn1 if index == 1 else self.bn2)(x)
        if self.norm == "group":
            return (self.gn1 if index == 1 else self.gn2)(x)
        return x

    def __call__(self, x: jax.Array) -> jax.Array:  # noqa: D102
        x = nnx.relu(self._norm(1, self.conv1(x)))
        return nnx.relu(self._norm(2, self.conv2(x)))


class UNet(nnx.Module):
    """A U-Net with configurable depth and widths (Flax NNX, NHWC).

    Encoder: per level a :class:`ConvBlock` then 2×2 max-pooling; a centre block; decoder: per
    level an up-sampling (1×1 convolution to ``4·C`` channels + :func:`depth_to_space`), the
    concatenation with the encoder's skip connection, and a :class:`ConvBlock`; a 1×1
    convolution head.

    Parameters
    ----------
    in_channels, out_channels : int
        Input bands; outputs (regression targets, 1 logit for binary segmentation, or one logit
        per class).
    widths : sequence of int, optional
        Encoder widths, one per level (the depth is ``len(widths)``). Default: the ``"small"``
        preset; ``PRESETS["seed"]`` is the 32-64-128-256-512 network.
    center : int, optional
        Width of the centre block (default twice the last width).
    head : {"regression", "segmentation"}
        Regression applies ``activation``; segmentation returns logits (the losses and
        :func:`apply_tiles` apply the sigmoid/softmax).
    activation : {"linear", "sigmoid"}
        Output activation of the regression head.
    bn_momentum : float
        Momentum of the BatchNorm running statistics.
    norm : {"batch", "group", "none"}
        Normalisation after each convolution (:data:`NORMS`): BatchNorm (default; parameter
        names as before the option existed), GroupNorm, or none (identity; the convolutions
        keep their biases, e.g. a network whose BatchNorm was folded into them).
    linear_skip : bool
        Add a pixel-level linear path: a 1×1 convolution of the (standardised) input added to
        the head's output (before the output activation), layer ``linear_skip``, initialised
        to zero. The network is then a pixel-wise linear model plus the U-Net's spatial
        correction; off by default (no such layer: the same parameters as before the option).
    rngs : nnx.Rngs
        Random state for the initialisation.

    Notes
    -----
    Any input height and width: the input is reflect-padded at the bottom and right up to
    multiples of ``2 ** depth`` (:func:`pad_to_multiple`) and the output cropped back to the
    input's size. Inputs whose sides are already multiples are not padded (same result as
    before padding existed); tiles of such sizes avoid the padding work.

    Examples
    --------
    :func:`build_unet` builds one with a fast (numpy) initialisation:

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> net = build_unet({"in_channels": 3, "widths": [4, 8], "center": 8})
    >>> forward = nnx.jit(lambda model, x: model(x))
    >>> forward(net, jnp.zeros((2, 16, 16, 3))).shape
    (2, 16, 16, 1)
    >>> forward(net, jnp.zeros((1, 13, 10, 3))).shape  # any size: padded inside, cropped back
    (1, 13, 10, 1)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        *,
        widths: Sequence[int] | None = None,
        center: int | None = None,
        head: str = "regression",
        activation: str = "linear",
        bn_momentum: float = 0.9,
        norm: str = "batch",
        linear_skip: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        widths = tuple(int(w) for w in (PRESETS["small"]["widths"] if widths is None else widths))
        if not widths or any(w < 1 for w in widths):
            raise InputError(f"widths must be a non-empty sequence of positive ints; got {widths}")
        if head not in _HEADS:
            raise InputError(f"head must be one of {list(_HEADS)}; got {head!r}")
        if activation not in _ACTIVATIONS:
            raise InputError(f"activation must be one of {list(_ACTIVATIONS)}; got {activation!r}")
        if norm not in NORMS:
            raise InputError(f"norm must be one of {list(NORMS)}; got {norm!r}")
        center = 2 * widths[-1] if center is None else int(center)
        self.depth = len(widths)
        self.head_kind = head
        self.activation = activation
        self.norm = norm
        self.encoders = nnx.List()
        cin = in_channels
        for w in widths:
            self.encoders.append(ConvBlock(cin, w, bn_momentum=bn_momentum, norm=norm, rngs=rngs))
            cin = w
        self.center = ConvBlock(cin, center, bn_momentum=bn_momentum, norm=norm, rngs=rngs)
        self.ups = nnx.List()
        self.decoders = nnx.List()
        cin = center
        for w in reversed(widths):
            self.ups.append(nnx.Conv(cin, 4 * w, (1, 1), rngs=rngs))
            self.decoders.append(ConvBlock(2 * w, w, bn_momentum=bn_momentum, norm=norm, rngs=rngs))
            cin = w
        self.head = nnx.Conv(cin, out_channels, (1, 1), rngs=rngs)
        self.has_linear_skip = bool(linear_skip)
        if self.has_linear_skip:  # created last: the other layers' initialisation is unchanged
            zeros = nnx.initializers.zeros_init()
            self.linear_skip = nnx.Conv(
                in_channels, out_channels, (1, 1), kernel_init=zeros, rngs=rngs
            )

    def __call__(self, x: jax.Array) -> jax.Array:  # noqa: D102
        if x.ndim != 4:
            raise InputError(f"UNet input must be NHWC (4 dims); got shape {tuple(x.shape)}")
        h, w = x.shape[1], x.shape[2]
        inputs = x
        x = pad_to_multiple(x, 2**self.depth)
        skips = []
        for block in self.encoders:
            x = block(x)
            skips.append(x)
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = self.center(x)
        for up, block, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = depth_to_space(up(x))
            x = block(jnp.concatenate([x, skip], axis=-1))
        x = self.head(x)[:, :h, :w]
        if self.has_linear_skip:
            x = x + self.linear_skip(inputs)
        if self.head_kind == "regression" and self.activation == "sigmoid":
            x = nnx.sigmoid(x)
        return x


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
    """Pad NHWC ``x`` at the bottom and right up to height and width multiples of ``multiple``.

    Reflect padding (mirror without repeating the edge pixel), repeated as often as needed for
    inputs smaller than the padding; edge padding for a side of one pixel. Returns ``x`` itself
    when nothing is missing, so inputs of a multiple size are untouched. :class:`UNet` pads its
    input with this and crops its output back, so it accepts any height and width.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> pad_to_multiple(jnp.arange(3.0).reshape(1, 1, 3, 1), 4)[0, 0, :, 0].tolist()
    [0.0, 1.0, 2.0, 1.0]
    >>> pad_to_multiple(jnp.zeros((2, 5, 7, 3)), 4).shape
    (2, 8, 8, 3)
    """
    h, w = x.shape[1], x.shape[2]
    for axis, size in ((1, h), (2, w)):
        missing = -size % multiple
        while missing:  # reflect adds at most size - 1 pixels per pass
            step = min(missing, max(x.shape[axis] - 1, 0))
            widths = [(0, 0)] * 4
            if step == 0:  # a side of one pixel has nothing to mirror
                widths[axis] = (0, missing)
                x = jnp.pad(x, widths, mode="edge")
                break
            widths[axis] = (0, step)
            x = jnp.pad(x, widths, mode="reflect")
            missing -= step
    return x


def _unet_kwargs(architecture: Mapping[str, Any]) -> dict[str, Any]:
    arch = dict(architecture)
    unknown = set(arch) - {
        "in_channels",
        "out_channels",
        "widths",
        "center",
        "head",
        "activation",
        "bn_momentum",
        "norm",
        "linear_skip",
    }
    if unknown or "in_channels" not in arch:
        raise ModelError(
            f"architecture must have 'in_channels' and only known keys; got {sorted(architecture)}"
        )
    return {
        "in_channels": int(arch["in_channels"]),
        "out_channels": int(arch.get("out_channels", 1)),
        "widths": arch.get("widths"),
        "center": arch.get("center"),
        "head": arch.get("head", "regression"),
        "activation": arch.get("activation", "linear"),
        "bn_momentum": float(arch.get("bn_momentum", 0.9)),
        "norm": str(arch.get("norm", "batch")),
        "linear_skip": bool(arch.get("linear_skip", False)),
    }


def abstract_unet(architecture: Mapping[str, Any]) -> UNet:
    """Build a :class:`UNet` of shapes only (no computation), e.g. to restore parameters into."""
    kwargs = _unet_kwargs(architecture)
    return nnx.eval_shape(lambda: UNet(**kwargs, rngs=nnx.Rngs(0)))


def init_params(model: UNet, seed: int = 0) -> dict[str, Any]:
    """Draw initial parameters for ``model`` with numpy, as a nested dict of arrays.

    He-normal convolution kernels (the layers feed ReLUs), zero biases, unit BatchNorm scales and
    variances, zero means; the ``linear_skip`` layer (when present) all zeros, without a draw.
    Drawn with :class:`numpy.random.Generator` from ``seed`` in a fixed order, so equal seeds
    give identical parameters, and without compiling one XLA program per parameter shape (which
    JAX's own initialisers do and which is slow on small CPUs).
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        shape, name = tuple(var.shape), path[-1]
        if str(path[0]) == "linear_skip":  # the linear path starts at zero (no draw)
            value = np.zeros(shape)
        elif name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif name in ("scale", "var"):
            value = np.ones(shape)
        else:  # bias, running mean
            value = np.zeros(shape)
        flat[path] = value.astype(np.float32)
    return _unflatten(flat)


def _unflatten(flat: Mapping[tuple, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = value
    return out


def build_unet(architecture: Mapping[str, Any], *, seed: int = 0, params=None) -> UNet:
    """Build a :class:`UNet` from the ``architecture`` mapping of a model config.

    Parameters are :func:`init_params` of ``seed``, or ``params`` (a nested dict of arrays as
    returned by :func:`unet_params`) when given.

    Examples
    --------
    >>> net = build_unet({"in_channels": 2, "out_channels": 1, "widths": [4], "center": 4})
    >>> net.depth
    1
    """
    model = abstract_unet(architecture)
    graphdef, template = nnx.split(model)
    state = _state_from_params(template, init_params(model, seed) if params is None else params)
    return nnx.merge(graphdef, state)


def unet_params(model: UNet) -> dict[str, Any]:
    """Return the state of ``model`` (BatchNorm statistics included) as nested numpy arrays.

    Keys are strings (list indices too), so the dict serialises to msgpack/JSON-like formats.

    Examples
    --------
    >>> net = build_unet({"in_channels": 2, "widths": [4], "center": 4})
    >>> unet_params(net)["head"]["kernel"].shape
    (1, 1, 4, 1)
    """
    pure = nnx.to_pure_dict(nnx.state(model))
    flat = {path: np.asarray(v) for path, v in nnx.traversals.flatten_mapping(pure).items()}
    return _unflatten(flat)


def receptive_field_radius(depth: int) -> int:
    """Theoretical receptive-field radius (pixels) of a U-Net of ``depth`` levels.

    At level ``l`` (pixels of size ``2**l``) each 3×3 convolution adds ``2**l`` and the 2×2 pool
    ``2**l``; two convolutions on the way down, two on the way up, two in the centre.

    Examples
    --------
    >>> receptive_field_radius(2)
    23
    """
    return sum(5 * 2**level for level in range(depth)) + 2 * 2**depth


def default_halo(depth: int) -> int:
    """Default halo (pixels) for blockwise prediction with a U-Net of ``depth`` levels.

    The theoretical radius rounded up to a multiple of ``max(32, 2**depth)``, capped at
    ``max(64, 2**depth)``: the effective receptive field is far smaller than the theoretical one
    for deep networks (the night-lights workflow used a 64-px buffer for its depth-5 U-Net).

    Examples
    --------
    >>> default_halo(2), default_halo(3), default_halo(5)
    (32, 64, 64)
    """
    step = max(32, 2**depth)
    radius = receptive_field_radius(depth)
    return min(math.ceil(radius / step) * step, max(64, 2**depth))


# ----------------------------------------------------------------------------------------------
# Inference on tiles
# ----------------------------------------------------------------------------------------------

_compiles = 0
_compiles_lock = threading.Lock()


def compile_count() -> int:
    """Count the times the tile-apply function has been traced (compiled) in this process.

    Examples
    --------
    >>> compile_count() >= 0
    True
    """
    return _compiles


def _count_compile() -> None:
    global _compiles
    with _compiles_lock:
        _compiles += 1


#: Target transforms of regression models: the network learns ``log1p(target)`` for
#: ``"log1p"`` and its output is transformed back with ``expm1``.
TARGET_TRANSFORMS = ("none", "log1p")


@functools.lru_cache(maxsize=16)
def _inference_program(architecture_json: str, output: str, transform: str = "none"):
    """State template and jitted apply function for one architecture and head (cached).

    The normalisation constants are arguments, not constants of the program, so every fitted
    model of the same architecture shares one compiled program per tile shape.
    """
    model = abstract_unet(json.loads(architecture_json))
    model.eval()
    graphdef, template = nnx.split(model)

    def apply(state, x, mean, std, offset, scale):
        _count_compile()  # runs once per trace, i.e. once per compiled shape
        x = jnp.transpose(x, (0, 2, 3, 1))
        x = (x - mean) / std
        x = jnp.where(jnp.isnan(x), 0.0, x)
        y = nnx.merge(graphdef, state)(x)
        if output == "regression":
            y = y * scale + offset
            if transform == "log1p":
                y = jnp.expm1(y)
        elif output == "binary":
            y = jax.nn.sigmoid(y)
        else:
            y = jax.nn.softmax(y, axis=-1)
        return jnp.transpose(y, (0, 3, 1, 2)).astype(jnp.float32)

    return template, jax.jit(apply)


def _state_from_params(template, params: Mapping[str, Any]):
    """Copy the state ``template`` with the values of ``params`` (checked leaf by leaf)."""
    expected = {tuple(str(k) for k in path): var for path, var in nnx.to_flat_state(template)}
    try:
        given = {
            tuple(str(k) for k in path): v
            for path, v in nnx.traversals.flatten_mapping(params).items()
        }
    except (AttributeError, TypeError) as err:
        raise ModelError(f"parameters must be a nested dict of arrays; got {type(params)}") from err
    if set(given) != set(expected):
        missing = sorted("/".join(p) for p in set(expected) - set(given))
        extra = sorted("/".join(p) for p in set(given) - set(expected))
        raise ModelError(
            f"parameters do not match the architecture: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for path, var in expected.items():
        if tuple(np.shape(given[path])) != tuple(var.shape):
            raise ModelError(
                f"parameter {'/'.join(path)} has shape {np.shape(given[path])}; "
                f"the architecture expects {tuple(var.shape)}"
            )
    state = jax.tree.map(lambda a: a, template)
    nnx.replace_by_pure_dict(state, jax.device_put(params))
    return state


def member_params(config: Mapping[str, Any], params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Return the parameter dicts of a fitted model's members, one per member, in order.

    A single network (``config`` without ``n_members``, or ``n_members`` = 1) is one member,
    ``params`` itself; an ensemble of ``n_members`` networks stores them as
    ``params = {"members": {"0": ..., "1": ..., ...}}``.

    Examples
    --------
    >>> len(member_params({"n_members": 2}, {"members": {"0": {}, "1": {}}}))
    2
    """
    n = int(config.get("n_members", 1))
    if n < 1:
        raise ModelError(f"config 'n_members' must be a positive int; got {n}")
    if n == 1:
        return [params]
    members = params.get("members") if isinstance(params, Mapping) else None
    keys = [str(i) for i in range(n)]
    if not isinstance(members, Mapping) or sorted(members, key=str) != sorted(keys):
        found = sorted(members) if isinstance(members, Mapping) else type(params).__name__
        raise ModelError(
            f"an ensemble of {n} members needs params {{'members': {{'0': ..., "
            f"'{n - 1}': ...}}}}; got {found}"
        )
    return [members[k] for k in keys]


def checked_tiles(config: Mapping[str, Any], x: Any) -> tuple[np.ndarray, dict, str, str]:
    """Check tiles against a sidecar config for :func:`apply_tiles`.

    Returns the tiles as float32, the architecture, the output kind and the target transform;
    raises :class:`~xfusion.errors.InputError` for tiles of the wrong shape and
    :class:`~xfusion.errors.ModelError` for a config whose output or transform is unknown.
    """
    x = np.asarray(x, dtype=np.float32)
    arch = config.get("architecture", {})
    if x.ndim != 4 or x.shape[1] != arch.get("in_channels"):
        raise InputError(
            f"tiles must be (n, band, h, w) with {arch.get('in_channels')} bands; "
            f"got shape {x.shape}"
        )
    output = config.get("output")
    if output not in ("regression", "binary", "multiclass"):
        raise ModelError(
            f"config 'output' must be regression, binary or multiclass; got {output!r}"
        )
    transform = config.get("target_transform") or "none"
    if transform not in TARGET_TRANSFORMS or (transform != "none" and output != "regression"):
        raise ModelError(
            f"config 'target_transform' must be one of {list(TARGET_TRANSFORMS)} (regression "
            f"only); got {transform!r} for output {output!r}"
        )
    return x, arch, output, transform


def apply_tiles(
    config: Mapping[str, Any],
    params: Mapping[str, Any],
    x: np.ndarray,
    *,
    return_std: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Apply a fitted U-Net (or an ensemble of them) to a batch of tiles.

    Parameters
    ----------
    config : dict
        JSON-able description from ``estimator.inference_state()``: ``architecture``,
        ``input_mean``/``input_std`` (per band), ``output`` (``"regression"``, ``"binary"`` or
        ``"multiclass"``) and, for regression, ``target_offset``/``target_scale`` and
        optionally ``target_transform`` (``"none"`` or ``"log1p"``: the network predicts
        ``log1p`` of the target, returned through ``expm1``).
        ``n_members`` (optional, default 1): an ensemble, see :func:`member_params`.
    params : dict
        Nested dict of numpy arrays: the network state, BatchNorm statistics included; for an
        ensemble ``{"members": {"0": state, "1": state, ...}}``.
    x : numpy.ndarray
        float32 ``(n, band, h, w)``, any ``h`` and ``w`` (the network pads to multiples of
        ``2 ** depth`` and crops back; multiples avoid that work). NaN inputs are replaced by
        the band mean (0 after normalisation).
    return_std : bool
        Also return the standard deviation over the members (population, ``ddof=0``; zeros
        for a single network).

    Returns
    -------
    numpy.ndarray, or (numpy.ndarray, numpy.ndarray) with ``return_std``
        float32 ``(n, out, h, w)``: regression values in the target's units; for ``"binary"`` the
        probability of the positive class (one band); for ``"multiclass"`` one probability per
        class (in ``classes`` order). For an ensemble, the mean of the members' outputs (of
        their values in target units, or of their probabilities).

    Notes
    -----
    The network is built and jitted once per architecture and output kind (cached on their JSON
    text, so it works in fresh worker processes; the normalisation constants are arguments), and
    compiled once per input shape: pad tiles to one shape.
    :func:`compile_count` counts the compilations.

    Examples
    --------
    >>> import numpy as np
    >>> arch = {"in_channels": 2, "out_channels": 1, "widths": [4], "center": 4}
    >>> params = unet_params(build_unet(arch))
    >>> config = {"architecture": arch, "input_mean": [0, 0], "input_std": [1, 1],
    ...           "output": "regression", "target_offset": [10.0], "target_scale": [1.0]}
    >>> apply_tiles(config, params, np.zeros((3, 2, 8, 8), np.float32)).shape
    (3, 1, 8, 8)
    """
    x, arch, output, transform = checked_tiles(config, x)
    template, fn = _inference_program(json.dumps(arch, sort_keys=True), output, transform)
    states = [_state_from_params(template, p) for p in member_params(config, params)]
    n_out = int(arch.get("out_channels", 1))
    # numpy constants: jnp.asarray outside a trace compiles a program per shape
    constants = [
        np.broadcast_to(np.asarray(config.get(name, default), np.float32), (n,)).copy()
        for name, default, n in (
            ("input_mean", 0.0, x.shape[1]),
            ("input_std", 1.0, x.shape[1]),
            ("target_offset", 0.0, n_out),
            ("target_scale", 1.0, n_out),
        )
    ]
    outs = [np.asarray(fn(state, x, *constants)) for state in states]
    if len(outs) == 1:
        mean, std = outs[0], np.zeros_like(outs[0])
    else:
        stack = np.stack(outs)
        mean = (stack.sum(axis=0) / np.float32(len(outs))).astype(np.float32)
        std = stack.std(axis=0).astype(np.float32)
    return (mean, std) if return_std else mean
