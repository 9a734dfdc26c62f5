"""The nightlights recipe on a small synthetic scene: quality, outputs, config, cluster, EE path.

References are independent of the recipe's code path: the Landsat features and the VIIRS target
are recomputed with plain numpy from the synthetic scene's arrays, the scores from the saved
maps against the scene's 30 m radiance truth, and the baseline map from the saved Ridge
coefficients with a matrix product.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import rioxarray
import xarray as xr
from rasterio.warp import Resampling, reproject

import xfusion as xf
from xfusion.datasets import synthetic_scene
from xfusion.errors import ConfigError
from xfusion.grids import geobox_of
from xfusion.models import superresolution as sr
from xfusion.recipes import nightlights
from xfusion.testing import raise_if_dask_computes

SIZE = 384
# the defaults but 10 epochs (default 20), to keep the test file fast
SMALL = {"size": SIZE, "n_patches": 48, "epochs": 10}
FACTOR = 16  # VIIRS pixel = 16 Landsat pixels


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    config = nightlights.Config(out_dir=str(tmp_path_factory.mktemp("nightlights")), **SMALL)
    return nightlights.run(config)


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene("nightlights", seed=0, size=SIZE)


def _open(result, name):
    return xr.open_zarr(result.files["zarr"], group=name)[name]


def _assert_same_metrics(got, expected, rel=1e-6, abs=0.0):
    """Numbers (and lists of numbers) within ``rel``/``abs``, anything else (strings) equal.

    ``pytest.approx`` of a whole mapping raises ``TypeError`` on a string or ``None`` value when a
    tolerance is given (pytest >= 9.2), so the metrics are compared key by key.
    """
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(value, dict):  # the baselines block and its scores
            _assert_same_metrics(got[key], value, rel=rel, abs=abs)
        elif numeric or (isinstance(value, list) and all(isinstance(v, float) for v in value)):
            assert got[key] == pytest.approx(value, rel=rel, abs=abs), key
        else:
            assert got[key] == value, key


def _eval_columns(result):
    """Columns of the evaluation region: the east third, split on a VIIRS pixel edge."""
    cells = SIZE // FACTOR
    split = (cells - round(cells / 3)) * FACTOR
    return slice(split, None)


def _reference_features(scene):
    """Landsat composite with numpy: QA bits 1-4, 7273 < DN < 43636, C2 scaling, median."""
    landsat = scene["landsat"]
    dn = landsat.values.astype(np.float64)
    names = list(landsat.band.values)
    qa = dn[:, names.index("QA_PIXEL")].astype(np.int64)
    cloudy = (qa & 0b11110) != 0
    optical = dn[:, :7]
    out_of_range = ((optical <= 7273) | (optical >= 43636)).any(axis=1)
    bad = cloudy | out_of_range
    sr = optical * 2.75e-5 - 0.2
    kelvin = np.clip(dn[:, 7:8] * 0.00341802 + 149.0, 273.15, 373.15)
    stack = np.concatenate([sr, (kelvin - 273.15) / 100.0], axis=1)
    stack[np.broadcast_to(bad[:, None], stack.shape)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(stack, axis=0)


# --- quality bar -------------------------------------------------------------------------------


def test_quality_bar_on_held_out_region(result):
    m = result.metrics
    assert m["reference"] == "truth"
    assert m["rmse"] <= 0.8 * m["baseline_rmse"], m
    assert m["rmse_ratio"] == pytest.approx(m["rmse"] / m["baseline_rmse"])
    assert m["r2"] > m["baseline_r2"] and m["r2"] > 0.3
    # At VIIRS's own scale the U-Net reproduces the observation (averaging 16 x 16 pixels also
    # cancels the Ridge's per-pixel noise, so there the two are close); its gain is at 30 m.
    assert m["coarse_r2"] > 0.5
    assert m["n_pixels"] == SIZE * (SIZE - _eval_columns(result).start)
    assert m["n_patches"] == SMALL["n_patches"]


def test_scores_against_scene_truth(result, scene):
    truth = scene["truth_radiance"].isel(band=0).values / 60.0
    cols = _eval_columns(result)
    for key, prefix in (("prediction", ""), ("baseline", "baseline_")):
        pred = _open(result, key).isel(band=0).values[:, cols]
        err = pred.astype(np.float64) - truth[:, cols]
        assert np.isfinite(err).all()
        rmse = np.sqrt(np.mean(err**2))
        r2 = 1 - np.sum(err**2) / np.sum((truth[:, cols] - truth[:, cols].mean()) ** 2)
        assert result.metrics[f"{prefix}rmse"] == pytest.approx(rmse, rel=1e-5)
        assert result.metrics[f"{prefix}r2"] == pytest.approx(r2, rel=1e-5, abs=1e-6)


def test_baselines_block_compares_ridge_boosting_and_viirs_on_the_same_pixels(result, scene):
    m, block = result.metrics, result.metrics["baselines"]
    truth = scene["truth_radiance"].isel(band=0).values / 60.0
    cols = _eval_columns(result)
    assert block["metric"] == "rmse"
    names = ["hgb", "hgb_corrected", "ridge", "ridge_corrected", "viirs_resampled"]
    assert sorted(block["scores"]) == names
    # VIIRS on the 30 m grid (the saved target), no model, is a baseline on the same pixels,
    # and so are the Ridge and the boosting corrected with VIIRS like the U-Net
    target, coarse = _open(result, "target"), geobox_of(_open(result, "viirs"))
    maps = {"ridge": _open(result, "baseline"), "hgb": _open(result, "baseline_hgb")}
    maps |= {f"{k}_corrected": sr.coarse_correction(m, target, coarse) for k, m in maps.items()}
    for name, cube in {**maps, "viirs_resampled": target}.items():
        pred = cube.isel(band=0).values[:, cols].astype(np.float64)
        err = pred - truth[:, cols]
        assert np.isfinite(err).all(), name
        assert block["scores"][name]["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-5)
    # the correction brings the cheap baselines closer to the truth on this scene
    for name in ("ridge", "hgb"):
        assert block["scores"][f"{name}_corrected"]["rmse"] < block["scores"][name]["rmse"]
    assert block["scores"]["ridge"]["rmse"] == m["baseline_rmse"]
    assert block["scores"]["viirs_resampled"]["rmse"] == m["viirs_rmse"]
    assert block["scores"]["viirs_resampled"]["r2"] == m["viirs_r2"]
    # gradient boosting is a different model from the ridge, not a copy of its map
    assert not np.allclose(_open(result, "baseline_hgb").values, _open(result, "baseline").values)
    best = min(block["scores"], key=lambda name: block["scores"][name]["rmse"])
    assert (block["baseline"], block["baseline_rmse"]) == (best, block["scores"][best]["rmse"])
    assert block["model_rmse"] == m["rmse"]
    # the margin rule: the U-Net beats the best baseline when its RMSE is at least 10 % lower
    beats = m["rmse"] <= 0.9 * block["baseline_rmse"]
    assert m["beats_baseline"] is block["beats_baseline"] is beats
    summary = result.summary()
    assert f"best baseline {best!r}" in summary
    assert ("does NOT beat it" in summary) is not beats


def test_coarse_scores_against_viirs(result, scene):
    viirs = np.median(scene["viirs"].isel(band=0).values, axis=0) / 60.0
    cells = _eval_columns(result).start // FACTOR
    pred = _open(result, "prediction").isel(band=0).values
    n = SIZE // FACTOR
    coarse = pred.reshape(n, FACTOR, n, FACTOR).mean(axis=(1, 3))
    err = coarse[:, cells:] - viirs[:, cells:]
    assert result.metrics["coarse_rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-4)


# --- preprocessing against numpy ------------------------------------------------------------


def test_features_and_target_against_numpy(result, scene):
    features = _open(result, "features")
    assert list(features.band.values) == [*(f"SR_B{i}" for i in range(1, 8)), "ST_B10"]
    np.testing.assert_allclose(features.values, _reference_features(scene), rtol=1e-5, atol=1e-6)
    viirs = np.median(scene["viirs"].isel(band=0).values, axis=0) / 60.0
    np.testing.assert_allclose(_open(result, "viirs").isel(band=0).values, viirs, rtol=1e-6)
    fine = np.full((SIZE, SIZE), np.nan, np.float32)
    reproject(
        viirs.astype(np.float32),
        fine,
        src_transform=geobox_of(scene["viirs"]).affine,
        src_crs="EPSG:32737",
        dst_transform=geobox_of(scene["landsat"]).affine,
        dst_crs="EPSG:32737",
        resampling=Resampling.bilinear,
    )
    np.testing.assert_allclose(
        _open(result, "target").isel(band=0).values, fine, rtol=1e-5, atol=1e-7
    )
    truth = scene["truth_radiance"].isel(band=0).values / 60.0
    np.testing.assert_allclose(_open(result, "truth").isel(band=0).values, truth, rtol=1e-6)


def test_baseline_map_is_the_saved_ridge(result):
    ridge = xf.load_model(result.files["model_ridge"])
    features = _open(result, "features").values
    rows = features.reshape(features.shape[0], -1).T.astype(np.float64)
    expected = (rows @ np.ravel(ridge.coef_) + ridge.intercept_).reshape(features.shape[1:])
    np.testing.assert_allclose(
        _open(result, "baseline").isel(band=0).values, expected, rtol=1e-4, atol=1e-5
    )
    assert list(ridge.bands_) == list(_open(result, "features").band.values)


# --- outputs -----------------------------------------------------------------------------------


def test_outputs_reopen(result):
    out = result.out_dir
    names = ("features", "viirs", "target", "prediction", "baseline", "baseline_hgb")
    for name in (*names, "difference", "truth"):
        reopened = _open(result, name)
        assert reopened.dtype == np.float32
        np.testing.assert_array_equal(reopened.values, result.cubes[name].values)
    assert not [p for p in out.iterdir() if ".partial" in p.name]
    cog = rioxarray.open_rasterio(result.files["cog"])
    assert cog.rio.crs.to_epsg() == 32737
    np.testing.assert_allclose(cog.values[0], _open(result, "prediction").values[0], rtol=1e-6)
    _assert_same_metrics(json.loads((out / "metrics.json").read_text()), result.metrics)
    assert result.metrics == json.loads(json.dumps(result.metrics))
    for path in result.figures.values():
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(result.figures) == ["baseline_panels", "loss", "panels", "quicklook"]


def test_saved_unet_reloads_and_predicts_the_same(result):
    model = xf.load_model(result.files["model_unet"])
    assert model.bands_ == tuple(_open(result, "features").band.values)
    assert len(model.history_["loss"]) == SMALL["epochs"]
    # eager features in (the lazy path is test_preprocess_and_predict_are_lazy's); the areas'
    # target scale from the saved target (VIIRS on the grid), as in the run
    config = result_config(result)
    features = _open(result, "features").load()
    target = _open(result, "target")
    again = _predict(config, features, model, _areas(config, features), target)
    # corrected with VIIRS by default (checked against numpy in the hard-scene test)
    assert config.viirs_correction == "additive"
    again = sr.coarse_correction(again, target, geobox_of(_open(result, "viirs")), "bilinear")
    np.testing.assert_allclose(
        again.values, _open(result, "prediction").values, rtol=1e-5, atol=1e-6
    )


def result_config(result):
    return nightlights.Config.from_toml(result.files["config"])


def _areas(config, features, city=None):
    """The run's areas (per-region target standardisation; else None) rebuilt from its grid."""
    from xfusion.preprocess.holdout import split_box

    if config.target_mode(city is not None) != "per_region":
        return None
    grid = geobox_of(features)
    boxes = split_box(grid.boundingbox, 30.0 * FACTOR, config.holdout_fraction)
    return sr.area_labels(features, *boxes, city)


