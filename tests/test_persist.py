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
    model = UNetRegressor(**SMALL, epochs=2, optimizer="adam", learning_rate=0.01)
    return model.fit(X, y, bands=["red", "nir"])


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
    assert meta["bands"] == list(fitted.bands_) == ["red", "nir"]
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
    with pytest.raises(ModelError, match=r"model\.json is corrupt or was modified"):
        load_model(saved)
    reseal(saved)  # the checks behind the checksum still hold for a consistent folder
    with pytest.raises(ModelError, match=message):
        load_model(saved)


def reseal(path):
    """Rewrite ``manifest.json`` for the folder's current files (a deliberate re-signing)."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["sha256"] = {
        name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in manifest["sha256"]
    }
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_unparsable_sidecar_raises(saved):
    (saved / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"model\.json is corrupt or was modified"):
        load_model(saved)
    reseal(saved)
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(saved)
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"manifest\.json is not valid JSON"):
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


# ----------------------------------------------------------------------------------------------
# Checkpoint faults: flipped bytes, missing files, future versions, schema violations
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ridge():
    from xfusion.models.ridge import Ridge

    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 3))
    return Ridge(alpha=0.1).fit(X, X @ np.array([1.0, -2.0, 0.5]) + 0.3), X


@pytest.fixture(params=["msgpack", "netcdf"])
def saved_any(request, fitted, ridge, tmp_path):
    """A U-Net saved as msgpack or a Ridge saved as NetCDF."""
    if request.param == "msgpack":
        return fitted.save(tmp_path / "unet"), "weights.msgpack"
    return ridge[0].save(tmp_path / "ridge"), "weights.nc"


@pytest.mark.parametrize("where", [0, 1, 4, 9, 0.5, -1])
def test_one_flipped_byte_anywhere_in_the_weights_raises(saved_any, where):
    # offsets 0-9 are the msgpack map header / the HDF5 signature and superblock
    path, name = saved_any
    weights = path / name
    data = bytearray(weights.read_bytes())
    offset = int(where * len(data)) if isinstance(where, float) else where % len(data)
    data[offset] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt or was modified") as err:
        load_model(path)
    assert str(weights) in str(err.value)


def test_missing_sidecar_raises_naming_it(saved_any):
    path, _ = saved_any
    (path / "model.json").unlink()
    with pytest.raises(ModelError, match=r"no saved model at .*: model\.json not found"):
        load_model(path)


def test_missing_weights_file_raises_naming_it(saved_any):
    path, name = saved_any
    (path / name).unlink()
    with pytest.raises(ModelError, match="cannot be read") as err:
        load_model(path)
    assert str(path / name) in str(err.value)


def test_sidecar_from_a_future_format_version_raises(saved_any):
    path, _ = saved_any
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] += 1
    manifest["future_entry"] = {"new": True}  # a newer writer may add entries: named as a version
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ModelError, match=r"format version 4 by a newer xfusion .* reads versions \[2, 3\]"
    ):
        load_model(path)
    manifest["format_version"] = 0
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"format version 0 by an older xfusion"):
        load_model(path)


def _delete(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.update({key: value})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_delete("class"), r"lacks 'class' \(str\)"),
        (_delete("params"), r"lacks 'params' \(dict\)"),
        (_delete("weights_format"), r"lacks 'weights_format' \(str\)"),
        (_set("format_version", "1"), r"'format_version' is str '1'; expected int"),
        (_set("format_version", True), r"'format_version' is bool True; expected int"),
        (_set("params", [1, 2]), r"'params' is list \[1, 2\]; expected dict"),
        (_set("bands", ["B04", 8]), r"'bands' must be a list of strings"),
        (_set("versions", {"numpy": 2}), r"'versions' must map package names to strings"),
        (_set("weights_sha256", "ab" * 31), r"'weights_sha256' 'abab.*' is not 64 lowercase hex"),
        (_set("default_halo", 3.5), r"'default_halo' is float 3.5; expected int"),
        (_set("loader", "pickle"), r"unknown entries \['loader'\]"),
    ],
)
def test_sidecar_failing_the_schema_raises(saved, edit, message):
    sidecar = saved / "model.json"
    meta = json.loads(sidecar.read_text())
    edit(meta)
    sidecar.write_text(json.dumps(meta))
    reseal(saved)
    with pytest.raises(ModelError, match=message) as err:
        load_model(saved)
    assert str(sidecar) in str(err.value)


def test_validate_sidecar_directly(saved):
    from xfusion.models.persist import validate_sidecar

    meta = json.loads((saved / "model.json").read_text())
    validate_sidecar(meta)  # a written sidecar passes
    with pytest.raises(ModelError, match="must hold a JSON object; got list"):
        validate_sidecar([meta], source="x.json")
    bad = {**meta, "extra_key": 1, "history": None}
    del bad["weights"]
    with pytest.raises(ModelError) as err:
        validate_sidecar(bad, source="x.json")
    text = str(err.value)  # every problem is listed, not only the first
    assert text.startswith("x.json fails the sidecar schema")
    assert "lacks 'weights' (str)" in text
    assert "'history' is NoneType None; expected dict" in text
    assert "unknown entries ['extra_key']" in text


class DecoderCalled(AssertionError):
    pass


@pytest.fixture
def decoders(monkeypatch):
    """Replace the third-party weight decoders (Flax msgpack, xarray NetCDF) by recorders."""
    import flax.serialization
    import xarray

    calls = []
    restore, open_dataset = flax.serialization.msgpack_restore, xarray.open_dataset

    def fake_restore(data):
        calls.append("msgpack")
        return restore(data)

    def fake_open(*args, **kwargs):
        calls.append("netcdf")
        return open_dataset(*args, **kwargs)

    monkeypatch.setattr(flax.serialization, "msgpack_restore", fake_restore)
    monkeypatch.setattr(xarray, "open_dataset", fake_open)
    return calls


def test_checksum_and_schema_are_checked_before_any_weight_is_deserialised(
    saved_any, fitted, ridge, tmp_path, decoders
):
    path, name = saved_any
    fmt = "msgpack" if name.endswith("msgpack") else "netcdf"
    load_model(path)
    assert decoders == [fmt]  # the recorders see a normal load: the checks below can fail
    decoders.clear()
    # valid weights of another model of the same kind: decodable, but not the recorded bytes
    if fmt == "msgpack":
        other_path = write_model(
            tmp_path / "other",
            fitted,
            state=jax.tree.map(lambda a: a + 1, fitted.params_),
            extra={
                "config": fitted.config_,
                "tile_multiple": fitted.tile_multiple_,
                "default_halo": fitted.default_halo_,
            },
        )
    else:
        other_path = type(ridge[0])(alpha=5.0).fit(*_ridge_rows()).save(tmp_path / "other")
    (path / name).write_bytes((other_path / name).read_bytes())
    assert load_model(other_path) is not None and decoders == [fmt]
    decoders.clear()
    with pytest.raises(ModelError, match="corrupt or was modified"):
        load_model(path)
    assert decoders == []  # refused before the decoder saw a byte
    # a sidecar failing the schema is refused before the weights are even read
    (path / name).write_bytes((other_path / name).read_bytes())
    meta = json.loads((other_path / "model.json").read_text())
    meta["bands"] = "B04"
    (other_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model\.json is corrupt or was modified"):
        load_model(other_path)
    reseal(other_path)
    with pytest.raises(ModelError, match="fails the sidecar schema"):
        load_model(other_path)
    assert decoders == []


def _ridge_rows():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 3))
    return X, X[:, 0] - X[:, 2]


def test_write_model_refuses_entries_outside_the_schema(fitted, tmp_path):
    with pytest.raises(ModelError, match=r"unknown entries \['notes'\]"):
        write_model(tmp_path / "m", fitted, state=fitted.params_, extra={"notes": "x"})
    with pytest.raises(ModelError, match=r"'tile_multiple' is str '4'; expected int"):
        write_model(tmp_path / "m", fitted, state=fitted.params_, extra={"tile_multiple": "4"})
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_sidecar_stores_the_normalisation_once_and_a_version_2_folder_still_loads(
    fitted, saved, data
):
    meta = json.loads((saved / "model.json").read_text())
    norm = meta["normalisation"]
    assert set(norm) == {"input_mean", "input_std", "target_offset", "target_scale"}
    assert not set(norm) & set(meta["config"])  # not repeated in the network config
    assert norm["input_std"] == fitted.config_["input_std"]
    # a version 2 writer repeated the normalisation in "config": such a folder still loads
    meta["format_version"] = 2
    meta["config"] = {**meta["config"], **norm}
    raw = json.dumps(meta).encode()
    (saved / "model.json").write_bytes(raw)
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["format_version"] = 2
    manifest["sha256"]["model.json"] = hashlib.sha256(raw).hexdigest()
    (saved / "manifest.json").write_text(json.dumps(manifest))
    x = data[0][:2]
    np.testing.assert_array_equal(load_model(saved).predict(x), fitted.predict(x))
