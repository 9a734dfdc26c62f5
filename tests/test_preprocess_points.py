"""Training and held-out points on disjoint pixels, against two plain draws of ``sample``."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from tests.conftest import synthetic_cube
from xfusion.errors import EmptySelectionError
from xfusion.preprocess.points import train_test_points
from xfusion.preprocess.sample import sample


@pytest.fixture
def cube():
    rng = np.random.default_rng(1)
    ascending = {"y": np.arange(12.0), "x": np.arange(12.0)}
    return synthetic_cube(rng.normal(size=(2, 12, 12)), ["a", "b"], coords=ascending)


@pytest.mark.parametrize("chunked", [False, True])
def test_held_out_points_are_the_second_draw_without_training_pixels(cube, chunked):
    labels = (cube.sel(band="a", drop=True) > 0).astype("float32")
    if chunked:
        cube, labels = cube.chunk({"y": 5, "x": 5}), labels.chunk({"y": 5, "x": 5})
    train, test = train_test_points(cube, labels, 40, 60, seed=3)
    expected_train = sample(cube, labels, 40, seed=3)
    drawn = sample(cube, labels, 60, seed=4)
    seen = set(zip(expected_train["x"], expected_train["y"], strict=True))
    keep = [p not in seen for p in zip(drawn["x"], drawn["y"], strict=True)]
    np.testing.assert_array_equal(train.to_numpy(), expected_train.to_numpy())
    np.testing.assert_array_equal(test.to_numpy(), drawn[keep].to_numpy())
    assert 0 < len(test) < 60  # some of the 60 fell on training pixels
    assert not set(zip(test["x"], test["y"], strict=True)) & seen


def test_no_held_out_point_left_is_an_error(cube):
    labels = xr.full_like(cube.isel(band=0, drop=True), np.nan).astype("float32")
    labels[0, :2] = [0.0, 1.0]
    with pytest.raises(EmptySelectionError, match="no held-out point is left once the 2 training"):
        train_test_points(cube, labels, 5, 5, seed=0)