def _predict(config, features, model, areas, target):
    """The run's map of ``model`` (before the VIIRS correction)."""
    return sr.predict_map(
        model, features, chunks=config.chunks, halo=config.halo, labels=areas, reference=target
    )


# --- laziness and chunking ---------------------------------------------------------------------


def test_preprocess_and_predict_are_lazy(result, tmp_path):
    # the run's synthetic catalog, read back as a STAC source (source="stac")
    catalog = result.out_dir / "stac"
    config = dataclasses.replace(
        result_config(result),
        out_dir=str(tmp_path),
        source="stac",
        landsat_collection=str(catalog / "landsat" / "collection.json"),
        viirs_collection=str(catalog / "viirs" / "collection.json"),
    )
    sources, truth = nightlights._open_sources(config, tmp_path)
    assert truth is None
    model = xf.load_model(result.files["model_unet"])
    with raise_if_dask_computes():
        features, viirs, target = nightlights._preprocess(config, sources)
        areas = _areas(config, features)
    # the U-Net standardises its target per area: predict computes each area's VIIRS mean
    # and standard deviation first (documented), the map itself stays lazy
    prediction = _predict(config, features, model, areas, target)
    with raise_if_dask_computes():
        prediction = sr.coarse_correction(prediction, target, geobox_of(viirs), "bilinear")
    assert prediction.chunks is not None
    # the same as the saved map, which the eager path reproduces too (test_saved_unet_...)
    np.testing.assert_allclose(
        prediction.values, _open(result, "prediction").values, rtol=1e-5, atol=1e-6
    )


