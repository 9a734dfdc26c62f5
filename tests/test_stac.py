"""Tests for xf.open_stac: synthetic local COGs and the real Landsat C2L2 items."""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pystac
import pytest
import rasterio
import rioxarray
from affine import Affine
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
ORIGIN = (500000.0, 4000320.0)  # left, top
SCALE, OFFSET, NODATA = 1e-4, -0.1, 0


def write_tif(path, data, res, *, nodata=None, origin=ORIGIN, epsg=EPSG):
    """A tiled GeoTIFF (16-px blocks) of one band; returns its transform."""
    transform = Affine(res, 0, origin[0], 0, -res, origin[1])
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        "tiled": True,
        "blockxsize": 16,
        "blockysize": 16,
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[np.newaxis])
    return transform


def make_item(item_id, when, assets, *, epsg=EPSG, code=False):
    """A pystac Item whose assets are ``{key: (path, transform, shape, raster_bands)}``."""
    item = pystac.Item(item_id, None, [15, 36, 16, 37], when, {})
    for key, (path, transform, shape, raster_bands) in assets.items():
        fields = {"proj:transform": list(transform)[:6], "proj:shape": list(shape)}
        fields.update({"proj:code": f"EPSG:{epsg}"} if code else {"proj:epsg": epsg})
        if raster_bands is not None:
            fields["raster:bands"] = raster_bands
        item.add_asset(key, pystac.Asset(str(path), media_type="image/tiff", extra_fields=fields))
    return item


@pytest.fixture
def scenes(tmp_path):
    """Two dates, each with a 10 m band (32x32) and a 20 m band (16x16) on the same origin."""
    rng = np.random.default_rng(42)
    items, raw = [], {}
    for t, day in enumerate((dt.datetime(2021, 5, 3), dt.datetime(2021, 4, 1))):
        fine = rng.integers(1, 10000, (32, 32), dtype="uint16")
        coarse = rng.integers(1, 10000, (16, 16), dtype="uint16")
        fine[:3, :5] = NODATA  # declared only in raster:bands, not in the file
        coarse[-2:, -4:] = NODATA
        bands = [{"scale": SCALE, "offset": OFFSET, "nodata": NODATA}]
        f_path, c_path = tmp_path / f"t{t}_B04.tif", tmp_path / f"t{t}_B11.tif"
        assets = {
            "B04": (f_path, write_tif(f_path, fine, 10), (32, 32), bands),
            "B11": (c_path, write_tif(c_path, coarse, 20), (16, 16), bands),
        }
        items.append(make_item(f"scene-{t}", day, assets, code=(t == 1)))
        raw[day] = {"B04": fine, "B11": coarse}
    return items, raw


def reflectance(dn):
    out = dn.astype("float32") * np.float32(SCALE) + np.float32(OFFSET)
    return np.where(dn == NODATA, np.float32(np.nan), out)


@pytest.mark.parametrize("chunks", [None, 8, {"time": 1, "y": 16, "x": 8}])
def test_synthetic_values_match_rasterio_and_land_on_one_grid(scenes, chunks):
    items, raw = scenes
    with raise_if_dask_computes():
        cube = xf.open_stac(items, chunks=chunks)
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.dtype == np.float32
    assert cube.band.values.tolist() == ["B04", "B11"]
    assert cube.time.dtype.kind == "M"
    days = sorted(raw)
    np.testing.assert_array_equal(cube.time.values, np.array(days, dtype="datetime64[ns]"))
    # The native grid is the 10 m grid of the finest asset, exactly.
    with rasterio.open(items[0].assets["B04"].href) as src:
        assert geobox_of(cube).affine == src.transform
        assert geobox_of(cube).shape == (src.height, src.width)
    assert cube.rio.crs.to_epsg() == EPSG
    assert cube.odc.geobox == geobox_of(cube)
    if chunks == 8:
        assert cube.chunks[-2:] == ((8,) * 4, (8,) * 4)

    values = cube.values
    for t, day in enumerate(days):
        np.testing.assert_allclose(values[t, 0], reflectance(raw[day]["B04"]), rtol=1e-6)
        # 20 m pixels each cover a 2x2 block of the 10 m grid (nearest neighbour).
        coarse_on_fine = np.repeat(np.repeat(raw[day]["B11"], 2, axis=0), 2, axis=1)
        np.testing.assert_allclose(values[t, 1], reflectance(coarse_on_fine), rtol=1e-6)


