"""The water recipe end to end on a small synthetic scene (STAC and offline Earth Engine)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rioxarray
import xarray as xr
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

import xfusion as xf
from xfusion.datasets import synthetic_scene
from xfusion.errors import ConfigError
from xfusion.recipes import water
from xfusion.testing import raise_if_dask_computes

LAYER_BANDS = ["HH", "HV", "Red", "NIR", "SWIR1", "SWIR2", "DEM", "HAND"]
#: computed from the DEM with the SAR's viewing geometry (radar_geometry=True, the default)
GEOMETRY = ["local_incidence", "radar_shadow"]
BANDS = [*LAYER_BANDS, *GEOMETRY]
#: what the models read by default: not the DEM's elevation nor the geometry bands
#: (exclude_bands), the SAR being masked in shadow and layover instead
READ = ["HH", "HV", "Red", "NIR", "SWIR1", "SWIR2", "HAND"]


def _check_geometry(inputs: np.ndarray, dem: np.ndarray) -> None:
    """The geometry bands against the scene generator's own radar model (looking east, 35°)."""
    from xfusion.datasets._landscape import radar_terrain

    _, shadow = radar_terrain(dem.astype(np.float64), 30.0, incidence=35.0)
    np.testing.assert_array_equal(inputs[-1], shadow.astype(np.float32))
    local = 35.0 - np.degrees(np.arctan(np.gradient(dem.astype(np.float64), 30.0, axis=1)))
    np.testing.assert_allclose(inputs[-2], local, atol=1e-3)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    # one member per U-Net (the default is an ensemble of three) keeps the file fast
    config = water.Config(out_dir=str(tmp_path_factory.mktemp("water")), n_members=1)
    return water.run(config)


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene("water", seed=0, size=water.Config().size)


def _open(result, group: str) -> xr.DataArray:
    return xr.open_zarr(result.out_dir / "outputs.zarr", group=group)[group]


def _heldout(nx: int, fraction: float) -> slice:
    return slice(nx - round(fraction * nx), nx)


def test_quality_bar_against_scikit_learn(result, scene):
    """SAR + optical IoU >= SAR-only IoU and >= 0.8 on the held-out strip, labels' no data out."""
    labels = scene["truth_water"].isel(band=0).values
    cols = _heldout(labels.shape[1], water.Config().holdout_fraction)
    reference = labels[:, cols]
    maps = _open(result, "water")
    m = result.metrics
    for name in water.MODELS:
        pred = maps.sel(band=name).values[:, cols]
        ok = np.isfinite(reference)
        assert np.isfinite(pred).all()  # every input band is valid: a map everywhere
        truth, ours = reference[ok].astype(int), pred[ok].astype(int)
        assert m[f"{name}_iou"] == pytest.approx(jaccard_score(truth, ours))
        assert m[f"{name}_f1"] == pytest.approx(f1_score(truth, ours))
        assert m[f"{name}_precision"] == pytest.approx(precision_score(truth, ours))
        assert m[f"{name}_recall"] == pytest.approx(recall_score(truth, ours))
        assert m[f"{name}_accuracy"] == pytest.approx(accuracy_score(truth, ours))
    assert m["heldout_labelled"] == np.isfinite(reference).sum() > 2000
    assert 0.02 < m["heldout_water_fraction"] < 0.5  # water and land both present
    # the quality bar of the issue
    assert m["iou"] == m["fusion_iou"] >= m["baseline_iou"] == m["sar_only_iou"]
    assert m["iou"] >= 0.8
    assert m["f1"] >= 0.8
    # a map thresholded at random would be far below
    rng = np.random.default_rng(0)
    coin = rng.random(reference.shape) < m["heldout_water_fraction"]
    ok = np.isfinite(reference)
    assert jaccard_score(reference[ok].astype(int), coin[ok].astype(int)) < 0.2


