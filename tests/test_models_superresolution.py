"""Super-resolution steps (areas, patches, statistics, maps, VIIRS correction) against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xfusion.errors import GridError, InputError
from xfusion.grids import assign_grid, grid
from xfusion.models import Ridge
from xfusion.models import superresolution as sr
from xfusion.preprocess.holdout import patch_pixels
from xfusion.testing import raise_if_dask_computes

SIZE, FACTOR = 32, 4
TRAIN, EVAL = (0.0, 0.0, 20.0, 32.0), (20.0, 0.0, 32.0, 32.0)  # columns 0-19 and 20-31


def _cube(values, bands, resolution=1.0):
    gbox = grid((0, 0, SIZE, SIZE), "EPSG:32630", resolution)
    da = xr.DataArray(np.asarray(values, np.float32), dims=("band", "y", "x"))
    return assign_grid(da.assign_coords(band=bands), gbox)


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    features = _cube(rng.random((2, SIZE, SIZE)), ["a", "b"])
    target = _cube(rng.random((1, SIZE, SIZE)) * 3 + 1, ["v"])
    groups = np.zeros((SIZE, SIZE))
    groups[16:] = 1  # two groups: the north and the south half
    return features, target, xr.DataArray(groups, dims=("y", "x"))


def _numpy_labels(groups):
    part = np.zeros((SIZE, SIZE))
    part[:, :20], part[:, 20:] = 1, 2
    return 3 * groups + part


def test_area_labels_against_numpy(scene):
    features, _, groups = scene
    with raise_if_dask_computes():
        labels = sr.area_labels(features.chunk(8), TRAIN, EVAL, groups.chunk(8))
    assert labels.name == sr.REGION and labels.dtype == np.float32
    np.testing.assert_array_equal(labels.values, _numpy_labels(groups.values))
    # a box that leaves pixels out of both parts labels them 0
    outside = sr.area_labels(features, (0, 0, 10, 32), (20, 0, 32, 32)).values
    assert set(np.unique(outside[:, 10:20])) == {0.0}
    with pytest.raises(GridError, match=r"the groups are \(3, 3\) px"):
        sr.area_labels(features, TRAIN, EVAL, xr.DataArray(np.zeros((3, 3)), dims=("y", "x")))


def test_training_patches_lie_in_the_training_box_with_their_labels(scene):
    features, target, groups = scene
    labels = sr.area_labels(features, TRAIN, EVAL, groups)
    train, val = sr.training_patches(
        features, target, TRAIN, size=8, n_patches=5, n_validation_patches=3, seed=1,
        labels=labels, target_band="radiance",
    )  # fmt: skip
    assert (train.sizes["sample"], val.sizes["sample"]) == (5, 3)
    assert list(train.band.values) == ["a", "b"] and list(train.target_band.values) == ["radiance"]
    expected = _numpy_labels(groups.values)
    for ds in (train, val):
        for i in range(ds.sizes["sample"]):
            r, c = int(ds.row[i]), int(ds.col[i])
            assert c + 8 <= 20  # inside the training box
            np.testing.assert_array_equal(ds["region"][i].values, expected[r : r + 8, c : c + 8])
            np.testing.assert_array_equal(
                ds["target"][i, 0].values, target.values[0, r : r + 8, c : c + 8]
            )
    assert not np.array_equal(train.row.values[:3], val.row.values)  # another draw (seed + 1)
    plain, none = sr.training_patches(features, target, TRAIN, size=8, n_patches=2)
    assert none is None and "region" not in plain
    with pytest.raises(InputError, match="one band"):
        sr.training_patches(features, features, TRAIN, size=8, n_patches=2)


def test_area_statistics_are_those_of_whole_training_areas(scene):
    features, target, groups = scene
    labels = sr.area_labels(features, TRAIN, EVAL, groups)
    stats = sr.area_statistics(labels, target, TRAIN)
    expected = _numpy_labels(groups.values)
    assert sorted(stats) == ["1", "4"]  # only the training parts of the two groups
    for key in stats:
        inside = target.values[0][expected == float(key)].astype(np.float64)
        assert stats[key]["offset"] == pytest.approx([inside.mean()], rel=1e-6)
        assert stats[key]["scale"] == pytest.approx([inside.std()], rel=1e-5)


def test_predict_map_of_a_pixel_model_is_lazy_and_matches_its_coefficients(scene):
    features, target, _ = scene
    train, _ = sr.training_patches(features, target, TRAIN, size=8, n_patches=4)
    rows, y = patch_pixels(train)
    ridge = Ridge(alpha=0.1).fit(rows, y)
    with raise_if_dask_computes():
        pred = sr.predict_map(ridge, features, chunks=16, band="radiance")
    assert pred.chunks is not None and pred.dtype == np.float32
    assert list(pred.band.values) == ["radiance"]
    expected = np.tensordot(ridge.coef_, features.values, axes=(0, 0)) + ridge.intercept_
    np.testing.assert_allclose(pred.values[0], expected, rtol=1e-5, atol=1e-6)


def test_coarse_correction_keeps_the_detail_and_matches_the_coarse_product(scene):
    features, _, _ = scene
    rng = np.random.default_rng(3)
    coarse_values = rng.random((1, SIZE // FACTOR, SIZE // FACTOR))
    coarse = _cube(coarse_values, ["v"], resolution=float(FACTOR))
    target = coarse.xf.resample(features, "nearest")  # each fine pixel: its coarse pixel
    pred = features.isel(band=[0]).chunk(8)
    with raise_if_dask_computes():
        out = sr.coarse_correction(pred, target, coarse, "nearest")
    p = pred.values[0].astype(np.float64)
    means = p.reshape(8, FACTOR, 8, FACTOR).mean(axis=(1, 3))
    expected = p + np.kron(coarse_values[0] - means, np.ones((FACTOR, FACTOR)))
    np.testing.assert_allclose(out.values[0], expected, rtol=1e-5, atol=1e-6)
    # averaged back onto the coarse grid, the corrected map is the coarse product
    again = out.values[0].reshape(8, FACTOR, 8, FACTOR).mean(axis=(1, 3))
    np.testing.assert_allclose(again, coarse_values[0], atol=1e-5)
    with pytest.raises(GridError, match="differ in shape"):
        sr.coarse_correction(pred, target.isel(x=slice(0, 8)), coarse)
