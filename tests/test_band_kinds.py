"""Band kinds under resampling and fusing: flags OR'd, classes by mode/nearest, identity copies."""

from __future__ import annotations

import json

import dask
import dask.array
import numpy as np
import pystac
import pytest
import xarray as xr

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.bands import KIND_COORD, band_kinds
from xfusion.errors import BandError, InputError
from xfusion.grids import assign_grid, geobox_of
from xfusion.preprocess.resample import band_methods, resample
from xfusion.testing import raise_if_dask_computes

CRS = "EPSG:32633"
X0, Y0 = 500_000, 4_000_000
FINE = xf.grid((X0, Y0, X0 + 80, Y0 + 80), CRS, 10)  # 8 x 8
COARSE = xf.grid((X0, Y0, X0 + 80, Y0 + 80), CRS, 20)  # 4 x 4
CLOUD_BITS = (1, 2, 3, 4)


def cube_of(data, bands, gbox=FINE, dtype="float32"):
    return synthetic_cube(np.asarray(data, dtype), bands, grid=gbox)


def qa_block_cube():
    """Landsat QA_PIXEL 2x2 blocks of clear 21824 with one cirrus/cloud 54596 pixel."""
    block = np.array([[21824, 21824], [21824, 54596]])
    return cube_of(np.tile(block, (1, 4, 4)), ["QA_PIXEL"])


def has_cloud(values):
    bits = np.nan_to_num(values).astype(np.int64)
    return np.any([(bits >> b) & 1 for b in CLOUD_BITS], axis=0).astype(bool)


def test_flag_block_is_ored_not_averaged():
    """Issue: [21824 x3, 54596] averaged to 30017 lost the cirrus flag."""
    cube = qa_block_cube()
    out = resample(cube, COARSE)
    np.testing.assert_array_equal(out.values, np.full((1, 4, 4), 54596, "float32"))
    assert has_cloud(out.values).all()
    fused = xf.fuse({"ls": cube}, grid=COARSE)
    np.testing.assert_array_equal(fused.values, np.full((1, 4, 4), 54596, "float32"))
    assert fused[KIND_COORD].values.tolist() == ["flags"]
    assert json.loads(fused.attrs["xfusion:provenance"])["ls"]["resampling"] == "bitwise_or"
    # mask_bits afterwards removes the cloudy coarse pixels (all of them here)
    reflectance = cube_of(np.ones((1, 8, 8)), ["SR_B2"])
    both = xf.fuse({"ls": [xr.concat([reflectance, cube], "band")]}, grid=COARSE)
    masked = xf.mask_bits(both, "ls:QA_PIXEL", list(CLOUD_BITS))
    assert masked.isnull().all()


def test_bitwise_or_ignores_nan_and_all_nan_gives_nan():
    data = np.array([[1, np.nan, np.nan, np.nan], [np.nan, 8, np.nan, np.nan]], "float32")
    cube = cube_of(data[None], ["QA60"], xf.grid((X0, Y0, X0 + 40, Y0 + 20), CRS, 10))
    out = resample(cube, xf.grid((X0, Y0, X0 + 40, Y0 + 20), CRS, 20))
    np.testing.assert_array_equal(out.values[0], [[9, np.nan]])


def test_continuous_methods_are_refused_on_flags_and_classes():
    cube = cube_of(np.zeros((3, 8, 8)), ["B04", "QA_PIXEL", "SCL"])
    for method in ("average", "sum", "bilinear", "cubic", "min", "max"):
        with pytest.raises(BandError, match=r"'QA_PIXEL' of kind 'flags'; allowed for flags"):
            resample(cube, COARSE, method)
    with pytest.raises(BandError, match=r"'SCL' of kind 'categorical'.*\['mode', 'nearest'\]"):
        resample(cube, COARSE, {"SCL": "bilinear"})
    with pytest.raises(BandError, match=r"'label' of kind 'categorical'"):
        resample(cube_of(np.zeros((1, 8, 8)), ["label"]), COARSE, "average", kinds="categorical")
    with pytest.raises(BandError, match=r"'QA_PIXEL' of kind 'flags'"):
        xf.fuse({"ls": cube}, grid=COARSE, resampling={"ls": "average"})
    with pytest.raises(BandError, match="bitwise_or' is not allowed for band 'B04'"):
        resample(cube, COARSE, {"B04": "bitwise_or"})
    with pytest.raises(BandError, match=r"^resampling names band 'nope' not in cube; bands are \["):
        resample(cube, COARSE, {"nope": "mode"})
    with pytest.raises(InputError, match="unknown resampling method 'fancy' for band 'B04'"):
        resample(cube, COARSE, {"B04": "fancy"})
    # the per-kind defaults, aggregating and not
    assert band_methods(cube, COARSE) == {
        "B04": "average",
        "QA_PIXEL": "bitwise_or",
        "SCL": "mode",
    }
    finer = xf.grid((X0, Y0, X0 + 80, Y0 + 80), CRS, 5)
    assert band_methods(cube, finer) == {"B04": "average", "QA_PIXEL": "nearest", "SCL": "nearest"}


