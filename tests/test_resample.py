from __future__ import annotations

import warnings

import dask.array
import numpy as np
import pytest
import rasterio
import rasterio.warp
import rioxarray
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.enums import Resampling

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion._kernels.aggregate import aggregate_blocks
from xfusion.errors import GridError, InputError
from xfusion.grids import assign_grid, geobox_of
from xfusion.preprocess.resample import RESAMPLING, is_aligned, resample
from xfusion.testing import raise_if_dask_computes

# rasterio reports this spuriously when several Dask threads warp at once (see resample.py)
pytestmark = pytest.mark.filterwarnings("ignore:Dataset has no geotransform")

SRC = xf.grid((500000, 4000000, 500000 + 10 * 53, 4000000 + 10 * 47), 32633, 10)
TARGETS = {
    # aligned, k=3, origin two pixels outside the source: partial edge blocks on every side
    "aligned_edges": xf.grid((499980, 3999995, 500537, 4000490), 32633, 30),
    # aligned sub-window, k=2
    "aligned_window": xf.grid((500100, 4000200, 500300, 4000400), 32633, 20),
    "unaligned": xf.grid((500003, 4000007, 500500, 4000450), 32633, 25),
    "finer": xf.grid((500100, 4000200, 500300, 4000400), 32633, 4),
    "geographic": xf.grid((15.0, 36.1454, 15.0058, 36.1491), 4326, 0.0003),
}


def make_cube(seed: int = 0, smooth: bool = False) -> xr.DataArray:
    """(time=2, band=2) cube: band 'value' continuous, band 'class' integer classes; 15 % NaN."""
    rng = np.random.default_rng(seed)
    ny, nx = SRC.shape
    data = np.empty((2, 2, ny, nx), dtype=np.float32)
    if smooth:
        yy, xx = np.mgrid[0:ny, 0:nx]
        data[:, 0] = 50 + 30 * np.sin(yy / 9.0) * np.cos(xx / 7.0)
    else:
        data[:, 0] = rng.random((2, ny, nx)) * 100
    data[:, 1] = rng.integers(0, 4, (2, ny, nx))
    data[rng.random(data.shape) < 0.15] = np.nan
    times = ["2020-01-01", "2020-02-01"]
    return synthetic_cube(data, ["value", "class"], times=times, grid=SRC).assign_attrs(units="dn")


def gdal(data: np.ndarray, src, dst, method: str) -> np.ndarray:
    out = np.full((*data.shape[:-2], *dst.shape), np.nan, dtype=np.float32)
    for idx in np.ndindex(*data.shape[:-2]):
        rasterio.warp.reproject(
            data[idx],
            out[idx],
            src_transform=src.affine,
            src_crs=str(src.crs),
            dst_transform=dst.affine,
            dst_crs=str(dst.crs),
            resampling=Resampling[method],
            src_nodata=np.nan,
            dst_nodata=np.nan,
            XSCALE=1,
            YSCALE=1,
        )
    return out


# GDAL has no bitwise OR; flag bands are tested in test_band_kinds.py
GDAL_METHODS = [m for m in RESAMPLING if m != "bitwise_or"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", GDAL_METHODS)
def test_agrees_with_gdal(method, target):
    cube = make_cube()
    dst = TARGETS[target]
    out = resample(cube, dst, method)
    ref = gdal(cube.values, SRC, dst, method)
    assert out.dtype == np.float32
    assert geobox_of(out) == dst
    np.testing.assert_array_equal(np.isnan(out.values), np.isnan(ref))
    assert np.isfinite(ref).any()
    if method in ("average", "sum"):
        np.testing.assert_allclose(out.values, ref, rtol=1e-5, atol=1e-4)
    else:
        np.testing.assert_array_equal(out.values, ref)


def test_kernel_is_used_on_aligned_grids():
    assert is_aligned(SRC, TARGETS["aligned_edges"]) == ((3, 3), (-2, -2))
    assert is_aligned(SRC, TARGETS["aligned_window"]) == ((2, 2), (7, 10))
    for name in ("unaligned", "finer", "geographic"):
        assert is_aligned(SRC, TARGETS[name]) is None
    lazy = resample(make_cube().chunk({"y": 20}), TARGETS["aligned_edges"], "average")
    assert any(name.startswith("xf-aggregate") for name in lazy.data.dask.layers)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", GDAL_METHODS)
def test_chunked_equals_eager_and_is_lazy(method, target):
    cube = make_cube(smooth=True)
    dst = TARGETS[target]
    eager = resample(cube, dst, method)
    chunked = cube.chunk({"time": 1, "y": 13, "x": 17})
    with raise_if_dask_computes():
        lazy = resample(chunked, dst, method, chunks=(11, 13))
    assert isinstance(lazy.data, dask.array.Array)
    assert lazy.chunks[-2][0] == min(11, dst.shape[0]) and lazy.chunks[-1][0] == min(
        13, dst.shape[1]
    )
    np.testing.assert_array_equal(np.isnan(lazy.values), np.isnan(eager.values))
    if target == "geographic" and method in ("average", "sum", "bilinear", "cubic"):
        # GDAL's approximate transformer differs per chunk across CRSs (documented)
        scale = 1e-3 * 60 * (100 if method == "sum" else 1)
        np.testing.assert_allclose(lazy.values, eager.values, atol=scale)
    else:
        np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-6)


