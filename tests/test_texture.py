from __future__ import annotations

import warnings

import dask.array
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.feature import local_binary_pattern

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import InputError
from xfusion.testing import raise_if_dask_computes


def _skimage_lbp(planes: np.ndarray, points: int, radius: float) -> np.ndarray:
    """scikit-image on every whole (y, x) plane, NaN where the input is NaN."""
    flat = planes.reshape((-1, *planes.shape[-2:])).astype(np.float64)
    with warnings.catch_warnings():
        # scikit-image warns that float images may hold near-equal neighbours; that is the point.
        warnings.simplefilter("ignore", UserWarning)
        out = np.stack([local_binary_pattern(p, points, radius, method="uniform") for p in flat])
    out[np.isnan(flat)] = np.nan
    return out.reshape(planes.shape)


def _cube(shape=(2, 3, 21, 17), seed=0, integer=True) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 6, shape) if integer else rng.normal(size=shape)
    gbox = xf.grid((0, 0, 10 * shape[-1], 10 * shape[-2]), "EPSG:32633", 10)
    bands = [f"B{i}" for i in range(shape[1])]
    time = {"time": np.arange(shape[0])}  # plain numbers, not dates
    return synthetic_cube(data.astype(np.float32), bands, grid=gbox, coords=time)


@pytest.mark.parametrize(("points", "radius"), [(8, 1), (16, 2), (8, 1.5), (12, 2.3), (4, 3)])
@pytest.mark.parametrize("chunks", [None, {"y": 5, "x": 4}, {"y": 1, "x": 1}, {"y": 8, "x": 9}])
def test_lbp_equals_skimage_whole_plane(points, radius, chunks):
    cube = _cube(integer=(points == 8))
    expected = _skimage_lbp(cube.values, points, radius)
    if chunks is not None:
        cube = cube.chunk(chunks)
    with raise_if_dask_computes():
        out = xf.lbp(cube, points, radius)
    assert out.dtype == np.float32
    assert isinstance(out.data, dask.array.Array) == (chunks is not None)
    np.testing.assert_array_equal(out.values, expected)
    if chunks is not None:
        assert out.chunks == cube.chunks


def test_lbp_keeps_grid_names_and_dim_order():
    cube = _cube().transpose("y", "band", "x", "time")
    out = xf.lbp(cube)
    assert out.dims == cube.dims
    assert out.band.values.tolist() == ["B0_lbp", "B1_lbp", "B2_lbp"]
    assert out.rio.crs == cube.rio.crs
    assert xf.grids.geobox_of(out) == xf.grids.geobox_of(cube)
    expected = _skimage_lbp(cube.transpose("time", "band", "y", "x").values, 8, 1)
    np.testing.assert_array_equal(out.transpose("time", "band", "y", "x").values, expected)
    # uniform codes run 0..P+1
    assert set(np.unique(out.values)) <= set(range(10))


@pytest.mark.parametrize("chunked", [False, True])
def test_lbp_nan_pixels_give_nan_and_neighbours_follow_skimage(chunked):
    cube = _cube(shape=(1, 1, 15, 13), integer=False)
    data = cube.values.copy()
    data[0, 0, 4:7, 5] = np.nan
    data[0, 0, 0, 0] = np.nan
    cube = cube.copy(data=data)
    expected = _skimage_lbp(data, 8, 1)
    out = xf.lbp(cube.chunk({"y": 4, "x": 4}) if chunked else cube)
    np.testing.assert_array_equal(np.isnan(out.values), np.isnan(data))
    np.testing.assert_array_equal(out.values, expected)


def test_lbp_accessor_is_the_function():
    cube = _cube().chunk({"y": 7})
    xr.testing.assert_identical(cube.xf.lbp(16, 2), xf.lbp(cube, 16, 2))


def test_lbp_plain_2d_array():
    rng = np.random.default_rng(3)
    img = xr.DataArray(rng.integers(0, 9, (9, 11)).astype(np.float32), dims=("y", "x"))
    expected = _skimage_lbp(img.values, 8, 2)
    np.testing.assert_array_equal(xf.lbp(img, radius=2).values, expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": 0}, "points must be an integer"),
        ({"points": 2.5}, "points must be an integer"),
        ({"radius": 0}, "radius must be a positive"),
        ({"radius": "one"}, "radius must be a positive"),
    ],
)
def test_lbp_bad_parameters(kwargs, match):
    with pytest.raises(InputError, match=match):
        xf.lbp(_cube(), **kwargs)


def test_lbp_needs_spatial_dims():
    with pytest.raises(InputError, match=r"needs 'y' and 'x' dims; cube has dims \['time'\]"):
        xf.lbp(xr.DataArray(np.zeros(3), dims="time"))
    with pytest.raises(InputError, match=r"expects an xarray\.DataArray"):
        xf.lbp(np.zeros((3, 3)))


@settings(max_examples=15, deadline=None)
@given(
    ny=st.integers(1, 14),
    nx=st.integers(1, 14),
    cy=st.integers(1, 14),
    cx=st.integers(1, 14),
    points=st.sampled_from([4, 8, 16]),
    radius=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_lbp_chunking_invariance(ny, nx, cy, cx, points, radius, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4, (1, ny, nx)).astype(np.float32)
    data[rng.random(data.shape) < 0.1] = np.nan
    cube = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": ["B1"]})
    eager = xf.lbp(cube, points, radius)
    chunked = xf.lbp(cube.chunk({"y": cy, "x": cx}), points, radius)
    np.testing.assert_array_equal(chunked.values, eager.values)
    np.testing.assert_array_equal(eager.values, _skimage_lbp(data, points, radius))


@pytest.mark.data
def test_lbp_on_real_landsat_band(shared_data):
    import rioxarray
    from scipy.ndimage import maximum_filter

    path = next((shared_data / "landsat_c2l2_stac" / "assets3").glob("*_SR_B4.TIF"))
    band = rioxarray.open_rasterio(path, chunks={"x": 48, "y": 48}).isel(
        y=slice(0, 128), x=slice(0, 160)
    )
    cube = band.where(band != 0).astype(np.float32).assign_coords(band=["SR_B4"])
    with raise_if_dask_computes():
        out = xf.lbp(cube, 16, 2)
    np.testing.assert_array_equal(out.values, xf.lbp(cube.compute(), 16, 2).values)
    dn = band.values[0].astype(np.int64)
    nodata = dn == 0
    assert 0.05 < nodata.mean() < 0.95  # the crop holds the scene's edge
    expected = local_binary_pattern(dn, 16, 2, method="uniform")  # integer DN: no warning
    # away from nodata (no fill pixel within the circle) the codes are scikit-image's
    clean = ~maximum_filter(nodata, size=2 * 2 + 3)
    np.testing.assert_array_equal(out.values[0][clean], expected[clean])
    np.testing.assert_array_equal(np.isnan(out.values[0]), nodata)
    assert out.rio.crs == band.rio.crs