def test_each_band_gets_its_kind_method_and_keeps_its_kind():
    rng = np.random.default_rng(0)
    refl = rng.random((8, 8)).astype("float32")
    labels = rng.integers(0, 3, (8, 8)).astype("float32")
    qa = rng.choice([0, 2, 8, 1024], (8, 8)).astype("float32")
    cube = cube_of(np.stack([refl, labels, qa]), ["B04", "label", "QA60"])
    with raise_if_dask_computes():
        lazy = resample(cube.chunk({"y": 3, "x": 5}), COARSE, kinds={"label": "categorical"})
    assert isinstance(lazy.data, dask.array.Array)
    out = resample(cube, COARSE, kinds={"label": "categorical"})
    np.testing.assert_array_equal(lazy.values, out.values)
    assert out.band.values.tolist() == ["B04", "label", "QA60"]
    assert out[KIND_COORD].values.tolist() == ["continuous", "categorical", "flags"]
    blocks = lambda a: a.reshape(4, 2, 4, 2).transpose(0, 2, 1, 3).reshape(4, 4, 4)  # noqa: E731
    np.testing.assert_allclose(out.values[0], blocks(refl).mean(-1), rtol=1e-6)
    np.testing.assert_array_equal(
        out.values[2], np.bitwise_or.reduce(blocks(qa).astype(np.int64), axis=-1)
    )
    # mode: every coarse label is one of its block's labels, and the most frequent one
    for (i, j), value in np.ndenumerate(out.values[1]):
        counts = np.bincount(blocks(labels)[i, j].astype(int), minlength=3)
        assert counts[int(value)] == counts.max()
    # going finer: classes and flags by nearest, so only values that exist come out
    finer = resample(
        cube, xf.grid((X0, Y0, X0 + 80, Y0 + 80), CRS, 5), kinds={"label": "categorical"}
    )
    np.testing.assert_array_equal(finer.values[1], np.kron(labels, np.ones((2, 2))))
    np.testing.assert_array_equal(finer.values[2], np.kron(qa, np.ones((2, 2))))


def test_identical_grid_is_an_exact_copy():
    """Issue: a label fused onto its own grid changed 0 into values like 5.8e-11 (bilinear)."""
    rng = np.random.default_rng(1)
    lab = cube_of(rng.integers(0, 2, (1, 8, 8)) * rng.random((1, 8, 8)), ["label"])
    s1 = cube_of(rng.random((2, 8, 8)), ["VV", "VH"])
    fused = xf.fuse({"s1": s1, "lab": lab}, grid=s1)
    np.testing.assert_array_equal(fused.sel(band="lab:label").values, lab.values[0])
    np.testing.assert_array_equal(fused.sel(band=["s1:VV", "s1:VH"]).values, s1.values)
    for method in ("bilinear", "cubic", "average", "nearest", "sum"):
        out = resample(lab, geobox_of(lab), method)
        np.testing.assert_array_equal(out.values, lab.values)
    # within the tolerance (a pixel size off in the 15th digit) is the same grid too
    a = FINE.affine
    nudged = type(FINE)(FINE.shape, a * a.scale(1 + 3e-15), FINE.crs)
    out = resample(lab.chunk({"y": 4}), nudged, "bilinear")
    np.testing.assert_array_equal(out.values, lab.values)
    assert geobox_of(out) == nudged
    assert not any(name.startswith("xf-warp") for name in out.data.dask.layers)


