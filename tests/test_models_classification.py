"""xfusion.models.classification: the forest, its held-out and map scores, against scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from tests.conftest import synthetic_cube
from xfusion.errors import EmptySelectionError
from xfusion.models import classification
from xfusion.testing import raise_if_dask_computes


def _tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def table(n: int) -> pd.DataFrame:
        lights = rng.normal(0.0, 1.0, n)
        label = (lights + rng.normal(0.0, 0.7, n) > 0.5).astype("float32")
        red = rng.normal(0.1, 0.02, n) + 0.05 * label
        return pd.DataFrame({"s2:B4": red, "viirs:avg_rad": lights, "label": label})

    return table(300), table(400)


def test_forest_and_heldout_scores_equal_scikit_learns():
    train, test = _tables()
    bands = ["s2:B4", "viirs:avg_rad"]
    forest = classification.fit_forest(train, bands, n_estimators=15, max_depth=4, seed=2)
    reference = RandomForestClassifier(n_estimators=15, max_depth=4, random_state=2, n_jobs=1)
    reference.fit(train[bands], train["label"].astype(int))
    predicted = forest.predict(test[bands])
    np.testing.assert_array_equal(predicted, reference.predict(test[bands]))
    scores = classification.heldout_scores(
        forest, train, test, index_band="viirs:avg_rad", threshold=0.4
    )
    truth, lights = test["label"].astype(int), (test["viirs:avg_rad"] >= 0.4).astype(int)
    assert scores["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert scores["f1"] == pytest.approx(f1_score(truth, predicted))
    assert scores["precision"] == pytest.approx(precision_score(truth, predicted))
    assert scores["recall"] == pytest.approx(recall_score(truth, predicted))
    assert scores["baseline_f1"] == pytest.approx(f1_score(truth, lights))
    assert (scores["n_train"], scores["n_test"], scores["baseline_threshold"]) == (300, 400, 0.4)
    assert scores["class_balance_test"]["counts"] == test["label"].value_counts().to_dict()


def test_baseline_scores_score_every_baseline_on_the_same_points():
    train, test = _tables(1)
    forest = classification.fit_forest(train, ["s2:B4", "viirs:avg_rad"], n_estimators=10)
    model, baselines = classification.baseline_scores(
        forest, train, test, index_band="viirs:avg_rad", threshold=0.4, seed=0
    )
    assert sorted(baselines) == ["hgb", "night_lights", "otsu"]
    truth = test["label"].astype(int)
    assert model["f1"] == pytest.approx(
        f1_score(truth, forest.predict(test[forest.feature_names_in_]))
    )
    lights = (test["viirs:avg_rad"] >= 0.4).astype(int)
    assert baselines["night_lights"]["f1"] == pytest.approx(f1_score(truth, lights))
    assert 0.5 < baselines["otsu"]["accuracy"] <= 1.0


def test_map_scores_per_time_step_skip_no_data_pixels():
    rng = np.random.default_rng(0)
    maps = (rng.random((3, 8, 10)) > 0.6).astype("float32")
    truth = maps.copy()
    truth[1, :2] = 1 - truth[1, :2]  # two wrong rows in the second map
    maps[2, 0, :] = np.nan  # a row without data in the third
    coords = {"time": np.arange(3)}
    cube = xr.DataArray(maps, dims=("time", "y", "x"), coords=coords).chunk({"y": 4})
    reference = xr.DataArray(truth, dims=("time", "y", "x"), coords=coords).chunk({"y": 4})
    scores = classification.map_scores(cube, reference)
    np.testing.assert_allclose(scores["share"], np.nanmean(maps, axis=(1, 2)), rtol=1e-6)
    valid = np.isfinite(maps)
    for step in range(3):
        pred, true = maps[step][valid[step]].astype(int), truth[step][valid[step]].astype(int)
        assert scores["accuracy"][step] == pytest.approx(accuracy_score(true, pred))
        assert scores["f1"][step] == pytest.approx(f1_score(true, pred))
    assert scores["accuracy"][0] == 1.0 and scores["accuracy"][1] == pytest.approx(0.75)
    assert set(classification.map_scores(cube)) == {"share"}


def test_a_training_sample_of_one_class_is_refused():
    train, _ = _tables()
    classification.check_two_classes(train)
    with pytest.raises(EmptySelectionError, match=r"holds labels \[0.0\]; both built-up \(1\)"):
        classification.check_two_classes(train.assign(label=0.0))


def test_class_map_is_the_forests_prediction_per_pixel_lazily_and_change_is_last_minus_first():
    train, _ = _tables()
    bands = ["s2:B4", "viirs:avg_rad"]
    forest = classification.fit_forest(train, bands, n_estimators=10, seed=0)
    rng = np.random.default_rng(5)
    red, lights = rng.normal(0.12, 0.03, (3, 4, 4)), rng.normal(0.0, 1.5, (3, 4, 4))
    values = np.stack([red, lights], axis=1).astype("float32")  # (time, band, y, x)
    cube = synthetic_cube(
        values,
        bands,
        times=["2015-07-01", "2016-07-01", "2017-07-01"],
        coords={"source": ("band", ["s2", "viirs"])},
        chunks={"y": 2, "x": 2},
    )
    with raise_if_dask_computes():
        maps = classification.class_map(cube, forest, "builtup")
        change = classification.change_map(maps, first=0)
    assert maps.name == "builtup" and maps.band.values.tolist() == ["builtup"]
    assert "source" not in maps.coords and maps.chunks is not None
    rows = values.transpose(0, 2, 3, 1).reshape(-1, 2)
    expected = forest.predict(pd.DataFrame(rows, columns=bands)).reshape(3, 4, 4)
    np.testing.assert_array_equal(maps.isel(band=0).values, expected)
    np.testing.assert_array_equal(change.isel(band=0).values, expected[2] - expected[0])
    assert change.name == "change" and change.band.values.tolist() == ["change"]


def test_yearly_metrics_name_each_year_and_plot_yearly_maps_draws_one_png_each(tmp_path):
    scores = {"share": [0.25, 0.5], "accuracy": [1.0, 0.75], "f1": [1.0, 0.5]}
    metrics = classification.yearly_metrics(scores, [2015, 2019], "builtup")
    assert metrics == {
        "truth_accuracy_2015": 1.0,
        "truth_f1_2015": 1.0,
        "truth_accuracy_2019": 0.75,
        "truth_f1_2019": 0.5,
        "builtup_fraction_2015": 0.25,
        "builtup_fraction_2019": 0.5,
    }
    assert classification.yearly_metrics({"share": [0.1]}, [2015], "x") == {"x_fraction_2015": 0.1}
    maps = synthetic_cube(np.array([[[[0.0, 1.0]]], [[[1.0, 1.0]]]]), ["builtup"])
    change = classification.change_map(maps)
    classes = {0: ("not built-up", "#d9d9d9"), 1: ("built-up", "#d7301f")}
    paths = classification.plot_yearly_maps(
        maps, change, [2015, 2019], tmp_path, name="builtup", classes=classes
    )
    assert list(paths) == ["builtup_2015", "builtup_2019", "change"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert paths["change"] == tmp_path / "change.png"
