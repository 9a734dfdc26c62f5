from __future__ import annotations

import warnings

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import EmptySelectionError, InputError
from xfusion.preprocess.composite import composite
from xfusion.testing import raise_if_dask_computes

NUMPY = {"median": np.nanmedian, "mean": np.nanmean, "min": np.nanmin, "max": np.nanmax}
CHUNKINGS = [None, {"time": 1, "y": 3, "x": 4}, {"time": 5, "y": 8}]


def _cube(seed=0, n=24, freq="8D", start="2015-05-03", shape=(7, 6), nan_fraction=0.4):
    rng = np.random.default_rng(seed)
    data = rng.random((n, 2, *shape)).astype("float32")
    data[rng.random(data.shape) < nan_fraction] = np.nan
    data[:, :, 0, 0] = np.nan  # a pixel never observed
    return synthetic_cube(
        data,
        ["B04", "B08"],
        times=pd.date_range(start, periods=n, freq=freq),
        coords={"cloud_cover": ("time", rng.random(n)), "common_name": ("band", ["red", "nir"])},
    )


def _reference(values, how):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return NUMPY[how](values, axis=0)


def _maybe_chunk(da, chunks):
    return da if chunks is None else da.chunk(chunks)


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("how", ["median", "mean", "min", "max"])
def test_window_composite_matches_numpy(chunks, how):
    cube = _cube()
    x = _maybe_chunk(cube, chunks)
    with raise_if_dask_computes():
        out = composite(x, how, start="2015-07-01", end="2015-12-31")
    assert isinstance(out.data, dsa.Array) == (chunks is not None)
    assert out.dims == ("band", "y", "x")
    assert out.dtype == np.float32
    assert "cloud_cover" not in out.coords  # a per-image coordinate cannot survive
    assert list(out.common_name.values) == ["red", "nir"]
    t = cube.time.to_index()
    in_window = (t >= "2015-07-01") & (t < "2016-01-01")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "All-NaN slice" warnings from the library
        values = out.values
    np.testing.assert_allclose(values, _reference(cube.values[in_window], how), rtol=1e-6)
    assert np.isnan(values[:, 0, 0]).all()  # never observed: NaN, not 0


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("freq", ["MS", "YS", "16D"])
def test_periodic_composite_matches_numpy(chunks, freq):
    cube = _cube(n=30, freq="11D", start="2015-11-20")
    x = _maybe_chunk(cube, chunks)
    with raise_if_dask_computes():
        out = composite(x, "median", freq=freq)
    t = cube.time.to_index()
    counts = pd.Series(1, index=t).resample(freq).count()
    bins = [*counts.index, pd.Timestamp("2100-01-01")]
    expected = [
        _reference(cube.values[(t >= lo) & (t < hi)], "median")
        for lo, hi, n in zip(bins[:-1], bins[1:], counts.to_numpy(), strict=True)
        if n > 0
    ]
    np.testing.assert_array_equal(out.time.values, counts.index[counts.to_numpy() > 0].to_numpy())
    assert out.dims == cube.dims
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(out.values, np.stack(expected), rtol=1e-6)
    if chunks is not None:
        assert out.chunks[0] == (1,) * len(expected)
        assert out.chunks[2:] == x.chunks[2:]  # spatial blocks kept


def test_long_periods_split_space_to_respect_chunk_size():
    cube = _cube(n=40, shape=(32, 32)).chunk({"time": 1})
    with dask.config.set({"array.chunk-size": "16KiB"}):
        out = composite(cube, "median", freq="YS")
    period_block = max(out.chunks[2]) * max(out.chunks[3]) * 2 * 4 * cube.sizes["time"]
    assert period_block <= 2 * 16 * 1024  # within "auto"'s rounding of the limit
    np.testing.assert_array_equal(out.values, composite(cube.compute(), "median", freq="YS").values)
    # without pressure the spatial chunks are kept
    assert composite(cube, "median", freq="YS").chunks[2:] == cube.chunks[2:]


def test_sixteen_day_periods_count_from_start():
    cube = _cube(n=10, freq="5D", start="2020-01-01")
    out = composite(cube.chunk({"time": 2}), "mean", freq="16D", start="2020-01-04")
    assert out.time.values[0] == np.datetime64("2020-01-04")
    t = cube.time.to_index()
    first = (t >= "2020-01-04") & (t < "2020-01-20")
    np.testing.assert_allclose(out.values[0], _reference(cube.values[first], "mean"), rtol=1e-6)


