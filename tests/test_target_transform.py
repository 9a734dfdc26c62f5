"""Heavy-tailed targets: target_transform="log1p" and the Huber loss of UNetRegressor."""

from __future__ import annotations

import numpy as np
import pytest

from xfusion.errors import InputError
from xfusion.models import UNetRegressor, load_model
from xfusion.models.losses import LossSpec, compute_loss

FIT = {
    "widths": (8,),
    "center": 8,
    "epochs": 25,
    "batch_size": 8,
    "optimizer": "adam",
    "learning_rate": 0.01,
    "augment": False,
    "progress": False,
    # these tests score the fit on the training patches: all of them train (no held-out split)
    "validation_fraction": 0,
}


def _heavy(n=16, size=8, seed=0):
    """Inputs and a log-normal (radiance-like) target: exp(1.5·x0) - 1, ranging over decades."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2, size, size)).astype(np.float32)
    return X, np.expm1(1.5 * X[:, :1]).astype(np.float32)


def _log_rmse(pred, y):
    return float(np.sqrt(np.mean((np.log1p(np.maximum(pred, -0.999)) - np.log1p(y)) ** 2)))


def test_log1p_fits_a_heavy_tailed_target_and_predicts_in_linear_units(tmp_path):
    X, y = _heavy()
    assert y.max() / np.median(y + 1) > 50  # heavy tail
    logged = UNetRegressor(**FIT, target_transform="log1p").fit(X, y)
    plain = UNetRegressor(**FIT).fit(X, y)
    pred = logged.predict(X)
    assert (pred > -1).all()  # expm1 of the network output
    # measured: 0.37 in log units with the transform, 2.3 without
    assert _log_rmse(pred, y) < 0.5
    assert _log_rmse(pred, y) < _log_rmse(plain.predict(X), y) / 4
    assert logged.config_["target_transform"] == "log1p"
    # stored with the model: the loaded model predicts the same numbers
    again = load_model(logged.save(tmp_path / "model"))
    assert again.target_transform == "log1p"
    np.testing.assert_array_equal(again.predict(X), pred)


def test_log1p_refuses_targets_below_minus_one():
    X, y = _heavy(n=2)
    y[1, 0, 3, 4] = -1.5
    with pytest.raises(InputError, match=r"target_transform='log1p' needs targets >= -1.*-1\.5"):
        UNetRegressor(**FIT, target_transform="log1p").fit(X, y)
    with pytest.raises(InputError, match=r"target_transform must be one of \['none', 'log1p'\]"):
        UNetRegressor(**FIT, target_transform="log").fit(X, np.abs(y))


def test_log1p_under_coarse_supervision_aggregates_in_linear_units():
    rng = np.random.default_rng(1)
    n, h, w, f = 2, 4, 4, 2
    pred = rng.normal(size=(n, h, w, 1)).astype(np.float32)  # normalised log1p units
    offset, scale = 0.5, 2.0
    obs_linear = rng.random((n, h // f, w // f, 1)).astype(np.float32) * 5
    obs = (np.log1p(obs_linear) - offset) / scale
    spec = LossSpec(
        "masked_mse", coarse_factor=f, transform="log1p", target_offset=(offset,),
        target_scale=(scale,),
    )  # fmt: skip
    linear = np.expm1(pred * scale + offset)
    mean = linear.reshape(n, h // f, f, w // f, f, 1).mean(axis=(2, 4))  # mean in linear units
    expected = np.mean(((np.log1p(mean) - offset) / scale - obs) ** 2)
    np.testing.assert_allclose(compute_loss(spec, pred, obs), expected, rtol=1e-5)
    # not the mean of the logs
    log_mean = pred.reshape(n, h // f, f, w // f, f, 1).mean(axis=(2, 4))
    assert abs(np.mean((log_mean - obs) ** 2) - expected) > 1e-3


def test_log1p_coarse_model_matches_linear_block_means():
    X, y = _heavy(n=16, size=8)
    coarse = y.reshape(16, 1, 2, 4, 2, 4).mean(axis=(3, 5))  # observations: linear means
    model = UNetRegressor(**FIT, coarse_factor=4, target_transform="log1p").fit(X, coarse)
    pred = model.predict(X)
    agg = pred.reshape(16, 1, 2, 4, 2, 4).mean(axis=(3, 5))
    rel = np.abs(agg - coarse) / (coarse + 1)
    assert np.median(rel) < 0.2, np.median(rel)


def test_huber_loss_resists_outlying_targets():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(16, 1, 8, 8)).astype(np.float32)
    clean = 2 * X
    y = clean.copy()
    outliers = rng.random(y.shape) < 0.03
    y[outliers] += 60.0  # a few wild values
    huber = UNetRegressor(**FIT, loss="huber", huber_delta=0.5).fit(X, y)
    mse = UNetRegressor(**FIT).fit(X, y)
    keep = ~outliers

    def err(model):
        return float(np.sqrt(np.mean((model.predict(X) - clean)[keep] ** 2)))

    assert err(huber) < err(mse) / 2, (err(huber), err(mse))
    assert huber.get_params()["huber_delta"] == 0.5
    with pytest.raises(InputError, match="huber_delta must be a positive number; got 0"):
        UNetRegressor(**FIT, loss="huber", huber_delta=0).fit(X, y)


def test_huber_loss_equals_numpy_on_the_fine_grid():
    rng = np.random.default_rng(4)
    pred = rng.normal(size=(2, 4, 4, 1)).astype(np.float32) * 3
    target = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
    target[0, 0, 0, 0] = np.nan
    e = (pred - target)[~np.isnan(target)]
    a = np.abs(e)
    expected = np.where(a <= 1.5, 0.5 * e**2, 1.5 * (a - 0.75)).mean()
    got = compute_loss(LossSpec("huber", huber_delta=1.5), pred, target)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
