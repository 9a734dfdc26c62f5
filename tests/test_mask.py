from __future__ import annotations

import re

import dask.array as dsa
import numpy as np
import pytest
import scipy.ndimage as ndi
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.morphology import disk as sk_disk

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion._kernels.morphology import binary_dilate_disk, disk
from xfusion.errors import BandError, InputError
from xfusion.preprocess.mask import (
    CLASS_PRESETS,
    QA_PRESETS,
    SCALE_PRESETS,
    dilate,
    mask_bits,
    mask_classes,
    mask_range,
    scale,
)
from xfusion.testing import raise_if_dask_computes

CHUNKINGS = [None, {"y": 3, "x": 4}]


def _cube(rng, qa_values, *, time=True, qa_name="QA60", dtype="float32"):
    """A small cube with two reflectance bands and a quality band holding ``qa_values``."""
    shape = qa_values.shape
    refl = rng.random((2, *shape)).astype(dtype) * 1000
    data = np.concatenate([refl, qa_values[None].astype(dtype)], axis=0)
    return synthetic_cube(np.moveaxis(data, 0, 1) if time else data, ["B04", "B08", qa_name])


def _maybe_chunk(da, chunks):
    return da if chunks is None else da.chunk(chunks)


def _check_chunked(out, chunks):
    assert isinstance(out.data, dsa.Array) == (chunks is not None)


def _numpy_bits_reference(cube_np, qa_np, bits):
    """Independent reference: numpy bit tests on the integer QA values."""
    qa_int = np.where(np.isnan(qa_np), 0, qa_np).astype(np.int64)
    flagged = np.zeros(qa_np.shape, bool)
    for b in bits:
        flagged |= (qa_int >> b) & 1 == 1
    invalid = flagged | np.isnan(qa_np)
    return np.where(invalid, np.nan, cube_np)


# ---------------------------------------------------------------------------------------------
# mask_bits


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("time", [True, False])
def test_mask_bits_matches_numpy(chunks, time):
    rng = np.random.default_rng(0)
    shape = (3, 7, 9) if time else (7, 9)
    qa = rng.choice([0, 1 << 10, 1 << 11, (1 << 10) | 1, 5, 1 << 12], size=shape).astype(float)
    qa[..., 0, 0] = np.nan
    cube = _maybe_chunk(_cube(rng, qa, time=time), chunks)
    with raise_if_dask_computes():
        out = mask_bits(cube, "QA60", "QA60", missing="drop")
    _check_chunked(out, chunks)
    assert list(out.band.values) == ["B04", "B08"]
    assert out.dtype == np.float32
    refl = cube.sel(band=["B04", "B08"]).values
    qa_b = qa[:, None] if time else qa[None]
    expected = _numpy_bits_reference(refl, np.broadcast_to(qa_b, refl.shape), [10, 11])
    np.testing.assert_array_equal(out.values, expected)
    assert out.dims == cube.dims


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_mask_bits_integer_cube_and_keep_qa(chunks):
    rng = np.random.default_rng(1)
    qa = rng.integers(0, 1 << 6, size=(2, 5, 6))
    cube = _maybe_chunk(_cube(rng, qa, qa_name="QA_PIXEL", dtype="uint16"), chunks)
    with raise_if_dask_computes():
        out = mask_bits(cube, "QA_PIXEL", [3, 4], drop=False)
    _check_chunked(out, chunks)
    assert out.dtype == np.float32
    assert list(out.band.values) == ["B04", "B08", "QA_PIXEL"]
    # the QA band is kept unmasked
    np.testing.assert_array_equal(out.sel(band="QA_PIXEL").values, qa.astype(np.float32))
    refl = cube.sel(band=["B04", "B08"]).values.astype(np.float32)
    expected = _numpy_bits_reference(refl, np.broadcast_to(qa[:, None], refl.shape), [3, 4])
    np.testing.assert_array_equal(out.sel(band=["B04", "B08"]).values, expected)


