"""The U-Net architecture and its tile-level inference (apply_tiles)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xfusion.errors import InputError, ModelError
from xfusion.models import unet
from xfusion.models.unet import (
    UNet,
    abstract_unet,
    apply_tiles,
    build_unet,
    compile_count,
    default_halo,
    depth_to_space,
    receptive_field_radius,
    unet_params,
)

ARCH = {"in_channels": 2, "out_channels": 1, "widths": [4, 8], "center": 8}


@pytest.mark.parametrize(
    ("widths", "size"),
    [((4,), (6, 10)), ((4, 8), (16, 12)), ((4, 8, 8), (8, 24)), ((2, 2, 2, 2, 2), (32, 64))],
)
def test_output_shape_for_depths_and_sizes(widths, size):
    net = abstract_unet({"in_channels": 3, "out_channels": 5, "widths": widths})
    out = nnx.eval_shape(lambda m, x: m(x), net, jax.ShapeDtypeStruct((2, *size, 3), jnp.float32))
    assert out.shape == (2, *size, 5)
    assert net.depth == len(widths)


def test_seed_preset_is_the_published_network():
    net = abstract_unet({"in_channels": 9, **unet.PRESETS["seed"]})
    assert [b.conv1.out_features for b in net.encoders] == [32, 64, 128, 256, 512]
    assert net.center.conv2.out_features == 1024
    assert [b.conv2.out_features for b in net.decoders] == [512, 256, 128, 64, 32]
    # up-sampling: 1x1 convolutions to 4*C channels
    assert [u.kernel_size for u in net.ups] == [(1, 1)] * 5
    assert [u.out_features for u in net.ups] == [4 * c for c in (512, 256, 128, 64, 32)]


def test_size_not_multiple_of_two_to_depth_is_padded_and_cropped_back():
    net = abstract_unet(ARCH)
    out = nnx.eval_shape(lambda m, x: m(x), net, jax.ShapeDtypeStruct((1, 10, 7, 2), jnp.float32))
    assert out.shape == (1, 10, 7, 1)
    with pytest.raises(InputError, match="NHWC"):
        nnx.eval_shape(lambda m, x: m(x), net, jax.ShapeDtypeStruct((10, 8, 2), jnp.float32))
    with pytest.raises(InputError, match="widths"):
        UNet(2, widths=(), rngs=nnx.Rngs(0))
    with pytest.raises(InputError, match="head"):
        UNet(2, widths=(4,), head="detection", rngs=nnx.Rngs(0))


def test_depth_to_space_matches_reference_ordering():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4 * 3)).astype(np.float32)
    out = np.asarray(depth_to_space(jnp.asarray(x)))
    ref = np.empty((2, 6, 10, 3), np.float32)
    for dy in range(2):
        for dx in range(2):
            k = dy * 2 + dx
            ref[:, dy::2, dx::2, :] = x[..., k * 3 : (k + 1) * 3]
    np.testing.assert_array_equal(out, ref)


def test_one_by_one_conv_plus_depth_to_space_is_a_transposed_convolution():
    rng = np.random.default_rng(1)
    cin, cout = 3, 2
    x = rng.normal(size=(1, 4, 5, cin)).astype(np.float32)
    w = rng.normal(size=(2, 2, cin, cout)).astype(np.float32)  # (ky, kx, in, out)
    # 1x1 kernel mapping: output channel (dy*2+dx)*cout + c takes w[dy, dx, :, c]
    k1 = w.transpose(2, 0, 1, 3).reshape(cin, 4 * cout)
    fast = depth_to_space(jnp.einsum("nhwi,io->nhwo", x, k1))
    # independent reference: each input pixel scatters a 2x2 patch (stride-2 transposed conv)
    ref = np.zeros((1, 8, 10, cout), np.float32)
    for i in range(4):
        for j in range(5):
            ref[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2] = np.einsum("i,yxio->yxo", x[0, i, j], w)
    np.testing.assert_allclose(np.asarray(fast), ref, rtol=1e-5, atol=1e-5)


def test_build_is_deterministic_and_params_round_trip():
    a, b = unet_params(build_unet(ARCH, seed=3)), unet_params(build_unet(ARCH, seed=3))
    c = unet_params(build_unet(ARCH, seed=4))
    leaves = jax.tree.leaves
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c), strict=True))
    rebuilt = unet_params(build_unet(ARCH, params=a))
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(rebuilt), strict=True))
    # He-normal kernels: std close to sqrt(2 / fan_in)
    k = a["encoders"]["1"]["conv1"]["kernel"]
    assert abs(k.std() / np.sqrt(2 / (9 * 4)) - 1) < 0.25


def test_params_of_another_architecture_are_rejected():
    params = unet_params(build_unet(ARCH))
    with pytest.raises(ModelError, match="shape"):
        build_unet({**ARCH, "center": 16}, params=params)
    del params["head"]
    with pytest.raises(ModelError, match="missing"):
        build_unet(ARCH, params=params)


def _config(**kw):
    return {
        "architecture": ARCH,
        "input_mean": [1.0, -2.0],
        "input_std": [2.0, 0.5],
        "output": "regression",
        "target_offset": [10.0],
        "target_scale": [3.0],
        **kw,
    }


def test_apply_tiles_equals_the_network_in_eval_mode():
    params = unet_params(build_unet(ARCH, seed=1))
    # non-trivial BatchNorm statistics, so eval mode matters
    rng = np.random.default_rng(0)
    for block in params["encoders"].values():
        block["bn1"]["mean"] = rng.normal(size=block["bn1"]["mean"].shape).astype(np.float32)
        block["bn1"]["var"] = rng.uniform(0.5, 2, size=block["bn1"]["var"].shape).astype(np.float32)
    x = rng.normal(size=(2, 2, 8, 8)).astype(np.float32)
    out = apply_tiles(_config(), params, x)
    assert out.dtype == np.float32 and out.shape == (2, 1, 8, 8)

    net = build_unet(ARCH, params=params)
    net.eval()
    norm = (x - np.array([1.0, -2.0])[:, None, None]) / np.array([2.0, 0.5])[:, None, None]
    ref = nnx.jit(lambda m, v: m(v))(net, norm.transpose(0, 2, 3, 1).astype(np.float32))
    ref = np.asarray(ref).transpose(0, 3, 1, 2) * 3.0 + 10.0
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_apply_tiles_fills_nan_with_the_band_mean_and_applies_heads():
    params = unet_params(build_unet(ARCH, seed=2))
    x = np.random.default_rng(1).normal(size=(2, 2, 8, 8)).astype(np.float32)
    holes = x.copy()
    holes[0, 0, 2:4, 3] = np.nan
    holes[1, 1, 5, :] = np.nan
    filled = x.copy()
    filled[0, 0, 2:4, 3] = 1.0  # the band means of _config()
    filled[1, 1, 5, :] = -2.0
    np.testing.assert_array_equal(
        apply_tiles(_config(), params, holes), apply_tiles(_config(), params, filled)
    )

    binary = apply_tiles(_config(output="binary"), params, x)
    logits = (apply_tiles(_config(), params, x) - 10.0) / 3.0  # undo the target scaling
    np.testing.assert_allclose(binary, 1 / (1 + np.exp(-logits)), rtol=1e-4, atol=1e-5)

    arch3 = {**ARCH, "out_channels": 3}
    p3 = unet_params(build_unet(arch3))
    proba = apply_tiles(_config(architecture=arch3, output="multiclass"), p3, x)
    assert proba.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_apply_tiles_compiles_once_per_shape():
    arch = {**ARCH, "center": 12}  # an architecture no other test uses
    params = unet_params(build_unet(arch, seed=5))
    config = _config(architecture=arch)
    x = np.zeros((2, 2, 8, 8), np.float32)
    before = compile_count()
    apply_tiles(config, params, x)
    apply_tiles(config, params, x + 1)
    apply_tiles(config, unet_params(build_unet(arch, seed=6)), x)  # new weights, same program
    apply_tiles({**config, "input_mean": [3.0, 4.0]}, params, x)  # new normalisation, too
    assert compile_count() == before + 1
    apply_tiles(config, params, np.zeros((2, 2, 8, 12), np.float32))
    assert compile_count() == before + 2


def test_apply_tiles_rejects_bad_tiles():
    params = unet_params(build_unet(ARCH))
    assert apply_tiles(_config(), params, np.zeros((1, 2, 6, 7), np.float32)).shape == (
        1,
        1,
        6,
        7,
    )
    with pytest.raises(ModelError, match="target_transform"):
        apply_tiles({**_config(), "target_transform": "sqrt"}, params, np.zeros((1, 2, 8, 8)))
    with pytest.raises(InputError, match="2 bands"):
        apply_tiles(_config(), params, np.zeros((1, 3, 8, 8), np.float32))


def test_receptive_field_is_within_the_stated_radius_and_halo():
    depth = 2
    net = build_unet(ARCH, seed=0)
    net.eval()
    size, centre = 64, 32

    def centre_output(x):
        return net(x)[0, centre, centre, 0]

    x = np.random.default_rng(0).normal(size=(1, size, size, 2)).astype(np.float32)
    grad = np.asarray(nnx.jit(jax.grad(centre_output))(x))[0]
    rows, cols = np.nonzero(np.abs(grad).sum(-1) > 0)
    reach = max(np.abs(rows - centre).max(), np.abs(cols - centre).max())
    assert 0 < reach <= receptive_field_radius(depth)
    assert default_halo(depth) >= receptive_field_radius(depth)
    assert default_halo(depth) % 2**depth == 0
    assert default_halo(5) % 32 == 0


def _fold_batchnorm(params, eps=1e-5):
    """numpy: fold every bn1/bn2 into the preceding convolution (the reference for norm='none')."""
    import copy

    out = copy.deepcopy(params)

    def walk(node):
        if "conv1" in node and "bn1" in node:
            for i in ("1", "2"):
                bn = node.pop("bn" + i)
                conv = node["conv" + i]
                factor = bn["scale"] / np.sqrt(bn["var"] + eps)
                conv["kernel"] = conv["kernel"] * factor
                conv["bias"] = (conv["bias"] - bn["mean"]) * factor + bn["bias"]
            return
        for value in node.values():
            if isinstance(value, dict):
                walk(value)

    walk(out)
    return out


def test_norm_none_runs_a_folded_batchnorm_network():
    rng = np.random.default_rng(5)
    flat = dict(nnx.traversals.flatten_mapping(unet_params(build_unet(ARCH, seed=2))))
    for path, value in flat.items():  # non-trivial statistics
        if path[-2].startswith("bn") and path[-1] in ("mean", "bias"):
            flat[path] = rng.normal(0, 0.3, value.shape).astype(np.float32)
        elif path[-2].startswith("bn") and path[-1] in ("var", "scale"):
            flat[path] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
    params = nnx.traversals.unflatten_mapping(flat)
    folded = _fold_batchnorm(params)
    assert "bn1" not in folded["encoders"]["0"]
    x = rng.standard_normal((2, 2, 12, 9)).astype(np.float32)
    config = {"architecture": ARCH, "output": "regression"}
    want = apply_tiles(config, params, x)
    got = apply_tiles({**config, "architecture": {**ARCH, "norm": "none"}}, folded, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_norm_batch_is_the_default_and_group_normalises_per_sample():
    default = unet_params(build_unet(ARCH, seed=4))
    batch = unet_params(build_unet({**ARCH, "norm": "batch"}, seed=4))
    flat_d, flat_b = (nnx.traversals.flatten_mapping(p) for p in (default, batch))
    assert list(flat_d) == list(flat_b)
    assert all(np.array_equal(flat_d[k], flat_b[k]) for k in flat_d)
    assert sorted(default["center"]) == ["bn1", "bn2", "conv1", "conv2"]

    arch = {**ARCH, "norm": "group"}
    net = build_unet(arch, seed=4)
    assert sorted(unet_params(net)["center"]) == ["conv1", "conv2", "gn1", "gn2"]
    assert net.encoders[0].gn1.num_groups == unet.group_count(4) == 4
    # GroupNorm has no batch statistics: a sample's output does not depend on its batch mates
    x = np.random.default_rng(0).standard_normal((3, 2, 8, 8)).astype(np.float32)
    config = {"architecture": arch, "output": "regression"}
    params = unet_params(net)
    np.testing.assert_allclose(
        apply_tiles(config, params, x)[:1], apply_tiles(config, params, x[:1]), atol=1e-5
    )
    net.train()
    xt = jnp.transpose(jnp.asarray(x), (0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(net(xt))[:1], np.asarray(net(xt[:1])), atol=1e-5)
    with pytest.raises(InputError, match="norm"):
        build_unet({**ARCH, "norm": "layer"})


def test_linear_skip_adds_a_pixel_linear_path_and_leaves_the_rest_unchanged():
    plain, skip = build_unet(ARCH, seed=5), build_unet({**ARCH, "linear_skip": True}, seed=5)
    p, s = unet_params(plain), unet_params(skip)
    assert "linear_skip" not in p
    assert s["linear_skip"]["kernel"].shape == (1, 1, 2, 1)
    assert not np.any(s["linear_skip"]["kernel"]) and not np.any(s["linear_skip"]["bias"])
    # every other layer is initialised exactly as in the plain network
    rest = {k: v for k, v in s.items() if k != "linear_skip"}
    pairs = zip(jax.tree.leaves(p), jax.tree.leaves(rest), strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    # the output is the U-Net's plus w·x + b per pixel
    s["linear_skip"]["kernel"] = np.array([2.0, -0.5], np.float32).reshape(1, 1, 2, 1)
    s["linear_skip"]["bias"] = np.array([0.25], np.float32)
    skip = build_unet({**ARCH, "linear_skip": True}, params=s)
    x = np.random.default_rng(1).normal(size=(2, 12, 12, 2)).astype(np.float32)
    forward = nnx.jit(lambda m, v: m(v))
    plain.eval()
    skip.eval()
    expected = np.asarray(forward(plain, x)) + 2.0 * x[..., :1] - 0.5 * x[..., 1:] + 0.25
    np.testing.assert_allclose(np.asarray(forward(skip, x)), expected, rtol=1e-5, atol=1e-5)
    # apply_tiles (blockwise prediction) builds the same network from the config
    config = _config(architecture={**ARCH, "linear_skip": True})
    tiles = apply_tiles(config, s, x.transpose(0, 3, 1, 2))
    norm = (x - np.array([1.0, -2.0])) / np.array([2.0, 0.5])
    ref = np.asarray(forward(skip, norm.astype(np.float32))).transpose(0, 3, 1, 2) * 3 + 10
    np.testing.assert_allclose(tiles, ref, rtol=1e-4, atol=1e-4)