def test_float16_is_upcast():
    """Issue: float16 failed in numba (average) and rasterio (bilinear)."""
    rng = np.random.default_rng(2)
    cube = cube_of(rng.random((1, 8, 8)), ["B04"], dtype="float16")
    as32 = cube.astype("float32")
    for method, target in (
        ("average", COARSE),
        ("bilinear", xf.grid((X0, Y0, X0 + 80, Y0 + 80), CRS, 7)),
    ):
        out = resample(cube, target, method)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out.values, resample(as32, target, method).values)
    assert xf.fuse({"a": cube}, grid=COARSE).dtype == np.float32


def test_integer_class_nodata_is_not_a_class():
    data = np.array([[1, 1, 255, 255], [1, 255, 255, 255]])[None]
    labels = cube_of(data, ["landcover"], xf.grid((X0, Y0, X0 + 40, Y0 + 20), CRS, 10), "uint8")
    labels.attrs["_FillValue"] = 255
    out = resample(labels, xf.grid((X0, Y0, X0 + 40, Y0 + 20), CRS, 20), kinds="categorical")
    np.testing.assert_array_equal(out.values[0], [[1, np.nan]])
    assert "_FillValue" not in out.attrs
    # fuse treats an integer source as classes (mode) and drops the fill value too
    fused = xf.fuse({"lc": labels}, grid=xf.grid((X0, Y0, X0 + 40, Y0 + 20), CRS, 20))
    np.testing.assert_array_equal(fused.values[0], [[1, np.nan]])
    assert fused[KIND_COORD].values.tolist() == ["categorical"]


def test_flags_across_crs_keep_every_flag_and_chunking_does_not_matter():
    rng = np.random.default_rng(3)
    qa = rng.choice([0, 1 << 3, 1 << 4, (1 << 10) | 1], (60, 60)).astype("float32")
    qa[:5, :5] = np.nan
    fine = xf.grid((X0, Y0, X0 + 600, Y0 + 600), CRS, 10)
    cube = cube_of(qa[None], ["QA_PIXEL"], fine)
    dst = xf.grid((15.0005, 36.1450, 15.0065, 36.1500), 4326, 0.0004)
    eager = resample(cube, dst)
    lazy = resample(cube.chunk({"y": 17, "x": 23}), dst, chunks=(4, 5))
    np.testing.assert_array_equal(eager.values, lazy.values)
    nearest = resample(cube, dst, "nearest").values[0]
    ored = eager.values[0]
    # coverage as GDAL's footprint methods see it (max of the same numbers)
    gdal_max = resample(cube, dst, "max", kinds="continuous").values[0]
    np.testing.assert_array_equal(np.isnan(ored), np.isnan(gdal_max))
    valid = ~np.isnan(nearest) & ~np.isnan(ored)
    assert valid.sum() > 20
    nearest_bits = nearest[valid].astype(np.int64)
    ored_bits = ored[valid].astype(np.int64)
    # every flag of the nearest pixel is kept, and more where the footprint holds more
    assert np.all(ored_bits & nearest_bits == nearest_bits)
    assert np.any(ored_bits != nearest_bits)
    assert np.all(ored_bits & ~np.int64(1 | 8 | 16 | 1024) == 0)


def test_continuous_graph_is_one_layer():
    cube = cube_of(np.ones((2, 8, 8)), ["B04", "B08"]).chunk({"y": 4, "x": 4})
    out = resample(cube, COARSE)
    assert len(out.data.dask.layers) == len(cube.data.dask.layers) + 1


@pytest.fixture
def landsat_qa(shared_data):
    path = next((shared_data / "landsat_c2l2_stac" / "assets").glob("*_SR_stac_LOCAL.json"))
    item = pystac.Item.from_file(str(path))
    item.make_asset_hrefs_absolute()
    return xf.open_stac([item], assets={"QA_PIXEL.TIF": "QA_PIXEL", "SR_B2.TIF": "SR_B2"})