def test_mask_bits_presets_and_snow():
    assert QA_PRESETS["QA60"].values == (10, 11)
    assert QA_PRESETS["QA_PIXEL"].values == (0, 1, 2, 3, 4)
    assert 5 in QA_PRESETS["QA_PIXEL_SNOW"].values
    assert CLASS_PRESETS["SCL"].values == (3, 8, 9, 10)
    assert 11 in CLASS_PRESETS["SCL_SNOW"].values
    rng = np.random.default_rng(2)
    qa = np.array([[[0, 1 << 5, 1 << 3, 1 << 7]]], dtype=float)  # clear, snow, cloud, water
    cube = _cube(rng, qa, qa_name="QA_PIXEL")
    plain = mask_bits(cube, "QA_PIXEL", "QA_PIXEL").sel(band="B04").values[0, 0]
    snow = mask_bits(cube, "QA_PIXEL_SNOW", "QA_PIXEL_SNOW").sel(band="B04").values[0, 0]
    np.testing.assert_array_equal(np.isnan(plain), [False, False, True, False])
    np.testing.assert_array_equal(np.isnan(snow), [False, True, True, False])


def test_mask_bits_missing_band():
    rng = np.random.default_rng(3)
    cube = _cube(rng, np.zeros((1, 2, 2)))
    with pytest.raises(
        BandError,
        match=re.escape("quality band 'QA_PIXEL' not in cube; bands are ['B04', 'B08', 'QA60']"),
    ):
        mask_bits(cube, "QA_PIXEL", [3])
    with pytest.raises(InputError, match="'band' dimension"):
        mask_bits(cube.sel(band="B04"), "QA60", [10])


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_mask_bits_non_integer_qa(chunks):
    rng = np.random.default_rng(4)
    qa = np.array([[[0.0, 1024.5], [np.nan, 3.0]]])
    cube = _maybe_chunk(_cube(rng, qa), chunks)
    with pytest.raises(BandError, match="non-integer"):
        # eager input fails at once, chunked input when the block is computed
        mask_bits(cube, "QA60", [10]).compute()
    with pytest.raises(BandError, match="non-integer"):
        mask_bits(_cube(rng, np.full((1, 2, 2), np.inf)), "QA60", [10])
    negative = _cube(rng, -np.ones((1, 2, 2)))
    with pytest.raises(BandError, match="negative"):
        mask_bits(negative, "QA60", [10])
    text = _cube(rng, np.zeros((1, 2, 2))).astype(bool)
    with pytest.raises(BandError, match="dtype bool"):
        mask_bits(text, "QA60", [10])


def test_mask_bits_bad_bits():
    rng = np.random.default_rng(5)
    cube = _cube(rng, np.zeros((1, 2, 2)), dtype="uint16")
    with pytest.raises(InputError, match=r"bits \[16\] out of range .* uint16"):
        mask_bits(cube, "QA60", [3, 16])
    with pytest.raises(InputError, match=r"out of range"):
        mask_bits(cube.astype("float32"), "QA60", [-1])
    with pytest.raises(InputError, match="unknown bits preset 'QA61'"):
        mask_bits(cube, "QA60", "QA61")
    with pytest.raises(InputError, match="integers"):
        mask_bits(cube, "QA60", [1.5])
    with pytest.raises(InputError, match="empty"):
        mask_bits(cube, "QA60", [])


# ---------------------------------------------------------------------------------------------
# mask_classes


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_mask_classes_matches_numpy(chunks):
    rng = np.random.default_rng(6)
    scl = rng.integers(0, 12, size=(2, 6, 5)).astype(float)
    scl[0, 0, 0] = np.nan
    cube = _maybe_chunk(_cube(rng, scl, qa_name="SCL"), chunks)
    with raise_if_dask_computes():
        out = mask_classes(cube, "SCL", "SCL", missing="drop")
    _check_chunked(out, chunks)
    refl = cube.sel(band=["B04", "B08"]).values
    scl_b = np.broadcast_to(scl[:, None], refl.shape)
    bad = np.isin(scl_b, [3, 8, 9, 10]) | np.isnan(scl_b)
    np.testing.assert_array_equal(out.values, np.where(bad, np.nan, refl))
    with pytest.raises(BandError, match="non-integer"):
        mask_classes(_cube(rng, np.full((1, 2, 2), 0.5), qa_name="SCL"), "SCL", [3])


