"""Which band is which: one rule for every model, a sidecar that cannot be edited, stratify.

* A model fitted from a DataFrame / cube / named patches keeps its band names: cubes are checked
  and reordered by name. A model fitted on bare arrays records none: ``predict`` refuses a cube
  until ``bands=[...]`` or ``set_bands`` names its inputs (the issue: a Ridge fitted on columns
  (nir, red) predicted a cube ordered (red, nir) without error, max error 1.3).
* Every file of a saved model is covered by ``manifest.json``: an edited sidecar is refused.
* ``sample(stratify=True)`` refuses a continuous label; ``stratify=k`` bins it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.bands import set_band_kinds
from xfusion.errors import BandError, InputError, ModelError, XFusionWarning
from xfusion.models import KernelRidge, Ridge, UNetRegressor, UNetSegmenter, load_model
from xfusion.models.persist import FORMAT_VERSION
from xfusion.models.predict import predict
from xfusion.preprocess.sample import MAX_STRATA, sample
from xfusion.testing import raise_if_dask_computes

TINY = {"widths": (4,), "epochs": 1, "batch_size": 4, "augment": False, "progress": False}


@pytest.fixture(scope="module")
def rows():
    """Training rows with columns (nir, red) and the target 3·nir − red."""
    rng = np.random.default_rng(0)
    X = rng.random((300, 2))
    return X, 3 * X[:, 0] - X[:, 1]


def red_nir_cube(chunked: bool = True) -> xr.DataArray:
    """A cube ordered (red, nir): the opposite of the training columns."""
    rng = np.random.default_rng(1)
    values = rng.random((2, 12, 10)).astype("float32")
    return synthetic_cube(values, ["red", "nir"], chunks={"y": 6} if chunked else None)


def truth(cube: xr.DataArray) -> np.ndarray:
    return (3 * cube.sel(band="nir") - cube.sel(band="red")).values


# ----------------------------------------------------------------------------------------------
# 1. band order: bare-array fits need names, named fits are matched by name
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Ridge(alpha=1e-9),
        lambda: KernelRidge(alpha=1e-6, gamma=0.5, n_components=50, random_state=0),
        lambda: LinearRegression(),
    ],
    ids=["ridge", "kernel_ridge", "sklearn"],
)
def test_a_model_fitted_on_bare_arrays_refuses_a_cube_without_band_names(rows, make):
    X, y = rows
    model = make().fit(X, y)
    cube = red_nir_cube()
    with pytest.raises(BandError) as err:
        predict(cube, model)
    message = str(err.value)
    assert "unnamed arrays (2 inputs)" in message
    assert "['red', 'nir']" in message  # the cube's bands
    assert "bands=[...]" in message and "set_bands" in message  # how to fix it
    with raise_if_dask_computes():
        named = cube.xf.predict(model, bands=["nir", "red"])
    # the cube prediction is the model's own prediction on rows in its (nir, red) order ...
    rows_in_order = np.stack(
        [cube.sel(band="nir").values.ravel(), cube.sel(band="red").values.ravel()], axis=-1
    )
    own = np.asarray(model.predict(rows_in_order), dtype=np.float64).reshape(truth(cube).shape)
    np.testing.assert_allclose(named.values[0], own, atol=1e-5)
    # ... which is close to the truth (the swapped order was off by up to 1.3); Nyström is
    # approximate, so KernelRidge gets a looser bound
    tolerance = 1e-2 if isinstance(model, KernelRidge) else 1e-5
    np.testing.assert_allclose(named.values[0], truth(cube), atol=tolerance)


def test_the_issue_ridge_on_swapped_cube_is_correct_once_named(rows):
    X, y = rows
    model = Ridge(alpha=1e-9).fit(X, y).set_bands(["nir", "red"])
    cube = red_nir_cube()
    out = predict(cube, model)  # reordered by name: no silent swap
    assert float(np.abs(out.values[0] - truth(cube)).max()) < 1e-5
    # the same with a model fitted on a DataFrame (scikit-learn and xfusion alike)
    frame = pd.DataFrame(X, columns=["nir", "red"])
    for fitted in (LinearRegression().fit(frame, y), Ridge(alpha=1e-9).fit(frame, y)):
        np.testing.assert_allclose(predict(cube, fitted).values[0], truth(cube), atol=1e-5)


def test_set_bands_for_scikit_learn_and_its_checks(rows):
    X, y = rows
    model = xf.models.set_bands(LinearRegression().fit(X, y), ["nir", "red"])
    assert xf.models.model_bands(model) == ["nir", "red"]
    np.testing.assert_allclose(
        predict(red_nir_cube(False), model).values[0], truth(red_nir_cube(False)), atol=1e-5
    )
    with pytest.raises(BandError, match=r"names 1 band \['nir'\] but the model has 2 inputs"):
        xf.models.set_bands(LinearRegression().fit(X, y), ["nir"])
    with pytest.raises(BandError, match=r"\['nir'\] repeat"):
        Ridge().fit(X, y).set_bands(["nir", "nir"])
    with pytest.raises(BandError, match="list of band names"):
        Ridge().fit(X, y).set_bands("nir")
    with pytest.raises(ModelError, match="not fitted"):
        Ridge().set_bands(["nir", "red"])
    # the names may come as a tuple, an array or a DataFrame's columns
    frame = pd.DataFrame(X, columns=["nir", "red"])
    for names in (("nir", "red"), np.array(["nir", "red"]), frame.columns):
        assert Ridge().fit(X, y).set_bands(names).bands_ == ["nir", "red"]


def test_bands_argument_is_checked_against_cube_and_model(rows):
    X, y = rows
    frame = pd.DataFrame(X, columns=["nir", "red"])
    model = Ridge(alpha=1e-9).fit(frame, y)
    cube = red_nir_cube(False)
    with pytest.raises(BandError, match=r"bands=\['red', 'nir'\] are not the model's training"):
        predict(cube, model, bands=["red", "nir"])  # would swap the inputs
    with pytest.raises(
        BandError, match=r"^bands names band 'swir' not in cube; bands are \['red', 'nir'\]"
    ):
        predict(cube, Ridge().fit(X, y), bands=["nir", "swir"])
    # a model fitted on (nir, red) applied to a cube whose bands are named otherwise
    fused = cube.assign_coords(band=["s2:B04", "s2:B08"])
    with pytest.raises(BandError) as err:
        predict(fused, model)
    assert "['s2:B04', 's2:B08']" in str(err.value) and "['nir', 'red']" in str(err.value)
    assert "missing ['nir', 'red']" in str(err.value)
    mapped = predict(fused, model, bands={"nir": "s2:B08", "red": "s2:B04"})
    np.testing.assert_allclose(mapped.values[0], truth(cube), atol=1e-5)
    with pytest.raises(BandError, match=r"not mapped: \['red'\]"):
        predict(fused, model, bands={"nir": "s2:B08"})


def test_unet_fitted_on_numpy_records_no_names_and_is_told_them(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 2, 8, 8)).astype("float32")
    model = UNetRegressor(**TINY).fit(X, X[:, :1] * 2)
    assert model.bands_ is None
    cube = xr.DataArray(X[0], dims=("band", "y", "x"), coords={"band": ["B04", "B08"]})
    with pytest.raises(BandError, match=r"unnamed arrays \(2 inputs\).*model\.set_bands"):
        predict(cube, model)
    out = predict(cube, model, bands=["B04", "B08"])
    # bands= picks the cube bands by name, whatever the cube's order
    xr.testing.assert_identical(predict(cube.isel(band=[1, 0]), model, bands=["B04", "B08"]), out)
    wrong = predict(cube, model, bands=["B08", "B04"])  # another feed gives another answer
    assert float(np.abs(wrong - out).max()) > 0.01
    # the names survive a save and a load; set_bands on a loaded model is saved again
    loaded = load_model(model.save(tmp_path / "unnamed"))
    assert loaded.bands_ is None and loaded.n_features_in_ == 2
    loaded.set_bands(["B04", "B08"])
    again = load_model(loaded.save(tmp_path / "named"))
    assert again.bands_ == ("B04", "B08")
    swapped = predict(cube.isel(band=[1, 0]), again)  # reordered by name
    np.testing.assert_allclose(swapped.values, out.values, atol=1e-6)


def test_unet_segmenter_and_ridge_keep_set_bands_through_save(tmp_path, rows):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(4, 1, 8, 8)).astype("float32")
    seg = UNetSegmenter(**TINY).fit(X, X > 0).set_bands(["vv"])
    assert load_model(seg.save(tmp_path / "seg")).bands_ == ("vv",)
    ridge = Ridge().fit(*rows).set_bands(["nir", "red"])
    assert load_model(ridge.save(tmp_path / "ridge")).bands_ == ["nir", "red"]


def test_unet_validation_bands_must_be_the_training_bands():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4, 2, 8, 8)).astype("float32")
    patches = xr.Dataset(
        {
            "inputs": (("sample", "band", "y", "x"), X),
            "target": (("sample", "target_band", "y", "x"), X[:, :1]),
        },
        coords={"band": ["B04", "B08"], "target_band": ["t"]},
    )
    swapped = patches.assign_coords(band=["B08", "B04"])
    with pytest.raises(BandError, match=r"validation bands \['B08', 'B04'\]"):
        UNetRegressor(**TINY).fit(patches, validation_data=swapped)


# ----------------------------------------------------------------------------------------------
# more of the same kind: codes fed as numbers, class labels that float32 cannot hold
# ----------------------------------------------------------------------------------------------


def test_flag_and_categorical_bands_fed_to_a_model_warn(rows):
    X, y = rows
    cube = red_nir_cube(False).assign_coords(band=["B04", "QA60"])
    model = Ridge().fit(X, y)
    with pytest.warns(XFusionWarning, match=r"QA60 \(flags\).*not continuous|QA60 \(flags\)"):
        predict(cube, model, bands=["B04", "QA60"])
    classes = set_band_kinds(
        cube.assign_coords(band=["B04", "landcover"]), {"landcover": "categorical"}
    )
    with pytest.warns(XFusionWarning, match=r"landcover \(categorical\)"):
        predict(classes, model, bands=["B04", "landcover"])


def test_class_labels_must_survive_the_float32_band(rows):
    X, _ = rows
    cube = red_nir_cube(False)
    big = RandomForestClassifier(n_estimators=2, random_state=0).fit(
        X, np.where(X[:, 0] > 0.5, 2**24 + 1, 3)
    )
    with pytest.raises(ModelError, match=r"\[16777217\].*not exactly representable"):
        predict(cube, big, bands=["nir", "red"])
    # labels sampled from a float cube (1.0) and integer labels (1) give the same band names
    labels = (X[:, 0] > 0.5).astype(float)
    as_float = RandomForestClassifier(n_estimators=2, random_state=0).fit(X, labels)
    as_int = RandomForestClassifier(n_estimators=2, random_state=0).fit(X, labels.astype(int))
    names = [
        predict(cube, m, proba=True, bands=["nir", "red"]).band.values.tolist()
        for m in (as_float, as_int)
    ]
    assert names == [["proba_0", "proba_1"]] * 2
    booleans = RandomForestClassifier(n_estimators=2, random_state=0).fit(X, labels > 0)
    out = predict(cube, booleans, bands=["nir", "red"])  # bool classes are 0/1
    assert set(np.unique(out.values)) <= {0.0, 1.0}


# ----------------------------------------------------------------------------------------------
# 2. the sidecar is covered by the manifest
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def named_unet():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(4, 2, 8, 8)).astype("float32")
    return UNetRegressor(**TINY).fit(X, X[:, :1], bands=["B04", "B08"])


def _edit_json(path, edit):
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(bands=m["bands"][::-1]),
        lambda m: m["normalisation"]["input_mean"].__setitem__(0, 5.0),
        lambda m: m["normalisation"]["input_std"].__setitem__(0, 9.0),
        lambda m: m["config"]["architecture"].update(activation="relu"),
        lambda m: m.update(default_halo=m["default_halo"] + 4),
        lambda m: m["metrics"].update(loss=0.0),
    ],
    ids=["bands", "normalisation", "normalisation-std", "architecture", "halo", "metrics"],
)
def test_any_edit_of_the_unet_sidecar_is_refused_naming_it(named_unet, tmp_path, edit):
    path = named_unet.save(tmp_path / "model")
    _edit_json(path / "model.json", edit)
    with pytest.raises(ModelError, match=r"model\.json is corrupt or was modified") as err:
        load_model(path)
    assert str(path / "model.json") in str(err.value)


def test_edits_of_a_ridge_sidecar_and_of_the_manifest_are_refused(rows, tmp_path):
    path = Ridge().fit(pd.DataFrame(rows[0], columns=["nir", "red"]), rows[1]).save(tmp_path / "r")
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.json", "weights.nc"]
    original = (path / "model.json").read_text()
    _edit_json(path / "model.json", lambda m: m.update(bands_=["red", "nir"]))
    with pytest.raises(ModelError, match=r"model\.json is corrupt or was modified"):
        load_model(path)
    (path / "model.json").write_text(original)
    assert load_model(path).bands_ == ["nir", "red"]
    _edit_json(path / "manifest.json", lambda m: m["sha256"].update({"notes.txt": "0" * 64}))
    with pytest.raises(ModelError, match=r"manifest\.json lists unknown files \['notes\.txt'\]"):
        load_model(path)
    _edit_json(path / "manifest.json", lambda m: m["sha256"].pop("notes.txt"))
    assert load_model(path).bands_ == ["nir", "red"]
    (path / "manifest.json").unlink()
    with pytest.raises(ModelError, match=r"manifest\.json not found.*cannot be verified"):
        load_model(path)


def test_a_version_1_folder_is_refused_naming_its_version(named_unet, tmp_path):
    path = named_unet.save(tmp_path / "old")
    (path / "manifest.json").unlink()
    _edit_json(path / "model.json", lambda m: m.update(format_version=1))
    with pytest.raises(ModelError, match=r"format version 1 by an older xfusion.*no manifest"):
        load_model(path)


def test_manifest_records_the_bytes_of_every_file(named_unet, tmp_path):
    path = named_unet.save(tmp_path / "m")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 3
    assert manifest["sha256"] == {
        name: hashlib.sha256((path / name).read_bytes()).hexdigest()
        for name in ("model.json", "weights.msgpack")
    }


# ----------------------------------------------------------------------------------------------
# 3. stratify: a continuous label is refused, or binned on request
# ----------------------------------------------------------------------------------------------


def _continuous_scene(size: int = 32):
    rng = np.random.default_rng(5)
    cube = xr.DataArray(
        rng.random((2, size, size)).astype("float32"),
        dims=("band", "y", "x"),
        coords={
            "band": ["B04", "B08"],
            "y": np.arange(size)[::-1] + 0.5,
            "x": np.arange(size) + 0.5,
        },
    )
    label = xr.DataArray(
        rng.random((size, size)), dims=("y", "x"), coords={"y": cube.y, "x": cube.x}
    )
    return cube, label


def test_stratify_true_refuses_a_continuous_label():
    cube, label = _continuous_scene()
    with pytest.raises(InputError, match=rf"1024 distinct values.*at most {MAX_STRATA}"):
        sample(cube, label, 5, stratify=True)
    # the label as a band of the cube, through the accessor
    both = xr.concat([cube, label.expand_dims(band=["sif"])], dim="band")
    with pytest.raises(InputError, match="stratify=<number of quantile bins>"):
        both.xf.sample("sif", 5, stratify=True)


def test_stratify_with_bins_draws_n_points_per_quantile_bin():
    cube, label = _continuous_scene()
    df = sample(cube.chunk({"y": 8}), label.chunk({"y": 8}), 7, stratify=4, seed=1)
    assert len(df) == 28
    assert df["stratum"].value_counts().sort_index().tolist() == [7, 7, 7, 7]
    edges = np.array(df.attrs["strata"])
    np.testing.assert_allclose(edges, np.quantile(label.values, [0, 0.25, 0.5, 0.75, 1]))
    # each point's stratum is the bin its label falls in
    assert (np.searchsorted(edges[1:-1], df["label"], side="right") == df["stratum"]).all()
    with pytest.raises(InputError, match="number of quantile bins >= 2; got 1"):
        sample(cube, label, 5, stratify=1)


def test_stratify_true_still_accepts_classes():
    cube, label = _continuous_scene()
    codes = (label * 200).astype("int64")  # 200 integer classes: an integer label
    df = sample(cube, codes, 1, stratify=True)
    assert len(df) == np.unique(codes.values).size
    as_float = set_band_kinds(
        xr.concat([cube, (label * 200).round().expand_dims(band=["crop"])], dim="band"),
        {"crop": "categorical"},
    )
    df = sample(as_float, "crop", 1, stratify=True)  # many float classes, marked categorical
    assert len(df) == np.unique((label * 200).round().values).size > MAX_STRATA


def test_numbered_dataframe_columns_are_not_band_names(rows):
    X, y = rows
    model = Ridge().fit(pd.DataFrame(X), y)  # columns 0, 1: positions, as scikit-learn sees them
    assert model.bands_ is None
    with pytest.raises(BandError, match="unnamed arrays"):
        predict(red_nir_cube(False), model)
