from __future__ import annotations

import json
import warnings

import dask.array
import numpy as np
import pytest
import rasterio
import rasterio.warp
import rioxarray
import xarray as xr
from odc.geo.xr import xr_coords
from rasterio.enums import Resampling

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import BandError, EmptySelectionError, GridError, InputError
from xfusion.grids import geobox_of
from xfusion.preprocess.fuse import choose_resampling, fuse, mosaic_cubes
from xfusion.preprocess.resample import resample
from xfusion.testing import raise_if_dask_computes

pytestmark = pytest.mark.filterwarnings("ignore:Dataset has no geotransform")

TIMES = np.array(["2020-01-01", "2020-02-01"], dtype="M8[ns]")
GRID = xf.grid((500100, 4000100, 500700, 4000500), 32633, 20)


def s2(times=TIMES) -> xr.DataArray:
    rng = np.random.default_rng(0)
    g = xf.grid((500000, 4000000, 500800, 4000600), 32633, 10)
    data = rng.random((len(times), 2, *g.shape), dtype=np.float32)
    data[rng.random(data.shape) < 0.1] = np.nan
    return synthetic_cube(data, ["B04", "B08"], times=times, grid=g)


def viirs(times=TIMES) -> xr.DataArray:
    """Geographic, ~400 m pixels: goes finer onto the 20 m grid."""
    g = xf.grid((14.98, 36.12, 15.02, 36.16), 4326, 0.004)
    yy, xx = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    data = np.stack([np.sin(yy / 3.0) + xx / 5.0] * len(times))[:, None].astype(np.float32)
    cube = xr.DataArray(
        data, dims=("time", "band", "y", "x"), coords={"time": times, "band": ["avg_rad"]}
    )
    return cube.assign_coords(xr_coords(g, crs_coord_name="spatial_ref", always_yx=True))


def ghsl() -> xr.DataArray:
    """Integer settlement classes at 5 m without time or band dims."""
    rng = np.random.default_rng(1)
    g = xf.grid((500000, 4000000, 500800, 4000600), 32633, 5)
    return synthetic_cube(rng.integers(0, 4, g.shape).astype("uint8"), grid=g, name="smod")


def sources(chunked: bool = False) -> dict[str, xr.DataArray]:
    out = {"s2": s2(), "viirs": viirs(), "ghsl": ghsl()}
    return {k: v.chunk({"y": 25, "x": 30}) for k, v in out.items()} if chunked else out


def gdal(cube: xr.DataArray, dst, method: str) -> np.ndarray:
    src = geobox_of(cube)
    data = cube.values.astype(np.float32)
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


def test_fuse_three_sources():
    out = fuse(sources(), grid=GRID)
    assert out.dims == ("time", "band", "y", "x")
    assert out.dtype == np.float32
    assert out.odc.geobox == GRID
    assert out.band.values.tolist() == ["s2:B04", "s2:B08", "viirs:avg_rad", "ghsl:smod"]
    assert out.source.values.tolist() == ["s2", "s2", "viirs", "ghsl"]
    np.testing.assert_array_equal(out.time.values, TIMES)
    # s2 goes coarser: average; viirs goes finer: bilinear; ghsl is classes going coarser: mode
    np.testing.assert_allclose(
        out.sel(band=["s2:B04", "s2:B08"]).values, gdal(s2(), GRID, "average"), rtol=1e-5
    )
    np.testing.assert_allclose(
        out.sel(band=["viirs:avg_rad"]).values, gdal(viirs(), GRID, "bilinear"), rtol=1e-6
    )
    ref = gdal(ghsl(), GRID, "mode")
    for t in range(2):  # a source without time is broadcast along it
        np.testing.assert_array_equal(out.sel(band="ghsl:smod").values[t], ref)
    prov = json.loads(out.attrs["xfusion:provenance"])
    assert prov["s2"] == {
        "crs": ["EPSG:32633"],
        "resolution": [[10.0, 10.0]],
        "resampling": "average",
        "bands": ["B04", "B08"],
        "mosaic": None,
        "time": "identical",
    }
    assert prov["viirs"]["crs"] == ["EPSG:4326"] and prov["viirs"]["resampling"] == "bilinear"
    assert prov["ghsl"]["resampling"] == "mode" and prov["ghsl"]["time"] == "broadcast"