def test_maps_everywhere_against_the_cover_truth(result, scene):
    """Under the labels' clouds and on partial water too, against cover fraction >= 0.5."""
    fraction = scene["truth_cover"].sel(band="water").values
    cols = _heldout(fraction.shape[1], water.Config().holdout_fraction)
    truth = (fraction[:, cols] >= 0.5).astype(int).ravel()
    for name in water.MODELS:
        pred = _open(result, "water").sel(band=name).values[:, cols].astype(int).ravel()
        iou = jaccard_score(truth, pred)
        assert result.metrics[f"{name}_iou_all"] == pytest.approx(iou)
        assert iou > 0.7
    # (the SAR + optical map is no longer above the SAR-only one here: with the DEM's elevation
    # out of the inputs, one member, seed 0, it is 0.874 against 0.921 on every pixel)
    np.testing.assert_array_equal(
        _open(result, "truth_water").values, (fraction >= 0.5).astype(np.float32)
    )


def test_inputs_and_labels_are_the_scene(result, scene):
    inputs = _open(result, "inputs")
    assert inputs.band.values.tolist() == BANDS
    expected = np.concatenate(
        [scene["sar"].isel(time=0).values, scene["optical"].isel(time=0).values,
         scene["terrain"].values]
    )  # fmt: skip
    np.testing.assert_allclose(inputs.sel(band=LAYER_BANDS).values, expected, rtol=1e-6)
    _check_geometry(inputs.values, scene["terrain"].sel(band="DEM").values)
    labels = _open(result, "labels").values
    truth = scene["truth_water"].isel(band=0).values
    np.testing.assert_array_equal(np.isnan(labels), np.isnan(truth))  # no data stays no data
    np.testing.assert_array_equal(labels[np.isfinite(truth)], truth[np.isfinite(truth)])
    assert 0.05 < result.metrics["label_nodata_fraction"] < 0.5
    assert result.metrics["chip_nodata_fraction"] <= water.Config().max_nodata
    holdout = _open(result, "holdout").values.astype(bool)
    assert holdout[:, -32:].all() and not holdout[:, :96].any()


@pytest.mark.parametrize("chunked", [False, True])
def test_labels_map_values_and_ignore_the_rest(chunked):
    """DSWE-style codes: 1 and 2 water, 0 land, partial water, cloud and fill no data."""
    codes = np.array([[0, 1, 2, 3], [4, 9, 255, np.nan]], dtype=np.float32)
    raw = xr.DataArray(codes[None], dims=("band", "y", "x"), coords={"band": ["intr"]})
    if chunked:
        raw = raw.chunk({"x": 2})
    config = water.Config(label_water_values=(1.0, 2.0), label_land_values=(0.0,))
    with raise_if_dask_computes():
        labels = water._labels(raw, config)
    assert (labels.chunks is not None) == chunked
    expected = np.select([np.isin(codes, [1, 2]), codes == 0], [1.0, 0.0], default=np.nan).astype(
        np.float32
    )
    np.testing.assert_array_equal(labels.values, expected)


