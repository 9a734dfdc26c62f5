"""Saving and loading models without pickle: round trips, checks, atomic writes."""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np
import pytest

from xfusion.errors import ModelError
from xfusion.models import UNetRegressor, UNetSegmenter, load_model
from xfusion.models.persist import read_model, write_model
from xfusion.models.unet import build_unet, unet_params

SMALL = {"widths": (4, 8), "center": 8, "batch_size": 8, "progress": False, "augment": False}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 2, 16, 16)).astype(np.float32)
    return X, (2 * X[:, :1] - X[:, 1:] + 3).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return UNetRegressor(**SMALL, epochs=2, optimizer="adam", learning_rate=0.01).fit(X, y)


@pytest.fixture
def saved(fitted, tmp_path):
    return fitted.save(tmp_path / "model")


def test_save_load_predict_is_identical(fitted, saved, data):
    X, _ = data
    loaded = load_model(saved)
    assert type(loaded) is UNetRegressor
    assert loaded.get_params() == fitted.get_params()
    for name in ("bands_", "output_bands_", "tile_multiple_", "default_halo_", "config_"):
        assert getattr(loaded, name) == getattr(fitted, name)
    assert loaded.history_ == fitted.history_
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    leaves = jax.tree.leaves
    assert all(
        np.array_equal(a, b)
        for a, b in zip(leaves(loaded.params_), leaves(fitted.params_), strict=True)
    )


def test_sidecar_describes_the_model(saved, fitted):
    meta = json.loads((saved / "model.json").read_text())
    assert meta["class"] == "xfusion.models.estimators.UNetRegressor"
    assert meta["bands"] == list(fitted.bands_)
    assert meta["normalisation"]["input_mean"] == fitted.config_["input_mean"]
    assert meta["training"]["n_samples"] == 8
    assert meta["metrics"]["loss"] == fitted.history_["loss"][-1]
    assert {"numpy", "jax", "flax"} <= set(meta["versions"])
    weights = (saved / meta["weights"]).read_bytes()
    assert meta["weights_sha256"] == hashlib.sha256(weights).hexdigest()


def test_segmenter_round_trip_keeps_classes(tmp_path, data):
    X, _ = data
    labels = np.where(X[:, :1] > 0.5, 2.0, np.where(X[:, :1] < -0.5, 5.0, 9.0))
    model = UNetSegmenter(**SMALL, epochs=1).fit(X, labels)
    loaded = load_model(model.save(tmp_path / "seg"))
    assert loaded.classes_ == (2.0, 5.0, 9.0)
    assert loaded.output_bands_ == ("proba_2", "proba_5", "proba_9")
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_netcdf_weights_round_trip(fitted, tmp_path, data):
    path = write_model(
        tmp_path / "nc",
        fitted,
        state=fitted.params_,
        fmt="netcdf",
        extra={
            "config": fitted.config_,
            "tile_multiple": fitted.tile_multiple_,
            "default_halo": fitted.default_halo_,
            "training": fitted.training_,
        },
    )
    assert (path / "weights.nc").is_file()
    _, state = read_model(path)
    flat_a = jax.tree_util.tree_flatten_with_path(state)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(fitted.params_)[0])
    assert len(flat_a) == len(flat_b)
    for key, value in flat_a:
        np.testing.assert_array_equal(value, flat_b[key])
    X, _ = data
    np.testing.assert_array_equal(load_model(path).predict(X), fitted.predict(X))


def test_corrupted_weights_raise(saved):
    weights = saved / "weights.msgpack"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt or was modified"):
        load_model(saved)


def test_missing_files_raise(saved, tmp_path):
    with pytest.raises(ModelError, match="no saved model"):
        load_model(tmp_path / "nowhere")
    (saved / "weights.msgpack").unlink()
    with pytest.raises(ModelError, match="cannot be read"):
        load_model(saved)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=99), "format version 99"),
        (lambda m: m.update({"class": "os.system"}), "names class 'os.system'"),
        (lambda m: m.pop("weights_sha256"), "weights_sha256"),
        (lambda m: m.update(bands="B04"), "bands"),
        (lambda m: m.update(weights="../elsewhere.msgpack"), "not a known layout"),
    ],
)
def test_tampered_sidecar_raises(saved, edit, message):
    sidecar = saved / "model.json"
    meta = json.loads(sidecar.read_text())
    edit(meta)
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=message):
        load_model(saved)


def test_unparsable_sidecar_raises(saved):
    (saved / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(saved)


def test_weights_of_another_architecture_raise(fitted, tmp_path):
    # consistent files (checksum included) whose weights belong to another network
    other = unet_params(build_unet({**fitted.config_["architecture"], "center": 16}))
    path = write_model(
        tmp_path / "other",
        fitted,
        state=other,
        extra={
            "config": fitted.config_,
            "tile_multiple": 4,
            "default_halo": 32,
        },
    )
    with pytest.raises(ModelError, match="shape"):
        load_model(path)


def test_saving_is_atomic_and_replaces_models_only(fitted, saved, tmp_path, data):
    X, _ = data
    before = fitted.predict(X)
    with pytest.raises(ModelError, match="cannot store"):
        write_model(saved, fitted, state=fitted.params_, extra={"bad": object()})
    np.testing.assert_array_equal(load_model(saved).predict(X), before)  # old model intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary leftovers
    fitted.save(saved)  # replacing a saved model is allowed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / "notes").mkdir()
    with pytest.raises(ModelError, match="not a saved model"):
        fitted.save(tmp_path / "notes")
    with pytest.raises(ModelError, match="not fitted"):
        UNetRegressor().save(tmp_path / "unfitted")


def test_netcdf_model_saves_while_a_distributed_client_is_active(tmp_path):
    from distributed import Client

    from xfusion.models.ridge import Ridge

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3
    model = Ridge(alpha=0.1).fit(X, y)
    with Client(processes=True, n_workers=1, threads_per_worker=1, dashboard_address=None):
        model.save(tmp_path / "ridge")
        loaded = load_model(tmp_path / "ridge")
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