# ---------------------------------------------------------------------------------------------
# mask_range and scale


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_mask_range(chunks):
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 12000, size=(2, 3, 6, 5)).astype("uint16")
    raw[0, 0, 0, 0] = 0
    raw[0, 1, 0, 1] = 10000
    cube = xr.DataArray(raw, dims=("time", "band", "y", "x"), coords={"band": ["a", "b", "c"]})
    cube = _maybe_chunk(cube, chunks)
    with raise_if_dask_computes():
        inclusive = mask_range(cube, 0, 10000)
        exclusive = mask_range(cube, 0, 10000, inclusive=False)
        per_band = mask_range(cube, {"a": 100}, {"b": 5000})
        pixel = mask_range(cube, 0, 10000, inclusive=False, bands=["a", "b"])
    _check_chunked(exclusive, chunks)
    f = raw.astype(np.float32)
    np.testing.assert_array_equal(inclusive.values, np.where((f >= 0) & (f <= 10000), f, np.nan))
    np.testing.assert_array_equal(exclusive.values, np.where((f > 0) & (f < 10000), f, np.nan))
    expected = f.copy()
    expected[:, 0][f[:, 0] < 100] = np.nan
    expected[:, 1][f[:, 1] > 5000] = np.nan
    np.testing.assert_array_equal(per_band.values, expected)
    ok = ((f[:, :2] > 0) & (f[:, :2] < 10000)).all(axis=1, keepdims=True)
    np.testing.assert_array_equal(pixel.values, np.where(ok, f, np.nan))
    with pytest.raises(
        BandError, match=r"^lo names band 'z' not in cube; bands are \['a', 'b', 'c'\]"
    ):
        mask_range(cube, {"z": 1}, None)


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_scale(chunks):
    rng = np.random.default_rng(8)
    raw = rng.integers(1, 60000, size=(2, 2, 4, 3)).astype("uint16")
    cube = xr.DataArray(raw, dims=("time", "band", "y", "x"), coords={"band": ["SR_B4", "ST_B10"]})
    cube = _maybe_chunk(cube, chunks)
    with raise_if_dask_computes():
        s2 = scale(cube, 1e-4)
        sr = scale(cube.sel(band=["SR_B4"]), "LANDSAT_C2_SR")
        mixed = scale(
            cube,
            {"SR_B4": 2.75e-5, "ST_B10": 0.00341802},
            {"SR_B4": -0.2, "ST_B10": 149.0 - 273.15},
        )
    _check_chunked(sr, chunks)
    assert s2.dtype == np.float32
    f = raw.astype(np.float64)
    np.testing.assert_allclose(s2.values, f / 10000, rtol=1e-6)
    np.testing.assert_allclose(sr.values, f[:, :1] * 2.75e-5 - 0.2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed.values[:, 0], f[:, 0] * 2.75e-5 - 0.2, rtol=1e-5, atol=1e-6)
    celsius = f[:, 1] * 0.00341802 + 149.0 - 273.15
    np.testing.assert_allclose(mixed.values[:, 1], celsius, rtol=1e-5, atol=1e-4)
    assert SCALE_PRESETS["LANDSAT_C2_ST_CELSIUS"][1] == pytest.approx(149.0 - 273.15)
    with pytest.raises(InputError, match="unknown scale preset"):
        scale(cube, "S3")
    with pytest.raises(BandError, match="not in cube"):
        scale(cube, {"B99": 2.0})