def test_baselines_on_the_same_heldout_pixels_recomputed_from_the_outputs(result):
    """Otsu on each SAR band and gradient boosting, scored by IoU where the U-Net is scored."""
    m = result.metrics
    block = m["baselines"]
    assert json.loads((result.out_dir / "metrics.json").read_text())["baselines"] == block
    assert block["metric"] == "iou" and list(block["scores"]) == ["otsu_HH", "otsu_HV", "hgb"]
    maps = _open(result, "baseline_water")
    assert maps.band.values.tolist() == list(block["scores"])
    held = _open(result, "holdout").values.astype(bool)
    reference = np.where(held, _open(result, "labels").values, np.nan)
    ok = np.isfinite(reference)
    for name, scores in block["scores"].items():
        pred = maps.sel(band=name).values
        assert np.isfinite(pred).all()  # every input band is valid: a map everywhere
        truth, ours = reference[ok].astype(int), pred[ok].astype(int)
        assert scores["n"] == ok.sum() == m["heldout_labelled"]
        assert scores["iou"] == pytest.approx(jaccard_score(truth, ours))
        assert scores["f1"] == pytest.approx(f1_score(truth, ours))
    # an Otsu map is its SAR band cut at the recorded threshold, water below it (dark)
    inputs = _open(result, "inputs")
    for band in ("HH", "HV"):
        fitted = block["thresholds"][f"otsu_{band}"]
        assert fitted["water_above"] is False
        expected = (inputs.sel(band=band).values <= fitted["threshold"]).astype(np.float32)
        np.testing.assert_array_equal(maps.sel(band=f"otsu_{band}").values, expected)
    # the verdict: the SAR + optical U-Net against the best baseline, by 0.05 IoU
    best = max(block["scores"], key=lambda name: block["scores"][name]["iou"])
    assert (block["baseline"], block["baseline_iou"]) == (best, block["scores"][best]["iou"])
    assert block["model_iou"] == m["iou"] and block["margin"] == 0.05
    margin_rule = m["iou"] >= block["baseline_iou"] + 0.05
    assert m["beats_baseline"] is block["beats_baseline"] is margin_rule
    assert block["baseline_iou"] > 0.8  # gradient boosting on ten clean bands is strong here
    verdict = "beats it" if m["beats_baseline"] else "does NOT beat it"
    assert f"vs best baseline {best!r}" in result.summary() and verdict in result.summary()


def test_segmentation_scores_match_scikit_learn():
    rng = np.random.default_rng(1)
    pred = (rng.random(400) < 0.3).astype(float)
    ref = (rng.random(400) < 0.4).astype(float)
    ref[rng.random(400) < 0.2] = np.nan
    got = water.segmentation_scores(pred, ref)
    ok = np.isfinite(ref)
    assert got["n"] == ok.sum()
    assert got["iou"] == pytest.approx(jaccard_score(ref[ok], pred[ok]))
    assert got["f1"] == pytest.approx(f1_score(ref[ok], pred[ok]))
    assert got["precision"] == pytest.approx(precision_score(ref[ok], pred[ok]))
    assert got["recall"] == pytest.approx(recall_score(ref[ok], pred[ok]))


def test_outputs_reopen(result):
    out = result.out_dir
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]
    maps = _open(result, "water")
    assert maps.band.values.tolist() == list(water.MODELS)
    cog = rioxarray.open_rasterio(out / "water.tif")
    assert cog.rio.crs.to_epsg() == 32615
    np.testing.assert_array_equal(cog.isel(band=0).values, maps.sel(band="fusion").values)
    np.testing.assert_allclose(cog.x.values, maps.x.values)
    np.testing.assert_allclose(cog.y.values, maps.y.values)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iou"] == pytest.approx(result.metrics["iou"])
    assert water.Config.from_toml(out / "config.toml").chip_size == 32
    assert set(result.figures) == {"panels", "loss"}
    for path in result.figures.values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proba = _open(result, "probability")
    assert float(proba.min()) >= 0 and float(proba.max()) <= 1
    np.testing.assert_array_equal(maps.values, (proba.values > 0.5).astype(np.float32))


