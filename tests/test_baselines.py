"""Cheap baselines (xfusion.models.baselines): Otsu on an index, ridge vs gradient boosting,
the comparison flag at the margin, and blockwise prediction of every fitted baseline on a cube."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from skimage.filters import threshold_otsu

from xfusion import models
from xfusion.errors import BandError, InputError
from xfusion.models.baselines import (
    CoarseValue,
    ThresholdClassifier,
    compare,
    fit_baselines,
    score_baselines,
    score_predictions,
)


def _bimodal(seed=0, n_water=300, n_land=700):
    rng = np.random.default_rng(seed)
    water = rng.normal(0.45, 0.05, n_water)  # MNDWI of water
    land = rng.normal(-0.35, 0.08, n_land)  # MNDWI of land
    v = np.r_[water, land]
    labels = np.r_[np.ones(n_water), np.zeros(n_land)]
    noise = rng.normal(size=v.size)
    return pd.DataFrame({"mndwi": v, "noise": noise}), labels


def test_otsu_threshold_lies_in_the_gap_of_a_bimodal_index():
    X, y = _bimodal()
    model = ThresholdClassifier("mndwi").fit(X, y)
    water_min = X.mndwi[y == 1].min()
    land_max = X.mndwi[y == 0].max()
    assert land_max < model.threshold_ < water_min
    # the cut is mid-gap, not skimage's bin centre (which can sit inside the lower mode)
    assert model.threshold_ == pytest.approx(0.5 * (land_max + water_min))
    assert abs(model.threshold_ - threshold_otsu(X.mndwi.to_numpy())) < (
        X.mndwi.max() - X.mndwi.min()
    ) / 256 + (water_min - land_max)
    assert model.above_ is True
    np.testing.assert_array_equal(model.predict(X), y.astype(int))


def test_otsu_learns_the_direction_from_the_labels():
    # SAR backscatter: water is dark, so class 1 lies below the threshold
    X, y = _bimodal(seed=1)
    X = X.assign(vv=-20 * X.mndwi)
    model = ThresholdClassifier("vv").fit(X, y)
    assert model.above_ is False
    assert score_predictions(model.predict(X), y, task="segmentation")["iou"] == 1.0
    # a given direction is kept, even against the labels
    forced = ThresholdClassifier("vv", above=True).fit(X, y)
    assert forced.above_ is True
    assert score_predictions(forced.predict(X), y, task="segmentation")["iou"] == 0.0


def test_hgb_beats_ridge_on_a_nonlinear_target():
    rng = np.random.default_rng(0)
    n = 3000
    X = pd.DataFrame({"a": rng.uniform(-2, 2, n), "b": rng.uniform(-2, 2, n)})
    y = np.sin(2 * X.a) * X.b**2 + 0.05 * rng.normal(size=n)
    train, test = slice(0, 2000), slice(2000, None)
    fitted = fit_baselines("regression", X[train], y[train], seed=0)
    scores = score_baselines(fitted, X[test].reset_index(drop=True), y[test], task="regression")
    assert scores["hgb"]["r2"] > 0.9
    assert scores["ridge"]["r2"] < 0.1
    assert scores["constant"]["r2"] == pytest.approx(0.0, abs=0.01)
    entry = compare(scores["ridge"], scores, metric="rmse")
    assert entry["baseline"] == "hgb" and entry["beats_baseline"] is False


def test_ridge_baseline_recovers_a_linear_target_in_original_units():
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"red": rng.uniform(0, 0.3, 500), "nir": rng.uniform(0.1, 0.6, 500)})
    y = 3.0 * X.nir - 2.0 * X.red + 0.5
    ridge = fit_baselines("regression", X, y, alpha=1e-8)["ridge"]
    new = pd.DataFrame({"red": [0.1, 0.2], "nir": [0.5, 0.3]})
    np.testing.assert_allclose(ridge.predict(new), [1.8, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("model_value", "beats"), [(0.90, True), (0.9000001, False), (0.5, True), (0.95, False)]
)
def test_compare_rmse_flag_flips_exactly_at_ten_percent(model_value, beats):
    base = {"ridge": {"rmse": 1.0}, "hgb": {"rmse": 1.25}, "coarse": {"rmse": np.nan}}
    entry = compare({"rmse": model_value}, base, metric="rmse")
    assert entry["baseline"] == "ridge"
    assert entry["baseline_rmse"] == 1.0
    assert entry["model_rmse"] == model_value
    assert entry["beats_baseline"] is beats
    assert entry["margin"] == 0.10 and entry["margin_kind"] == "relative"
    assert entry["baselines"] == {"ridge": 1.0, "hgb": 1.25}


@pytest.mark.parametrize(("model_iou", "beats"), [(0.75, True), (0.7499, False), (0.9, True)])
def test_compare_iou_flag_flips_exactly_at_five_points(model_iou, beats):
    base = {"otsu": {"iou": 0.70}, "hgb": {"iou": 0.62}}
    entry = compare(model_iou, base, metric="iou")
    assert entry["baseline"] == "otsu" and entry["baseline_iou"] == 0.70
    assert entry["beats_baseline"] is beats
    assert entry["margin"] == 0.05 and entry["margin_kind"] == "absolute"


def test_compare_custom_margin_and_direction():
    base = {"a": {"score": 10.0}, "b": {"score": 12.0}}
    assert (
        compare(11.0, base, metric="score", higher_is_better=False, margin=0.1)["beats_baseline"]
        is False
    )
    entry = compare(13.0, base, metric="score", higher_is_better=True, margin=1.0)
    assert entry["baseline"] == "b" and entry["beats_baseline"] is True
    assert compare(0.95, {"r": {"rmse": 1.0}}, metric="rmse", margin=0.0)["beats_baseline"]


def test_compare_bad_input_is_named():
    with pytest.raises(InputError, match="higher_is_better"):
        compare(1.0, {"a": {"kappa": 0.5}}, metric="kappa")
    with pytest.raises(InputError, match="no baseline has a finite 'rmse'"):
        compare(1.0, {"a": {"rmse": np.nan}}, metric="rmse")
    with pytest.raises(InputError, match="margin must be >= 0"):
        compare(1.0, {"a": {"rmse": 1.0}}, metric="rmse", margin=-0.1)
    with pytest.raises(InputError, match="model scores have no 'iou'"):
        compare({"rmse": 1.0}, {"a": {"iou": 0.5}}, metric="iou")


def test_fit_baselines_bad_input_is_named():
    X, y = _bimodal()
    with pytest.raises(InputError, match="task must be one of"):
        fit_baselines("clustering", X, y)
    with pytest.raises(
        BandError, match=r"^index_band names band 'ndwi' not in X \(its columns\); bands are \["
    ):
        fit_baselines("segmentation", X, y, index_band="ndwi")
    with pytest.raises(InputError, match="DataFrame"):
        fit_baselines("regression", X.to_numpy(), y)
    with pytest.raises(InputError, match="999 values for 1000 rows"):
        fit_baselines("regression", X, y[:-1])
    with pytest.raises(InputError, match="single class"):
        fit_baselines("segmentation", X, np.zeros(len(X)))
    with pytest.raises(InputError, match="labels must be 0 and 1"):
        ThresholdClassifier("mndwi").fit(X, np.where(y == 1, 2, 0))


def test_nan_targets_are_left_out_and_coarse_value_passes_through():
    rng = np.random.default_rng(2)
    X = pd.DataFrame({"ndvi": rng.uniform(0, 1, 200), "sif_coarse": np.repeat([0.2, 0.8], 100)})
    y = X.sif_coarse + 0.1 * X.ndvi
    y[::7] = np.nan
    fitted = fit_baselines("regression", X, y, coarse_band="sif_coarse")
    assert set(fitted) == {"ridge", "hgb", "constant", "coarse"}
    np.testing.assert_allclose(fitted["constant"].predict(X[:1]), np.nanmean(y))
    scores = score_baselines(fitted, X, y, task="regression")
    assert scores["coarse"]["n"] == int(np.isfinite(y).sum())
    # the coarse value misses exactly 0.1 * ndvi
    err = 0.1 * X.ndvi[np.isfinite(y)]
    assert scores["coarse"]["rmse"] == pytest.approx(float(np.sqrt(np.mean(err**2))))
    assert isinstance(fitted["coarse"], CoarseValue)


def test_segmentation_baselines_predict_a_cube_blockwise():
    """Fitted on a table of named bands, each baseline predicts a (chunked) cube lazily."""
    rng = np.random.default_rng(3)
    ny = nx = 24
    water = np.zeros((ny, nx), bool)
    water[:, :10] = True
    mndwi = np.where(water, 0.5, -0.3) + rng.normal(0, 0.05, (ny, nx))
    nir = np.where(water, 0.02, 0.3) + rng.normal(0, 0.02, (ny, nx))
    cube = xr.DataArray(
        np.stack([mndwi, nir]).astype("float32"),
        dims=("band", "y", "x"),
        coords={"band": ["mndwi", "nir"], "y": np.arange(ny), "x": np.arange(nx)},
    )
    table = pd.DataFrame({"mndwi": mndwi.ravel(), "nir": nir.ravel()})
    fitted = fit_baselines("segmentation", table, water.ravel().astype(int), index_band="mndwi")
    lazy = cube.chunk({"y": 12, "x": 12})
    for name, model in fitted.items():
        assert list(models.model_bands(model)) == ["mndwi", "nir"], name
        out = lazy.xf.predict(model)
        assert out.chunks is not None, name
        assert list(out.band.values) == ["class"]
        np.testing.assert_array_equal(out.sel(band="class").values, water.astype("float32"))


def test_regression_baselines_predict_a_cube_like_the_table():
    rng = np.random.default_rng(4)
    cube = xr.DataArray(
        rng.uniform(0, 1, (2, 16, 16)).astype("float32"),
        dims=("band", "y", "x"),
        coords={"band": ["red", "nir"], "y": np.arange(16), "x": np.arange(16)},
    )
    table = cube.stack(px=("y", "x")).transpose("px", "band").to_pandas()
    table.columns = [str(c) for c in table.columns]
    table = table.reset_index(drop=True)
    y = 2 * table.nir - table.red
    for name, model in fit_baselines("regression", table, y, seed=0).items():
        out = cube.chunk({"y": 8}).xf.predict(model)
        np.testing.assert_allclose(
            out.values.reshape(-1), model.predict(table), rtol=1e-5, atol=1e-6, err_msg=name
        )
