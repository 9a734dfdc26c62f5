"""Maps of one class from several models: pixel baselines, maps, scores on common pixels."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import jaccard_score

from xfusion.errors import BandError, InputError
from xfusion.models.baselines import ThresholdClassifier
from xfusion.models.class_maps import (
    error_classes,
    fit_pixel_baselines,
    labelled_pixels,
    plot_class_maps,
    predict_maps,
    score_maps,
    threshold_map,
)
from xfusion.models.segmentation import segmentation_scores
from xfusion.testing import raise_if_dask_computes

BANDS = ["HH", "NIR"]


def _patches(seed: int = 0) -> xr.Dataset:
    """Water is dark in HH and in NIR; a third of the labels are no data."""
    rng = np.random.default_rng(seed)
    water = rng.random((6, 8, 8)) < 0.4
    hh = np.where(water, -20.0, -8.0) + rng.normal(0, 1.5, water.shape)
    nir = np.where(water, 0.05, 0.3) + rng.normal(0, 0.03, water.shape)
    inputs = np.stack([hh, nir], axis=1).astype(np.float32)
    inputs[0, 1, :2, :2] = np.nan  # a cloud over the optical
    target = water.astype(np.float32)
    target[rng.random(target.shape) < 0.3] = np.nan
    return xr.Dataset(
        {
            "inputs": (("sample", "band", "y", "x"), inputs),
            "target": (("sample", "y", "x"), target),
        },
        coords={"band": BANDS},
    )


def test_labelled_pixels_keep_missing_inputs_and_drop_no_labels():
    patches = _patches()
    table, target = labelled_pixels(patches)
    labelled = np.isfinite(patches["target"].values)
    assert len(table) == len(target) == labelled.sum()
    assert list(table.columns) == BANDS
    np.testing.assert_array_equal(target, patches["target"].values[labelled])
    hh = patches["inputs"].sel(band="HH").values
    np.testing.assert_array_equal(table["HH"].to_numpy(), hh[labelled])
    assert (
        table["NIR"].isna().sum()
        == np.isnan(patches["inputs"].sel(band="NIR").values[labelled]).sum()
        > 0
    )
    with pytest.raises(InputError, match="no 'target' variable"):
        labelled_pixels(patches.drop_vars("target"))


def test_fit_pixel_baselines_threshold_and_boosting():
    patches = _patches()
    fitted = fit_pixel_baselines(patches, ["HH"], seed=0)
    assert set(fitted) == {"otsu_HH", "hgb"}
    otsu = fitted["otsu_HH"]
    assert isinstance(otsu, ThresholdClassifier) and otsu.above_ is False  # water is dark
    assert -20.0 < otsu.threshold_ < -8.0
    table, target = labelled_pixels(patches)
    assert (fitted["hgb"].predict(table) == target).mean() > 0.95
    with pytest.raises(BandError, match="threshold_bands names band 'VV' not in patches"):
        fit_pixel_baselines(patches, ["VV"])


def test_predict_maps_one_band_per_model_lazily():
    patches = _patches()
    fitted = fit_pixel_baselines(patches, ["HH", "NIR"], seed=0)
    cube = patches["inputs"].isel(sample=1).chunk({"y": 4})
    with raise_if_dask_computes():
        maps = predict_maps(cube, fitted)
    assert maps.band.values.tolist() == ["otsu_HH", "otsu_NIR", "hgb"]
    assert maps.dims == ("band", "y", "x") and maps.chunks is not None
    table = cube.transpose("y", "x", "band").values.reshape(-1, 2)
    expected = fitted["otsu_NIR"].predict(table[:, 1:])  # Otsu reads its own band only
    np.testing.assert_array_equal(maps.sel(band="otsu_NIR").values.ravel(), expected)
    with pytest.raises(InputError, match="at least one model"):
        predict_maps(cube, {})


def test_threshold_map_keeps_no_data():
    probability = xr.DataArray(da.from_array(np.array([[0.1, 0.5, 0.51, np.nan]]), chunks=2))
    with raise_if_dask_computes():
        out = threshold_map(probability, 0.5)
    np.testing.assert_array_equal(out.values, [[0.0, 0.0, 1.0, np.nan]])
    assert out.dtype == np.float32 and out.attrs["threshold"] == 0.5
    with pytest.raises(InputError, match="threshold must be strictly between 0 and 1"):
        threshold_map(probability, 1.0)


def test_score_maps_alone_and_on_common_pixels():
    rng = np.random.default_rng(3)
    reference = (rng.random((10, 12)) < 0.4).astype(float)
    reference[:, :3] = np.nan  # not scored
    unet = np.where(rng.random(reference.shape) < 0.9, reference, 1 - reference)
    otsu = (rng.random(reference.shape) < 0.5).astype(float)
    otsu[5:, :] = np.nan  # the baseline has no value here
    maps = xr.DataArray(np.stack([unet, otsu]), dims=("band", "y", "x"),
                        coords={"band": ["unet", "otsu"]})  # fmt: skip
    alone = score_maps(maps, reference)
    ok = np.isfinite(reference)
    assert alone["unet"]["n"] == ok.sum()
    assert alone["unet"]["iou"] == pytest.approx(
        jaccard_score(reference[ok], np.nan_to_num(unet[ok]))
    )
    common = score_maps(maps, reference, common=True)
    both = ok & np.isfinite(otsu)
    assert common["unet"]["n"] == common["otsu"]["n"] == both.sum() < alone["unet"]["n"]
    assert common["unet"] == segmentation_scores(unet[both], reference[both])
    with pytest.raises(InputError, match=r"maps are \(10, 12\) but the reference is \(3,\)"):
        score_maps(maps, [1.0, 0.0, 1.0])


def test_error_classes():
    pred = np.array([[1.0, 1.0, 0.0, 0.0], [np.nan, 1.0, 0.0, 1.0]])
    ref = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, np.nan, 0.0, 1.0]])
    np.testing.assert_array_equal(error_classes(pred, ref), [[0, 1, 2, 0], [np.nan, np.nan, 0, 0]])
    with pytest.raises(InputError, match="prediction is"):
        error_classes(pred, ref[0])


def test_plot_class_maps_panels_errors_and_marker(tmp_path):
    reference = np.array([[1.0, 0.0, np.nan, 0.0]] * 3)
    unet = np.array([[1.0, 1.0, 0.0, 0.0]] * 3)
    holdout = np.zeros((3, 4), bool)
    holdout[:, 3:] = True
    inputs = [("SAR HH", np.zeros((3, 4)), {"cmap": "gray"})]
    fig = plot_class_maps([("U-Net", unet)], reference, inputs=inputs, errors_of=unet,
                          holdout=holdout, title="water", path=tmp_path / "maps.png")  # fmt: skip
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["SAR HH", "labels (blank: no data)", "U-Net",
                      "errors: grey ok, red false, blue missed"]  # fmt: skip
    errors = fig.axes[3].images[0].get_array()
    np.testing.assert_array_equal(np.ma.filled(errors, np.nan)[0], [0.0, 1.0, np.nan, 0.0])
    marker = [line.get_xdata()[0] for line in fig.axes[0].lines]
    assert marker and marker[0] == pytest.approx(2.5)  # the strip's first column, 3, - 0.5
    assert (tmp_path / "maps.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="two colours"):
        plot_class_maps([], reference, colors=["red"])