def test_saved_models_predict_lazily_seamlessly_and_identically(result):
    inputs = _open(result, "unet_inputs").chunk({"y": 64, "x": 64})
    assert inputs.band.values.tolist() == [*BANDS, "sar_valid", "optical_valid"]
    raw = _open(result, "inputs")
    np.testing.assert_array_equal(inputs.sel(band=BANDS).values, raw.values)  # no NaN to fill
    np.testing.assert_array_equal(inputs.sel(band=["sar_valid", "optical_valid"]).values, 1.0)
    saved = _open(result, "probability")
    for name, bands in (("sar_only", ["HH", "HV", "HAND", "sar_valid"]),
                        ("fusion", [*READ, "sar_valid", "optical_valid"])):  # fmt: skip
        model = xf.load_model(result.out_dir / "model" / name)
        assert list(model.bands_) == bands
        assert model.classes_ == (0.0, 1.0)  # no data never became a class
        with raise_if_dask_computes():
            lazy = inputs.sel(band=bands).xf.predict(model)
        assert lazy.chunks is not None
        np.testing.assert_allclose(lazy.values[0], saved.sel(band=name).values, atol=1e-5)
        eager = inputs.sel(band=bands).compute().xf.predict(model)
        np.testing.assert_allclose(eager.values, lazy.values, atol=1e-5)
        # chip-and-stitch without seams: blockwise (64 px blocks) equals one whole-scene pass
        # away from the scene's edges, where padding differs; the block seams at 64 px are in
        whole = model.predict_proba(inputs.sel(band=bands).values[None])[0, 0]
        inner = (slice(32, -32), slice(32, -32))
        np.testing.assert_allclose(lazy.values[0][inner], whole[inner], atol=1e-4)