def test_chunked_and_single_chunk_agree(scenes):
    items, _ = scenes
    whole = xf.open_stac(items, chunks=(-1, -1, -1, -1)).values
    tiled = xf.open_stac(items, chunks=(1, 1, 8, 8)).values
    np.testing.assert_array_equal(whole, tiled)


def test_given_grid_reads_the_same_window_as_rasterio(scenes):
    items, raw = scenes
    # A 20 m grid over part of the scene, aligned with the 20 m pixels.
    left, top = ORIGIN[0] + 40, ORIGIN[1] - 60
    g = xf.grid((left, top - 200, left + 120, top), EPSG, 20)
    with raise_if_dask_computes():
        cube = xf.open_stac(items, grid=g, assets=["B11"])
    assert geobox_of(cube) == g
    day = sorted(raw)[0]
    with rasterio.open(items[1].assets["B11"].href) as src:  # items[1] is the earlier date
        window = Window(2, 3, 6, 10)
        dn = src.read(1, window=window)
        assert src.window_transform(window) == g.affine
    np.testing.assert_array_equal(dn, raw[day]["B11"][3:13, 2:8])
    np.testing.assert_allclose(cube.isel(time=0, band=0).values, reflectance(dn), rtol=1e-6)


def test_grid_extending_beyond_the_data_is_nan_there(scenes):
    items, raw = scenes
    g = xf.grid((ORIGIN[0] - 40, ORIGIN[1] - 100, ORIGIN[0] + 60, ORIGIN[1]), EPSG, 10)
    cube = xf.open_stac(items[:1], grid=g, assets=["B04"])
    values = cube.isel(time=0, band=0).values
    assert np.isnan(values[:, :4]).all()
    np.testing.assert_allclose(
        values[:, 4:], reflectance(raw[items[0].datetime]["B04"][:10, :6]), rtol=1e-6
    )


def test_scale_offset_false_keeps_raw_dn_with_nan_nodata(scenes):
    items, raw = scenes
    cube = xf.open_stac(items, assets={"B04": "red"}, scale_offset=False)
    assert cube.band.values.tolist() == ["red"]
    dn = raw[sorted(raw)[0]]["B04"]
    expected = np.where(dn == NODATA, np.nan, dn.astype("float32"))
    np.testing.assert_array_equal(cube.isel(time=0, band=0).values, expected)
    assert cube.dtype == np.float32


def test_inputs_dicts_item_collection_and_catalog_with_relative_hrefs(scenes, tmp_path):
    items, _ = scenes
    from_items = xf.open_stac(items).values
    dicts = [item.to_dict() for item in items]
    np.testing.assert_array_equal(xf.open_stac(dicts).values, from_items)
    collection = pystac.ItemCollection(items)
    np.testing.assert_array_equal(xf.open_stac(collection).values, from_items)

    catalog = pystac.Catalog("cat", "two scenes")
    catalog.add_items([item.clone() for item in items])
    catalog.normalize_hrefs(str(tmp_path / "catalog"))
    for item in catalog.get_items(recursive=True):
        item.make_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    saved = json.loads(next((tmp_path / "catalog").rglob("scene-0.json")).read_text())
    assert saved["assets"]["B04"]["href"].startswith("../")
    cube = xf.open_stac(tmp_path / "catalog" / "catalog.json")
    np.testing.assert_array_equal(cube.values, from_items)
    # The caller's items are not modified (hrefs, proj:code).
    assert "proj:epsg" not in items[1].assets["B04"].extra_fields


def test_opening_computes_nothing_and_computing_once(scenes):
    items, _ = scenes
    with raise_if_dask_computes() as counter:
        cube = xf.open_stac(items)
        cube.sum()
    assert counter.total_computes == 0
    with raise_if_dask_computes(max_computes=1) as counter:
        cube.compute()
    assert counter.total_computes == 1


def test_unknown_asset_is_a_band_error(scenes):
    items, _ = scenes
    with pytest.raises(BandError, match=re.escape("asset 'B99' not in any item; assets are")):
        xf.open_stac(items, assets=["B04", "B99"])