def test_real_landsat_qa_pixel_fused_twice_coarser_is_the_or_of_its_blocks(landsat_qa):
    cube = landsat_qa
    assert band_kinds(cube)["QA_PIXEL"] == "flags"
    coarse = geobox_of(cube).zoom_out(2)
    fused = xf.fuse({"ls": cube}, grid=coarse)
    fine_qa = cube.sel(band="QA_PIXEL").isel(time=0).values
    coarse_qa = fused.sel(band="ls:QA_PIXEL").isel(time=0).values
    ny, nx = coarse_qa.shape
    blocks = fine_qa[: 2 * ny, : 2 * nx].reshape(ny, 2, nx, 2).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(ny, nx, 4)
    valid = ~np.isnan(blocks)
    expected = np.bitwise_or.reduce(np.where(valid, blocks, 0).astype(np.int64), axis=-1)
    expected = np.where(valid.any(-1), expected, np.nan)
    np.testing.assert_array_equal(coarse_qa, expected)
    assert np.unique(fine_qa[~np.isnan(fine_qa)]).size > 5  # a real mix of flags
    # a coarse pixel is cloudy exactly when any of its fine pixels is
    fine_cloudy = (
        xf.mask_bits(cube, "QA_PIXEL", "QA_PIXEL", missing="drop").sel(band="SR_B2").isel(time=0)
    )
    fine_cloudy = fine_cloudy.isnull().values
    masked = xf.mask_bits(fused, "ls:QA_PIXEL", "QA_PIXEL", missing="drop")
    coarse_cloudy = masked.sel(band="ls:SR_B2").isel(time=0).isnull().values
    fine_blocks = fine_cloudy[: 2 * ny, : 2 * nx].reshape(ny, 2, nx, 2).any(axis=(1, 3))
    sr_missing = np.isnan(fused.sel(band="ls:SR_B2").isel(time=0).values)
    np.testing.assert_array_equal(coarse_cloudy, fine_blocks | sr_missing)
    assert 0 < coarse_cloudy.sum() < coarse_cloudy.size
    # averaging the flags, as before, loses some of the cloudy coarse pixels
    averaged = cube.sel(band=["QA_PIXEL"]).xf.resample(coarse, "average", kinds="continuous")
    assert (~has_cloud(averaged.isel(time=0, band=0).values) & fine_blocks).sum() > 0


def test_mean_mosaic_averages_only_continuous_bands():
    left = cube_of(
        [np.full((8, 8), 1.0), np.full((8, 8), 2.0), np.full((8, 8), 8.0)], ["B04", "SCL", "QA60"]
    )
    right = cube_of(
        [np.full((8, 8), 3.0), np.full((8, 8), 5.0), np.full((8, 8), 1024.0)],
        ["B04", "SCL", "QA60"],
    )
    right[:, :, :4] = np.nan
    fused = xf.fuse({"s2": [left.chunk({"x": 4}), right]}, grid=FINE, mosaic="mean")
    assert isinstance(fused.data, dask.array.Array)
    out = fused.values
    np.testing.assert_array_equal(out[0, :, :4], 1.0)
    np.testing.assert_array_equal(out[0, :, 4:], 2.0)
    np.testing.assert_array_equal(out[1], 2.0)  # the first valid class, not 3.5
    np.testing.assert_array_equal(out[2, :, :4], 8.0)
    np.testing.assert_array_equal(out[2, :, 4:], 8.0 + 1024.0)  # both flags kept
    assert fused[KIND_COORD].values.tolist() == ["continuous", "categorical", "flags"]


def test_fuse_kinds_by_source_or_fused_band_name():
    rng = np.random.default_rng(6)
    lab = cube_of(rng.integers(0, 3, (1, 8, 8)), ["label"])
    s2 = cube_of(np.stack([rng.random((8, 8)), rng.integers(0, 4, (8, 8))]), ["B04", "mask"])
    fused = xf.fuse(
        {"s2": s2, "lab": lab}, grid=COARSE, kinds={"lab": "categorical", "s2:mask": "flags"}
    )
    assert fused[KIND_COORD].values.tolist() == ["continuous", "flags", "categorical"]
    prov = json.loads(fused.attrs["xfusion:provenance"])
    assert prov["s2"]["resampling"] == {"B04": "average", "mask": "bitwise_or"}
    assert prov["lab"]["resampling"] == "mode"
    labels = fused.sel(band="lab:label").values
    assert set(np.unique(labels)) <= {0.0, 1.0, 2.0}
    with pytest.raises(BandError, match="kinds names 'lab:nope', which is neither a source"):
        xf.fuse({"lab": lab}, grid=COARSE, kinds={"lab:nope": "flags"})
    with pytest.raises(InputError, match="kind of band 'label' must be one of"):
        xf.fuse({"lab": lab}, grid=COARSE, kinds={"lab": "classes"})


