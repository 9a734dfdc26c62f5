"""preprocess.coarse_features: the fine-grid features of a coarse field and its fine target."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.warp
from rasterio.enums import Resampling
from skimage.feature import local_binary_pattern

from tests.conftest import synthetic_cube
from xfusion.grids import grid
from xfusion.preprocess.coarse_features import coarse_features
from xfusion.testing import raise_if_dask_computes

FINE = grid((0.0, 0.0, 30000.0, 30000.0), "EPSG:32615", 1000.0)  # 30 × 30 px
COARSE = grid((0.0, 0.0, 30000.0, 30000.0), "EPSG:32615", 5000.0)  # 6 × 6 px


def _cubes(chunks=None):
    rng = np.random.default_rng(3)
    fine = synthetic_cube(rng.random((2, 2, 30, 30)).astype("float32"), ["ndvi", "evi"],
                          times=["2019-05-09", "2019-05-25"], grid=FINE)  # fmt: skip
    coarse = synthetic_cube(rng.random((2, 1, 6, 6)).astype("float32"), ["sif"],
                            times=fine.time.values, grid=COARSE)  # fmt: skip
    return (fine.chunk(chunks), coarse.chunk(chunks)) if chunks else (fine, coarse)


@pytest.mark.filterwarnings("ignore:Applying `local_binary_pattern`:UserWarning")
def test_features_and_target_against_gdal_and_scikit_image():
    fine, coarse = _cubes()
    features, target = coarse_features(fine, coarse, lbp_points=8, lbp_radius=1.0)
    assert features.band.values.tolist() == ["ndvi", "evi", "sif_bilinear", "sif_lbp"]
    assert features.attrs["coarse_band"] == "sif" and target.name == "target"
    np.testing.assert_array_equal(features.values[:, :2], fine.values)
    values = coarse.values[:, 0]
    for t in range(2):
        expected = np.full((30, 30), np.nan, np.float32)
        rasterio.warp.reproject(
            values[t], expected, src_transform=COARSE.affine, src_crs="EPSG:32615",
            dst_transform=FINE.affine, dst_crs="EPSG:32615", resampling=Resampling.bilinear,
            src_nodata=np.nan, dst_nodata=np.nan,
        )  # fmt: skip
        inner = (slice(5, -5), slice(5, -5))  # GDAL's own edge handling aside
        bilinear = features.values[t, 2]
        np.testing.assert_allclose(bilinear[inner], expected[inner], rtol=1e-4, atol=1e-5)
        codes = local_binary_pattern(values[t].astype(np.float64), 8, 1, method="uniform")
        np.testing.assert_array_equal(features.values[t, 3], np.kron(codes, np.ones((5, 5))))
        np.testing.assert_array_equal(target.values[t, 0], np.kron(values[t], np.ones((5, 5))))


@pytest.mark.filterwarnings("ignore:Applying `local_binary_pattern`:UserWarning")
def test_chunked_input_gives_the_same_lazy_features():
    eager = coarse_features(*_cubes(), lbp_points=4, lbp_radius=2.0)
    with raise_if_dask_computes():
        lazy = coarse_features(*_cubes({"y": 15, "x": 15}), lbp_points=4, lbp_radius=2.0,
                               chunks={"y": 10, "x": 10})  # fmt: skip
    features, target = lazy
    assert features.chunks[1] == (4,) and features.chunks[2] == (10, 10, 10)
    assert target.chunks[2] == (10, 10, 10)
    np.testing.assert_allclose(features.values, eager[0].values, rtol=1e-6)
    np.testing.assert_array_equal(target.values, eager[1].values)
