"""The downscale recipe end to end on small synthetic scenes (STAC and offline Earth Engine)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio.warp
import rioxarray
import xarray as xr
from rasterio.enums import Resampling
from skimage.feature import local_binary_pattern
from sklearn.linear_model import Ridge as SkRidge
from sklearn.metrics import mean_squared_error, r2_score

import xfusion as xf
from xfusion.datasets import synthetic_scene
from xfusion.errors import ConfigError, GridError, InputError
from xfusion.recipes import downscale
from xfusion.recipes._base import coarsening_factor
from xfusion.testing import raise_if_dask_computes

FACTOR = 5
# a tiny configuration shared by the process-cluster and Earth Engine runs (same compiled programs)
TINY = dict(
    size=60,
    chunks=30,
    widths=(8,),
    epochs=2,
    n_patches=6,
    n_validation_patches=2,
    validation_fraction=0.34,
    figures=False,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return downscale.run(downscale.Config(out_dir=str(tmp_path_factory.mktemp("downscale"))))


@pytest.fixture(scope="module")
def scene():
    return synthetic_scene("downscale", seed=0, size=downscale.Config().size)


def _open(result, group: str) -> xr.DataArray:
    return xr.open_zarr(result.out_dir / "outputs.zarr", group=group)[group]


def _heldout_columns(n_coarse: int, fraction: float) -> slice:
    """The eastern strip of ``fraction`` of the width, in whole coarse pixels."""
    return slice((n_coarse - round(fraction * n_coarse)) * FACTOR, None)


def _block_mean(a: np.ndarray) -> np.ndarray:
    *lead, h, w = a.shape
    return a.reshape(*lead, h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean(axis=(-3, -1))


def test_quality_bar_against_the_truth(result, scene):
    """U-Net fine RMSE <= 0.8 x bilinear on the held-out strip; metrics equal scikit-learn's."""
    truth = scene["truth_sif"].values[:, 0]
    cols = _heldout_columns(scene["tropomi"].sizes["x"], downscale.Config().holdout_fraction)
    unet = _open(result, "downscaled").values[:, 0]
    m = result.metrics
    assert m["n_heldout_pixels"] == truth[0][:, cols].size == 120 * 40
    for key, name in (("", "downscaled"), ("bilinear_", "bilinear"), ("ridge_", "ridge")):
        pred = _open(result, name).values[:, 0]
        t, p = truth[:, :, cols].ravel(), pred[:, :, cols].ravel()
        assert np.isfinite(p).all(), name
        assert m[f"{key}rmse"] == pytest.approx(math.sqrt(mean_squared_error(t, p)), rel=1e-5)
        assert m[f"{key}r2"] == pytest.approx(r2_score(t, p), rel=1e-5)
    # the quality bar of the issue, and the U-Net also beats the pixel-ridge baseline
    assert m["rmse"] <= 0.8 * m["bilinear_rmse"]
    assert m["rmse"] < m["ridge_rmse"]
    assert m["r2"] > 0.9
    # aggregation consistency: the U-Net averaged back to 5 km against the coarse observation
    coarse = scene["tropomi"].values[:, 0]
    ccols = slice(cols.start // FACTOR, None)
    expected = math.sqrt(np.mean((_block_mean(unet)[:, :, ccols] - coarse[:, :, ccols]) ** 2))
    assert m["aggregation_rmse"] == pytest.approx(expected, rel=1e-5)
    assert m["aggregation_rmse"] < m["bilinear_aggregation_rmse"]
    assert m["factor"] == FACTOR and len(m["periods"]) == 8
    # the baselines block: the U-Net against the better of bilinear and ridge, by RMSE
    block = m["baselines"]
    assert (block["metric"], block["baseline"]) == ("rmse", "bilinear")
    assert (block["model_rmse"], block["baseline_rmse"]) == (m["rmse"], m["bilinear_rmse"])
    assert block["scores"] == {
        "bilinear": {"rmse": m["bilinear_rmse"]},
        "ridge": {"rmse": m["ridge_rmse"]},
    }
    assert m["rmse"] <= 0.9 * m["bilinear_rmse"]  # the default margin: 10 % lower
    assert m["beats_baseline"] is True


def test_bilinear_baseline_matches_gdal(result, scene):
    coarse = scene["tropomi"].isel(band=0)
    fine_grid = xf.grids.geobox_of(scene["modis"])
    expected = np.full((coarse.sizes["time"], *fine_grid.shape), np.nan, np.float32)
    for i in range(coarse.sizes["time"]):
        rasterio.warp.reproject(
            coarse.values[i],
            expected[i],
            src_transform=xf.grids.geobox_of(coarse).affine,
            src_crs="EPSG:32615",
            dst_transform=fine_grid.affine,
            dst_crs="EPSG:32615",
            resampling=Resampling.bilinear,
            src_nodata=np.nan,
            dst_nodata=np.nan,
        )
    ours = _open(result, "bilinear").values[:, 0]
    inner = (slice(None), slice(5, -5), slice(5, -5))  # GDAL's own edge handling aside
    np.testing.assert_allclose(ours[inner], expected[inner], rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Applying `local_binary_pattern`:UserWarning")
def test_features_lbp_of_the_coarse_field(result, scene):
    features = _open(result, "features")
    assert list(features.band.values) == ["NDVI", "EVI", "SIF743_bilinear", "SIF743_lbp"]
    np.testing.assert_allclose(
        features.sel(band=["NDVI", "EVI"]).values, scene["modis"].values, rtol=1e-6
    )
    coarse = scene["tropomi"].values[:, 0]
    for i in (0, 5):
        codes = local_binary_pattern(coarse[i].astype(np.float64), 8, 1, method="uniform")
        expected = np.repeat(np.repeat(codes, FACTOR, axis=0), FACTOR, axis=1)
        np.testing.assert_array_equal(features.sel(band="SIF743_lbp").values[i], expected)


def test_ridge_baseline_matches_scikit_learn(result, scene):
    config = downscale.Config()
    vi = _block_mean(scene["modis"].values)  # (time, band, y, x) at 5 km
    sif = scene["tropomi"].values[:, 0]
    keep = np.ones(sif.shape[1:], bool)
    keep[:, _heldout_columns(sif.shape[-1], config.holdout_fraction).start // FACTOR :] = False
    X = np.moveaxis(vi, 1, -1)[:, keep].reshape(-1, vi.shape[1])
    y = sif[:, keep].ravel()
    reference = SkRidge(alpha=config.ridge_alpha).fit(X, y)
    np.testing.assert_allclose(result.metrics["ridge_coef"], reference.coef_, rtol=1e-3)
    fine = np.moveaxis(scene["modis"].values, 1, -1)
    expected = reference.predict(fine.reshape(-1, 2)).reshape(fine.shape[:-1])
    np.testing.assert_allclose(_open(result, "ridge").values[:, 0], expected, rtol=1e-3, atol=1e-4)


def test_outputs_reopen(result):
    out = result.out_dir
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]
    downscaled = _open(result, "downscaled")
    assert downscaled.dims == ("time", "band", "y", "x")
    assert _open(result, "coarse").sizes["x"] * FACTOR == downscaled.sizes["x"]
    regions = _open(result, "regions").values
    assert set(np.unique(regions)) == {downscale.TRAIN, downscale.VALIDATION, downscale.HELDOUT}
    cog = rioxarray.open_rasterio(out / "downscaled.tif")
    assert cog.rio.crs.to_epsg() == 32615
    assert cog.sizes["band"] == downscaled.sizes["time"]
    np.testing.assert_array_equal(cog.values, downscaled.values[:, 0])
    np.testing.assert_allclose(cog.x.values, downscaled.x.values)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rmse"] == pytest.approx(result.metrics["rmse"])
    assert set(result.figures) == {"maps", "panels", "loss"}
    for path in result.figures.values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ridge = xf.load_model(out / "model" / "ridge")
    np.testing.assert_allclose(np.ravel(ridge.coef_), result.metrics["ridge_coef"])


def test_saved_unet_predicts_lazily_and_identically(result):
    model = xf.load_model(result.out_dir / "model" / "unet")
    assert model.coarse_factor == FACTOR
    features = _open(result, "features").chunk({"y": 60, "x": 60})
    with raise_if_dask_computes():
        lazy = features.xf.predict(model)
    assert lazy.chunks is not None
    expected = _open(result, "downscaled").values
    np.testing.assert_allclose(lazy.values, expected, rtol=1e-4, atol=1e-4)
    eager = features.isel(time=[2]).compute().xf.predict(model)
    np.testing.assert_allclose(eager.values, expected[[2]], rtol=1e-4, atol=1e-4)


def test_scores_match_numpy_and_scikit_learn():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=200)
    pred = truth + rng.normal(scale=0.3, size=200)
    pred[:5] = np.nan
    scores = downscale.regression_scores(pred, truth)
    ok = np.isfinite(pred)
    assert scores["n"] == 195
    assert scores["rmse"] == pytest.approx(math.sqrt(mean_squared_error(truth[ok], pred[ok])))
    assert scores["r2"] == pytest.approx(r2_score(truth[ok], pred[ok]))
    fine = rng.normal(size=(2, 10, 15))
    coarse = rng.normal(size=(2, 2, 3))
    expected = math.sqrt(np.mean((_block_mean(fine) - coarse) ** 2))
    assert downscale.aggregation_rmse(fine, coarse, FACTOR) == pytest.approx(expected)


def test_config_toml_round_trip_and_errors(tmp_path):
    config = downscale.Config(out_dir=str(tmp_path), epochs=7, widths=(8, 16), smoothness=0.1)
    path = config.to_toml(tmp_path / "downscale.toml")
    assert downscale.Config.from_toml(path) == config
    with pytest.raises(ConfigError, match="unknown config key"):
        downscale.Config.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="patch_size"):
        downscale.Config.from_dict({"patch_size": 18})
    with pytest.raises(ConfigError, match="widths"):
        downscale.Config.from_dict({"widths": "16"})
    with pytest.raises(ConfigError, match="coarse_collection"):
        downscale.Config(source="ee")
    with pytest.raises(ConfigError, match="integer factor"):
        downscale.Config(source="ee", coarse_collection="x", coarse_resolution=3500.0)
    with pytest.raises(ConfigError, match="resolution factor"):
        downscale.Config(source="ee", coarse_collection="x", patch_size=32, widths=(8,))
    with pytest.raises(ConfigError, match="holdout_fraction"):
        downscale.Config(holdout_fraction=1.0)
    with pytest.raises(ConfigError, match=r"too small|does not fit"):
        downscale.run(downscale.Config(out_dir=str(tmp_path / "out"), size=40, patch_size=40))
    # every real-source field set is a valid configuration
    for fields in downscale.real_sources().values():
        assert downscale.Config(**fields).source == fields["source"]