def test_scale_and_mask_range_dataset():
    rng = np.random.default_rng(9)
    ds = xr.Dataset(
        {
            "red": (("y", "x"), rng.integers(0, 20000, (4, 5)).astype("uint16")),
            "temp": (("y", "x"), rng.integers(0, 60000, (4, 5)).astype("uint16")),
        }
    ).chunk({"y": 2})
    with raise_if_dask_computes():
        scaled = scale(ds, {"red": 1e-4, "temp": 0.00341802}, {"temp": 149.0})
        ranged = mask_range(ds, 1, {"red": 10000})
    red = ds.red.values.astype(np.float64)
    temp = ds.temp.values.astype(np.float64)
    np.testing.assert_allclose(scaled.red.values, red * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(scaled.temp.values, temp * 0.00341802 + 149.0, rtol=1e-6)
    np.testing.assert_array_equal(
        ranged.red.values, np.where((red >= 1) & (red <= 10000), red, np.nan)
    )
    np.testing.assert_array_equal(ranged.temp.values, np.where(temp >= 1, temp, np.nan))
    with pytest.raises(BandError, match="neither variables nor bands"):
        scale(ds, {"blue": 2.0})


# ---------------------------------------------------------------------------------------------
# dilate


def _scipy_dilate(mask_np, radius):
    if radius == 0:
        return mask_np.astype(bool)
    flat = mask_np.reshape((-1, *mask_np.shape[-2:]))
    structure = sk_disk(radius).astype(bool)
    out = np.stack([ndi.binary_dilation(m, structure=structure) for m in flat])
    return out.reshape(mask_np.shape)


def test_disk_matches_skimage():
    for r in range(8):
        np.testing.assert_array_equal(disk(r), sk_disk(r).astype(bool))


@pytest.mark.parametrize("chunks", [None, {"y": 5, "x": 4}, {"y": 1, "x": 2}])
@pytest.mark.parametrize("radius", [0, 1, 3])
def test_dilate_matches_scipy(chunks, radius):
    rng = np.random.default_rng(10)
    mask = xr.DataArray(rng.random((2, 17, 13)) < 0.04, dims=("time", "y", "x"))
    mask = _maybe_chunk(mask, chunks)
    with raise_if_dask_computes():
        out = dilate(mask, radius)
    _check_chunked(out, chunks)
    assert out.dtype == bool and out.dims == mask.dims
    np.testing.assert_array_equal(out.values, _scipy_dilate(mask.values, radius))


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_dilate_cube_nan_mask_with_coords(chunks):
    rng = np.random.default_rng(11)
    data = rng.random((2, 9, 11)).astype("float32")
    data[data < 0.05] = np.nan
    cube = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": ["a", "b"], "y": np.arange(9) * -10.0, "x": np.arange(11) * 10.0},
    )
    cube = _maybe_chunk(cube, chunks)
    with raise_if_dask_computes():
        grown = dilate(cube.isnull(), 3)
    np.testing.assert_array_equal(grown.values, _scipy_dilate(np.isnan(data), 3))
    xr.testing.assert_equal(grown.x, cube.x)
    # a float 0/1 mask (NaN = not set) gives the same answer
    as_float = cube.isnull().astype("float32").where(cube.notnull() | cube.isnull())
    np.testing.assert_array_equal(dilate(as_float, 3).values, grown.values)


def test_dilate_dims_order_kept():
    rng = np.random.default_rng(12)
    mask = xr.DataArray(rng.random((8, 2, 7)) < 0.1, dims=("y", "band", "x"))
    out = dilate(mask.chunk({"y": 3}), 2)
    assert out.dims == ("y", "band", "x")
    expected = _scipy_dilate(mask.transpose("band", "y", "x").values, 2)
    np.testing.assert_array_equal(out.transpose("band", "y", "x").values, expected)


def test_dilate_errors():
    mask = xr.DataArray(np.zeros((3, 3), bool), dims=("y", "x"))
    with pytest.raises(InputError, match="non-negative integer"):
        dilate(mask, -1)
    with pytest.raises(InputError, match="non-negative integer"):
        dilate(mask, 1.5)
    with pytest.raises(InputError, match="dims 'y' and 'x'"):
        dilate(mask.rename(y="lat"), 1)


