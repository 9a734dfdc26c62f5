"""preprocess.strips: training, validation and held-out strips in whole coarse pixels."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import synthetic_cube
from xfusion.errors import InputError
from xfusion.preprocess.strips import HELDOUT, TRAIN, VALIDATION, strip_regions


def test_strips_are_whole_coarse_pixels_on_the_grid():
    like = synthetic_cube(np.zeros((2, 30, 45)), crs="EPSG:32615", res=1000.0)
    regions = strip_regions(like, 5, holdout_fraction=0.33, validation_fraction=0.34,
                            patch_size=10)  # fmt: skip
    assert regions.dtype == np.int8 and regions.dims == ("y", "x")
    np.testing.assert_array_equal(regions.x, like.x)
    assert regions.rio.crs.to_epsg() == 32615
    # 9 coarse columns: round(0.33 * 9) = 3 held out; 6 coarse rows: round(0.34 * 6) = 2 validation
    expected = np.full((30, 45), TRAIN)
    expected[20:, :] = VALIDATION
    expected[:, 30:] = HELDOUT
    np.testing.assert_array_equal(regions.values, expected)
    # a tiny fraction still holds one coarse pixel
    tiny = strip_regions(like, 5, holdout_fraction=0.01, validation_fraction=0.01)
    assert (tiny.values == HELDOUT).sum() == 30 * 5 and (tiny.values == VALIDATION).sum() == 5 * 40


def test_scenes_and_patches_that_do_not_fit_are_refused():
    like = synthetic_cube(np.zeros((20, 20)))
    with pytest.raises(InputError, match="too small"):
        strip_regions(like, 10, holdout_fraction=0.9, validation_fraction=0.5)
    with pytest.raises(InputError, match="multiple of the resolution factor 5; got 12"):
        strip_regions(like, 5, holdout_fraction=0.25, validation_fraction=0.25, patch_size=12)
    with pytest.raises(InputError, match="does not fit"):
        strip_regions(like, 5, holdout_fraction=0.25, validation_fraction=0.25, patch_size=10)
