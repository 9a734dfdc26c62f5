"""Random forests saved as their training table and a JSON sidecar, refitted on loading.

References: the forest fitted here with scikit-learn; a refitted forest must predict the same
probabilities to the bit, and every tampered or foreign directory must be refused.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from xfusion.errors import InputError, ModelError
from xfusion.models.forest import RefittableForest, load_classifier, save_classifier
from xfusion.recipes import builtup


@pytest.fixture
def table():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=120), rng.normal(size=120)
    return pd.DataFrame(
        {"x": np.arange(120.0), "y": -np.arange(120.0), "s2:B4": a, "viirs:avg_rad": b,
         "label": (a + 0.5 * b > 0).astype(float)}
    )  # fmt: skip


@pytest.fixture
def forest(table):
    model = RandomForestClassifier(n_estimators=7, max_depth=4, random_state=5, n_jobs=1)
    return model.fit(table[["s2:B4", "viirs:avg_rad"]], table["label"].astype(int))


def test_round_trip_refits_the_same_forest(forest, table, tmp_path):
    path = save_classifier(forest, table, tmp_path / "m", extra={"metrics": {"f1": 0.5}})
    assert sorted(p.name for p in path.iterdir()) == ["classifier.json", "training_points.parquet"]
    meta = json.loads((path / "classifier.json").read_text())
    digest = hashlib.sha256((path / "training_points.parquet").read_bytes()).hexdigest()
    assert meta["table_sha256"] == digest
    assert meta["bands"] == ["s2:B4", "viirs:avg_rad"] and meta["classes"] == [0, 1]
    assert meta["params"]["n_estimators"] == 7 and meta["metrics"] == {"f1": 0.5}
    again = load_classifier(path)
    X = table[["s2:B4", "viirs:avg_rad"]]
    np.testing.assert_array_equal(again.predict_proba(X), forest.predict_proba(X))
    assert list(again.feature_names_in_) == ["s2:B4", "viirs:avg_rad"]
    pd.testing.assert_frame_equal(pd.read_parquet(path / "training_points.parquet"), table)


def test_refittable_forest_saves_like_a_model(forest, table, tmp_path):
    path = RefittableForest(forest, table).save(tmp_path / "forest")
    X = table[["s2:B4", "viirs:avg_rad"]]
    np.testing.assert_array_equal(RefittableForest.load(path).predict(X), forest.predict(X))


def test_the_recipe_names_are_the_library_functions():
    assert builtup.save_classifier is save_classifier
    assert builtup.load_classifier is load_classifier


def test_what_cannot_be_refitted_is_refused(forest, table, tmp_path):
    X, y = table[["s2:B4"]], table["label"].astype(int)
    with pytest.raises(ModelError, match="RandomForestClassifier"):
        save_classifier(ExtraTreesClassifier(random_state=0).fit(X, y), table, tmp_path / "a")
    unnamed = RandomForestClassifier(random_state=0).fit(X.to_numpy(), y)
    with pytest.raises(ModelError, match="named feature columns"):
        save_classifier(unnamed, table, tmp_path / "b")
    with pytest.raises(InputError, match=r"lacks columns \['viirs:avg_rad'\]"):
        save_classifier(forest, table.drop(columns="viirs:avg_rad"), tmp_path / "c")
    unseeded = RandomForestClassifier(n_estimators=3).fit(X, y)
    with pytest.raises(ModelError, match="integer random_state"):
        save_classifier(unseeded, table, tmp_path / "d")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda meta: {**meta, "class": "os.system"}, "expected format 1 of"),
        (lambda meta: {**meta, "format_version": 2}, "holds format 2"),
        (lambda meta: {**meta, "params": {**meta["params"], "evil": 1}}, r"unknown .*\['evil'\]"),
    ],
)
def test_a_changed_sidecar_is_refused(forest, table, tmp_path, edit, match):
    path = save_classifier(forest, table, tmp_path / "m")
    sidecar = path / "classifier.json"
    sidecar.write_text(json.dumps(edit(json.loads(sidecar.read_text()))))
    with pytest.raises(ModelError, match=match):
        load_classifier(path)


def test_a_broken_directory_is_refused(forest, table, tmp_path):
    path = save_classifier(forest, table, tmp_path / "m")
    (path / "classifier.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_classifier(path)
    with pytest.raises(ModelError, match="not a saved classifier"):
        load_classifier(tmp_path / "empty")