def test_config_toml_round_trip_and_errors(tmp_path):
    config = water.Config(out_dir=str(tmp_path), chip_size=64, chip_stride=64, epochs=3)
    path = config.to_toml(tmp_path / "water.toml")
    assert water.Config.from_toml(path) == config
    with pytest.raises(ConfigError, match="unknown config key"):
        water.Config.from_dict({"chip": 512})
    with pytest.raises(ConfigError, match="chip_size"):
        water.Config.from_dict({"chip_size": 30})  # not a multiple of 2 ** depth
    with pytest.raises(ConfigError, match="n_members' must be >= 1; got 0"):
        water.Config(n_members=0)
    with pytest.raises(ConfigError, match="sar_only_bands"):
        water.Config(sar_only_bands=("HH", "VV"))
    with pytest.raises(ConfigError, match="optical_source_bands"):
        water.Config(optical_source_bands=("B4",))
    with pytest.raises(ConfigError, match="label_land_values"):
        water.Config(label_water_values=(1.0,), label_land_values=(1.0,))
    with pytest.raises(ConfigError, match="must be"):
        water.Config.from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="water Config"):
        water.run({"out_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="sar_calibration"):
        water.Config(sar_calibration="palsar_dn")  # the synthetic scene's SAR is in dB already
    with pytest.raises(ConfigError, match="bounds"):
        water.Config(source="ee", bounds=None)
    with pytest.raises(ConfigError, match="label_source"):
        water.Config(source="stac", label_source="")
    for fields in water.real_sources().values():
        assert water.Config(**fields).source == fields["source"]


def test_old_key_names_load_with_a_warning():
    """The one dialect: ``chunk`` and ``train_fraction`` are read as ``chunks`` and
    ``holdout_fraction``, with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match="'chunk' is now 'chunks'"):
        assert water.Config.from_dict({"chunk": 32}).chunks == 32
    with pytest.warns(DeprecationWarning, match="'train_fraction' is now 'holdout_fraction'"):
        config = water.Config.from_dict({"train_fraction": 0.7})
    assert config.holdout_fraction == pytest.approx(0.3)
    with pytest.warns(DeprecationWarning, match="'region' is now 'bounds'"):
        config = water.Config.from_dict({"source": "ee", "region": [0, 0, 3000, 3000]})
    assert config.bounds == (0.0, 0.0, 3000.0, 3000.0)


#: A tiny run (the same network and chips as the Earth Engine test: compiled once).
TINY = ["size=64", "chunks=64", "n_chips=8", "epochs=1", "figures=false"]


def test_hard_scene_fusion_predicts_under_clouds_from_copies_without_each_sensor(tmp_path):
    """The optical's NaN cloud cores: filled, flagged by optical_valid, and still mapped."""
    config = water.Config(out_dir=str(tmp_path / "w"), size=64, chunks=64, n_chips=8, epochs=1,
                          figures=False, difficulty="hard")  # fmt: skip
    result = water.run(config)
    raw = _open(result, "inputs").values
    unet = _open(result, "unet_inputs")
    cloud = np.isnan(raw[2:6]).all(axis=0)
    assert 0.01 < cloud.mean() < 0.9  # thick cloud cores in the optical
    optical_valid = unet.sel(band="optical_valid").values
    np.testing.assert_array_equal(optical_valid, (~np.isnan(raw[2:6]).any(axis=0)) * 1.0)
    # the SAR is missing (sar_valid 0) exactly in radar shadow and layover, from the DEM
    hidden = (raw[-1] == 1) | (raw[-2] <= 0)
    assert 0.01 < hidden.mean() < 0.3  # the hard scene's eastern bluffs
    np.testing.assert_array_equal(unet.sel(band="sar_valid").values, (~hidden) * 1.0)
    assert np.isnan(raw[:2, hidden]).all() and np.isfinite(raw[:2, ~hidden]).all()
    filled = unet.sel(band=BANDS).values
    assert np.isfinite(filled).all()
    np.testing.assert_array_equal(filled[~np.isnan(raw)], raw[~np.isnan(raw)])
    fusion = xf.load_model(result.out_dir / "model" / "fusion")
    means = np.asarray(fusion.config_["input_mean"])
    # a cloud core's optical is filled with the band's mean over the chips, which the U-Net
    # standardises to 0; the chip means differ from the model's (copies without the optical)
    chips_mean = filled[2:6][:, cloud][:, 0]
    assert np.all(np.abs(chips_mean - means[2:6]) < 0.2)
    # old behaviour: NaN wherever any band is NaN; now a map under every cloud core
    water_map = _open(result, "water")
    assert np.isfinite(water_map.sel(band="fusion").values[cloud]).all()
    assert np.isfinite(water_map.sel(band="sar_only").values).all()
    # the SAR + optical model trains on every chip, and on it without SAR and without optical
    assert fusion.training_["n_samples"] == 3 * result.metrics["n_chips"]
    sar_only = xf.load_model(result.out_dir / "model" / "sar_only")
    assert sar_only.training_["n_samples"] == result.metrics["n_chips"]
    off = water.run(dataclasses.replace(config, out_dir=str(tmp_path / "off"),
                                        modality_dropout=False, n_members=2))  # fmt: skip
    model = xf.load_model(off.out_dir / "model" / "fusion")
    assert model.training_["n_samples"] == off.metrics["n_chips"]
    assert len(model.members()) == 2  # n_members reaches both U-Nets
    assert len(xf.load_model(off.out_dir / "model" / "sar_only").members()) == 2


def test_difficulty_hard_runs_on_the_hard_scene(tmp_path):
    """``--set difficulty=hard`` reads the hard scene: SAR-dark land, clouds over the optical."""
    from xfusion.cli import main

    out = tmp_path / "hard"
    sets = [arg for item in [*TINY, "difficulty=hard"] for arg in ("--set", item)]
    assert main(["run", "water", "--out", str(out), "--quiet", *sets]) == 0
    hard = synthetic_scene("water", seed=0, size=64, difficulty="hard")
    expected = np.concatenate(
        [hard["sar"].isel(time=0).values, hard["optical"].isel(time=0).values[:4],
         hard["terrain"].values]
    )  # fmt: skip
    inputs = xr.open_zarr(out / "outputs.zarr", group="inputs")["inputs"].values
    # NaN in the same places, and in the SAR where the terrain hides the ground
    hidden = (inputs[-1] == 1) | (inputs[-2] <= 0)
    expected[:2, hidden] = np.nan
    np.testing.assert_allclose(inputs[:8], expected, rtol=1e-6)
    assert inputs[-1].sum() > 0  # the hard scene's bluffs cast radar shadow
    _check_geometry(inputs, hard["terrain"].sel(band="DEM").values)
    assert np.isnan(inputs[2:6]).any()  # thick cloud cores: the standard scene has none
    standard = synthetic_scene("water", seed=0, size=64)["sar"].isel(time=0).values
    assert not np.allclose(inputs[:2], standard)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baselines"]["metric"] == "iou" and isinstance(metrics["beats_baseline"], bool)
    assert water.Config.from_toml(out / "config.toml").difficulty == "hard"


def _palsar_dn(db: np.ndarray) -> np.ndarray:
    return np.round(np.sqrt(10 ** ((db + 83.0) / 10.0))).astype(np.uint16)


def test_earth_engine_path_offline(tmp_path):
    """The real-source configuration, answered by the offline Earth Engine on a tiny grid."""
    from xfusion.testing.ee import FakeImage, fake_earth_engine

    small = synthetic_scene("water", seed=1, size=64)
    gbox = xf.grids.geobox_of(small["sar"])
    fields = water.real_sources()["ee"]
    sar = small["sar"].isel(time=0).values
    optical = small["optical"].isel(time=0).values
    terrain = small["terrain"].values
    label = small["truth_water"].isel(band=0).values
    dn = _palsar_dn(sar)
    gsw = np.where(label == 1, 3, np.where(label == 0, 1, 2)).astype(np.uint8)  # 2: seasonal
    collections = {
        fields["sar_source"]: [FakeImage({"HH": dn[0], "HV": dn[1]}, grid=gbox, time="2010-06-01")],
        fields["label_source"]: [
            FakeImage({"waterClass": gsw}, grid=gbox, time="2010-01-01"),
            FakeImage({"waterClass": np.ones_like(gsw)}, grid=gbox, time="2011-01-01"),
        ],
    }
    images = {
        fields["optical_source"]: FakeImage(
            dict(zip(fields["optical_source_bands"], optical, strict=True)), grid=gbox
        ),
        fields["terrain_source"]: FakeImage(
            dict(zip(fields["terrain_source_bands"], terrain, strict=True)), grid=gbox
        ),
    }
    left, bottom, right, top = gbox.boundingbox
    config = water.Config(
        **{
            **fields,
            "out_dir": str(tmp_path),
            "bounds": (left, bottom, right, top),
            "chunks": 64,
            "chip_size": 32,
            "chip_stride": None,
            "n_chips": 16,
            "widths": (8, 16),
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 0.01,
            "figures": False,
        }
    )
    with fake_earth_engine(collections, images) as fake:
        res = water.run(config)
    assert fake.pixel_requests  # pixels came through computePixels
    inputs = res.cubes["inputs"]
    assert inputs.band.values.tolist() == BANDS
    expected_db = 10 * np.log10(dn.astype(np.float64) ** 2) - 83.0
    np.testing.assert_allclose(inputs.values[:2], expected_db, atol=1e-4)
    np.testing.assert_allclose(inputs.values[2:6], optical, rtol=1e-6)
    np.testing.assert_allclose(inputs.values[6:8], terrain, rtol=1e-6)
    _check_geometry(inputs.values, terrain[0])
    # JRC classes: 3 permanent water, 1 land, 2 seasonal water is no data; the 2011 image is
    # outside the date range
    np.testing.assert_array_equal(
        res.cubes["labels"].values, np.where(np.isnan(label), np.nan, label)
    )
    assert "iou_all" not in res.metrics and "sar_only_iou_all" not in res.metrics  # no truth
    assert 0 <= res.metrics["baseline_iou"] <= 1 and 0 <= res.metrics["iou"] <= 1
    # the baselines are scored against the labels alone, like the models
    assert res.metrics["baselines"]["model_iou"] == res.metrics["iou"]
    assert rioxarray.open_rasterio(tmp_path / "water.tif").rio.crs.to_epsg() == 32615


def test_same_metrics_on_a_process_cluster(result, tmp_path):
    distributed = pytest.importorskip("distributed")
    config = water.Config(out_dir=str(tmp_path), n_members=1)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        other = water.run(config)
    for key, value in result.metrics.items():
        if isinstance(value, float):
            assert other.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert other.metrics[key] == value, key