@settings(max_examples=15, deadline=None)
@given(
    ny=st.integers(1, 14),
    nx=st.integers(1, 14),
    cy=st.integers(1, 6),
    cx=st.integers(1, 6),
    radius=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_dilate_chunking_invariance(ny, nx, cy, cx, radius, seed):
    rng = np.random.default_rng(seed)
    mask = xr.DataArray(rng.random((ny, nx)) < 0.1, dims=("y", "x"))
    eager = dilate(mask, radius).values
    chunked = dilate(mask.chunk({"y": cy, "x": cx}), radius).values
    np.testing.assert_array_equal(chunked, eager)
    np.testing.assert_array_equal(eager, _scipy_dilate(mask.values, radius))


def test_kernel_leading_dims():
    rng = np.random.default_rng(13)
    m = rng.random((2, 3, 10, 9)) < 0.05
    np.testing.assert_array_equal(binary_dilate_disk(m, 2), _scipy_dilate(m, 2))


# ---------------------------------------------------------------------------------------------
# accessor delegation


def test_accessor_delegates():
    rng = np.random.default_rng(14)
    qa = rng.choice([0, 1024, 2048, 8], size=(2, 4, 5)).astype(float)
    cube = _cube(rng, qa).chunk({"y": 2})
    xr.testing.assert_identical(
        cube.xf.mask_bits("QA60", "QA60"), xf.mask_bits(cube, "QA60", "QA60")
    )
    xr.testing.assert_identical(
        cube.xf.mask_classes("QA60", [8], drop=False),
        xf.mask_classes(cube, "QA60", [8], drop=False),
    )
    xr.testing.assert_identical(cube.xf.mask_range(1, 500), xf.mask_range(cube, 1, 500))
    refl = cube.sel(band=["B04", "B08"])  # scale refuses the flag band QA60
    xr.testing.assert_identical(refl.xf.scale(1e-4, 1.0), xf.scale(refl, 1e-4, 1.0))
    m = cube.isnull()
    xr.testing.assert_identical(m.xf.dilate(2), xf.dilate(m, 2))
    ds = refl.to_dataset(dim="band")
    xr.testing.assert_identical(ds.xf.scale(2.0), xf.scale(ds, 2.0))
    xr.testing.assert_identical(ds.xf.mask_range(0, 10), xf.mask_range(ds, 0, 10))


# ---------------------------------------------------------------------------------------------
# real data: Landsat Collection-2 QA_PIXEL against the scene's CLOUD_COVER


@pytest.mark.data
@pytest.mark.parametrize("scene", ["assets", "assets3", "assets4"])
@pytest.mark.parametrize("as_float", [False, True])
def test_qa_pixel_cloud_cover_matches_mtl(shared_data, scene, as_float):
    rioxarray = pytest.importorskip("rioxarray")
    folder = shared_data / "landsat_c2l2_stac" / scene
    mtl = next(folder.glob("*_MTL.txt")).read_text()
    cloud_cover = float(re.search(r"\bCLOUD_COVER\s*=\s*([\d.]+)", mtl).group(1))
    qa = rioxarray.open_rasterio(next(folder.glob("*_QA_PIXEL.TIF")), chunks={"x": 256, "y": 256})
    qa = qa.assign_coords(band=["QA_PIXEL"])
    ones = xr.ones_like(qa).assign_coords(band=["one"])
    cube = xr.concat([ones, qa], dim="band")
    if as_float:
        cube = cube.astype("float32")
    with raise_if_dask_computes():
        valid = mask_bits(cube, "QA_PIXEL", [0]).notnull().sum()  # bit 0: fill
        clear = mask_bits(cube, "QA_PIXEL", [0, 3]).notnull().sum()  # bit 3: cloud
        clear_preset = (
            mask_bits(cube, "QA_PIXEL", [0, *QA_PRESETS["QA_PIXEL"].values]).notnull().sum()
        )
    valid, clear, clear_preset = (int(v) for v in (valid, clear, clear_preset))
    assert valid > 0.5 * 512 * 512
    cloud_pct = 100 * (valid - clear) / valid
    assert abs(cloud_pct - cloud_cover) <= 0.1
    # the preset also masks dilated cloud, cirrus and shadow: never less than bit 3 alone
    assert clear_preset <= clear
