"""preprocess.series: common composites, periods as bands, patches of every period."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.conftest import synthetic_cube
from xfusion.errors import EmptySelectionError, InputError
from xfusion.preprocess.series import (
    common_composites,
    series_patches,
    stack_time,
    time_as_bands,
)
from xfusion.testing import raise_if_dask_computes


def _series(n_time, n_band, size=8, seed=0, dates=None, bands=None):
    rng = np.random.default_rng(seed)
    times = dates if dates is not None else pd.date_range("2019-05-01", periods=n_time, freq="8D")
    values = rng.random((n_time, n_band, size, size)).astype("float32")
    return synthetic_cube(values, bands, times=times)


@pytest.mark.parametrize("chunks", [None, {"y": 4, "x": 4}])
def test_common_composites_keep_the_periods_both_series_have(chunks):
    first = _series(6, 2)  # 2019-05-01 .. 2019-06-10 every 8 days
    # the second series misses the third 16-day period (2019-06-02 and 06-10)
    second = _series(4, 1, seed=1).isel(time=[0, 1, 2, 3])
    second = second.assign_coords(time=pd.to_datetime(["2019-05-01", "2019-05-04", "2019-05-20",
                                                       "2019-05-25"]))  # fmt: skip
    if chunks:
        first, second = first.chunk(chunks), second.chunk(chunks)
    with raise_if_dask_computes():
        a, b, none = common_composites(first, second, freq="16D", start="2019-05-01")
    assert none is None
    assert [str(t)[:10] for t in a.time.values] == ["2019-05-01", "2019-05-17"]
    np.testing.assert_array_equal(a.time.values, b.time.values)
    values, other = first.values, second.values
    np.testing.assert_allclose(a.values[0], np.median(values[0:2], axis=0), rtol=1e-6)
    np.testing.assert_allclose(a.values[1], np.median(values[2:4], axis=0), rtol=1e-6)
    np.testing.assert_allclose(b.values[0], other[0:2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(b.values[1], other[2:4].mean(axis=0), rtol=1e-6)
    assert (a.chunks is not None) == bool(chunks)


def test_common_composites_footprints_and_errors():
    first, second = _series(4, 1), _series(4, 1, seed=1)
    weights = _series(4, 1, seed=2)
    a, b, w = common_composites(first, second, freq="16D", start="2019-05-01",
                                how=("max", "min"), footprint=weights)  # fmt: skip
    np.testing.assert_allclose(a.values[0], first.values[:2].max(axis=0))
    np.testing.assert_allclose(b.values[1], second.values[2:].min(axis=0))
    np.testing.assert_allclose(w.values[1], weights.values[2:].mean(axis=0), rtol=1e-6)
    later = second.assign_coords(time=second.time.values + np.timedelta64(400, "D"))
    with pytest.raises(InputError, match="share no 16D period"):
        common_composites(first, later, freq="16D", start="2019-05-01")
    with pytest.raises(InputError, match="footprints have no 16D period"):
        common_composites(first, second, freq="16D", start="2019-05-01",
                          footprint=weights.isel(time=[0, 1]))  # fmt: skip


@pytest.mark.parametrize("chunks", [None, {"y": 4}])
def test_stack_time_puts_every_period_band_in_order(chunks):
    series = _series(3, 2, bands=["red", "nir"])
    cube = series.chunk(chunks) if chunks else series
    with raise_if_dask_computes():
        stacked = stack_time(cube)
    assert stacked.dims == ("band", "y", "x")
    assert stacked.band.values.tolist() == ["0|red", "0|nir", "1|red", "1|nir", "2|red", "2|nir"]
    for t in range(3):
        for b in range(2):
            np.testing.assert_array_equal(stacked.values[2 * t + b], series.values[t, b])
    if chunks:
        assert len(stacked.chunks[0]) == 1  # one chunk along band
    with pytest.raises(InputError, match=r"expected \(time, band, y, x\)"):
        stack_time(series.isel(time=0))


def test_series_patches_cut_every_period_at_the_same_place():
    n_time, size = 3, 4
    index = np.arange(n_time * 2 * 12 * 12, dtype="float32").reshape(n_time, 2, 12, 12)
    inputs = synthetic_cube(index, ["a", "b"], times=pd.date_range("2019-05-01", periods=3))
    target = synthetic_cube(-index[:, :1], ["t"], times=inputs.time.values)
    footprint = synthetic_cube(index[:, :1] % 2, ["weight"], times=inputs.time.values)
    region = xr.DataArray(np.zeros((12, 12), bool), dims=("y", "x"))
    region[:8, :8] = True
    ds = series_patches(inputs.chunk({"y": 6}), target, region, size=size, n=3, seed=4, stride=4,
                        footprint=footprint)  # fmt: skip
    assert ds["inputs"].shape == (3 * n_time, 2, size, size)
    assert ds.band.values.tolist() == ["a", "b"] and ds.target_band.values.tolist() == ["t"]
    for sample in range(ds.sizes["sample"]):
        t = sample % n_time  # place-major: a place's periods follow each other
        x = ds["inputs"].values[sample]
        row, col = np.argwhere(index[t, 0] == x[0, 0, 0])[0]
        assert row % 4 == 0 and col % 4 == 0 and row + size <= 8 and col + size <= 8
        window = (slice(row, row + size), slice(col, col + size))
        np.testing.assert_array_equal(x, index[t][:, window[0], window[1]])
        np.testing.assert_array_equal(ds["target"].values[sample, 0], -index[t, 0][window])
        np.testing.assert_array_equal(ds["footprint"].values[sample], index[t, 0][window] % 2)
        if t:  # the same place as the period before
            previous = ds["inputs"].values[sample - 1, 0, 0, 0]
            assert np.argwhere(index[t - 1, 0] == previous)[0].tolist() == [row, col]
    with pytest.raises(EmptySelectionError, match="no 4x4 patch fits"):
        series_patches(inputs, target, region & False, size=4, n=1)
    with pytest.raises(InputError, match="footprint has 2 bands"):
        series_patches(inputs, target, region, size=4, n=1, footprint=inputs)


def test_time_as_bands_names_the_periods():
    series = _series(2, 1, dates=pd.to_datetime(["2019-05-09", "2019-05-25"])).chunk({"y": 4})
    series.attrs["units"] = "mW m-2 sr-1 nm-1"
    with raise_if_dask_computes():
        cube = time_as_bands(series)
    assert cube.dims == ("band", "y", "x") and cube.band.values.tolist() == [1, 2]
    assert cube.attrs == {"long_name": ("2019-05-09", "2019-05-25"), "units": "mW m-2 sr-1 nm-1"}
    np.testing.assert_array_equal(cube.values, series.values[:, 0])
