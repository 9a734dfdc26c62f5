"""Spatial cross-validation: xf.models.cross_validate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import InputError
from xfusion.models import Ridge, UNetRegressor, cross_validate, spatial_folds


def _cube(ny=12, nx=10, seed=0, chunks=None):
    rng = np.random.default_rng(seed)
    cube = synthetic_cube(
        rng.normal(size=(3, ny, nx)).astype(np.float32), ["B02", "B03", "B04"], res=30.0
    )
    noise = rng.normal(scale=0.3, size=(ny, nx))
    # the relation drifts across the scene, so folds differ and the scores are not trivial
    drift = np.linspace(0, 1, ny)[:, None]
    target = (
        cube.sel(band="B02", drop=True) * (1 + drift)
        - 0.5 * cube.sel(band="B03", drop=True)
        + noise
        + 2
    ).rename("target")
    target[0, 0] = np.nan  # a nodata target pixel
    if chunks:
        cube, target = cube.chunk(chunks), target.chunk(chunks)
    return cube, target


def test_spatial_folds_are_contiguous_blocks_or_given_labels():
    cube, _ = _cube(ny=5, nx=4)
    folds = spatial_folds(cube, 2)
    assert folds.values.tolist() == [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 3, 3],
        [2, 2, 3, 3],
    ]
    labels = np.array([[0, 1, np.nan, -1]] * 5)
    assert spatial_folds(cube, labels).values[0].tolist() == [0, 1, -1, -1]


def test_ridge_scores_equal_a_manual_computation_for_one_fold():
    cube, target = _cube(chunks={"y": 6, "x": 5})
    scores = cross_validate(Ridge(alpha=0.5), cube, target, blocks=2, seeds=[0, 1])
    assert isinstance(scores, pd.DataFrame)
    assert list(scores.columns) == ["fold", "seed", "n", "rmse", "mae", "r2"]
    assert scores[["fold", "seed"]].values.tolist() == [[f, s] for f in range(4) for s in (0, 1)]
    # manual: fold 1 is rows 0-5, columns 5-9; train on every other pixel, score there
    X = cube.values.reshape(3, -1).T
    y = target.values.ravel()
    held = np.zeros((12, 10), bool)
    held[:6, 5:] = True
    held = held.ravel()
    train = ~held & np.isfinite(y)
    Xc = X[train] - X[train].mean(0)  # ridge with an unpenalised intercept (centred data)
    coef = np.linalg.solve(Xc.T @ Xc + 0.5 * np.eye(3), Xc.T @ (y[train] - y[train].mean()))
    intercept = y[train].mean() - X[train].mean(0) @ coef
    pred = X[held] @ coef + intercept
    truth = y[held]
    err = pred - truth
    row = scores[(scores.fold == 1) & (scores.seed == 0)].iloc[0]
    assert row["n"] == 30
    np.testing.assert_allclose(row["rmse"], np.sqrt(np.mean(err**2)), rtol=1e-4)
    np.testing.assert_allclose(row["mae"], np.mean(np.abs(err)), rtol=1e-4)
    r2 = 1 - np.sum(err**2) / np.sum((truth - truth.mean()) ** 2)
    np.testing.assert_allclose(row["r2"], r2, rtol=1e-4)
    # fold 0 holds the nodata target pixel: it is not scored
    assert scores[scores.fold == 0]["n"].tolist() == [29, 29]
    # a deterministic model: equal scores for every seed
    assert scores.groupby("fold")["rmse"].nunique().eq(1).all()
    # and the held-out fold differs from an in-sample fit (the drift makes it harder)
    assert scores["rmse"].min() > 0.2


def test_fold_labels_and_a_scikit_learn_estimator():
    cube, target = _cube()
    labels = np.where(np.arange(10)[None, :] < 5, 0, 1) * np.ones((12, 1), int)
    scores = cross_validate(LinearRegression(), cube, target, blocks=labels, seeds=3)
    assert scores[["fold", "seed"]].values.tolist() == [[0, 3], [1, 3]]
    ridge = cross_validate(Ridge(alpha=1e-9), cube, target, blocks=labels)
    # ordinary least squares either way: the same held-out scores
    np.testing.assert_allclose(
        scores[["rmse", "mae", "r2"]], ridge[["rmse", "mae", "r2"]], rtol=1e-4
    )
    assert (scores["r2"] > 0.5).all()


def test_a_unet_is_trained_per_fold_and_seed_with_its_seed_set():
    cube, target = _cube(ny=16, nx=16)
    unet = UNetRegressor(widths=(4,), center=4, epochs=2, batch_size=1, progress=False)
    scores = xf.models.cross_validate(unet, cube, target, blocks=2, seeds=[0, 1])
    assert len(scores) == 8 and scores["n"].tolist()[2:] == [64] * 6
    assert np.isfinite(scores["rmse"]).all()
    # different seeds train different networks: different scores on the same fold
    assert (scores.groupby("fold")["rmse"].nunique() == 2).all()
    assert unet.get_params()["seed"] == 0 and not hasattr(unet, "params_")  # untouched


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"blocks": 1}, "blocks=1 leaves nothing to train on"),
        ({"blocks": 20}, r"blocks=20 per axis .* at most 10"),
        ({"blocks": np.zeros((3, 3))}, r"shape \(3, 3\); expected the cube's grid \(12, 10\)"),
        ({"blocks": np.zeros((12, 10))}, "name 1 fold"),
        ({"seeds": []}, "at least one seed"),
    ],
)
def test_bad_arguments_are_refused(kwargs, pattern):
    cube, target = _cube()
    with pytest.raises(InputError, match=pattern):
        cross_validate(Ridge(), cube, target, **kwargs)


def test_a_target_off_the_grid_or_a_model_without_params_is_refused():
    cube, target = _cube()
    with pytest.raises(InputError, match="on the cube's grid"):
        cross_validate(Ridge(), cube, target.isel(y=slice(0, 5)))
    with pytest.raises(InputError, match="get_params"):
        cross_validate(object(), cube, target)