def test_integer_cube_defaults_to_class_methods():
    data = np.array([[1, 1, 7, 9], [2, 1, 9, 9]])[None]
    small = xf.grid((X0, Y0, X0 + 40, Y0 + 20), CRS, 10)
    labels = cube_of(data, ["smod"], small, "uint8")
    out = resample(labels, xf.grid((X0, Y0, X0 + 40, Y0 + 20), CRS, 20))
    np.testing.assert_array_equal(out.values[0], [[1, 9]])
    finer = resample(labels, xf.grid((X0, Y0, X0 + 40, Y0 + 20), CRS, 5))
    assert set(np.unique(finer.values)) <= {1.0, 2.0, 7.0, 9.0}
    # an explicit continuous method is still allowed on a mere dtype guess
    averaged = resample(labels, xf.grid((X0, Y0, X0 + 40, Y0 + 20), CRS, 20), "average")
    np.testing.assert_array_equal(averaged.values[0], [[1.25, 8.5]])
    labels.attrs["nodata"] = 9
    masked = resample(labels, xf.grid((X0, Y0, X0 + 40, Y0 + 20), CRS, 20))
    np.testing.assert_array_equal(masked.values[0], [[1, 7]])


def test_dataset_variables_by_kind():
    qa = qa_block_cube().isel(band=0, drop=True)
    refl = cube_of(np.ones((1, 8, 8)), ["B04"]).isel(band=0, drop=True)
    ds = xr.Dataset({"cloud": qa, "B04": refl})
    out = resample(ds, COARSE, kinds={"cloud": "flags"})
    np.testing.assert_array_equal(out["cloud"].values, 54596)
    np.testing.assert_array_equal(out["B04"].values, 1)
    with pytest.raises(BandError, match=r"'cloud' of kind 'flags'"):
        resample(ds, COARSE, {"cloud": "average"}, kinds={"cloud": "flags"})
    with pytest.raises(
        BandError, match=r"^kinds names band 'nope' not in any variable; bands are "
    ):
        resample(ds, COARSE, kinds={"nope": "flags"})


def test_fuse_carries_the_recorded_scaling_so_scale_still_refuses_twice():
    from xfusion.errors import ScaleError

    g = xf.grid((500000, 4000000, 500040, 4000040), "EPSG:32633", 10)
    rng = np.random.default_rng(0)
    s2 = assign_grid(
        xr.DataArray(
            rng.integers(1000, 3000, (2, 4, 4)).astype("float32"),
            dims=("band", "y", "x"),
            coords={"band": ["B04", "B08"]},
        ),
        g,
    )
    s2 = xf.bands.set_band_scaling(s2, {"B04": (1e-4, 0.0), "B08": (1.0, 0.0)})
    other = assign_grid(
        xr.DataArray(
            np.ones((1, 4, 4), "float32"), dims=("band", "y", "x"), coords={"band": ["dem"]}
        ),
        g,
    )
    fused = xf.fuse({"s2": s2, "aux": other}, grid=g.zoom_out(2))
    got = xf.bands.band_scaling(fused)
    assert got == {"s2:B04": (1e-4, 0.0), "s2:B08": (1.0, 0.0), "aux:dem": None}
    with pytest.raises(ScaleError, match="s2:B04"):
        fused.sel(band=["s2:B04"]).xf.scale(1e-4)
    # the raw band may be scaled once
    scaled = fused.sel(band=["s2:B08"]).xf.scale(1e-4)
    assert xf.bands.band_scaling(scaled) == {"s2:B08": (1e-4, 0.0)}