def test_empty_selections(scenes):
    items, _ = scenes
    with pytest.raises(EmptySelectionError, match="no STAC items"):
        xf.open_stac([])
    with pytest.raises(EmptySelectionError, match="selects no bands"):
        xf.open_stac(items, assets=[])
    with pytest.raises(EmptySelectionError, match="no STAC items"):
        xf.open_stac(pystac.ItemCollection([]))


def test_item_without_projection_needs_a_grid(scenes):
    items, raw = scenes
    item = items[0].clone()
    for asset in item.assets.values():
        for key in ("proj:epsg", "proj:transform", "proj:shape"):
            asset.extra_fields.pop(key, None)
    with pytest.raises(GridError, match=r"no projection information.*grid="):
        xf.open_stac([item])
    # With a grid the file is warped by GDAL, which knows its georeferencing.
    g = xf.grid((ORIGIN[0], ORIGIN[1] - 320, ORIGIN[0] + 320, ORIGIN[1]), EPSG, 10)
    cube = xf.open_stac([item], grid=g, assets=["B04"])
    np.testing.assert_allclose(
        cube.isel(time=0, band=0).values, reflectance(raw[item.datetime]["B04"]), rtol=1e-6
    )


def test_several_crs_without_grid_is_a_grid_error(scenes, tmp_path):
    items, _ = scenes
    path = tmp_path / "other.tif"
    transform = write_tif(path, np.ones((8, 8), "uint16"), 10, epsg=32634)
    other = make_item("other", dt.datetime(2021, 6, 1), {"B04": (path, transform, (8, 8), None)})
    other.assets["B04"].extra_fields["proj:epsg"] = 32634
    with pytest.raises(GridError, match=r"several CRSs \['EPSG:32633', 'EPSG:32634'\]"):
        xf.open_stac([*items, other], assets=["B04"])


def test_missing_and_unreadable_hrefs(scenes, tmp_path):
    items, _ = scenes
    item = items[0].clone()
    item.assets["B04"].href = str(tmp_path / "nowhere.tif")
    with pytest.raises(MissingFileError, match=r"asset 'B04' of item 'scene-0'.*nowhere\.tif"):
        xf.open_stac([item])
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a tiff at all")
    item.assets["B04"].href = str(garbage)
    cube = xf.open_stac([item], assets=["B04"])  # exists: the error surfaces when read
    with pytest.raises(SourceError, match=r"garbage\.tif"):
        cube.compute()


def test_grid_not_overlapping_is_a_grid_error(scenes):
    items, _ = scenes
    far = xf.grid((600000, 4100000, 601000, 4101000), EPSG, 10)
    with pytest.raises(GridError, match="does not overlap any of the 4 selected assets"):
        xf.open_stac(items, grid=far)


def test_bad_items_type_is_an_input_error():
    with pytest.raises(InputError, match="got int"):
        xf.open_stac(3)
    with pytest.raises(MissingFileError, match="STAC JSON"):
        xf.open_stac("/nonexistent/catalog.json")


# --- real Landsat Collection-2 Level-2 items ------------------------------------------------


def mtl_value(mtl_text, key):
    return float(re.search(rf"{key} = (\S+)", mtl_text).group(1))


@pytest.fixture
def landsat_item(shared_data):
    folder = shared_data / "landsat_c2l2_stac" / "assets"
    path = next(folder.glob("*_SR_stac_LOCAL.json"))
    item = pystac.Item.from_file(str(path))
    mtl = next(folder.glob("*_MTL.txt")).read_text()
    # The STAC 0.7.0 items carry no raster:bands; declare what the product's MTL says.
    for band in (2, 4):
        item.assets[f"SR_B{band}.TIF"].extra_fields["raster:bands"] = [
            {
                "scale": mtl_value(mtl, f"REFLECTANCE_MULT_BAND_{band}"),
                "offset": mtl_value(mtl, f"REFLECTANCE_ADD_BAND_{band}"),
                "nodata": 0,
            }
        ]
    return path, item


