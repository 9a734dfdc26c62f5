"""xfusion.models.classification: the forest, its held-out and map scores, against scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from xfusion.errors import EmptySelectionError
from xfusion.models import classification


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