def test_unsorted_time_and_integer_input():
    cube = _cube(n=12)
    raw = (cube.fillna(0) * 1000).astype("uint16")
    shuffled = raw.isel(time=np.random.default_rng(1).permutation(12))
    out = composite(shuffled.chunk({"time": 3}), "max", freq="MS")
    ref = composite(raw, "max", freq="MS")
    assert out.dtype == np.float32
    xr.testing.assert_identical(out.compute(), ref)
    np.testing.assert_array_equal(
        composite(raw, "min").values, raw.values.min(axis=0).astype(np.float32)
    )


def test_no_time_window_no_dates_needed():
    cube = _cube(n=4).assign_coords(time=[0, 1, 2, 3])
    out = composite(cube.chunk({"time": 1}), "mean")
    np.testing.assert_allclose(out.values, _reference(cube.values, "mean"), rtol=1e-6)
    with pytest.raises(InputError, match="datetime values"):
        composite(cube, "mean", freq="MS")


def test_composite_errors():
    cube = _cube(n=5, freq="1D", start="2019-03-01")
    with pytest.raises(
        EmptySelectionError, match=r"2015-07-01 to 2015-12-31.*2019-03-01.*5 images"
    ):
        composite(cube, start="2015-07-01", end="2015-12-31")
    with pytest.raises(InputError, match="'time' dimension"):
        composite(cube.isel(time=0), "median")
    with pytest.raises(InputError, match="how='mode'"):
        composite(cube, "mode")
    with pytest.raises(InputError, match="freq='fortnight'"):
        composite(cube, freq="fortnight")
    with pytest.raises(InputError, match="as dates; expected dates such as '2015-07-01'"):
        composite(cube, start="July")
    with pytest.raises(InputError, match="end='not-a-date' is not a date"):
        composite(cube, end="not-a-date")


@pytest.mark.parametrize("chunks", [None, {"time": 2}])
def test_dataset_variable_by_variable(chunks):
    cube = _cube(n=9)
    ds = xr.Dataset(
        {"red": cube.sel(band="B04", drop=True), "nir": cube.sel(band="B08", drop=True)}
    )
    ds["dem"] = (("y", "x"), np.ones((7, 6), "float32"))
    ds = _maybe_chunk(ds, chunks)
    with raise_if_dask_computes():
        out = composite(ds, "median", freq="MS")
    for name, band in (("red", "B04"), ("nir", "B08")):
        np.testing.assert_allclose(
            out[name].values, composite(cube, "median", freq="MS").sel(band=band).values
        )
    xr.testing.assert_identical(out["dem"], ds["dem"])


def test_accessor_delegates():
    cube = _cube(n=8).chunk({"time": 2})
    xr.testing.assert_identical(
        cube.xf.composite("mean", freq="MS"), xf.composite(cube, "mean", freq="MS")
    )
    ds = cube.to_dataset(dim="band")
    xr.testing.assert_identical(
        ds.xf.composite("max", start="2015-06-01"), xf.composite(ds, "max", start="2015-06-01")
    )


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 12),
    ct=st.integers(1, 5),
    cy=st.integers(1, 5),
    how=st.sampled_from(["median", "mean", "min", "max"]),
    freq=st.sampled_from([None, "MS", "10D"]),
    seed=st.integers(0, 2**16),
)
def test_composite_chunking_invariance(n, ct, cy, how, freq, seed):
    cube = _cube(seed=seed, n=n, freq="6D", shape=(5, 3), nan_fraction=0.5)
    eager = composite(cube, how, freq=freq)
    chunked = composite(cube.chunk({"time": ct, "y": cy}), how, freq=freq)
    xr.testing.assert_identical(chunked.compute(), eager)
    if freq is None:
        np.testing.assert_allclose(eager.values, _reference(cube.values, how), rtol=1e-6)


def test_composite_refuses_flag_and_class_bands():
    from xfusion.errors import BandError

    times = pd.date_range("2020-01-01", periods=3, freq="D")
    data = np.array([21824, 21824, 54596], "float32").reshape(3, 1, 1, 1)
    qa = xr.DataArray(
        data, dims=("time", "band", "y", "x"), coords={"time": times, "band": ["QA_PIXEL"]}
    )
    # the median of flag words is a flag word none of the images had
    with pytest.raises(BandError, match=r"'QA_PIXEL' \(flags\).*mask_bits"):
        composite(qa, "median")
    lab = xf.bands.set_band_kinds(qa.assign_coords(band=["lab"]), {"lab": "categorical"})
    with pytest.raises(BandError, match=r"'lab' \(categorical\)"):
        composite(lab, "mean")
    # an explicit override to continuous composites as before
    cont = xf.bands.set_band_kinds(qa, "continuous")
    assert float(composite(cont, "max").values.ravel()[0]) == 54596.0