# --- config ------------------------------------------------------------------------------------


def test_config_toml_round_trip(tmp_path):
    config = nightlights.Config(out_dir=str(tmp_path), epochs=3, train_region=(0, 0, 1, 1),
                                eval_region=(2, 0, 3, 1))  # fmt: skip
    again = nightlights.Config.from_toml(config.to_toml(tmp_path / "c.toml"))
    assert again == config
    real = nightlights.Config.real_sources(out_dir="x")
    assert nightlights.Config.from_toml(real.to_toml(tmp_path / "r.toml")) == real
    assert real.viirs_collection == "NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG"
    assert real.landsat_collection == "LANDSAT/LC08/C02/T1_L2"


@pytest.mark.parametrize(
    "values, match",
    [
        ({"epoch": 3}, "unknown config key"),
        ({"epochs": "3"}, "epochs"),
        ({"size": 200}, "multiple of 16"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"viirs_resolution": 500.0}, "whole multiple"),
        ({"source": "ee"}, r"source='ee' needs \[.*'bounds', 'crs'\] set"),
        ({"train_region": (0, 0, 1, 1)}, "both train_region"),
        ({"loss": "mae"}, "loss"),
        ({"target_standardize": "per_city"}, "target_standardize"),
        ({"viirs_correction": "multiplicative"}, "viirs_correction"),
        ({"activation": "sigmoid", "target_standardize": "per_region"}, "activation='sigmoid'"),
    ],
)
def test_bad_config_raises_config_error(values, match):
    with pytest.raises(ConfigError, match=match):
        nightlights.Config.from_dict(values)