def test_real_landsat_item_matches_rasterio_after_scale_offset(landsat_item):
    _, item = landsat_item
    with raise_if_dask_computes():
        cube = xf.open_stac(item, assets=["SR_B4.TIF", "QA_PIXEL.TIF"], chunks=256)
    assert cube.time.values.tolist() == [np.datetime64("2015-07-10", "ns").astype(int)]
    scale = item.assets["SR_B4.TIF"].extra_fields["raster:bands"][0]["scale"]
    offset = item.assets["SR_B4.TIF"].extra_fields["raster:bands"][0]["offset"]
    window = Window(0, 192, 96, 64)  # the scene edge: fill (0) and data
    with rasterio.open(item.assets["SR_B4.TIF"].get_absolute_href()) as src:
        dn = src.read(1, window=window).astype("float32")
    with rasterio.open(item.assets["QA_PIXEL.TIF"].get_absolute_href()) as src:
        qa = src.read(1, window=window)
    got = cube.isel(time=0, y=slice(192, 256), x=slice(0, 96)).values
    expected = np.where(dn == 0, np.nan, dn * np.float32(scale) + np.float32(offset))
    np.testing.assert_allclose(got[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(got[1], qa.astype("float32"))  # no scale: raw bit flags
    assert np.isnan(got[0]).any() and np.isfinite(got[0]).any()


def test_real_items_relative_hrefs_from_the_json_path(shared_data):
    paths = sorted((shared_data / "landsat_c2l2_stac").glob("*/*_SR_stac_LOCAL.json"))
    with pytest.raises(GridError, match="several CRSs"):
        xf.open_stac(paths, assets=["SR_B2.TIF"])
    cube = xf.open_stac(paths[1], assets=["SR_B2.TIF"], scale_offset=False)
    with rasterio.open(next(paths[1].parent.glob("*_SR_B2.TIF"))) as src:
        expected = src.read(1, masked=True).astype("float32").filled(np.nan)
        assert geobox_of(cube).affine == src.transform
    np.testing.assert_array_equal(cube.isel(time=0, band=0).values, expected)


def test_grid_alignment_stac_raster_and_rioxarray_agree(landsat_item):
    _, item = landsat_item
    href = item.assets["SR_B2.TIF"].get_absolute_href()
    stac = xf.open_stac(item, assets=["SR_B2.TIF"], scale_offset=False)
    raster = xf.open_raster(href)
    reference = rioxarray.open_rasterio(href, masked=True)
    for cube in (stac, raster):
        np.testing.assert_array_equal(cube.x.values, reference.x.values)
        np.testing.assert_array_equal(cube.y.values, reference.y.values)
        assert cube.rio.transform() == reference.rio.transform()
        assert cube.rio.crs == reference.rio.crs
    assert geobox_of(stac) == geobox_of(raster)

    # The same sub-grid, aligned with the pixels, through both readers.
    a = reference.rio.transform()
    left, top = a.c + 40 * a.a, a.f + 30 * a.e
    g = xf.grid((left, top + 20 * a.e, left + 24 * a.a, top), reference.rio.crs, (a.a, -a.e))
    on_grid = [
        xf.open_stac(item, grid=g, assets=["SR_B2.TIF"], scale_offset=False).isel(time=0),
        xf.open_raster(href, grid=g),
    ]
    for cube in on_grid:
        assert geobox_of(cube) == g
    np.testing.assert_array_equal(on_grid[0].x.values, on_grid[1].x.values)
    np.testing.assert_array_equal(on_grid[0].y.values, on_grid[1].y.values)
    expected = reference.isel(y=slice(30, 50), x=slice(40, 64)).values
    np.testing.assert_array_equal(on_grid[0].values, expected)
    np.testing.assert_array_equal(on_grid[1].values, expected)


def test_asset_missing_the_grid_comes_back_as_a_nan_band(tmp_path):
    near, far = tmp_path / "near.tif", tmp_path / "far.tif"
    data = np.arange(1, 65, dtype="uint16").reshape(8, 8)
    near_t = write_tif(near, data, 10)
    far_t = write_tif(far, data, 10, origin=(ORIGIN[0] + 5000, ORIGIN[1]))
    item = make_item(
        "split",
        dt.datetime(2022, 1, 1),
        {"near": (near, near_t, (8, 8), None), "far": (far, far_t, (8, 8), None)},
    )
    g = xf.grid((ORIGIN[0], ORIGIN[1] - 80, ORIGIN[0] + 80, ORIGIN[1]), EPSG, 10)
    cube = xf.open_stac(item, grid=g)
    assert cube.band.values.tolist() == ["near", "far"]
    np.testing.assert_array_equal(cube.isel(time=0, band=0).values, data.astype("float32"))
    assert np.isnan(cube.isel(time=0, band=1).values).all()
