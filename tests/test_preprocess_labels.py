"""binary_labels: class codes of a label product as 1, 0 and NaN (no data)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xfusion.errors import InputError
from xfusion.preprocess.labels import binary_labels, threshold_labels
from xfusion.testing import raise_if_dask_computes

# DSWE interpreted layer: 0 not water, 1-2 water, 3-4 partial water, 9 cloud, 255 fill
DSWE = np.array([[0, 1, 2, 3], [4, 9, 255, 0], [1, 0, 2, 9]], dtype=np.uint8)
EXPECTED = np.array(
    [[0, 1, 1, np.nan], [np.nan, np.nan, np.nan, 0], [1, 0, 1, np.nan]], dtype=np.float32
)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_codes_become_one_zero_and_nan(chunked, dtype):
    codes = xr.DataArray(DSWE.astype(dtype), dims=("y", "x"), coords={"x": [10, 20, 30, 40]})
    if dtype == np.float32:
        codes[0, 3] = np.nan  # a NaN code is no data as well
    if chunked:
        codes = codes.chunk({"x": 2})
    with raise_if_dask_computes():
        out = binary_labels(codes, positive=(1, 2), negative=(0,))
    assert out.dtype == np.float32 and out.dims == ("y", "x")
    assert (out.chunks is not None) == chunked
    if chunked:
        assert out.chunks == codes.chunks
    np.testing.assert_array_equal(out.values, EXPECTED)
    np.testing.assert_array_equal(out.x.values, [10, 20, 30, 40])


def test_mistakes_are_named():
    codes = xr.DataArray(DSWE, dims=("y", "x"))
    with pytest.raises(InputError, match=r"codes \[1\] are both positive and negative"):
        binary_labels(codes, positive=(1, 2), negative=(0, 1))
    with pytest.raises(InputError, match="at least one code"):
        binary_labels(codes, positive=(), negative=(0,))
    with pytest.raises(InputError, match=r"must be an xarray\.DataArray"):
        binary_labels(DSWE, positive=(1,), negative=(0,))


@pytest.mark.parametrize("chunked", [False, True])
def test_threshold_labels_split_ordered_codes_and_keep_no_data(chunked):
    smod = np.array([[0, 1, 2, 3], [np.nan, 3, 1, 2]], dtype=np.float32)
    codes = xr.DataArray(smod, dims=("y", "x"))
    if chunked:
        codes = codes.chunk({"y": 1, "x": 2})
    with raise_if_dask_computes():
        labels = threshold_labels(codes, 2)
    assert labels.dtype == np.float32 and (labels.chunks is not None) == chunked
    expected = np.where(np.isnan(smod), np.nan, (smod >= 2).astype(np.float32))
    np.testing.assert_array_equal(labels.values, expected)
    with pytest.raises(InputError, match="codes must be an xarray"):
        threshold_labels(smod, 2)
