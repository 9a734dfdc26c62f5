"""Losses, metrics, the training loop and the U-Net estimators' fit/predict."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter
from skimage.transform import resize
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    jaccard_score,
    log_loss,
    mean_absolute_error,
    r2_score,
    root_mean_squared_error,
)

from xfusion.errors import InputError, ModelError
from xfusion.models import UNetRegressor, UNetSegmenter
from xfusion.models.losses import LossSpec, block_mean, compute_loss, finalize_metrics
from xfusion.models.train import make_optimizer, train_and_evaluate
from xfusion.models.unet import build_unet
from xfusion.testing import raise_if_dask_computes

# One small architecture and batch shape for every fit, so the jitted steps compile once per loss.
SMALL = {"widths": (4, 8), "center": 8, "batch_size": 8, "progress": False, "augment": False}


def _fields(n, bands, size=16, sigma=1.0, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, bands, size, size))
    out = [[gaussian_filter(a[i, j], sigma, mode="wrap") for j in range(bands)] for i in range(n)]
    out = np.asarray(out, dtype=np.float32)
    return out / out.std()


# --- losses and metrics against independent references ----------------------------------------


def test_masked_mse_ignores_nan_targets_and_matches_numpy():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
    target = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
    target[0, :2, :, 1] = np.nan
    valid = ~np.isnan(target)
    ref = np.mean((pred[valid] - target[valid]) ** 2)
    assert float(compute_loss(LossSpec("masked_mse"), pred, target)) == pytest.approx(ref, rel=1e-5)


_bce_value_and_grad = jax.jit(
    jax.value_and_grad(
        lambda p, t: compute_loss(LossSpec("bce", n_classes=2, dice_weight=0.5), p, t)
    )
)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([-1.0, 0.0, 1.0, 7.0]))
def test_ignored_labels_change_neither_loss_nor_gradient(seed, fill):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(2, 4, 4, 1)).astype(np.float32))
    labels = rng.integers(0, 2, size=(2, 4, 4)).astype(np.int32)
    ignore = rng.random((2, 4, 4)) < 0.4
    a = np.where(ignore, -1, labels)
    b = np.where(ignore, -1 if fill < 0 else -2, labels)  # other negative codes are ignored too
    la, ga = _bce_value_and_grad(logits, a)
    lb, gb = _bce_value_and_grad(logits, b)
    assert float(la) == float(lb)
    np.testing.assert_array_equal(np.asarray(ga), np.asarray(gb))
    assert np.all(np.asarray(ga)[ignore] == 0)


def test_bce_and_cross_entropy_match_sklearn_log_loss():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 4, 4, 1)).astype(np.float32)
    labels = rng.integers(0, 2, size=(1, 4, 4))
    labels[0, 0] = -1
    keep = labels >= 0
    prob = 1 / (1 + np.exp(-logits[..., 0]))
    ref = log_loss(labels[keep], prob[keep], labels=[0, 1])
    got = float(compute_loss(LossSpec("bce", n_classes=2), logits, labels))
    assert got == pytest.approx(ref, rel=1e-5)

    logits3 = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    labels3 = rng.integers(0, 3, size=(1, 4, 4))
    labels3[0, 1, :2] = -1
    keep3 = labels3 >= 0
    soft = np.exp(logits3) / np.exp(logits3).sum(-1, keepdims=True)
    ref3 = log_loss(labels3[keep3], soft[keep3], labels=[0, 1, 2])
    got3 = float(compute_loss(LossSpec("cross_entropy", n_classes=3), logits3, labels3))
    assert got3 == pytest.approx(ref3, rel=1e-5)


def test_coarse_loss_compares_block_means_and_penalises_roughness():
    rng = np.random.default_rng(2)
    pred = rng.normal(size=(1, 8, 8, 1)).astype(np.float32)
    coarse = rng.normal(size=(1, 2, 2, 1)).astype(np.float32)
    means = pred[0, :, :, 0].reshape(2, 4, 2, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(np.asarray(block_mean(pred, 4))[0, :, :, 0], means, rtol=1e-6)
    ref = np.mean((means - coarse[0, :, :, 0]) ** 2)
    spec = LossSpec("masked_mse", coarse_factor=4)
    assert float(compute_loss(spec, pred, coarse)) == pytest.approx(ref, rel=1e-5)
    rough = np.mean(np.diff(pred, axis=1) ** 2) + np.mean(np.diff(pred, axis=2) ** 2)
    smooth = LossSpec("masked_mse", coarse_factor=4, smoothness=0.5)
    assert float(compute_loss(smooth, pred, coarse)) == pytest.approx(ref + 0.5 * rough, rel=1e-5)


def test_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.8, truth, 1 - truth)
    conf = np.zeros((2, 2))
    np.add.at(conf, (truth, pred), 1)
    got = finalize_metrics(LossSpec("bce", n_classes=2), conf)
    assert got["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert got["f1"] == pytest.approx(f1_score(truth, pred))
    assert got["iou"] == pytest.approx(jaccard_score(truth, pred))

    y = rng.normal(size=300)
    p = y + rng.normal(scale=0.3, size=300)
    stats = np.array([[300, np.sum((p - y) ** 2), np.sum(np.abs(p - y)), y.sum(), (y**2).sum()]])
    reg = finalize_metrics(LossSpec("masked_mse"), stats, target_scale=[2.0])
    assert reg["rmse"] == pytest.approx(2 * root_mean_squared_error(y, p))
    assert reg["mae"] == pytest.approx(2 * mean_absolute_error(y, p))
    assert reg["r2"] == pytest.approx(r2_score(y, p))


# --- estimators ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression_problem():
    X = _fields(16, 2, sigma=1.5)
    y = 3 * X[:, :1] - 2 * X[:, 1:2] + 5
    return X, y


@pytest.fixture(scope="module")
def regressor(regression_problem):
    X, y = regression_problem
    return UNetRegressor(**SMALL, epochs=20, optimizer="adam", learning_rate=0.01).fit(X, y)


def test_training_reduces_the_loss_and_learns(regressor, regression_problem):
    X, y = regression_problem
    loss = regressor.history_["loss"]
    assert len(loss) == 20 and loss[-1] < 0.3 * loss[0]
    pred = regressor.predict(X)
    assert pred.shape == y.shape and pred.dtype == np.float32
    assert r2_score(y.ravel(), pred.ravel()) > 0.6
    # the recorded metrics are in target units and agree in scale with sklearn's on predictions
    assert regressor.history_["rmse"][-1] < 3 * root_mean_squared_error(y.ravel(), pred.ravel())


def test_fitted_attributes_follow_the_contract(regressor):
    assert regressor.bands_ is None  # fitted on bare arrays: no band names to check cubes by
    assert regressor.output_bands_ == ("prediction",)
    assert regressor.tile_multiple_ == 4 and regressor.default_halo_ % 4 == 0
    config, params = regressor.inference_state()
    import json

    assert json.loads(json.dumps(config)) == config
    assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(params))
    assert regressor.get_params()["epochs"] == 20


def test_fixed_seed_gives_identical_weights(regression_problem):
    X, y = regression_problem
    kw = {**SMALL, "epochs": 2, "optimizer": "adam", "learning_rate": 0.01}
    a = UNetRegressor(**kw, seed=7).fit(X, y)
    b = UNetRegressor(**kw, seed=7).fit(X, y)
    c = UNetRegressor(**kw, seed=8).fit(X, y)
    leaves = jax.tree.leaves
    assert all(
        np.array_equal(u, v) for u, v in zip(leaves(a.params_), leaves(b.params_), strict=True)
    )
    assert not all(
        np.array_equal(u, v) for u, v in zip(leaves(a.params_), leaves(c.params_), strict=True)
    )


def test_predict_pads_odd_sizes_and_masks_nodata(regressor, regression_problem):
    X, _ = regression_problem
    odd = X[:3, :, :13, :10].copy()
    odd[0, 1, 4, 4] = np.nan
    out = regressor.predict(odd)
    assert out.shape == (3, 1, 13, 10)
    assert np.isnan(out[0, 0, 4, 4]) and np.isfinite(np.delete(out.ravel(), 4 * 10 + 4)).all()


def test_fit_on_a_patches_dataset_eager_and_chunked_agree(regression_problem):
    X, y = regression_problem
    ds = xr.Dataset(
        {
            "inputs": (("sample", "band", "y", "x"), X),
            "target": (("sample", "target_band", "y", "x"), y),
        },
        coords={"band": ["red", "nir"], "target_band": ["radiance"]},
    )
    kw = {**SMALL, "epochs": 1, "optimizer": "adam", "learning_rate": 0.01}
    eager = UNetRegressor(**kw).fit(ds)
    with raise_if_dask_computes(max_computes=2):  # fit is documented to load the patches
        chunked = UNetRegressor(**kw).fit(ds.chunk({"sample": 4}))
    assert eager.bands_ == ("red", "nir") and eager.output_bands_ == ("radiance",)
    np.testing.assert_array_equal(eager.predict(X[:2]), chunked.predict(X[:2]))


def test_nan_loss_raises_model_error(regression_problem):
    X, y = regression_problem
    model = build_unet({"in_channels": 2, "out_channels": 1, "widths": [4, 8], "center": 8})
    x = X.transpose(0, 2, 3, 1).copy()
    x[3, 5, 5, 0] = np.inf
    tx = make_optimizer("adam", 0.01, total_steps=24)
    spec = LossSpec("masked_mse")
    with pytest.raises(ModelError, match="loss became nan"):
        train_and_evaluate(
            model,
            tx,
            (x, y.transpose(0, 2, 3, 1)),
            spec=spec,
            epochs=1,
            batch_size=8,
            progress=False,
        )


def test_early_stopping_keeps_the_best_epoch(regression_problem):
    X, y = regression_problem
    kw = {**SMALL, "optimizer": "adam", "learning_rate": 0.01}
    model = UNetRegressor(**kw, epochs=12, early_stopping=1).fit(
        X[:8], y[:8], validation_data=(X[8:], y[8:])
    )
    val = model.history_["val_loss"]
    assert len(val) <= 12 and "val_rmse" in model.history_
    if len(val) < 12:
        assert val[-1] >= min(val[:-1])  # stopped because the last epoch did not improve
    pred = model.predict(X[8:])
    mse = np.mean(((pred - y[8:]) / np.asarray(model.config_["target_scale"])) ** 2)
    assert mse == pytest.approx(min(val), rel=1e-3)  # the weights of the best epoch are kept


def test_coarse_supervision_recovers_fine_detail_better_than_bilinear():
    X = _fields(16, 1, sigma=1.0, seed=4)
    fine = 2 * X + 1
    coarse = fine.reshape(16, 1, 4, 4, 4, 4).mean(axis=(3, 5))
    # every patch trains (no validation split): 16 patches make two batches of 8 per epoch
    model = UNetRegressor(
        **SMALL,
        epochs=30,
        optimizer="adam",
        learning_rate=0.01,
        coarse_factor=4,
        smoothness=0.0,
        validation_fraction=0,
    ).fit(X, coarse)
    pred = model.predict(X)
    bilinear = np.stack([resize(c[0], (16, 16), order=1, mode="edge")[None] for c in coarse])
    rmse_unet = root_mean_squared_error(fine.ravel(), pred.ravel())
    rmse_bilinear = root_mean_squared_error(fine.ravel(), bilinear.ravel())
    assert rmse_unet < 0.8 * rmse_bilinear
    # the prediction aggregates back to the coarse observation
    back = pred.reshape(16, 1, 4, 4, 4, 4).mean(axis=(3, 5))
    assert root_mean_squared_error(coarse.ravel(), back.ravel()) < 0.5 * rmse_bilinear


def test_segmenter_learns_and_ignores_nodata_labels():
    X = _fields(16, 1, sigma=1.5, seed=5)
    labels = (X[:, :1] > 0).astype(np.float32)
    nodata = np.random.default_rng(0).random(labels.shape) < 0.2
    a = np.where(nodata, 255, labels)
    b = np.where(nodata, np.nan, labels)
    b[:, :, :2] = np.where(nodata[:, :, :2], 255, labels[:, :, :2])
    kw = {**SMALL, "epochs": 10, "optimizer": "adam", "learning_rate": 0.02, "ignore_value": 255}
    ma = UNetSegmenter(**kw).fit(X, a)
    mb = UNetSegmenter(**kw).fit(X, b)
    assert ma.classes_ == (0.0, 1.0) and ma.output_bands_ == ("proba_1",)
    leaves = jax.tree.leaves
    assert all(
        np.array_equal(u, v) for u, v in zip(leaves(ma.params_), leaves(mb.params_), strict=True)
    )
    pred = ma.predict(X)
    assert accuracy_score(labels.ravel(), pred.ravel()) > 0.85
    proba = ma.predict_proba(X)
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(np.float32))
    assert set(ma.history_) >= {"loss", "accuracy", "f1", "iou"}


def test_bad_inputs_raise_clear_errors(regression_problem):
    X, y = regression_problem
    with pytest.raises(InputError, match="multiples of 4"):
        UNetRegressor(**SMALL, coarse_factor=4).fit(X[:, :, :14, :14], y[:, :, :14, :14])
    with pytest.raises(InputError, match="16 samples but y has 3"):
        UNetRegressor(**SMALL).fit(X, y[:3])
    with pytest.raises(InputError, match="at least two classes"):
        UNetSegmenter(**SMALL).fit(X, np.ones_like(y))
    with pytest.raises(InputError, match="masked_mse"):
        UNetRegressor(**SMALL, loss="mse").fit(X, np.where(y > 5, np.nan, y))
    with pytest.raises(ModelError, match="not fitted"):
        UNetRegressor().predict(X)