def test_overlapping_regions_are_rejected_when_the_config_is_built(tmp_path):
    with pytest.raises(ConfigError, match="'eval_region' must be a box that does not overlap"):
        nightlights.Config(
            out_dir=str(tmp_path), train_region=(0, 0, 10, 10), eval_region=(5, 0, 20, 10)
        )


def test_old_key_names_still_load_with_a_warning():
    with pytest.warns(DeprecationWarning) as caught:
        config = nightlights.Config.from_dict(
            {"n_val_patches": 3, "chunk": 64, "train_fraction": 0.75, "region": (0, 0, 1, 1)}
        )
    said = {str(w.message).split(" (")[0].split(";")[0] for w in caught}
    assert said == {
        "config key 'n_val_patches' is now 'n_validation_patches'",
        "config key 'chunk' is now 'chunks'",
        "config key 'train_fraction' is now 'holdout_fraction'",
        "config key 'region' is now 'bounds'",
    }
    assert (config.n_validation_patches, config.chunks, config.bounds) == (3, 64, (0, 0, 1, 1))
    assert config.holdout_fraction == pytest.approx(0.25)


def test_difficulty_hard_runs_on_the_hard_scene(tmp_path):
    config = nightlights.Config.from_dict(
        {"out_dir": str(tmp_path), "size": 96, "difficulty": "hard"}
    )
    sources, truth = nightlights._open_sources(config, tmp_path)
    hard = synthetic_scene("nightlights", seed=0, size=96, difficulty="hard")
    standard = synthetic_scene("nightlights", seed=0, size=96)
    radiance = truth.isel(band=0).values
    np.testing.assert_allclose(radiance, hard["truth_radiance"].isel(band=0).values / 60.0)
    assert not np.allclose(radiance, standard["truth_radiance"].isel(band=0).values / 60.0)
    qa = sources["landsat"].sel(band="QA_PIXEL").values
    np.testing.assert_array_equal(qa, hard["landsat"].sel(band="QA_PIXEL").values)
    with pytest.raises(ConfigError, match="'size' must be a multiple of 32"):
        nightlights.Config(size=112, difficulty="hard")