def test_chunked_equals_eager_and_is_lazy():
    eager = fuse(sources(), grid=GRID)
    with raise_if_dask_computes():
        lazy = fuse(sources(chunked=True), grid=GRID, resampling={"viirs": "cubic"})
    assert isinstance(lazy.data, dask.array.Array)
    cubic = fuse(sources(), grid=GRID, resampling={"viirs": "cubic"})
    np.testing.assert_allclose(lazy.values, cubic.values, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(
        eager.sel(band=["s2:B04", "ghsl:smod"]).values,
        cubic.sel(band=["s2:B04", "ghsl:smod"]).values,
    )


def test_method_rule_and_mapping():
    fine = xf.grid((500100, 4000100, 500700, 4000500), 32633, 2.5)
    assert choose_resampling(s2(), GRID) == "average"
    assert choose_resampling(s2(), GRID, "sum") == "sum"
    assert choose_resampling(s2(), fine) == "bilinear"
    assert choose_resampling(ghsl(), GRID) == "mode"
    assert choose_resampling(ghsl(), fine) == "nearest"
    labelled = s2().assign_attrs(kind="classes")
    assert choose_resampling(labelled, GRID) == "mode"
    out = fuse({"s2": s2()}, grid=GRID, resampling={"s2": "max"})
    np.testing.assert_array_equal(out.values, gdal(s2(), GRID, "max"))
    with pytest.raises(InputError, match="unknown resampling method 'fancy' for source 's2'"):
        fuse({"s2": s2()}, grid=GRID, resampling={"s2": "fancy"})
    with pytest.raises(InputError, match=r"names sources \['modis'\]"):
        fuse({"s2": s2()}, grid=GRID, resampling={"modis": "average"})
    with pytest.raises(InputError, match="unknown resampling method"):
        fuse({"s2": s2()}, grid=GRID, resampling="spline")


def test_time_axes():
    later = np.array(["2020-01-03", "2020-03-01", "2020-04-01"], dtype="M8[ns]")
    mixed = {"s2": s2(), "viirs": viirs(later)}
    with pytest.raises(InputError, match=r"different time axes.*composite.*align='nearest'"):
        fuse(mixed, grid=GRID)
    with raise_if_dask_computes():
        nearest = fuse({k: v.chunk() for k, v in mixed.items()}, grid=GRID, align="nearest")
    np.testing.assert_array_equal(nearest.time.values, TIMES)
    expected = resample(viirs(later), GRID, "bilinear").isel(time=[0, 1]).values
    np.testing.assert_allclose(nearest.sel(band=["viirs:avg_rad"]).values, expected, rtol=1e-6)
    overlap = {"s2": s2(), "viirs": viirs(np.array(["2020-02-01", "2020-05-01"], "M8[ns]"))}
    exact = fuse(overlap, grid=GRID, align="exact")
    np.testing.assert_array_equal(exact.time.values, TIMES[1:])
    np.testing.assert_allclose(
        exact.sel(band=["s2:B04", "s2:B08"]).values, gdal(s2(), GRID, "average")[1:], rtol=1e-5
    )
    with pytest.raises(EmptySelectionError, match="no time in common"):
        fuse(mixed, grid=GRID, align="exact")
    with pytest.raises(InputError, match="unknown align"):
        fuse(mixed, grid=GRID, align="linear")
    composite = fuse({"s2": s2().isel(time=0, drop=True), "ghsl": ghsl()}, grid=GRID)
    assert composite.dims == ("band", "y", "x")


def test_mosaic_of_a_list_source():
    full = s2().isel(time=0, drop=True)
    left = full.isel(x=slice(0, 45))
    right = full.isel(x=slice(35, None)) + 100  # overlaps `left` on 10 columns, distinguishable
    parts = [resample(left, GRID, "average"), resample(right, GRID, "average")]
    first = fuse({"s2": [left, right]}, grid=GRID).values
    a, b = (p.values for p in parts)
    np.testing.assert_array_equal(first, np.where(np.isnan(a), b, a))
    mean = fuse({"s2": [left, right]}, grid=GRID, mosaic="mean").values
    with np.errstate(invalid="ignore"):
        expected = np.nansum([a, b], axis=0) / np.isfinite([a, b]).sum(axis=0)
    np.testing.assert_allclose(mean, expected, rtol=1e-6)
    both = np.isfinite(a) & np.isfinite(b)
    assert both.any()  # the overlap is counted once: its mean lies between the two, never a sum
    np.testing.assert_allclose(mean[both], (a[both] + b[both]) / 2, rtol=1e-6)
    last = fuse({"s2": [left, right]}, grid=GRID, mosaic=lambda cubes: cubes[-1]).values
    np.testing.assert_array_equal(last, b)
    prov = json.loads(fuse({"s2": [left, right]}, grid=GRID).attrs["xfusion:provenance"])
    assert prov["s2"]["mosaic"] == "first" and len(prov["s2"]["crs"]) == 2
    with pytest.raises(BandError, match="same bands"):
        fuse({"s2": [left, right.isel(band=[0])]}, grid=GRID)
    with pytest.raises(InputError, match="unknown mosaic"):
        fuse({"s2": [left, right]}, grid=GRID, mosaic="median")
    np.testing.assert_array_equal(mosaic_cubes(parts, "first").values, first)


def test_bad_input():
    with pytest.raises(InputError, match="non-empty mapping"):
        fuse({}, grid=GRID)
    with pytest.raises(InputError, match="non-empty mapping"):
        fuse([s2()], grid=GRID)
    with pytest.raises(InputError, match="source 's2' must be a DataArray"):
        fuse({"s2": np.zeros((3, 3))}, grid=GRID)
    with pytest.raises(GridError, match="expected a grid"):
        fuse({"s2": s2()}, grid="EPSG:32633")
    far = xf.grid((600000, 4000000, 601000, 4001000), 32633, 20)
    with pytest.raises(GridError, match="does not overlap"):
        fuse({"s2": s2()}, grid=far)
    mars = xf.grid((0, 0, 100, 100), "IAU_2015:49900", 1)
    with pytest.raises(GridError, match="cannot transform"):
        fuse({"s2": s2()}, grid=mars)


def test_accessor_free_top_level_name():
    assert xf.fuse is fuse


SCENES = {
    "224077": "landsat_l1_parana/LC08_L1TP_224077_20200518_20200518_01_RT",
    "224078": "landsat_l1_parana/LC08_L1TP_224078_20200518_20200518_01_RT",
}


def open_scene(root, stem: str) -> xr.DataArray:
    bands = []
    for band in ("B2", "B3", "B4"):
        raw = rioxarray.open_rasterio(root / f"{stem}_{band}.TIF", chunks={"y": 512, "x": 512})
        bands.append(raw.where(raw != 0).astype("float32"))  # 0 is fill in Level-1 DN
    return xr.concat(bands, dim="band").assign_coords(band=["B2", "B3", "B4"])


@pytest.mark.data
def test_real_adjacent_landsat_scenes_mosaic(shared_data):
    north, south = (open_scene(shared_data, stem) for stem in SCENES.values())
    bounds = [geobox_of(c).boundingbox for c in (north, south)]
    union = (
        min(b.left for b in bounds),
        min(b.bottom for b in bounds),
        max(b.right for b in bounds),
        max(b.top for b in bounds),
    )
    grid = xf.grid(union, "EPSG:32621", 60)
    with raise_if_dask_computes():
        first = fuse({"l8": [north, south]}, grid=grid)
        mean = fuse({"l8": [north, south]}, grid=grid, mosaic="mean")
    refs = []
    for stem in SCENES.values():
        # independent reference: numpy 2x2 block means of the valid DN on the grid's lattice (GDAL
        # is not used here: at the south scene's west edge it bleeds the first source column into
        # the target column outside the scene, where no source pixel lies)
        with rasterio.open(shared_data / f"{stem}_B2.TIF") as f:
            dn = f.read(1).astype(np.float64)
            col = round((f.transform.c - grid.affine.c) / 30)
            row = round((grid.affine.f - f.transform.f) / 30)
        dn[dn == 0] = np.nan
        h, w = grid.shape
        canvas = np.full((2 * h, 2 * w), np.nan)
        canvas[row : row + dn.shape[0], col : col + dn.shape[1]] = dn
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            refs.append(np.nanmean(canvas.reshape(h, 2, w, 2), axis=(1, 3)))
    a, b = refs
    overlap = np.isfinite(a) & np.isfinite(b)
    assert overlap.sum() > 1000  # the scenes overlap in rows: a real mosaicking case
    got_first = first.sel(band="l8:B2").values
    np.testing.assert_allclose(got_first, np.where(np.isnan(a), b, a), rtol=1e-5)
    got_mean = mean.sel(band="l8:B2").values
    np.testing.assert_allclose(got_mean[overlap], (a[overlap] + b[overlap]) / 2, rtol=1e-5)
    only_b = np.isnan(a) & np.isfinite(b)
    np.testing.assert_allclose(got_mean[only_b], b[only_b], rtol=1e-5)
    assert first.band.values.tolist() == ["l8:B2", "l8:B3", "l8:B4"]
