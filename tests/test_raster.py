"""Tests for xf.open_raster: GeoTIFF and NetCDF files, stacking, nodata and lazy warping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.warp
import rioxarray
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

import xfusion as xf
from xfusion.errors import (
    BandError,
    EmptySelectionError,
    GridError,
    InputError,
    MissingFileError,
    SourceError,
)
from xfusion.grids import geobox_of
from xfusion.testing import raise_if_dask_computes

EPSG = 32633
TRANSFORM = Affine(30, 0, 400000, 0, -30, 5000000)


def write_tif(path, data, *, transform=TRANSFORM, nodata=None, descriptions=None, scale=None):
    """A tiled GeoTIFF of ``data`` shaped (band, y, x)."""
    profile = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": data.dtype.name,
        "crs": f"EPSG:{EPSG}",
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 16,
        "blockysize": 16,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
        if scale is not None:
            dst.scales, dst.offsets = scale
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("chunks", [None, 16, {"band": 2, "y": 8, "x": 24}])
def test_multiband_tif_matches_rasterio_with_nodata_and_scale(tmp_path, rng, chunks):
    data = rng.integers(0, 1000, (2, 40, 48), dtype="int16")
    data[:, :2, :3] = -9999
    path = write_tif(
        tmp_path / "two.tif",
        data,
        nodata=-9999,
        descriptions=["red", "nir"],
        scale=((0.01, 0.02), (1.0, -5.0)),
    )
    with raise_if_dask_computes():
        cube = xf.open_raster(path, chunks=chunks)
    assert cube.dims == ("band", "y", "x")
    assert cube.dtype == np.float32
    assert cube.chunks is not None
    assert cube.band.values.tolist() == ["red", "nir"]
    with rasterio.open(path) as src:
        masked = src.read(masked=True).astype("float32")
        scales, offsets = src.scales, src.offsets
        assert geobox_of(cube).affine == src.transform
    expected = masked * np.float32(scales)[:, None, None] + np.float32(offsets)[:, None, None]
    np.testing.assert_allclose(cube.values, expected.filled(np.nan), rtol=1e-6)
    raw = xf.open_raster(path, chunks=chunks, scale_offset=False)
    np.testing.assert_array_equal(raw.values, masked.filled(np.nan))
    # what was applied is recorded per band, and never claimed where it did not happen
    assert xf.bands.band_scaling(cube) == {"red": (0.01, 1.0), "nir": (0.02, -5.0)}
    assert xf.bands.band_scaling(raw) == {"red": (1.0, 0.0), "nir": (1.0, 0.0)}
    assert "scale_offset_applied" not in cube.attrs
    with pytest.raises(xf.errors.ScaleError, match="red"):
        cube.xf.scale(0.01)


def test_single_band_files_become_bands_named_by_stem(tmp_path, rng):
    paths = []
    for name in ("B02", "B03", "B04"):
        data = rng.integers(1, 500, (1, 20, 24), dtype="uint16")
        paths.append(write_tif(tmp_path / f"{name}.tif", data))
    with raise_if_dask_computes():
        cube = xf.open_raster(paths, chunks=8)
    assert cube.band.values.tolist() == ["B02", "B03", "B04"]
    # no scaling declared: the raw numbers are kept and the cube says so
    assert set(xf.bands.band_scaling(cube).values()) == {(1.0, 0.0)}
    reference = xr.concat([rioxarray.open_rasterio(p) for p in paths], dim="band")
    np.testing.assert_array_equal(cube.values, reference.values.astype("float32"))
    np.testing.assert_array_equal(cube.x.values, reference.x.values)
    np.testing.assert_array_equal(cube.y.values, reference.y.values)
    renamed = xf.open_raster(paths, band_names=["blue", "green", "red"])
    assert renamed.band.values.tolist() == ["blue", "green", "red"]
    with pytest.raises(BandError, match="band_names has 2 names but the files hold 3 bands"):
        xf.open_raster(paths, band_names=["blue", "green"])


def test_files_as_time_steps(tmp_path, rng):
    data = [rng.integers(1, 500, (2, 16, 16), dtype="uint16") for _ in range(3)]
    paths = [write_tif(tmp_path / f"t{i}.tif", d) for i, d in enumerate(data)]
    times = ["2020-01-01", "2020-02-01", "2020-03-01"]
    with raise_if_dask_computes():
        cube = xf.open_raster(paths, times=times, band_names=["a", "b"], chunks={"time": -1})
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.chunks[0] == (3,)
    np.testing.assert_array_equal(cube.time.values, pd.to_datetime(times).values)
    np.testing.assert_array_equal(cube.values, np.stack(data).astype("float32"))
    with pytest.raises(InputError, match="needs times="):
        xf.open_raster(paths, dim="time")
    with pytest.raises(InputError, match="times has 2 entries but there are 3 files"):
        xf.open_raster(paths, times=times[:2])


def test_netcdf_variables_become_bands(tmp_path, rng):
    g = xf.grid((400000, 4999700, 400300, 5000000), EPSG, 30)
    values = rng.random((2, 10, 10)).astype("float32")
    values[0, 0, 0] = -1
    time = pd.date_range("2021-01-01", periods=2).values
    var = xr.DataArray(values, dims=("time", "y", "x"), coords={"time": time})
    ds = xr.Dataset({"ndvi": var, "lai": var * 2}).assign_coords(xf.grids.grid_coords(g))
    ds["ndvi"].encoding["_FillValue"] = np.float32(-1)
    ds = ds.rio.write_crs(EPSG)
    path = tmp_path / "cube.nc"
    ds.to_netcdf(path, engine="netcdf4")
    with raise_if_dask_computes():
        cube = xf.open_raster(path, dim="time")
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.band.values.tolist() == ["ndvi", "lai"]
    assert geobox_of(cube) == g
    np.testing.assert_array_equal(cube.time.values, time)
    reference = xr.open_dataset(path, engine="netcdf4")  # CF decoding: _FillValue -> NaN
    np.testing.assert_array_equal(cube.sel(band="ndvi").values, reference["ndvi"].values)
    np.testing.assert_allclose(cube.sel(band="lai").values, reference["lai"].values)
    assert np.isnan(cube.values[0, 0, 0, 0])
    only = xf.open_raster(path, variables=["lai"], dim="time")
    assert only.band.values.tolist() == ["lai"]
    with pytest.raises(BandError, match="variable 'evi' not in NetCDF"):
        xf.open_raster(path, variables=["evi"])


def test_warp_onto_a_grid_is_lazy_and_matches_gdal(tmp_path, rng):
    data = rng.integers(1, 1000, (1, 64, 64), dtype="uint16")
    path = write_tif(tmp_path / "scene.tif", data)
    # Another UTM zone: a real change of CRS, over the middle of the scene.
    left, bottom, right, top = rasterio.warp.transform_bounds(
        f"EPSG:{EPSG}", "EPSG:32634", 400300, 4998400, 401600, 4999700
    )
    g = xf.grid((round(left), round(bottom), round(right), round(top)), "EPSG:32634", 45)
    with raise_if_dask_computes():
        cube = xf.open_raster(path, grid=g, chunks=16)
    assert geobox_of(cube) == g
    assert cube.chunks is not None
    expected = np.full(g.shape, np.nan, "float32")
    rasterio.warp.reproject(
        data[0].astype("float32"),
        expected,
        src_transform=TRANSFORM,
        src_crs=f"EPSG:{EPSG}",
        dst_transform=g.affine,
        dst_crs="EPSG:32634",
        resampling=Resampling.nearest,
        src_nodata=np.nan,
        dst_nodata=np.nan,
    )
    got = cube.isel(band=0).values
    assert np.isfinite(expected).sum() > 100
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    # GDAL's approximate transformer may pick a neighbour for a few pixels on chunk edges.
    assert np.mean(got[np.isfinite(got)] == expected[np.isfinite(expected)]) > 0.98


def test_laziness_counting_scheduler(tmp_path, rng):
    path = write_tif(tmp_path / "a.tif", rng.integers(1, 9, (1, 32, 32), dtype="uint8"))
    g = xf.grid((400000, 4999400, 400600, 5000000), EPSG, 20)
    with raise_if_dask_computes() as counter:
        cube = xf.open_raster([path], grid=g) * 2
    assert counter.total_computes == 0
    with raise_if_dask_computes(max_computes=1):
        cube.compute()


def test_errors(tmp_path, rng):
    with pytest.raises(MissingFileError, match=r"nowhere\.tif' does not exist"):
        xf.open_raster(tmp_path / "nowhere.tif")
    with pytest.raises(EmptySelectionError, match="paths is empty"):
        xf.open_raster([])
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"definitely not a raster")
    with pytest.raises(SourceError, match="cannot open raster"):
        xf.open_raster(garbage)
    plain = tmp_path / "plain.tif"
    with rasterio.open(
        plain, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8"
    ) as dst:
        dst.write(np.ones((1, 4, 4), "uint8"))
    with pytest.raises(SourceError, match="no CRS"):
        xf.open_raster(plain)
    a = write_tif(tmp_path / "a.tif", np.ones((1, 8, 8), "uint8"))
    shifted = TRANSFORM @ Affine.translation(3, 0)
    b = write_tif(tmp_path / "b.tif", np.ones((1, 8, 8), "uint8"), transform=shifted)
    with pytest.raises(GridError, match=r"files lie on different grids.*pass grid="):
        xf.open_raster([a, b])
    far = xf.grid((0, 0, 300, 300), EPSG, 30)
    with pytest.raises(GridError, match="does not overlap file"):
        xf.open_raster(a, grid=far)
    with pytest.raises(InputError, match="dim must be 'band' or 'time'"):
        xf.open_raster(a, dim="x")
    with pytest.raises(InputError, match="unknown resampling"):
        xf.open_raster(a, grid=far, resampling="lanczos9")


# --- real Landsat Level-1 scenes ------------------------------------------------------------


def test_parana_nodata_keyword_and_window_matches_rasterio(shared_data):
    folder = shared_data / "landsat_l1_parana"
    paths = sorted(folder.glob("*224077*_B[234].TIF"))
    with raise_if_dask_computes():
        cube = xf.open_raster(paths, nodata=0, band_names=["blue", "green", "red"])
    window = Window(250, 1400, 80, 40)  # the scene's lower-left corner: fill and data
    with rasterio.open(paths[2]) as src:
        dn = src.read(1, window=window)
        assert src.nodata is None
    got = cube.sel(band="red").isel(y=slice(1400, 1440), x=slice(250, 330)).values
    np.testing.assert_array_equal(got, np.where(dn == 0, np.nan, dn.astype("float32")))
    assert np.isnan(got).any() and np.isfinite(got).any()
    reference = rioxarray.open_rasterio(paths[0])
    np.testing.assert_array_equal(cube.x.values, reference.x.values)
    np.testing.assert_array_equal(cube.y.values, reference.y.values)
    assert cube.rio.transform() == reference.rio.transform()


def test_parana_60m_band_warped_onto_the_30m_grid(shared_data):
    folder = shared_data / "landsat_l1_parana"
    b2 = next(folder.glob("*224077*_B2.TIF"))
    b2_60 = next(folder.glob("*224077*_B2_60m.TIF"))
    native = xf.open_raster(b2, nodata=0)
    # A 30 m sub-grid aligned with both files' pixels (same origin, 60 m = 2 x 30 m).
    a = native.rio.transform()
    g = xf.grid(
        (a.c + 1200, a.f - 1200 - 30 * 120, a.c + 1200 + 30 * 160, a.f - 1200),
        native.rio.crs,
        30,
    )
    with raise_if_dask_computes():
        cube = xf.open_raster([b2, b2_60], grid=g, nodata=0, band_names=["b2", "b2_60m"])
    got = cube.values
    with rasterio.open(b2_60) as src:
        coarse = src.read(1, window=Window(20, 20, 80, 60)).astype("float32")
    coarse[coarse == 0] = np.nan
    np.testing.assert_array_equal(got[1], np.repeat(np.repeat(coarse, 2, 0), 2, 1))
    with rasterio.open(b2) as src:
        fine = src.read(1, window=Window(40, 40, 160, 120)).astype("float32")
    fine[fine == 0] = np.nan
    np.testing.assert_array_equal(got[0], fine)
    # The 60 m product is close to a 2 x 2 mean of the 30 m band (README: ~7 DN).
    mean = np.nanmean(fine.reshape(60, 2, 80, 2), axis=(1, 3))
    assert np.nanmean(np.abs(mean - coarse)) < 20
