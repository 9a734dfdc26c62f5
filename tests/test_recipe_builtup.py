"""The builtup recipe on a small synthetic scene: quality bar, outputs, config, cluster, EE path.

References are independent of the recipe's code path: the Sentinel-2 and VIIRS features are
recomputed with plain numpy from the synthetic scene's arrays, the labels from its GHSL classes,
the map scores with scikit-learn against the scene's truth, and the maps from the saved model
applied to the fused pixels with scikit-learn directly.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import rioxarray
import xarray as xr
from sklearn.metrics import accuracy_score, f1_score

from xfusion.datasets import synthetic_scene
from xfusion.errors import ConfigError, EmptySelectionError, ModelError
from xfusion.io.stac import open_stac
from xfusion.models import classification
from xfusion.recipes import builtup
from xfusion.testing import raise_if_dask_computes

# The default configuration is the small offline one (a 240x240 scene at 100 m: 24x24 km).
SMALL: dict = {}
SIZE = builtup.Config().size


def _run(config):
    with warnings.catch_warnings():
        # predict hands numpy rows to a forest fitted on a named table
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        return builtup.run(config)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    config = builtup.Config(out_dir=str(tmp_path_factory.mktemp("builtup")), **SMALL)
    return _run(config)


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene("builtup", seed=0, size=SIZE)


def _block_nanmean(a, f):
    *lead, ny, nx = a.shape
    blocks = a.reshape(*lead, ny // f, f, nx // f, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(blocks, axis=(-3, -1))


def _season_median(cube, year):
    times = pd.DatetimeIndex(cube.time.values)
    keep = (times >= f"{year}-07-01") & (times <= f"{year}-12-31")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(cube.values[keep], axis=0)


# --- quality bar -----------------------------------------------------------------------------


def test_quality_bar_on_held_out_points(result):
    m = result.metrics
    assert m["f1"] >= 0.8
    assert m["accuracy"] >= 0.9
    assert 0.0 < m["baseline_f1"] <= 1.0 and 0.0 < m["baseline_threshold"]
    assert m["n_test"] > 0 and m["n_train"] == builtup.Config().n_train
    counts = m["class_balance_train"]["counts"]
    assert counts[0] + counts[1] == m["n_train"] and counts[1] > 0


def test_maps_against_scene_truth(result, scene):
    maps = xr.open_zarr(result.files["zarr"], group="builtup")["builtup"].isel(band=0).values
    truth = scene["truth_builtup"].isel(band=0).values
    for i, year in enumerate(range(2015, 2020)):
        valid = np.isfinite(maps[i])
        assert valid.mean() > 0.95
        f1 = f1_score(truth[i][valid].astype(int), maps[i][valid].astype(int))
        acc = accuracy_score(truth[i][valid].astype(int), maps[i][valid].astype(int))
        assert f1 >= 0.8
        assert result.metrics[f"truth_f1_{year}"] == pytest.approx(f1)
        assert result.metrics[f"truth_accuracy_{year}"] == pytest.approx(acc)
    # the settlements grow: the mapped built-up share does too, and the change map says so
    fractions = [result.metrics[f"builtup_fraction_{y}"] for y in range(2015, 2020)]
    assert fractions[-1] > fractions[0]
    change = xr.open_zarr(result.files["zarr"], group="change")["change"].isel(band=0).values
    np.testing.assert_array_equal(change, maps[-1] - maps[0])


# --- the fused features against numpy --------------------------------------------------------


def test_fused_features_match_numpy(result, scene):
    fused = xr.open_zarr(result.files["zarr"], group="fused")["fused"]
    s2 = scene["s2"]
    qa = s2.sel(band="QA60").values.astype(np.int64)
    cloudy = (qa & (1 << 10 | 1 << 11)) != 0
    dn = s2.sel(band=["B2", "B3", "B4", "B8", "B11", "B12"]).values
    reflectance = xr.DataArray(
        np.where(cloudy[:, None], np.nan, dn / 10000.0),
        dims=("time", "band", "y", "x"),
        coords={"time": s2.time},
    )
    viirs = scene["viirs"].isel(band=0)
    lights = {y: _block_nanmean(_season_median(viirs, y), 2) for y in range(2015, 2020)}
    mean, std = np.nanmean(lights[2015]), np.nanstd(lights[2019])
    for i, year in enumerate(range(2015, 2020)):
        expected_s2 = _block_nanmean(_season_median(reflectance, year), 10)
        got = fused.isel(time=i).sel(
            band=[f"s2:{b}" for b in ("B2", "B3", "B4", "B8", "B11", "B12")]
        )
        np.testing.assert_allclose(got.values, expected_s2, rtol=1e-5, atol=1e-6)
        got_v = fused.isel(time=i).sel(band="viirs:avg_rad").values
        np.testing.assert_allclose(got_v, (lights[year] - mean) / std, rtol=1e-4, atol=1e-5)
    assert [str(b) for b in fused.band.values][-1] == "viirs:avg_rad"


def test_labels_are_smod_at_least_two(result, scene):
    labels = xr.open_zarr(result.files["zarr"], group="labels")["labels"].values
    smod = scene["ghsl"].isel(time=0, band=0).values
    np.testing.assert_array_equal(labels, (smod >= 2).astype(np.float32))


# --- baselines ---------------------------------------------------------------------------------


def test_baselines_are_recomputed_from_the_saved_outputs(result):
    from xfusion.models.baselines import fit_baselines

    block, m = result.metrics["baselines"], result.metrics
    saved = json.loads(result.files["metrics"].read_text())
    assert saved["baselines"] == block and saved["beats_baseline"] == m["beats_baseline"]
    assert block["metric"] == "f1" and set(block["scores"]) == {"night_lights", "otsu", "hgb"}
    assert block["model_f1"] == m["f1"]
    assert block["scores"]["night_lights"]["f1"] == m["baseline_f1"]
    # the same held-out points, drawn again from the saved cubes with the recipe's seeds
    fused = xr.open_zarr(result.files["zarr"], group="fused")["fused"].isel(time=0, drop=True)
    labels = xr.open_zarr(result.files["zarr"], group="labels")["labels"]
    config = builtup.Config(**SMALL)
    train = pd.read_parquet(result.files["model_forest"] / "training_points.parquet")
    again = fused.xf.sample(labels, config.n_train, seed=config.seed)
    pd.testing.assert_frame_equal(again[list(train.columns)], train)
    test = fused.xf.sample(labels, config.n_test, seed=config.seed + 1)
    seen = set(zip(train["x"], train["y"], strict=True))
    test = test[[p not in seen for p in zip(test["x"], test["y"], strict=True)]]
    assert len(test) == m["n_test"]
    bands = [str(b) for b in fused.band.values]
    fitted = fit_baselines(
        "classification", train[bands], train["label"], seed=0, index_band="viirs:avg_rad"
    )
    for name, model in fitted.items():
        f1 = f1_score(test["label"].astype(int), model.predict(test[bands]))
        assert block["scores"][name]["f1"] == pytest.approx(f1, abs=1e-12)
    # the verdict: the forest's F1 at least 0.05 above the best baseline's
    best = max(s["f1"] for s in block["scores"].values())
    assert block["baseline_f1"] == best
    assert m["beats_baseline"] is (m["f1"] >= best + 0.05)
    assert "best baseline" in result.summary()


# --- outputs reopen ---------------------------------------------------------------------------


def test_outputs_reopen(result):
    out = result.out_dir
    maps = xr.open_zarr(result.files["zarr"], group="builtup")["builtup"]
    assert maps.dims == ("time", "band", "y", "x")
    cog = rioxarray.open_rasterio(result.files["cog"])
    assert cog.rio.crs.to_epsg() == 32645
    assert cog.sizes["band"] == 5
    np.testing.assert_array_equal(cog.values, maps.isel(band=0).values)
    np.testing.assert_allclose(cog.x.values, maps.x.values)
    saved = json.loads(result.files["metrics"].read_text())
    assert saved["f1"] == result.metrics["f1"]
    assert saved["truth_f1_2019"] == result.metrics["truth_f1_2019"]
    for path in result.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "xf-split-range" in result.files["split_map"].read_text()
    assert not [p for p in out.iterdir() if ".partial" in p.name]
    assert result.cubes["builtup"].chunks is not None  # lazy (persisted) cubes come back


def test_saved_model_refits_and_reproduces_the_maps(result):
    model = builtup.load_classifier(result.files["model_forest"])
    fused = xr.open_zarr(result.files["zarr"], group="fused")["fused"]
    maps = xr.open_zarr(result.files["zarr"], group="builtup")["builtup"].isel(band=0).values
    assert list(model.feature_names_in_) == [str(b) for b in fused.band.values]
    rows = fused.transpose("time", "y", "x", "band").values.reshape(-1, fused.sizes["band"])
    valid = np.isfinite(rows).all(axis=1)
    table = pd.DataFrame(rows[valid], columns=model.feature_names_in_)
    np.testing.assert_array_equal(model.predict(table), maps.reshape(-1)[valid])
    assert np.isnan(maps.reshape(-1)[~valid]).all()


def test_saved_model_is_checked(result, tmp_path):
    import shutil

    copy = shutil.copytree(result.files["model_forest"], tmp_path / "model")
    table = copy / "training_points.parquet"
    df = pd.read_parquet(table)
    df.loc[0, "label"] = 1 - df.loc[0, "label"]
    df.to_parquet(table, index=False)
    with pytest.raises(ModelError, match="checksum"):
        builtup.load_classifier(copy)
    with pytest.raises(ModelError, match="not a saved classifier"):
        builtup.load_classifier(tmp_path)


# --- configuration ------------------------------------------------------------------------------


def test_config_toml_round_trip(tmp_path):
    config = builtup.Config.real_sources(out_dir=str(tmp_path / "out"))
    again = builtup.Config.from_toml(config.to_toml(tmp_path / "c.toml"))
    assert again == config
    assert again.bounds == (84.75, 27.3, 86.1, 28.4)
    assert again.s2_bands == ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A")
    text = "[builtup]\nsize = 120\ninference_years = [2017, 2019]\nn_estimators = 5\n"
    (tmp_path / "d.toml").write_text(text)
    loaded = builtup.Config.from_toml(tmp_path / "d.toml")
    assert (loaded.size, loaded.inference_years, loaded.n_estimators) == (120, (2017, 2019), 5)
    assert loaded.source == "synthetic"


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"n_trees": 10}, "unknown config key"),
        ({"n_estimators": "ten"}, "n_estimators"),
        ({"season": [12, 7]}, "season"),
        ({"inference_years": []}, "inference_years"),
        ({"source": "ee"}, "bounds"),
        ({"source": "modis"}, "source"),
        ({"s2_qa_preset": "QA99"}, "s2_qa_preset"),
        ({"bounds": [1, 2, 0, 3]}, "bounds"),
    ],
)
def test_bad_config_is_a_config_error(values, match):
    with pytest.raises(ConfigError, match=match):
        builtup.Config.from_dict(values)


def test_old_key_names_still_load_with_a_warning():
    with pytest.warns(DeprecationWarning) as caught:
        config = builtup.Config.from_dict(
            {"region": [84.75, 27.3, 86.1, 28.4], "region_crs": "EPSG:4326"}
        )
    said = sorted(str(w.message).split(";")[0] for w in caught)
    assert said == [
        "config key 'region' is now 'bounds'",
        "config key 'region_crs' is now 'bounds_crs'",
    ]
    assert config.bounds == (84.75, 27.3, 86.1, 28.4) and config.bounds_crs == "EPSG:4326"


def test_years_without_images_are_reported_on_the_hard_scene(tmp_path):
    values = {"out_dir": str(tmp_path), "size": 100, "inference_years": [2021]}
    config = builtup.Config.from_dict({**values, "difficulty": "hard"})  # --set difficulty=hard
    with pytest.raises(EmptySelectionError, match="2021"):
        _run(config)
    # the run wrote the hard scene to its catalog, not the standard one
    hard = synthetic_scene("builtup", seed=0, size=100, difficulty="hard")
    standard = synthetic_scene("builtup", seed=0, size=100)
    got = open_stac(tmp_path / "stac" / "viirs" / "collection.json").values
    np.testing.assert_allclose(got, hard["viirs"].values, rtol=1e-6)
    assert not np.allclose(got, standard["viirs"].values, equal_nan=True)
    truth = open_stac(tmp_path / "stac" / "truth_builtup" / "collection.json").values
    np.testing.assert_array_equal(truth, hard["truth_builtup"].values)


# --- laziness ---------------------------------------------------------------------------------


def test_preprocessing_and_prediction_are_lazy(result):
    # the catalog the fixture wrote, opened as a STAC source
    paths = {k: result.out_dir / "stac" / k / "collection.json" for k in ("s2", "viirs", "ghsl")}
    collections = {f"{k}_collection": str(path) for k, path in paths.items()}
    config = builtup.Config(out_dir=str(result.out_dir), source="stac", **collections, **SMALL)
    model = builtup.load_classifier(result.files["model_forest"])
    with raise_if_dask_computes():
        sources, truth = builtup._open_sources(config, result.out_dir)
        grid = config.grid_or_extent(sources["ghsl"])
        fused = builtup._fused_cube(config, sources, grid)
        labels = builtup._labels(config, sources["ghsl"], grid)
        maps = classification.class_map(fused, model, "builtup")
    assert truth is None
    assert fused.chunks is not None and labels.chunks is not None and maps.chunks is not None
    expected = xr.open_zarr(result.files["zarr"], group="fused")["fused"]
    np.testing.assert_allclose(fused.isel(time=0).values, expected.isel(time=0).values)


# --- distributed and Earth Engine -------------------------------------------------------------


def test_local_cluster_gives_the_same_metrics(result, tmp_path):
    distributed = pytest.importorskip("distributed")
    # the catalog the fixture wrote, opened as a STAC source (no truth, so no truth_* metrics)
    catalog = result.out_dir / "stac"
    config = builtup.Config(
        out_dir=str(tmp_path),
        source="stac",
        s2_collection=str(catalog / "s2" / "collection.json"),
        viirs_collection=str(catalog / "viirs" / "collection.json"),
        ghsl_collection=str(catalog / "ghsl" / "collection.json"),
        figures=False,
        **SMALL,
    )
    with (
        distributed.LocalCluster(
            n_workers=1, processes=True, threads_per_worker=2, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        remote = _run(config)
    expected = {k: v for k, v in result.metrics.items() if not k.startswith("truth_")}
    assert remote.metrics == expected
    assert remote.figures == {}


def test_earth_engine_path_offline(result, scene):
    from xfusion.grids import geobox_of
    from xfusion.testing.ee import FakeImage, fake_earth_engine

    def images(key, **properties):
        cube = scene[key]
        gbox = geobox_of(cube)
        out = []
        for i, t in enumerate(cube.time.values):
            layer = cube.sel(time=t)
            bands = {str(b): layer.sel(band=b).values for b in cube.band.values}
            out.append(FakeImage(bands, grid=gbox, time=t, properties=properties, id=f"{key}/{i}"))
        return out

    cloudy = images("s2", CLOUDY_PIXEL_PERCENTAGE=5.0)
    cloudy[0].properties["CLOUDY_PIXEL_PERCENTAGE"] = 80.0  # filtered out: not in the result
    collections = {
        "COPERNICUS/S2": images("s2", CLOUDY_PIXEL_PERCENTAGE=5.0),
        "NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG": images("viirs"),
        "JRC/GHSL/P2016/SMOD_POP_GLOBE_V1": images("ghsl"),
        "COPERNICUS/S2_CLOUDY_FIRST": cloudy,
    }
    bounds = tuple(geobox_of(scene["ghsl"]).boundingbox)
    config = builtup.Config.real_sources(
        out_dir="unused",
        bounds=bounds,
        bounds_crs="EPSG:32645",
        s2_bands=("B2", "B3", "B4", "B8", "B11", "B12"),
    )
    expected = xr.open_zarr(result.files["zarr"], group="fused")["fused"]
    with fake_earth_engine(collections) as fake:
        with raise_if_dask_computes():
            sources, _ = builtup._open_sources(config, None)
            grid = config.grid_or_extent(sources["ghsl"])
            fused = builtup._fused_cube(config, sources, grid)
            labels = builtup._labels(config, sources["ghsl"], grid)
        assert sources["s2"].sizes["time"] == 15 and sources["viirs"].sizes["time"] == 30
        np.testing.assert_allclose(fused.values, expected.values, rtol=1e-5, atol=1e-6)
        saved_labels = xr.open_zarr(result.files["zarr"], group="labels")["labels"]
        np.testing.assert_array_equal(labels.values, saved_labels.values)
        assert fake.pixel_requests
        assert "CLOUDY_PIXEL_PERCENTAGE" in json.dumps(fake.value_requests, default=str)
        filtered = dataclasses.replace(config, s2_collection="COPERNICUS/S2_CLOUDY_FIRST")
        s2 = builtup._open_sources(filtered, None)[0]["s2"]
        np.testing.assert_array_equal(s2.time.values, scene["s2"].time.values[1:])
        assert list(s2.band.values) == ["B2", "B3", "B4", "B8", "B11", "B12", "QA60"]
