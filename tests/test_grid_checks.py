"""One "same grid" rule everywhere, geographic grids everywhere, grids that are checked."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import BandError, GridError
from xfusion.grids import (
    MAX_PIXELS,
    assign_grid,
    check_same_grid,
    geobox_of,
    grid_mismatch,
    same_grid,
    snap_to_grid,
)
from xfusion.preprocess.resample import resample
from xfusion.testing import raise_if_dask_computes

CRS = "EPSG:32633"
X0, Y0 = 499_000, 3_999_000
N = 449


def nudged(gbox: GeoBox, factor: float = 1 + 3e-15, shift: float = 0.0) -> GeoBox:
    """``gbox`` with its pixel size scaled by ``factor`` and its origin moved by ``shift`` px."""
    a = gbox.affine
    affine = Affine(a.a * factor, 0.0, a.c + shift * a.a, 0.0, a.e * factor, a.f)
    return GeoBox(gbox.shape, affine, gbox.crs)


def test_same_grid_tolerance():
    g = xf.grid((X0, Y0, X0 + 30 * N, Y0 + 30 * N), CRS, 30)
    assert same_grid(g, nudged(g)) and same_grid(g, nudged(g, shift=5e-4))
    assert not same_grid(g, nudged(g, shift=0.01))
    # a resolution error that accumulates to more than 1e-3 px across the grid
    assert not same_grid(g, nudged(g, factor=1 + 1e-5))
    assert "shape" in grid_mismatch(g, g[:10, :10])
    assert "CRS" in grid_mismatch(g, GeoBox(g.shape, g.affine, "EPSG:32634"))
    with pytest.raises(GridError, match=r"label is not on the cube's grid: pixel edges differ"):
        check_same_grid(g, nudged(g, shift=0.5), "label")


def test_patches_and_sample_with_a_label_off_in_the_15th_digit():
    """Issue: the label passed the grid check, then alignment kept a sliver (broadcast error)."""
    g = xf.grid((X0, Y0, X0 + 30 * N, Y0 + 30 * N), CRS, 30)
    rng = np.random.default_rng(0)
    cube = synthetic_cube(rng.random((2, N, N), "float32"), ["a", "b"], grid=g)
    label = synthetic_cube(np.ones((N, N), "float32"), grid=nudged(g))
    assert (label.x.values != cube.x.values).any()
    ds = cube.xf.patches(label, size=64, n=4)
    assert ds.target.shape == (4, 1, 64, 64) and float(ds.target.sum()) == 4 * 64 * 64
    df = cube.xf.sample(label, 20)
    assert len(df) == 20 and (df["label"] == 1).all()
    snapped = snap_to_grid(label, cube)
    np.testing.assert_array_equal(snapped.x.values, cube.x.values)
    far = assign_grid(label, nudged(g, shift=0.01))
    with pytest.raises(GridError, match="x coordinates differ from the cube's"):
        cube.xf.patches(far, size=64, n=4)


def test_resample_fuse_and_open_raster_accept_a_grid_within_tolerance(tmp_path):
    g = xf.grid((X0, Y0, X0 + 300, Y0 + 300), CRS, 30)
    data = np.arange(100, dtype="float32").reshape(1, 10, 10)
    cube = synthetic_cube(data, ["b"], grid=g)
    off = nudged(g)
    out = resample(cube, off, "cubic")
    np.testing.assert_array_equal(out.values, data)
    assert geobox_of(out) == off
    paths = []
    for name, gbox in (("a", g), ("b", off)):
        path = tmp_path / f"{name}.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=10, height=10, count=1, dtype="float32",
            crs=CRS, transform=gbox.affine,
        ) as dst:  # fmt: skip
            dst.write(data)
        paths.append(path)
    stacked = xf.open_raster(paths)
    np.testing.assert_array_equal(stacked.values, np.concatenate([data, data]))


def test_irregular_spacing_is_refused():
    g = xf.grid((X0, Y0, X0 + 300, Y0 + 300), CRS, 30)
    cube = synthetic_cube(np.zeros((10, 10), "float32"), grid=g)
    x = cube.x.values.copy()
    x[5:] += 7.5
    bad = cube.assign_coords(x=x)
    with pytest.raises(GridError, match=r"x coordinates are not regularly spaced.*30 to 37\.5"):
        resample(bad, xf.grid((X0, Y0, X0 + 300, Y0 + 300), CRS, 60))
    with pytest.raises(GridError, match="x coordinates are not regularly spaced"):
        geobox_of(bad)


def test_grid_refuses_absurd_grids():
    with pytest.raises(GridError, match=r"1000000 x 1000000 pixels .* limit of 1e\+11 pixels"):
        xf.grid((0, 0, 1, 1), "EPSG:4326", 1e-6)
    assert MAX_PIXELS == 10**11
    # degrees given to a UTM grid: a meaningless 1x1 grid before
    with pytest.raises(GridError, match=r"less than one pixel.*look like degrees"):
        xf.grid((85.0, 27.0, 86.0, 28.0), "EPSG:32645", 30)
    # metres given to a geographic grid
    with pytest.raises(GridError, match="outside the area of use of EPSG:4326"):
        xf.grid((330000, 3050000, 370000, 3090000), "EPSG:4326", 0.001)
    with pytest.raises(GridError, match="outside the area of use of EPSG:32645"):
        xf.grid((3.3e7, 3050000, 3.31e7, 3090000), "EPSG:32645", 100)
    # real grids well outside a UTM zone's nominal area stay allowed (USGS southern scenes)
    assert xf.grid((694005, -2832795, 778575, -2766615), "EPSG:32621", 30).shape == (2206, 2819)


@pytest.fixture
def sif(shared_data):
    folder = shared_data / "sif_cfis_train"
    inputs = sorted(folder.glob("cfis_input_*.tif"))[0]
    fine = folder / inputs.name.replace("cfis_input_", "cfis_fine_sif_")
    return inputs, fine


def test_geographic_grids_work_everywhere(sif):
    """Issue: open_raster(path, grid=<EPSG:4326 grid>) failed on latitude/longitude dims."""
    inputs, fine = sif
    cube = xf.open_raster(inputs)
    native = geobox_of(cube)
    assert native.crs.epsg == 4326
    # onto its own grid (as a grid and as a cube): the same cube
    for grid in (native, cube):
        same = xf.open_raster(inputs, grid=grid)
        assert same.dims == ("band", "y", "x")
        np.testing.assert_array_equal(same.values, cube.values)
    # onto a coarser geographic grid, lazily, warped with GDAL's nearest
    bb = native.boundingbox
    coarse = xf.grid((bb.left, bb.bottom, bb.right, bb.top), "EPSG:4326", 3 * native.resolution.x)
    with raise_if_dask_computes():
        warped = xf.open_raster(inputs, grid=coarse)
    assert warped.dims == ("band", "y", "x") and geobox_of(warped) == coarse
    # a coarse pixel's centre is the centre of the middle one of its 3 x 3 fine pixels
    np.testing.assert_array_equal(warped.values[:, :33, :33], cube.values[:, 1:99:3, 1:99:3])
    # resample, fuse, sample and patches on the geographic cube
    averaged = resample(cube.sel(band=["ref_1", "ref_2"]), coarse)
    block = cube.sel(band="ref_1").values[:3, :3]
    assert averaged.values[0, 0, 0] == pytest.approx(np.nanmean(block), rel=1e-6)
    sif = xf.open_raster(fine, band_names=["sif"])
    fused = xf.fuse({"in": cube.sel(band=["ref_1", "ref_4"]), "sif": sif}, grid=cube)
    np.testing.assert_array_equal(fused.sel(band="sif:sif").values, sif.values[0])
    df = cube.xf.sample(sif.isel(band=0), 30, seed=1)
    assert len(df) == 30 and np.isfinite(df["label"]).all()
    ds = cube.xf.patches(sif, size=16, n=3, max_nodata=1.0)
    assert ds.inputs.shape == (3, cube.sizes["band"], 16, 16)
    assert "WGS 84" in ds.attrs["crs"]
    assert (bb.left <= ds.x0).all() and (ds.y0 <= bb.top).all()


def test_ridge_fits_a_target_off_in_the_15th_digit():
    g = xf.grid((X0, Y0, X0 + 30 * 40, Y0 + 30 * 40), CRS, 30)
    rng = np.random.default_rng(4)
    X = synthetic_cube(rng.random((2, 40, 40), "float32"), ["a", "b"], grid=g)
    y = 2 * X.sel(band="a", drop=True) - X.sel(band="b", drop=True) + 1
    y = assign_grid(y, nudged(g, shift=1e-5))
    assert (y.x.values != X.x.values).any()
    model = xf.models.Ridge(alpha=1e-6).fit(X, y)
    np.testing.assert_allclose(np.ravel(model.coef_), [2.0, -1.0], atol=1e-3)
    with pytest.raises(GridError, match="y/sample_weight is not on the cube's grid"):
        xf.models.Ridge().fit(X, assign_grid(y, nudged(g, shift=0.3)))


def test_kernel_ridge_exact_fits_a_target_off_by_rounding():
    g = xf.grid((X0, Y0, X0 + 30 * 12, Y0 + 30 * 12), CRS, 30)
    rng = np.random.default_rng(5)
    X = synthetic_cube(rng.random((2, 12, 12), "float32"), ["a", "b"], grid=g)
    y = assign_grid(X.sel(band="a", drop=True) + X.sel(band="b", drop=True), nudged(g, shift=1e-5))
    model = xf.models.KernelRidge(alpha=1e-3, gamma=1.0, method="exact").fit(X, y)
    assert model.X_fit_.shape == (144, 2)


def test_open_raster_records_kinds_and_refuses_averaging_flags(tmp_path):
    g = xf.grid((X0, Y0, X0 + 300, Y0 + 300), CRS, 30)
    path = tmp_path / "qa.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=10, height=10, count=2, dtype="uint16",
        crs=CRS, transform=g.affine,
    ) as dst:  # fmt: skip
        dst.write(np.full((2, 10, 10), 8, "uint16"))
        dst.set_band_description(1, "QA_PIXEL")
        dst.set_band_description(2, "landcover")
    cube = xf.open_raster(path, kinds={"landcover": "categorical"})
    assert cube.band_kind.values.tolist() == ["flags", "categorical"]
    coarse = xf.grid((X0, Y0, X0 + 300, Y0 + 300), CRS, 60)
    with pytest.raises(BandError, match=r"'average' is not allowed for band 'QA_PIXEL' of kind"):
        xf.open_raster(path, grid=coarse, resampling="average")
    warped = xf.open_raster(path, grid=coarse, resampling="mode")
    np.testing.assert_array_equal(warped.values, 8)
    # downstream, resample picks the kind's method from the recorded coordinate
    assert xf.resample(cube, coarse).band_kind.values.tolist() == ["flags", "categorical"]
