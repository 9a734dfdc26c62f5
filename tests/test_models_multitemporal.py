"""xfusion.models.multitemporal: training sets, forecasts and clusters on small hand-made stacks.

The references are plain numpy: the pixel counts and weights from boolean arrays, the forecast
against an image that is an exact linear function of its lags, the clusters against the
brightened block that was put into the differences.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from tests.conftest import synthetic_cube
from xfusion.errors import InputError
from xfusion.models import multitemporal as mt
from xfusion.models.evaluation import holdout_tiles
from xfusion.testing import raise_if_dask_computes

BANDS = ["B1", "B2", "B3"]
SIZE = 24


def _cube(values: np.ndarray, chunked: bool) -> xr.DataArray:
    chunks = {"y": 12, "x": 12} if chunked else None
    return synthetic_cube(values.astype("float32"), BANDS, res=30.0, chunks=chunks)


def _stack(chunked: bool = True, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """Lags where each image is 0.7 × the lag before + 0.3 × the one before that (linear)."""
    rng = np.random.default_rng(seed)
    lags = {k: rng.uniform(0.05, 0.4, (len(BANDS), SIZE, SIZE)) for k in (2, 3)}
    lags[1] = 0.7 * lags[2] + 0.3 * lags[3]
    lags[3][:, :4, :] = np.nan  # the oldest lag misses four rows: no lag-set pixel there
    image = 0.7 * lags[1] + 0.3 * lags[2]
    qa = np.zeros((SIZE, SIZE), bool)
    qa[10:13, 10:13] = True  # the product's cloud flags
    image[:, 10:13, 10:13] += 0.3
    stack = {
        "lags": {k: _cube(v, chunked) for k, v in lags.items()},
        "image": _cube(image, chunked).rename("image"),
        "qa_cloud": _cube(np.stack([qa] * len(BANDS)), chunked).isel(band=0, drop=True) > 0,
    }
    return stack, {"lags": lags, "image": image, "qa": qa}


@pytest.mark.parametrize("chunked", [False, True])
def test_training_weights_count_the_two_sets_and_share_beta(chunked):
    stack, arrays = _stack(chunked)
    weights = mt.training_weights(
        stack, beta=0.4, dilation_radius=1, holdout_tile=6, holdout_fraction=0.25, seed=3
    )
    held = holdout_tiles(stack["image"], 6, 0.25, seed=3).values
    lags = arrays["lags"]
    lag_ok = np.isfinite(lags[3]).all(0) & ~held
    grown = ndimage.binary_dilation(arrays["qa"], structure=ndimage.generate_binary_structure(2, 1))
    image_ok = ~grown & ~held
    assert (weights["n"], weights["m"]) == (int(lag_ok.sum()), int(image_ok.sum()))
    np.testing.assert_array_equal(weights["holdout"].values, held)
    lag_w, image_w = weights["lag"].values, weights["image"].values
    np.testing.assert_array_equal(np.isfinite(lag_w), lag_ok)
    np.testing.assert_array_equal(np.isfinite(image_w), image_ok)
    assert np.nansum(lag_w) == pytest.approx(0.4, rel=1e-5)
    assert np.nansum(image_w) == pytest.approx(0.6, rel=1e-5)


def test_training_weights_without_a_training_pixel_is_an_input_error():
    stack, _ = _stack(chunked=False)
    stack["lags"][3] = stack["lags"][3] * np.nan
    with pytest.raises(InputError, match="no training pixels: 0 in the lag set"):
        mt.training_weights(
            stack, beta=0.5, dilation_radius=0, holdout_tile=6, holdout_fraction=0.25
        )


def test_ridge_forecast_recovers_a_linear_image_and_predicts_lazily():
    stack, arrays = _stack(chunked=True)
    weights = mt.training_weights(
        stack, beta=0.5, dilation_radius=1, holdout_tile=6, holdout_fraction=0.25, seed=1
    )
    models = mt.fit_forecasts(
        stack,
        weights,
        BANDS,
        ridge_alpha=1e-9,
        kernel_alpha=1e-3,
        kernel_gamma=10.0,
        kernel_sampling_factor=0.2,
        seed=0,
    )
    assert set(models) == {"ridge", "kernel"}
    with raise_if_dask_computes():
        forecast = mt.forecast(stack, models["ridge"], BANDS)
    assert forecast.chunks is not None and forecast.band.values.tolist() == BANDS
    clear = ~arrays["qa"]
    # both training sets follow the same linear rule, so the weighted ridge recovers it
    error = np.abs(forecast.values - arrays["image"])[:, clear]
    assert np.nanmax(error) < 1e-3
    assert np.abs(forecast.values - arrays["image"])[:, ~clear].min() > 0.25  # the cloud
    features = mt.lag_features(stack["lags"][1], stack["lags"][2], BANDS)
    assert features.band.values.tolist() == [f"{b}_lag_{k}" for k in (1, 2) for b in BANDS]


def test_clusters_label_the_brightened_block_cloud():
    rng = np.random.default_rng(0)
    diff = rng.normal(0.0, 0.005, (len(BANDS), SIZE, SIZE))
    cloud = np.zeros((SIZE, SIZE), bool)
    cloud[4:12, 6:18] = True
    diff[:, cloud] += 0.25
    image = 0.2 + diff
    differences, image = _cube(diff, True), _cube(image, True)
    kmeans = mt.fit_clusters(
        differences, image, (2,), kmeans_sample=400, kmeans_init=2, cloud_threshold=0.02
    )
    with raise_if_dask_computes():
        masks = mt.cluster_masks(differences, kmeans, "kernel")
    assert masks.band.values.tolist() == ["k2"] and masks.attrs["forecast_model"] == "kernel"
    np.testing.assert_array_equal(masks.sel(band="k2").values == mt.CLOUD, cloud)
    assert mt.visible_bands(["B5", "B2", "B7", "B4"]) == [1, 3]
    assert mt.visible_bands(["red", "nir"]) == [0, 1]


def test_output_cubes_name_every_result_lazily_and_take_the_truth_at_the_image_time():
    stack, arrays = _stack(chunked=True)
    stack["time"] = np.datetime64("2015-06-23")
    weights = {"holdout": stack["image"].isel(band=0, drop=True) > 0.3}
    forecasts = {name: stack["lags"][1] * 0 + i for i, name in enumerate(mt.FORECAST_MODELS)}
    masks = stack["image"].isel(band=[0]).assign_coords(band=["k3"])
    times = np.array(["2015-06-08", "2015-06-23"], dtype="datetime64[ns]")
    cloud = np.stack([np.zeros((2, SIZE, SIZE)), np.stack([arrays["qa"], ~arrays["qa"]])])
    background = np.stack([arrays["lags"][2], arrays["lags"][1]])
    truth = {
        "cloud": synthetic_cube(cloud, ["cloud", "shadow"], times=times, res=30.0),
        "background": synthetic_cube(background, BANDS, times=times, res=30.0),
    }
    with raise_if_dask_computes():
        cubes = mt.output_cubes(stack, weights, forecasts, stack["image"] * 0, masks, truth)
    assert list(cubes) == [
        "image", "forecast_ridge", "forecast_kernel", "differences", "cloudmask", "qa_cloud",
        "holdout", "persistence", "truth_cloud", "truth_shadow", "truth_background",
    ]  # fmt: skip
    assert cubes["qa_cloud"].dtype == np.float32 and cubes["holdout"].dtype == np.float32
    np.testing.assert_array_equal(cubes["qa_cloud"].values, arrays["qa"].astype(np.float32))
    np.testing.assert_array_equal(cubes["persistence"].values, arrays["lags"][1].astype("f4"))
    assert float(cubes["forecast_kernel"].max()) == 1.0  # each model's own forecast
    np.testing.assert_array_equal(cubes["truth_cloud"].values, arrays["qa"])  # the 2nd time
    np.testing.assert_array_equal(cubes["truth_shadow"].values, ~arrays["qa"])
    np.testing.assert_array_equal(cubes["truth_background"].values, arrays["lags"][1])
    assert "truth_cloud" not in mt.output_cubes(stack, weights, forecasts, masks, masks)


def test_true_colour_stretches_b4_b3_b2_over_one_range_and_blacks_out_nan():
    values = np.array([[[0.1, np.nan]], [[0.2, 0.3]], [[0.3, 0.5]], [[0.9, 0.9]]])
    cube = synthetic_cube(values, ["B2", "B3", "B4", "B5"])
    image = mt.true_colour(cube, (0.1, 0.5))
    np.testing.assert_allclose(image[0, 0], [0.5, 0.25, 0.0])  # B4, B3, B2 of the first pixel
    np.testing.assert_allclose(image[0, 1], [1.0, 0.5, 0.0])  # B4 clipped, B2 NaN is black
    other = cube.assign_coords(band=["red", "green", "blue", "nir"])
    np.testing.assert_allclose(mt.true_colour(other, (0.0, 1.0))[0, 0], [0.1, 0.2, 0.3])


def test_plots_draw_every_panel_and_bar(tmp_path):
    stack, arrays = _stack(chunked=False)
    stack["time"] = np.datetime64("2015-06-23")
    weights = {"holdout": stack["image"].isel(band=0, drop=True) > 0.3}
    forecasts = dict.fromkeys(mt.FORECAST_MODELS, stack["lags"][1])
    masks = (stack["image"].isel(band=[0]) > 0.3).astype("f4").assign_coords(band=["k3"])
    cubes = mt.output_cubes(stack, weights, forecasts, stack["image"] - 0.2, masks)
    metrics = {"target_time": "2015-06-23T00:00:00", "accuracy": 0.9, "qa_accuracy": 0.8}
    fig = mt.plot_masks(
        cubes, {**metrics, "kappa": 0.5}, forecast_model="ridge", main="k3", path=tmp_path / "p.png"
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "image", "ridge forecast", "image − forecast (visible mean)", "QA cloud mask",
        "k-means mask (k3)",
    ]  # fmt: skip
    np.testing.assert_array_equal(fig.axes[3].images[0].get_array(), arrays["qa"])
    assert "accuracy 0.900 (QA 0.800), κ 0.500" in fig.texts[0].get_text()
    assert (tmp_path / "p.png").stat().st_size > 0
    rmse = {"persistence": 0.05, "ridge": 0.03, "kernel": 0.02}
    bars = mt.plot_forecast_errors(rmse, tmp_path / "b.png").axes[0].patches
    assert [b.get_height() for b in bars] == [0.05, 0.03, 0.02]
    assert (tmp_path / "b.png").is_file()
