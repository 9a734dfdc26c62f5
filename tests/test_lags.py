from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import BandError, EmptySelectionError, InputError
from xfusion.preprocess.lags import cloud_fraction
from xfusion.testing import raise_if_dask_computes

# NaN fraction of each image (in time order) in the test series
CLOUD = [0.0, 0.5, 0.0, 0.05, 0.3, 0.0, 0.0, 0.25]


def _series(shuffle=False) -> xr.DataArray:
    rng = np.random.default_rng(1)
    nt, ny, nx = len(CLOUD), 4, 5
    data = rng.normal(size=(nt, 3, ny, nx)).astype(np.float32)
    for t, frac in enumerate(CLOUD):
        cloudy = rng.permutation(ny * nx)[: round(frac * ny * nx)]
        data[t, :, cloudy // nx, cloudy % nx] = np.nan
    times = pd.date_range("2021-03-01", periods=nt, freq="16D")
    grid = xf.grid((0, 0, 50, 40), "EPSG:32633", 10)
    da = synthetic_cube(data, ["B2", "B3", "QA"], times=times, grid=grid)
    if shuffle:
        da = da.isel(time=[3, 0, 7, 5, 1, 2, 6, 4])
    return da


def _reference(da: xr.DataArray, n: int, max_cloud: float) -> dict:
    """Brute force: for each image, walk back in time and keep the first n clear images."""
    da = da.sortby("time")
    data = da.values
    frac = [np.isnan(data[t]).any(axis=0).mean() for t in range(data.shape[0])]
    result = {}
    for t in range(data.shape[0]):
        found = [s for s in range(t - 1, -1, -1) if frac[s] <= max_cloud][:n]
        if len(found) == n:
            result[t] = found
    return result


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize(("n", "max_cloud"), [(1, 0.1), (2, 0.1), (3, 0.0), (2, 0.3)])
def test_lags_pick_most_recent_clear_images(chunked, n, max_cloud):
    cube = _series()
    expected = _reference(cube, n, max_cloud)
    src = cube.chunk({"time": 1, "y": 2}) if chunked else cube
    with raise_if_dask_computes(max_computes=1 if chunked else 0) as counter:
        out = xf.lags(src, n, max_cloud=max_cloud)
    if chunked:
        assert counter.total_computes == 1
        assert out.chunks is not None
    assert out.dims == ("time", "band", "y", "x")
    names = ["B2", "B3", "QA"]
    assert out.band.values.tolist() == names + [
        f"{b}_lag_{k}" for k in range(1, n + 1) for b in names
    ]
    times = cube.time.values
    assert out.time.values.tolist() == times[list(expected)].tolist()
    data = cube.values
    for target, found in expected.items():
        got = out.sel(time=times[target]).values
        want = np.concatenate([data[target], *[data[s] for s in found]])
        np.testing.assert_array_equal(got, want)
        iso = [str(np.datetime_as_string(times[s], unit="s")) for s in found]
        assert out.attrs["lag_times"][str(np.datetime_as_string(times[target], unit="s"))] == iso
        for k, s in enumerate(found, start=1):
            assert out[f"time_lag_{k}"].sel(time=times[target]).values == times[s]
    assert out.rio.crs == cube.rio.crs


def test_lags_sort_unsorted_series():
    shuffled = _series(shuffle=True)
    out = xf.lags(shuffled, 2)
    expected = xf.lags(_series(), 2)
    xr.testing.assert_identical(out, expected)


def test_lags_accessor_is_the_function():
    cube = _series().chunk({"time": 2})
    xr.testing.assert_identical(cube.xf.lags(2), xf.lags(cube, 2))


@pytest.mark.parametrize("chunked", [False, True])
def test_cloud_score_band_and_mask(chunked):
    cube = _series().fillna(0.0)
    # QA as a 0/1 cloud flag band: the mean is the cloudy fraction
    rng = np.random.default_rng(5)
    flag = (rng.random((len(CLOUD), 4, 5)) < np.array(CLOUD)[:, None, None] * 1.5).astype("f4")
    cube.loc[{"band": "QA"}] = flag
    src = cube.chunk({"time": 3}) if chunked else cube
    scores = flag.mean(axis=(1, 2))
    np.testing.assert_allclose(cloud_fraction(src, "QA").values, scores)
    mask = xr.DataArray(flag, dims=("time", "y", "x"), coords={"time": cube.time})
    np.testing.assert_allclose(cloud_fraction(src, mask).values, scores)
    with raise_if_dask_computes(max_computes=1 if chunked else 0):
        by_band = xf.lags(src, 2, cloud_score="QA", max_cloud=0.1)
    by_mask = xf.lags(cube, 2, cloud_score=mask.chunk({"time": 2}), max_cloud=0.1)
    by_scores = xf.lags(cube, 2, cloud_score=xr.DataArray(scores, dims="time"), max_cloud=0.1)
    xr.testing.assert_identical(by_band.compute(), by_mask)
    xr.testing.assert_identical(by_mask, by_scores)
    clear = np.flatnonzero(scores <= 0.1)
    first = cube.time.values[clear[1] + 1]  # first image with two clear predecessors
    assert by_band.time.values[0] == first


def test_precomputed_scores_need_no_compute():
    cube = _series().chunk({"time": 1})
    scores = xr.DataArray(np.array(CLOUD), dims="time")
    with raise_if_dask_computes(max_computes=0):
        out = xf.lags(cube, 2, cloud_score=scores)
    assert out.sizes["time"] == len(_reference(cube, 2, 0.1))


def test_selected_targets():
    cube = _series()
    out = xf.lags(cube, 2, targets=[cube.time.values[7], "2021-05-04"])
    np.testing.assert_array_equal(out.time.values, cube.time.values[[7, 4]])
    with pytest.raises(InputError, match="fewer earlier clear images"):
        xf.lags(cube, 2, targets=cube.time.values[1])
    with pytest.raises(InputError, match="is not a time of the cube"):
        xf.lags(cube, 1, targets="1999-01-01")


def test_lags_beyond_the_series():
    cube = _series()
    with pytest.raises(InputError, match="only 5 clear images"):
        xf.lags(cube, 6)
    # five clear images, but the fifth is the last image: nothing has five before it
    with pytest.raises(EmptySelectionError, match="no image has 5 earlier clear images"):
        xf.lags(cube.isel(time=slice(0, 7)), 5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0}, InputError, "n must be an integer >= 1"),
        ({"n": 1, "cloud_score": "QA60"}, BandError, r"band 'QA60' not in cube; bands are \["),
        ({"n": 1, "cloud_score": 3}, InputError, "cloud_score must be None"),
        (
            {"n": 1, "cloud_score": xr.DataArray(np.zeros(3), dims="time")},
            InputError,
            "3 times that do not match",
        ),
        (
            {"n": 1, "cloud_score": xr.DataArray(np.zeros((8, 2)), dims=("time", "band"))},
            InputError,
            "must have dims",
        ),
    ],
)
def test_lags_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        xf.lags(_series(), **kwargs)


def test_lags_needs_time_series():
    with pytest.raises(InputError, match="time series cube with dims"):
        xf.lags(_series().isel(time=0), 1)