def test_hard_scene_standardises_the_target_per_city_and_area(tmp_path):
    """Areas are 3 * city + part; the U-Net learns whole training areas' VIIRS statistics.

    The run also corrects the map with VIIRS (``viirs_correction="additive"``).
    """
    config = nightlights.Config(
        out_dir=str(tmp_path), size=96, difficulty="hard", n_patches=6, n_validation_patches=2,
        epochs=2, figures=False, viirs_correction="additive",
    )  # fmt: skip
    result = nightlights.run(config)
    hard = synthetic_scene("nightlights", seed=0, size=96, difficulty="hard")
    city = hard["region"].isel(band=0).values
    split = 96 - round(96 / FACTOR / 3) * FACTOR  # first evaluation column
    part = np.ones((96, 96))
    part[:, split:] = 2
    target = _open(result, "target").isel(band=0).values.astype(np.float64)
    model = xf.load_model(result.files["model_unet"])
    stats = model.config_["target_regions"]
    train_labels = np.unique(3 * city[:, :split] + 1)
    assert sorted(stats) == sorted(str(int(v)) for v in train_labels)
    for label in train_labels:
        inside = (3 * city + part) == label
        np.testing.assert_allclose(stats[str(int(label))]["offset"], [target[inside].mean()],
                                   rtol=1e-5)  # fmt: skip
        np.testing.assert_allclose(stats[str(int(label))]["scale"], [target[inside].std()],
                                   rtol=1e-4)  # fmt: skip
    # VIIRS on the grid itself, scored against the truth like the models
    truth = hard["truth_radiance"].isel(band=0).values[:, split:] / 60.0
    rmse = np.sqrt(np.mean((target[:, split:] - truth) ** 2))
    assert result.metrics["viirs_rmse"] == pytest.approx(rmse, rel=1e-5)
    # the held-out areas are scaled by their own VIIRS: the map re-made from the saved model
    features = _open(result, "features")
    areas = _areas(config, features, city=xr.DataArray(city, dims=("y", "x")))
    again = _predict(config, features.load(), model, areas, _open(result, "target"))
    raw = again.isel(band=0).values.astype(np.float64)
    err = raw[:, split:] - truth
    assert result.metrics["unet_raw_rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-5)
    # the correction: the map's VIIRS-pixel means swapped for VIIRS's, both back on 30 m bilinearly
    means = raw.reshape(96 // FACTOR, FACTOR, 96 // FACTOR, FACTOR).mean(axis=(1, 3))
    back = np.full((96, 96), np.nan, np.float32)
    reproject(
        means.astype(np.float32),
        back,
        src_transform=geobox_of(_open(result, "viirs")).affine,
        src_crs="EPSG:32737",
        dst_transform=geobox_of(features).affine,
        dst_crs="EPSG:32737",
        resampling=Resampling.bilinear,
    )
    expected = raw + target - back
    np.testing.assert_allclose(
        _open(result, "prediction").isel(band=0).values, expected, rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(expected, raw, atol=1e-3)  # the correction changes the map
    block = result.metrics["baselines"]
    assert block["model_rmse"] == result.metrics["rmse"] != result.metrics["unet_raw_rmse"]
    uncorrected = block["unet_uncorrected"]
    assert uncorrected["model_rmse"] == result.metrics["unet_raw_rmse"]
    assert uncorrected["baseline"] == block["baseline"]
    assert uncorrected["beats_baseline"] is (
        result.metrics["unet_raw_rmse"] <= 0.9 * block["baseline_rmse"]
    )


# --- other sources and schedulers --------------------------------------------------------------


def test_earth_engine_path_offline(result, scene):
    from xfusion.testing.ee import FakeImage, fake_earth_engine

    def images(key):
        cube = scene[key]
        gbox = geobox_of(cube)
        return [
            FakeImage(
                {str(b): cube.sel(time=t, band=b).values for b in cube.band.values},
                grid=gbox,
                time=t,
                id=f"{key}/{i}",
            )
            for i, t in enumerate(cube.time.values)
        ]

    collections = {
        "LANDSAT/LC08/C02/T1_L2": images("landsat"),
        "NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG": images("viirs"),
    }
    bounds = tuple(geobox_of(scene["landsat"]).boundingbox)
    config = nightlights.Config.real_sources(
        out_dir="unused", bounds=bounds, bounds_crs="EPSG:32737", target_resampling="bilinear"
    )
    with fake_earth_engine(collections) as fake:
        with raise_if_dask_computes():
            sources, _ = nightlights._open_sources(config, "unused")
            features, _, target = nightlights._preprocess(config, sources)
        assert list(sources["landsat"].band.values) == [
            *(f"SR_B{i}" for i in range(1, 8)),
            "ST_B10",
            "QA_PIXEL",
        ]
        np.testing.assert_allclose(
            features.values, _open(result, "features").values, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(target.values, _open(result, "target").values, rtol=1e-6)
        assert fake.pixel_requests
        requests = json.dumps(fake.value_requests, default=str)
        # filterDate(2020-01-01, 2023-01-01): the config's last day is included
        assert "1577836800000" in requests and "1672531200000" in requests


def test_distributed_run_gives_the_same_metrics(result, tmp_path):
    distributed = pytest.importorskip("distributed")
    # the metrics need no figures
    config = dataclasses.replace(result_config(result), out_dir=str(tmp_path), figures=False)
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        remote = nightlights.run(config)
    assert remote.metrics["reference"] == result.metrics["reference"] == "truth"
    _assert_same_metrics(remote.metrics, result.metrics, rel=1e-5)