def test_unmatched_grids_are_a_grid_error():
    scene = synthetic_scene("downscale", size=40)
    coarse = scene["tropomi"].isel(x=slice(1, None))
    with pytest.raises(GridError, match="integer factor"):
        coarsening_factor(scene["modis"], coarse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("downscale-tiny")
    return downscale.run(downscale.Config(out_dir=str(out), **TINY))


def test_same_metrics_on_a_process_cluster(tiny, tmp_path):
    distributed = pytest.importorskip("distributed")
    config = downscale.Config(out_dir=str(tmp_path), **TINY)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        other = downscale.run(config)
    flat = dict(_flat(other.metrics))
    for key, value in _flat(tiny.metrics):
        if isinstance(value, float):
            assert flat[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        else:
            assert flat[key] == value, key


def _flat(metrics: dict, prefix: str = ""):
    """``(key, value)`` of nested metrics, nested keys joined with dots."""
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_earth_engine_path_offline(tiny, tmp_path):
    from xfusion.testing.ee import FakeImage, fake_earth_engine

    small = synthetic_scene("downscale", seed=0, size=TINY["size"])
    modis, sif = small["modis"], small["tropomi"]
    fine_grid, coarse_grid = xf.grids.geobox_of(modis), xf.grids.geobox_of(sif)
    dn = np.round(modis.values / 1e-4).astype(np.int16)  # MOD13 digital numbers
    vi_images, sif_images = [], []
    for i, t in enumerate(modis.time.values):
        day = str(t)[:10]
        bands = {"NDVI": dn[i, 0], "EVI": dn[i, 1]}
        vi_images.append(FakeImage(bands, grid=fine_grid, time=day, id=f"MODIS/061/MOD13A2/{i}"))
        sif_images.append(
            FakeImage({"SIF743": sif.values[i, 0]}, grid=coarse_grid, time=day, id=f"SIF/{i}")
        )
    fields = {
        **downscale.real_sources()["ee"],
        **TINY,
        "coarse_collection": "users/test/SIF",
        "bounds": tuple(fine_grid.boundingbox),
        "patch_size": 20,
        "center": None,
    }
    config = downscale.Config(out_dir=str(tmp_path), **fields)
    with fake_earth_engine({"MODIS/061/MOD13A2": vi_images, "users/test/SIF": sif_images}):
        res = downscale.run(config)
    # the same data through Earth Engine (digital numbers x 1e-4) as through the STAC catalog
    np.testing.assert_allclose(
        res.cubes["features"].sel(band=["NDVI", "EVI"]).values, dn * 1e-4, rtol=1e-6
    )
    np.testing.assert_allclose(res.cubes["coarse"].values, sif.values, rtol=1e-6)
    assert "rmse" not in res.metrics  # no fine truth from a real source
    # without a fine truth the baselines are compared with the coarse observation
    assert res.metrics["baselines"]["metric"] == "aggregation_rmse"
    assert res.metrics["baselines"]["model_aggregation_rmse"] == res.metrics["aggregation_rmse"]
    assert res.metrics["aggregation_rmse"] == pytest.approx(tiny.metrics["aggregation_rmse"], 0.1)
    assert rioxarray.open_rasterio(tmp_path / "downscaled.tif").rio.crs.to_epsg() == 32615


# ---- coarse values over partial footprints: the hard scene ------------------------------------

HARD_TINY = dict(
    difficulty="hard",
    size=300,  # 3 x 3 tiles of 100 px: 4 training, 2 validation and 3 held-out tiles per date
    widths=(8,),
    epochs=2,
    figures=False,
    constrain="shift",
)


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    out = tmp_path_factory.mktemp("downscale-hard")
    return downscale.run(downscale.Config(out_dir=str(out), **HARD_TINY))


def _weighted_cells(field, weights, f=100):
    *lead, h, w = field.shape
    shape = (*lead, h // f, f, w // f, f)
    wts = weights.reshape(shape)
    return (wts * field.reshape(shape)).sum(axis=(-3, -1)) / wts.sum(axis=(-3, -1))


def test_hard_scene_trains_on_footprints_and_keeps_the_constraint(hard):
    scene = synthetic_scene("downscale", seed=0, size=300, difficulty="hard")
    config = downscale.Config(**HARD_TINY)
    assert config.patch_size == 100 and config.start == "2016-06-15"  # the hard defaults
    weights = scene["footprint"].values[:, 0]
    np.testing.assert_array_equal(hard.cubes["footprint"].values[:, 0], weights)
    m = hard.metrics
    assert m["footprints"] is True and m["constrain"] == "shift" and m["factor"] == 100
    assert m["n_train_samples"] == 4 * 4 and m["n_validation_samples"] == 2 * 4
    labels = scene["tropomi"].values[:, 0]
    held = np.zeros((3, 3), bool)
    held[:, 2] = True  # the eastern column of tiles
    # every output, shifted per tile, averages back exactly to the footprint-weighted labels
    for key, name in (("", "downscaled"), ("bilinear_", "bilinear"), ("ridge_", "ridge")):
        field = hard.cubes[name].values[:, 0]
        cells = _weighted_cells(field.astype(np.float64), weights)
        np.testing.assert_allclose(cells, labels, rtol=1e-4, atol=1e-5)
        assert m[f"{key}aggregation_max_error_fraction"] < 1e-4
        assert m[f"{key}aggregation_rmse"] < 1e-4
    # the truth metrics are the held-out strip's, against the full fine truth
    truth = scene["truth_sif"].values[:, 0][:, :, 200:]
    pred = hard.cubes["downscaled"].values[:, 0][:, :, 200:]
    assert m["rmse"] == pytest.approx(math.sqrt(mean_squared_error(truth.ravel(), pred.ravel())),
                                      rel=1e-5)  # fmt: skip
    # the ridge is fitted on footprint-weighted means of the indices over the training tiles
    modis = scene["modis"].values
    vi = _weighted_cells(modis, np.broadcast_to(weights[:, None], modis.shape))  # (t, b, 3, 3)
    X = np.moveaxis(vi, 1, -1)[:, ~held].reshape(-1, 2)
    reference = SkRidge(alpha=config.ridge_alpha).fit(X, labels[:, ~held].ravel())
    np.testing.assert_allclose(m["ridge_coef"], reference.coef_, rtol=1e-3)


def test_match_coarse_shift_and_scale_eager_and_chunked():
    from xfusion.preprocess.footprints import match_coarse

    rng = np.random.default_rng(2)
    fine = xr.DataArray(rng.gamma(2.0, size=(2, 1, 10, 15)), dims=("time", "band", "y", "x"))
    coarse = xr.DataArray(rng.gamma(2.0, size=(2, 1, 2, 3)), dims=("time", "band", "y", "x"))
    coarse[0, 0, 1, 2] = np.nan  # no observation: the cell is left as it is
    weights = xr.DataArray(rng.random((2, 1, 10, 15)) * (rng.random((2, 1, 10, 15)) > 0.5),
                           dims=("time", "band", "y", "x"))  # fmt: skip
    weights[1, 0, :5, :5] = 0.0  # no weight: left as it is
    w = weights.values
    for method in ("shift", "scale"):
        eager = match_coarse(fine, coarse, footprint=weights, method=method)
        with raise_if_dask_computes():
            lazy = match_coarse(fine.chunk({"y": 5, "x": 5}), coarse, footprint=weights.chunk(5),
                                method=method)  # fmt: skip
        assert lazy.chunks is not None
        np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-12)
        out = eager.values
        with np.errstate(invalid="ignore"):  # the cell without weight is 0 / 0
            cells = (out * w).reshape(2, 1, 2, 5, 3, 5).sum(axis=(3, 5)) / w.reshape(
                2, 1, 2, 5, 3, 5
            ).sum(axis=(3, 5))
        observed = np.isfinite(coarse.values)
        observed[1, 0, 0, 0] = False
        np.testing.assert_allclose(cells[observed], coarse.values[observed], rtol=1e-10)
        np.testing.assert_array_equal(out[0, 0, 5:, 10:], fine.values[0, 0, 5:, 10:])
        np.testing.assert_array_equal(out[1, 0, :5, :5], fine.values[1, 0, :5, :5])
        block = out[0, 0, :5, :5]
        orig = fine.values[0, 0, :5, :5]
        if method == "shift":  # the pattern inside the cell is kept
            np.testing.assert_allclose(block - block[0, 0], orig - orig[0, 0], atol=1e-12)
        else:
            np.testing.assert_allclose(block / block[0, 0], orig / orig[0, 0], rtol=1e-12)
    with pytest.raises(InputError, match="integer factor"):
        match_coarse(fine.isel(x=slice(1, None)), coarse)
    with pytest.raises(InputError, match="method must be one of"):
        match_coarse(fine, coarse, method="ratio")