def padded_blocks(a: np.ndarray, k: int, row: int, col: int, shape: tuple[int, int]) -> np.ndarray:
    """Reference: pad with NaN so every output pixel is a full k×k block, then reshape."""
    h, w = shape
    full = np.full((*a.shape[:-2], h * k, w * k), np.nan)
    ny, nx = a.shape[-2:]
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + h * k, ny), min(col + w * k, nx)
    full[..., r0 - row : r1 - row, c0 - col : c1 - col] = a[..., r0:r1, c0:c1]
    return full.reshape((*a.shape[:-2], h, k, w, k))


def test_average_is_exact_mean_and_sum_is_conserved():
    cube = make_cube()
    dst = TARGETS["aligned_edges"]
    blocks = padded_blocks(cube.values.astype(np.float64), 3, -2, -2, tuple(dst.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref_mean = np.nanmean(blocks, axis=(-3, -1))
    out = resample(cube.chunk({"y": 10, "x": 10}), dst, "average").values
    np.testing.assert_allclose(out, ref_mean, rtol=1e-6)
    total = resample(cube.chunk({"y": 10, "x": 10}), dst, "sum").values
    # the target covers the whole source: the field's total is conserved
    np.testing.assert_allclose(
        np.nansum(total, axis=(-2, -1)),
        np.nansum(cube.values.astype(np.float64), axis=(-2, -1)),
        rtol=1e-6,
    )


def test_kernel_against_numpy_for_each_method():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 3, (2, 23, 31)).astype(np.float32)
    a[rng.random(a.shape) < 0.3] = np.nan
    blocks = padded_blocks(a, 4, 1, -3, (6, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        refs = {
            "average": np.nanmean(blocks, axis=(-3, -1)),
            "min": np.nanmin(blocks, axis=(-3, -1)),
            "max": np.nanmax(blocks, axis=(-3, -1)),
        }
    valid = np.isfinite(blocks).any(axis=(-3, -1))
    refs["sum"] = np.where(valid, np.nansum(blocks, axis=(-3, -1)), np.nan)
    for method, ref in refs.items():
        out = aggregate_blocks(a, (4, 4), method, offset=(1, -3), out_shape=(6, 9))
        np.testing.assert_allclose(out, ref, rtol=1e-6, err_msg=method)
    mode = aggregate_blocks(a, (4, 4), "mode", offset=(1, -3), out_shape=(6, 9))
    flat = blocks.transpose(0, 1, 3, 2, 4).reshape(2, 6, 9, 16)
    for idx in np.ndindex(2, 6, 9):
        vals = flat[idx][np.isfinite(flat[idx])]
        if vals.size == 0:
            assert np.isnan(mode[idx])
        else:
            counts = {v: np.sum(vals == v) for v in np.unique(vals)}
            assert counts[mode[idx]] == max(counts.values())


@settings(max_examples=15, deadline=None)
@given(
    k=st.integers(1, 4),
    row=st.integers(-3, 5),
    col=st.integers(-3, 5),
    cy=st.integers(3, 30),
    cx=st.integers(3, 30),
    out_chunk=st.integers(1, 12),
    method=st.sampled_from(["average", "sum", "min", "max", "mode"]),
)
def test_chunking_invariance(k, row, col, cy, cx, out_chunk, method):
    cube = make_cube(seed=1)
    a = SRC.affine
    dst = xf.grid(
        (a.c + col * 10, a.f - (row + 40) * 10, a.c + (col + 40) * 10, a.f - row * 10),
        SRC.crs,
        10 * k,
    )
    eager = resample(cube, dst, method)
    with raise_if_dask_computes():
        lazy = resample(cube.chunk({"y": cy, "x": cx}), dst, method, chunks=out_chunk)
    np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-6)


def test_output_chunks_are_chosen_not_inherited():
    gbox = xf.grid((0, 0, 6000, 6000), 32633, 10)
    cube = assign_grid(
        xr.DataArray(dask.array.zeros((600, 600), chunks=16, dtype="float32"), dims=("y", "x")),
        gbox,
    )
    out = resample(cube, xf.grid((0, 0, 6000, 6000), 32633, 20), "average")
    assert out.chunks == ((256, 44), (256, 44))
    # input chunks that are multiples of k: output chunks are whole multiples of the scaled size
    cube = cube.chunk(100)
    out = resample(cube, xf.grid((0, 0, 6000, 6000), 32633, 20), "average")
    assert out.chunks == ((300,), (300,))
    out = resample(cube, xf.grid((0, 0, 6000, 6000), 32633, 7), "bilinear")
    assert max(out.chunks[-1]) >= 256


def test_coords_attrs_and_dtypes_kept():
    cube = make_cube()
    out = resample(cube.chunk({"y": 20}), TARGETS["unaligned"], "nearest")
    assert out.dims == ("time", "band", "y", "x")
    assert list(out.band.values) == ["value", "class"]
    np.testing.assert_array_equal(out.time.values, cube.time.values)
    assert out.attrs == {"units": "dn"}
    assert out.rio.crs.to_epsg() == 32633
    geo = resample(cube, TARGETS["geographic"], "nearest")
    assert geo.dims == ("time", "band", "y", "x") and geo.odc.geobox == TARGETS["geographic"]
    ints = assign_grid(
        xr.DataArray(np.arange(47 * 53, dtype="uint16").reshape(47, 53), dims=("y", "x")), SRC
    )
    out = resample(ints, TARGETS["aligned_window"], "max")
    assert out.dtype == np.float32
    ref = gdal(ints.values.astype(np.float32), SRC, TARGETS["aligned_window"], "max")
    np.testing.assert_array_equal(out.values, ref)


def test_dataset_and_accessor():
    cube = make_cube()
    ds = xr.Dataset({"a": cube, "meta": ("time", [1, 2])})
    out = resample(ds, TARGETS["aligned_window"], "average")
    xr.testing.assert_identical(
        out["a"], resample(cube, TARGETS["aligned_window"], "average").rename("a")
    )
    assert "meta" in out
    xr.testing.assert_identical(
        cube.xf.resample(TARGETS["unaligned"], "mode"), resample(cube, TARGETS["unaligned"], "mode")
    )
    # a cube as the target grid
    like = resample(cube, TARGETS["aligned_window"])
    assert resample(cube, like, "min").odc.geobox == TARGETS["aligned_window"]


def test_bad_input_errors():
    cube = make_cube()
    with pytest.raises(InputError, match="unknown resampling method 'lanczos'"):
        resample(cube, TARGETS["unaligned"], "lanczos")
    mars = xf.grid((0, 0, 100, 100), "IAU_2015:49900", 1)
    with pytest.raises(GridError, match="cannot transform"):
        resample(cube, mars, "nearest")
    far = xf.grid((600000, 4000000, 601000, 4001000), 32633, 10)
    with pytest.raises(GridError, match="does not overlap"):
        resample(cube.chunk(), far, "average")
    with pytest.raises(GridError, match="no usable grid"):
        resample(xr.DataArray(np.zeros((3, 3)), dims=("y", "x")), far)
    with pytest.raises(GridError, match="expected a grid"):
        resample(cube, "EPSG:4326")
    with pytest.raises(InputError, match="spatial dims"):
        resample(cube.rename(x="col"), far)
    with pytest.raises(InputError, match="chunks"):
        resample(cube, far, chunks=0)


L1 = "landsat_l1_parana/LC08_L1TP_224077_20200518_20200518_01_RT_B2"


@pytest.mark.data
def test_real_landsat_30m_to_60m_matches_gdal_average(shared_data):
    path = shared_data / f"{L1}.TIF"
    raw = rioxarray.open_rasterio(path, chunks={"y": 512, "x": 512})
    cube = raw.where(raw != 0).astype("float32")  # 0 is fill in Level-1 DN
    src = geobox_of(cube)
    dst = xf.grid(tuple(src.boundingbox)[:4], src.crs, 60)
    with raise_if_dask_computes():
        out = resample(cube, dst, "average")
    with rasterio.open(path) as f:
        dn = f.read(1)
        ref = np.full(dst.shape, np.nan, dtype=np.float32)
        rasterio.warp.reproject(
            dn,
            ref,
            src_transform=f.transform,
            src_crs=f.crs,
            dst_transform=dst.affine,
            dst_crs=dst.crs,
            src_nodata=0,
            dst_nodata=np.nan,
            resampling=Resampling.average,
        )
    values = out.values[0]
    np.testing.assert_array_equal(np.isnan(values), np.isnan(ref))
    np.testing.assert_allclose(values, ref, rtol=1e-5)
    # plausibility against a third party's 60 m product of the same band and origin, on the
    # blocks whose four pixels are valid (the third party handled the scene edge differently)
    with rasterio.open(shared_data / f"{L1}_60m.TIF") as f:
        other = f.read(1).astype(np.float64)
        assert f.transform == dst.affine
    h, w = dst.shape
    padded = np.zeros((2 * h, 2 * w), dtype=dn.dtype)
    padded[: dn.shape[0], : dn.shape[1]] = dn
    complete = (padded.reshape(h, 2, w, 2) > 0).all(axis=(1, 3))
    both = complete & (other > 0)
    assert np.mean(np.abs(values[both] - other[both])) < 15
    assert np.corrcoef(values[both], other[both])[0, 1] > 0.99
