"""Stable U-Net training: spatial validation split, kept epoch, BatchNorm recalibration,
GroupNorm, ensembles and per-region standardisation (issue 13, items 3 and 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from flax import nnx
from scipy.ndimage import gaussian_filter

import xfusion as xf
from xfusion.errors import InputError, ModelError
from xfusion.models import UNetRegressor, UNetSegmenter, load_model
from xfusion.models.estimators import _region_statistics, _spatial_split, _standardise
from xfusion.models.train import recalibrate_batchnorm
from xfusion.models.unet import build_unet, unet_params

# one architecture and batch shape for every fit, so the jitted steps compile once per loss
SMALL = {"widths": (4, 8), "center": 8, "batch_size": 8, "progress": False, "augment": False}
KW = {**SMALL, "optimizer": "adam", "learning_rate": 0.01}


def _fields(n, bands, size=16, sigma=1.5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, bands, size, size))
    out = [[gaussian_filter(a[i, j], sigma, mode="wrap") for j in range(bands)] for i in range(n)]
    out = np.asarray(out, dtype=np.float32)
    return out / out.std()


def _problem(n=16, seed=0):
    X = _fields(n, 2, seed=seed)
    return X, 3 * X[:, :1] - 2 * X[:, 1:2] + 5


def _cube(size=64, seed=1):
    X = _fields(1, 2, size=size, sigma=2.0, seed=seed)[0]
    g = xf.grid((500000, 0, 500000 + 10 * size, 10 * size), "EPSG:32633", 10)
    data = np.concatenate([X, 3 * X[:1] - 2 * X[1:2] + 5])
    return xf.grids.assign_grid(
        xr.DataArray(data, dims=("band", "y", "x"), coords={"band": ["a", "b", "target"]}), g
    )


# --- validation split and the kept epoch ---------------------------------------------------------


def test_validation_holds_out_whole_blocks_and_keeps_the_best_validation_epoch():
    ds = xf.patches(_cube(), "target", size=16, n=40, seed=0)
    model = UNetRegressor(**KW, epochs=6, seed=3).fit(ds)
    t = model.training_
    assert t["validation"].startswith("spatial blocks")
    train, val = np.asarray(t["train_index"]), np.asarray(t["validation_index"])
    assert len(val) >= round(0.2 * 40) and len(train) > 0
    # every other patch trains, its target masked where held-out patches lie (tested below)
    assert len(train) + len(val) == 40 and t["masked_target_pixels"] > 0
    val_loss = model.history_["val_loss"]
    assert len(val_loss) == 6 and model.best_epoch_ == int(np.argmin(val_loss))
    assert t["best_epoch"] == model.best_epoch_
    # the kept weights, with BatchNorm recalibrated on all training patches (the per-epoch
    # validation used all of them too: 4 batches' worth), score the recorded minimum
    x, y = ds.inputs.values[val], ds.target.values[val]
    scale = np.asarray(model.config_["target_scale"])
    mse = np.mean(((model.predict(x) - y) / scale) ** 2)
    assert mse == pytest.approx(min(val_loss), rel=1e-3)
    assert t["val_loss_recalibrated"] == pytest.approx(min(val_loss), rel=1e-4)
    # deterministic for a seed; another seed draws other blocks
    again = UNetRegressor(**KW, epochs=6, seed=3).fit(ds)
    assert again.training_["validation_index"] == t["validation_index"]
    assert again.history_ == model.history_
    other = UNetRegressor(**KW, epochs=1, seed=4).fit(ds)
    assert other.training_["validation_index"] != t["validation_index"]


def test_training_targets_are_masked_where_held_out_patches_lie():
    rng = np.random.default_rng(0)
    positions = rng.integers(0, 48, (30, 2))
    groups = np.repeat([0, 1], 15)
    kw = {"positions": positions, "groups": groups, "fraction": 0.3, "seed": 2}
    train, val, how, mask = _spatial_split(30, (16, 16), **kw)
    assert how.startswith("spatial blocks") and len(val) >= 9
    assert sorted([*train, *val]) == list(range(30))
    for k, i in enumerate(train):  # painted independently on each region's pixel grid
        cover = np.zeros((64, 64), bool)
        for j in val[groups[val] == groups[i]]:
            r, c = positions[j]
            cover[r : r + 16, c : c + 16] = True
        r, c = positions[i]
        np.testing.assert_array_equal(mask[k], cover[r : r + 16, c : c + 16])
    assert mask.any()
    again = _spatial_split(30, (16, 16), **kw)
    np.testing.assert_array_equal(again[1], val)
    # the segmenter ignores those pixels, the regressor makes them NaN, whole coarse cells
    seg = UNetSegmenter()
    labels = np.ones((1, 4, 4), np.int32)
    held = np.zeros((1, 4, 4), bool)
    held[0, :1, :3] = True
    assert seg._mask_targets(labels, held).tolist() == np.where(held, -1, 1).tolist()
    reg = UNetRegressor(coarse_factor=2)
    coarse = np.ones((1, 2, 2, 1), np.float32)
    got = reg._mask_targets(coarse, held)[..., 0]
    assert np.isnan(got).tolist() == [[[True, True], [False, False]]]


def test_validation_split_defaults_and_switches():
    X, y = _problem()
    plain = UNetRegressor(**KW, epochs=2).fit(X, y)  # numpy: whole patches, 20 % of 16
    assert plain.training_["validation"] == "whole patches (no positions)"
    assert len(plain.training_["validation_index"]) == 3 and plain.training_["n_train"] == 13
    assert "val_loss" in plain.history_
    off = UNetRegressor(**KW, epochs=2, validation_fraction=0).fit(X, y)
    assert off.training_["n_train"] == 16 and "val_loss" not in off.history_
    assert off.best_epoch_ == int(np.argmin(off.history_["loss"]))
    given = UNetRegressor(**KW, epochs=2).fit(X[:12], y[:12], validation_data=(X[12:], y[12:]))
    assert given.training_["validation"] == "given" and given.training_["n_train"] == 12
    few = UNetRegressor(**KW, epochs=1).fit(X[:3], y[:3])
    assert few.training_["n_validation"] == 0 and few.training_["validation"].startswith("none")
    for bad in (1.0, -0.1, True):
        with pytest.raises(InputError, match="validation_fraction"):
            UNetRegressor(**KW, epochs=1, validation_fraction=bad).fit(X, y)


# --- BatchNorm recalibration and GroupNorm -------------------------------------------------------


def test_recalibrated_batchnorm_statistics_are_the_training_patches_batch_statistics():
    X, y = _problem()
    model = UNetRegressor(**{**KW, "batch_size": 16}, epochs=3, validation_fraction=0).fit(X, y)
    assert model.training_["batchnorm_recalibrated"] is True
    params = model.params_
    mean = np.asarray(model.config_["input_mean"], np.float32)
    std = np.asarray(model.config_["input_std"], np.float32)
    x = ((X - mean[:, None, None]) / std[:, None, None]).transpose(0, 2, 3, 1)
    # first layer, independently: statistics of conv1(x) over all patches and pixels
    conv = params["encoders"]["0"]["conv1"]
    h = jax.lax.conv_general_dilated(
        jnp.asarray(x),
        jnp.asarray(conv["kernel"]),
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    h = np.asarray(h, np.float64) + conv["bias"]
    bn1 = params["encoders"]["0"]["bn1"]
    np.testing.assert_allclose(bn1["mean"], h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn1["var"], h.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    # every layer: Flax's own batch statistics of one training-mode pass over the patches
    arch = {**model.config_["architecture"], "bn_momentum": 0.0}
    ref = build_unet(arch, params=params)
    ref.train()
    ref(jnp.asarray(x))
    want = nnx.traversals.flatten_mapping(unet_params(ref))
    got = nnx.traversals.flatten_mapping(params)
    for path, value in want.items():
        np.testing.assert_allclose(got[path], value, rtol=1e-4, atol=1e-5, err_msg=str(path))
    # without recalibration the moving averages stay, and differ
    ema = UNetRegressor(
        **{**KW, "batch_size": 16}, epochs=3, validation_fraction=0, recalibrate_bn=False
    ).fit(X, y)
    assert not np.allclose(ema.params_["encoders"]["0"]["bn1"]["var"], bn1["var"], rtol=1e-3)


def test_recalibration_pools_batches_exactly_for_the_first_layer():
    net = build_unet({"in_channels": 2, "widths": [4], "center": 4}, seed=1)
    x = np.random.default_rng(0).normal(2.0, 3.0, (10, 8, 8, 2)).astype(np.float32)
    assert recalibrate_batchnorm(net, x, batch_size=4) == 6  # batches of 4, 4 and 2
    conv = unet_params(net)["encoders"]["0"]["conv1"]
    h = jax.lax.conv_general_dilated(
        jnp.asarray(x),
        jnp.asarray(conv["kernel"]),
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    h = np.asarray(h, np.float64) + conv["bias"]
    bn = unet_params(net)["encoders"]["0"]["bn1"]
    np.testing.assert_allclose(bn["mean"], h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn["var"], h.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-4)


def test_group_norm_estimator_trains_saves_and_predicts_batch_independently(tmp_path):
    X, y = _problem()
    model = UNetRegressor(**KW, epochs=3, norm="group").fit(X, y)
    assert model.config_["architecture"]["norm"] == "group"
    assert sorted(model.params_["center"]) == ["conv1", "conv2", "gn1", "gn2"]
    assert model.training_["batchnorm_recalibrated"] is False
    np.testing.assert_allclose(model.predict(X[:1]), model.predict(X)[:1], rtol=1e-5, atol=1e-5)
    loaded = load_model(model.save(tmp_path / "gn"))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    with pytest.raises(InputError, match="norm"):
        UNetRegressor(**KW, epochs=1, norm="layer").fit(X, y)


# --- ensembles -----------------------------------------------------------------------------------


def test_an_ensemble_of_two_averages_its_members_exactly(tmp_path):
    X, y = _problem()
    kw = {**KW, "epochs": 3, "validation_fraction": 0}
    ensemble = UNetRegressor(**kw, n_members=2, seed=5).fit(X, y)
    a = UNetRegressor(**kw, seed=5).fit(X, y).predict(X)
    b = UNetRegressor(**kw, seed=6).fit(X, y).predict(X)
    assert not np.allclose(a, b)
    mean, std = ensemble.predict(X, return_std=True)
    np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std, np.abs(a - b) / 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ensemble.predict(X), mean)
    members = ensemble.members()
    assert len(members) == 2 and [m.n_members for m in members] == [1, 1]
    np.testing.assert_allclose(members[1].predict(X), b, rtol=1e-6, atol=1e-6)
    assert isinstance(ensemble.best_epoch_, tuple) and len(ensemble.best_epoch_) == 2
    assert len(ensemble.training_["member_histories"]) == 2
    # single models: spread 0
    single = UNetRegressor(**kw, seed=5).fit(X, y)
    assert np.all(single.predict(X, return_std=True)[1] == 0)
    # saved in the model folder format and loaded back
    loaded = load_model(ensemble.save(tmp_path / "ensemble"))
    assert loaded.n_members == 2 and loaded.best_epoch_ == ensemble.best_epoch_
    got_mean, got_std = loaded.predict(X, return_std=True)
    np.testing.assert_array_equal(got_mean, mean)
    np.testing.assert_array_equal(got_std, std)


def test_ensemble_cube_prediction_is_the_member_mean():
    X, y = _problem()
    cube = xr.DataArray(
        _fields(1, 2, size=24, seed=9)[0],
        dims=("band", "y", "x"),
        coords={"band": ["a", "b"], "y": np.arange(24) * -10.0, "x": np.arange(24) * 10.0},
    )
    model = UNetRegressor(**KW, epochs=2, n_members=2).fit(X, y, bands=["a", "b"])
    out = model.predict(cube, halo=8).compute()
    parts = [m.predict(cube, halo=8).compute() for m in model.members()]
    np.testing.assert_allclose(out.values, (parts[0].values + parts[1].values) / 2, atol=1e-5)
    with pytest.raises(InputError, match="return_std"):
        model.predict(cube, return_std=True)


def test_segmenter_ensemble_averages_probabilities():
    X = _fields(16, 1, seed=5)
    labels = (X[:, :1] > 0).astype(np.float32)
    kw = {**KW, "epochs": 2, "validation_fraction": 0}
    ens = UNetSegmenter(**kw, n_members=2).fit(X, labels)
    p = [m.predict_proba(X) for m in ens.members()]
    proba, std = ens.predict_proba(X, return_std=True)
    np.testing.assert_allclose(proba, (p[0] + p[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(std, np.abs(p[0] - p[1]) / 2, atol=1e-5)
    np.testing.assert_array_equal(ens.predict(X), (proba > 0.5).astype(np.float32))
    with pytest.raises(InputError, match="n_members"):
        UNetSegmenter(**kw, n_members=0).fit(X, labels)


# --- per-region standardisation ------------------------------------------------------------------


def test_per_region_standardisation_makes_a_brighter_copy_the_same_input():
    X, y = _problem()
    kw = {**KW, "epochs": 2, "validation_fraction": 0, "standardize": "per_region"}
    regions = np.repeat([0, 1], 16)
    bright = UNetRegressor(**kw).fit(
        np.concatenate([X, 10 * X]), np.concatenate([y, y]), regions=regions
    )
    same = UNetRegressor(**kw).fit(np.concatenate([X, X]), np.concatenate([y, y]), regions=regions)
    # the 10x brighter region is standardised to the same network inputs (up to float32
    # rounding), so training is the same
    both = np.concatenate([X, 10 * X])
    inputs = _standardise(both, *_region_statistics(both, regions))
    np.testing.assert_allclose(inputs[16:], inputs[:16], rtol=1e-5, atol=1e-6)
    for key, values in same.history_.items():
        np.testing.assert_allclose(bright.history_[key], values, rtol=1e-5, err_msg=key)
    # (Adam magnifies the float32 rounding in a few near-zero weights: compare outputs)
    np.testing.assert_allclose(bright.predict(X), same.predict(X), rtol=0.02, atol=0.05)
    # prediction standardises with the statistics of what it predicts
    np.testing.assert_allclose(bright.predict(10 * X), bright.predict(X), rtol=1e-5, atol=1e-4)
    glob = UNetRegressor(**{**kw, "standardize": "global"}).fit(X, y)
    assert not np.allclose(glob.predict(10 * X), glob.predict(X), atol=1e-2)


def test_per_region_cube_prediction_uses_the_cube_statistics():
    X, y = _problem()
    model = UNetRegressor(**KW, epochs=2, standardize="per_region").fit(X, y, bands=["a", "b"])
    cube = xr.DataArray(
        _fields(1, 2, size=24, seed=9)[0],
        dims=("band", "y", "x"),
        coords={"band": ["a", "b"], "y": np.arange(24) * -10.0, "x": np.arange(24) * 10.0},
    )
    assert model.config_["standardize"] == "per_region"
    with pytest.raises(ModelError, match="per region"):
        model.inference_state()
    dim = model.predict(cube, halo=8).compute()
    bright = model.predict(cube * 10, halo=8).compute()
    np.testing.assert_allclose(bright.values, dim.values, rtol=1e-5, atol=1e-4)
    region = model.for_region(cube * 10)
    config, _ = region.inference_state()
    np.testing.assert_allclose(config["input_mean"], 10 * cube.mean(("y", "x")).values, rtol=1e-5)
    np.testing.assert_allclose(config["input_std"], 10 * cube.std(("y", "x")).values, rtol=1e-5)
    # a region's statistics applied to its tiles: same as predicting the whole region
    np.testing.assert_allclose(
        region.predict(cube * 10, halo=8).compute().values, dim.values, rtol=1e-5, atol=1e-4
    )
    with pytest.raises(InputError, match="standardize"):
        UNetRegressor(**KW, epochs=1, standardize="per_scene").fit(X, y)


def test_per_region_labels_come_from_a_region_coordinate():
    X, y = _problem()
    ds = xr.Dataset(
        {
            "inputs": (("sample", "band", "y", "x"), np.concatenate([X, 10 * X])),
            "target": (("sample", "target_band", "y", "x"), np.concatenate([y, y])),
        },
        coords={"band": ["a", "b"], "region": ("sample", np.repeat(["dim", "bright"], 16))},
    )
    kw = {**KW, "epochs": 1, "validation_fraction": 0, "standardize": "per_region"}
    from_coord = UNetRegressor(**kw).fit(ds)
    explicit = UNetRegressor(**kw).fit(
        np.concatenate([X, X]), np.concatenate([y, y]), regions=np.repeat([0, 1], 16)
    )
    for key, values in explicit.history_.items():
        np.testing.assert_allclose(from_coord.history_[key], values, rtol=1e-5, err_msg=key)
    with pytest.raises(InputError, match="one label per sample"):
        UNetRegressor(**kw).fit(X, y, regions=[0, 1])


# --- pixel-level linear path ----------------------------------------------------------------------


def test_linear_skip_trains_saves_and_leaves_the_default_network_unchanged(tmp_path):
    X, y = _problem()
    plain = UNetRegressor(**KW, epochs=2)
    assert plain.get_params()["linear_skip"] is False
    plain.fit(X, y)
    assert "linear_skip" not in plain.config_["architecture"]
    assert "linear_skip" not in plain.params_
    model = UNetRegressor(**KW, epochs=2, linear_skip=True).fit(X, y)
    assert model.config_["architecture"]["linear_skip"] is True
    kernel = model.params_["linear_skip"]["kernel"]
    assert kernel.shape == (1, 1, 2, 1) and np.any(kernel != 0)  # it starts at zero and learns
    assert not np.allclose(model.predict(X), plain.predict(X))
    loaded = load_model(model.save(tmp_path / "skip"))
    assert loaded.linear_skip is True
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
