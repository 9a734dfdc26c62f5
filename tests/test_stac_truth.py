"""open_stac metadata that tells the truth, and masks that handle fill and unknown flags.

Regression tests for: scaling applied twice (open_stac then scale), a ``scale_offset_applied``
attribute claiming a scaling that did not happen, band kinds from STAC metadata, an item without
its QA asset masked away silently, the QA_PIXEL preset keeping fill pixels, and percent-encoded
``file://`` hrefs.
"""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from affine import Affine

import xfusion as xf
from xfusion.bands import band_kinds, band_scaling, set_band_kinds
from xfusion.errors import (
    BandError,
    InputError,
    MissingAssetWarning,
    ScaleError,
    XFusionWarning,
)
from xfusion.preprocess.mask import QA_PRESETS
from xfusion.testing import raise_if_dask_computes

EPSG = 32633
ORIGIN = (500000.0, 4000320.0)
SR = (2.75e-5, -0.2)
SCENES = ["assets", "assets3", "assets4"]


def write_tif(path, data, res=10.0):
    transform = Affine(res, 0, ORIGIN[0], 0, -res, ORIGIN[1])
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": f"EPSG:{EPSG}",
        "transform": transform,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[np.newaxis])
    return transform


def make_item(item_id, when, assets):
    """``assets``: ``{key: (href, transform, shape, extra_fields)}``."""
    item = pystac.Item(item_id, None, [15, 36, 16, 37], when, {})
    for key, (href, transform, shape, extra) in assets.items():
        fields = {"proj:epsg": EPSG, "proj:transform": list(transform)[:6], "proj:shape": shape}
        fields.update(extra or {})
        item.add_asset(key, pystac.Asset(str(href), media_type="image/tiff", extra_fields=fields))
    return item


@pytest.fixture
def dn(tmp_path):
    """A 8x8 uint16 file of DN 10000..10063 and a flags file; returns their paths and data."""
    data = (10000 + np.arange(64, dtype="uint16")).reshape(8, 8)
    flags = np.zeros((8, 8), "uint16")
    flags[0, :4] = 1 << 3
    paths = {"dn": tmp_path / "dn.tif", "qa": tmp_path / "qa.tif"}
    transform = write_tif(paths["dn"], data)
    write_tif(paths["qa"], flags)
    return paths, transform, data, flags


def real_item(shared_data, scene="assets", declare=False):
    path = next((shared_data / "landsat_c2l2_stac" / scene).glob("*_SR_stac_LOCAL.json"))
    item = pystac.Item.from_file(str(path))
    item.make_asset_hrefs_absolute()
    if declare:  # what a STAC 1.0 Landsat C2L2 item declares (the 0.7.0 items declare nothing)
        for band in range(1, 8):
            item.assets[f"SR_B{band}.TIF"].extra_fields["raster:bands"] = [
                {"scale": SR[0], "offset": SR[1], "nodata": 0}
            ]
    return item


def read(item, key):
    with rasterio.open(item.assets[key].get_absolute_href()) as src:
        return src.read(1)


# --- 1. scaling: applied once, recorded truthfully --------------------------------------------


@pytest.mark.data
def test_declared_scale_is_recorded_and_a_second_scale_is_refused(shared_data):
    item = real_item(shared_data, declare=True)
    with raise_if_dask_computes():
        cube = xf.open_stac(item, assets={"SR_B4.TIF": "SR_B4", "QA_PIXEL.TIF": "QA_PIXEL"})
    assert band_scaling(cube) == {"SR_B4": SR, "QA_PIXEL": (1.0, 0.0)}
    assert "scale_offset_applied" not in cube.attrs
    raw = read(item, "SR_B4.TIF").astype("float64")
    expected = np.where(raw == 0, np.nan, raw * SR[0] + SR[1])
    np.testing.assert_allclose(cube.isel(time=0).sel(band="SR_B4").values, expected, rtol=1e-5)
    median = float(np.nanmedian(cube.sel(band="SR_B4").values))
    # reflectance (a bright, snowy scene), not the -0.2 that a second scaling gives
    assert median == pytest.approx(np.nanmedian(expected), rel=1e-5) and median > 0.5
    with pytest.raises(ScaleError, match=r"band 'SR_B4' is already scaled \(scale 2.75e-05"):
        cube.sel(band=["SR_B4"]).xf.scale("LANDSAT_C2_SR")
    with pytest.raises(ScaleError, match="already scaled"):
        xf.scale(cube.sel(band="SR_B4"), 1e-4)  # a band selected as a scalar keeps its record


@pytest.mark.data
def test_real_items_without_scale_metadata_say_raw_and_scale_once(shared_data):
    item = real_item(shared_data)
    cube = xf.open_stac(item, assets={"SR_B4.TIF": "SR_B4"})
    assert "scale_offset_applied" not in cube.attrs  # it claimed 1 on raw DN
    assert band_scaling(cube) == {"SR_B4": (1.0, 0.0)}
    raw = read(item, "SR_B4.TIF").astype("float32")
    np.testing.assert_array_equal(cube.isel(time=0, band=0).values, np.where(raw == 0, np.nan, raw))
    with raise_if_dask_computes():
        sr = cube.xf.scale("LANDSAT_C2_SR")
    assert band_scaling(sr) == {"SR_B4": SR}
    np.testing.assert_allclose(
        sr.isel(time=0, band=0).values,
        np.where(raw == 0, np.nan, raw * np.float32(SR[0]) + np.float32(SR[1])),
        rtol=1e-5,
    )
    with pytest.raises(ScaleError, match="'SR_B4' is already scaled"):
        sr.xf.scale("LANDSAT_C2_SR")


def test_scale_offset_false_records_raw_even_where_declared(dn):
    paths, transform, data, _ = dn
    declared = {"raster:bands": [{"scale": 1e-4, "offset": 0.0}]}
    item = make_item(
        "a", dt.datetime(2021, 1, 1), {"B": (paths["dn"], transform, [8, 8], declared)}
    )
    scaled = xf.open_stac(item)
    raw = xf.open_stac(item, scale_offset=False)
    assert band_scaling(scaled) == {"B": (1e-4, 0.0)}
    assert band_scaling(raw) == {"B": (1.0, 0.0)}
    np.testing.assert_array_equal(raw.isel(time=0, band=0).values, data.astype("float32"))


def test_items_declaring_different_scales_record_nan_and_refuse_rescaling(dn):
    paths, transform, data, _ = dn
    items = [
        make_item(
            f"i{k}",
            dt.datetime(2021, 1, 1 + k),
            {"B": (paths["dn"], transform, [8, 8], {"raster:bands": [{"scale": s}]})},
        )
        for k, s in enumerate((1e-4, 2e-4))
    ]
    cube = xf.open_stac(items)
    values = cube.isel(band=0).values
    np.testing.assert_allclose(values[0], data * 1e-4, rtol=1e-6)  # each item by its own
    np.testing.assert_allclose(values[1], data * 2e-4, rtol=1e-6)
    assert band_scaling(cube) == {"B": None}
    assert np.isnan(cube.band_scale.values).all()
    with pytest.raises(ScaleError, match="band 'B' has an unknown scaling already applied"):
        xf.scale(cube, 10.0)
    again = xf.scale(cube, 10.0, again=True)
    assert band_scaling(again) == {"B": None}
    np.testing.assert_allclose(again.isel(band=0).values[1], data * 2e-3, rtol=1e-6)


def test_scale_records_the_composed_total(dn):
    paths, transform, data, _ = dn
    st = {"raster:bands": [{"scale": 0.00341802, "offset": 149.0}]}
    item = make_item("a", dt.datetime(2021, 1, 1), {"ST": (paths["dn"], transform, [8, 8], st)})
    kelvin = xf.open_stac(item)
    celsius = kelvin.xf.scale(1.0, -273.15, again=True)
    ((scale, offset),) = band_scaling(celsius).values()
    assert scale == pytest.approx(0.00341802) and offset == pytest.approx(149.0 - 273.15)
    np.testing.assert_allclose(
        celsius.isel(time=0, band=0).values, data * 0.00341802 + 149.0 - 273.15, rtol=1e-5
    )
    # A cube without recorded scaling is taken as raw and gets the record.
    plain = xr.DataArray(data[None].astype("float32"), dims=("band", "y", "x"))
    plain = plain.assign_coords(band=["B"])
    assert band_scaling(xf.scale(plain, 2.0, 1.0)) == {"B": (2.0, 1.0)}


def test_scale_refuses_flag_and_class_bands_but_not_identity():
    cube = xr.DataArray(
        np.ones((3, 2, 2), "float32"),
        dims=("band", "y", "x"),
        coords={"band": ["B04", "QA60", "lab"]},
    )
    cube = set_band_kinds(cube, {"lab": "categorical"})
    with pytest.raises(ScaleError, match=r"band 'QA60' holds flags"):
        xf.scale(cube, "S2")
    with pytest.raises(ScaleError, match=r"band 'lab' holds categorical"):
        xf.scale(cube, {"lab": 2.0})
    out = xf.scale(cube, {"B04": 1e-4})  # the others keep factor 1: allowed
    np.testing.assert_allclose(out.values[:, 0, 0], [1e-4, 1.0, 1.0])
    assert band_scaling(out) == {"B04": (1e-4, 0.0), "QA60": (1.0, 0.0), "lab": (1.0, 0.0)}


def test_scale_mapping_none_keeps_the_band():
    cube = xr.DataArray(
        np.full((2, 1, 2), 10.0, "float32"), dims=("band", "y", "x"), coords={"band": ["a", "b"]}
    )
    out = xf.scale(cube, {"a": 2.0, "b": None}, {"a": None, "b": 1.0})
    # None used to become a NaN factor/offset and blank the whole band.
    np.testing.assert_array_equal(out.values[:, 0, 0], [20.0, 11.0])


# --- 2. band kinds ----------------------------------------------------------------------------


def test_kinds_from_classification_extension_names_and_override(dn):
    paths, transform, _, _ = dn
    bitfields = {"classification:bitfields": [{"name": "cloud", "offset": 3, "length": 1}]}
    classes = {"raster:bands": [{"classification:classes": [{"value": 1, "name": "water"}]}]}
    assets = {
        "fmask": (paths["qa"], transform, [8, 8], bitfields),
        "landcover": (paths["qa"], transform, [8, 8], classes),
        "qa_pixel": (paths["qa"], transform, [8, 8], None),
        "SCL.tif": (paths["qa"], transform, [8, 8], None),
        "lab": (paths["dn"], transform, [8, 8], None),
        "red": (paths["dn"], transform, [8, 8], None),
    }
    item = make_item("a", dt.datetime(2021, 1, 1), assets)
    cube = xf.open_stac(item)
    assert band_kinds(cube) == {
        "fmask": "flags",
        "landcover": "categorical",
        "qa_pixel": "flags",
        "SCL.tif": "categorical",
        "lab": "continuous",
        "red": "continuous",
    }
    assert band_kinds(xf.open_stac(item, kinds={"lab": "categorical"}))["lab"] == "categorical"
    with pytest.raises(BandError, match=r"^kinds names band 'nope' not in cube; bands are \["):
        xf.open_stac(item, kinds={"nope": "flags"})
    with pytest.raises(InputError, match="kind of band 'lab' must be one of"):
        xf.open_stac(item, kinds={"lab": "label"})
    with pytest.raises(InputError, match="kinds must be a mapping"):
        xf.open_stac(item, kinds="flags")


@pytest.mark.data
def test_real_quality_assets_are_flags(shared_data):
    item = real_item(shared_data)
    cube = xf.open_stac(item, assets=["SR_B4.TIF", "QA_PIXEL.TIF", "QA_RADSAT.TIF"])
    kinds = band_kinds(cube)
    assert kinds == {"SR_B4.TIF": "continuous", "QA_PIXEL.TIF": "flags", "QA_RADSAT.TIF": "flags"}


def test_a_scale_declared_on_a_flag_band_is_not_applied(dn):
    paths, transform, _, flags = dn
    fields = {
        "classification:bitfields": [{"offset": 3, "length": 1}],
        "raster:bands": [{"scale": 0.5}],
    }
    item = make_item("a", dt.datetime(2021, 1, 1), {"qa": (paths["qa"], transform, [8, 8], fields)})
    with pytest.warns(XFusionWarning, match=r"band 'qa' holds flags .* not applied"):
        cube = xf.open_stac(item)
    np.testing.assert_array_equal(cube.isel(time=0, band=0).values, flags.astype("float32"))
    assert band_scaling(cube) == {"qa": (1.0, 0.0)}


def test_mask_bits_refuses_class_bands_and_bands_recorded_continuous():
    cube = xr.DataArray(
        np.zeros((3, 2, 2), "float32"),
        dims=("band", "y", "x"),
        coords={"band": ["B04", "SCL", "mystery"]},
    )
    with pytest.raises(BandError, match=r"quality band 'SCL' is categorical.*use mask_classes"):
        xf.mask_bits(cube, "SCL", [3])
    # without a band_kind coordinate an unknown name is the caller's to judge
    assert xf.mask_bits(cube, "mystery", [3]).sizes["band"] == 2
    recorded = set_band_kinds(cube, {"SCL": "categorical"})
    with pytest.raises(BandError, match=r"'mystery' is continuous \(recorded"):
        xf.mask_bits(recorded, "mystery", [3])
    with pytest.raises(BandError, match="mask_classes: quality band 'B04' is continuous"):
        xf.mask_classes(recorded, "B04", [3])
    flagged = set_band_kinds(recorded, {"mystery": "flags"})
    assert xf.mask_bits(flagged, "mystery", [3]).sizes["band"] == 2
    assert xf.mask_classes(flagged, "mystery", [1]).sizes["band"] == 2  # exact flag values


# --- 3. an item without its QA asset ----------------------------------------------------------


@pytest.mark.data
def test_item_without_qa_asset_warns_and_mask_bits_chooses(shared_data):
    with_qa = real_item(shared_data)
    without_qa = with_qa.clone()
    without_qa.id = "no-qa"
    without_qa.datetime = dt.datetime(2015, 7, 26)
    del without_qa.assets["QA_PIXEL.TIF"]
    assets = {"SR_B4.TIF": "SR_B4", "QA_PIXEL.TIF": "QA_PIXEL"}
    with pytest.warns(MissingAssetWarning, match=r"item 'no-qa' has no asset 'QA_PIXEL.TIF'"):
        cube = xf.open_stac([with_qa, without_qa], assets=assets, chunks=256)
    assert np.isfinite(cube.isel(time=1).sel(band="SR_B4").values).sum() > 100_000
    with raise_if_dask_computes():
        default = xf.mask_bits(cube, "QA_PIXEL", "QA_PIXEL")
    with pytest.warns(XFusionWarning, match="quality band 'QA_PIXEL' is NaN"):
        dropped = default.isel(time=1).values
    assert np.isnan(dropped).all()  # still dropped, but not silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit = xf.mask_bits(cube, "QA_PIXEL", "QA_PIXEL", missing="drop").values
        kept = xf.mask_bits(cube, "QA_PIXEL", "QA_PIXEL", missing="keep").values
    assert np.isnan(explicit[1]).all()
    np.testing.assert_array_equal(kept[1], cube.isel(time=1).sel(band=["SR_B4"]).values)
    # the item that has its QA is masked the same whichever choice
    np.testing.assert_array_equal(kept[0], explicit[0])
    assert np.isnan(kept[0]).sum() > np.isnan(cube.isel(time=0).sel(band="SR_B4").values).sum()


def test_mask_classes_missing_choice_and_bad_value():
    cube = xr.DataArray(
        np.array([[[0.1, 0.2, 0.3]], [[4, np.nan, 3]]], dtype="float32"),
        dims=("band", "y", "x"),
        coords={"band": ["B04", "SCL"]},
    )
    with pytest.warns(XFusionWarning, match="mask_classes: quality band 'SCL' is NaN"):
        default = xf.mask_classes(cube, "SCL", "SCL").values
    np.testing.assert_array_equal(default, np.array([[[0.1, np.nan, np.nan]]], "float32"))
    kept = xf.mask_classes(cube, "SCL", "SCL", missing="keep").values
    np.testing.assert_array_equal(kept, np.array([[[0.1, 0.2, np.nan]]], "float32"))
    zero = xf.mask_classes(cube, "SCL", [0], missing="keep").values  # NaN is not class 0
    np.testing.assert_array_equal(zero, np.array([[[0.1, 0.2, 0.3]]], "float32"))
    with pytest.raises(
        InputError, match=r"missing must be 'drop', 'keep' or None \(drop and warn\); got 'ignore'"
    ):
        xf.mask_bits(cube.assign_coords(band=["B04", "QA60"]), "QA60", [10], missing="ignore")
    with pytest.raises(InputError, match="missing must be"):
        xf.mask_classes(cube, "SCL", "SCL", missing=True)


# --- 4. fill pixels ---------------------------------------------------------------------------


def test_landsat_presets_mask_fill_bit():
    for name in ("QA_PIXEL", "QA_PIXEL_SNOW", "BQA", "BQA_SNOW"):
        assert 0 in QA_PRESETS[name].values, name


@pytest.mark.data
@pytest.mark.parametrize("scene", SCENES)
@pytest.mark.parametrize("preset", ["QA_PIXEL", "QA_PIXEL_SNOW"])
def test_qa_pixel_preset_drops_fill_on_real_scenes(shared_data, scene, preset):
    item = real_item(shared_data, scene)
    assets = {"SR_B4.TIF": "SR_B4", "QA_PIXEL.TIF": "QA_PIXEL"}
    cube = xf.open_stac(item, assets=assets, chunks=256)
    qa = read(item, "QA_PIXEL.TIF")
    fill = (qa & 1) == 1
    sr = cube.isel(time=0).sel(band="SR_B4").values
    assert (fill & np.isfinite(sr)).sum() > 500  # the dotted outline of edge pixels
    masked = xf.mask_bits(cube, "QA_PIXEL", preset).isel(time=0, band=0).values
    assert not np.isfinite(masked[fill]).any()
    assert np.isfinite(masked[~fill & ((qa & 0b111110) == 0)]).all()


@pytest.mark.data
def test_nightlights_default_qa_bits_drop_fill_on_a_real_scene(shared_data):
    from xfusion.recipes import nightlights

    bits = list(nightlights.Config().qa_bits)
    item = real_item(shared_data, SCENES[0])
    cube = xf.open_stac(item, assets={"SR_B4.TIF": "SR_B4", "QA_PIXEL.TIF": "QA_PIXEL"})
    fill = (read(item, "QA_PIXEL.TIF") & 1) == 1
    masked = xf.mask_bits(cube, "QA_PIXEL", bits).isel(time=0, band=0).values
    assert fill.sum() > 500 and not np.isfinite(masked[fill]).any()


# --- 5. percent-encoded hrefs -----------------------------------------------------------------


def test_percent_encoded_file_hrefs_are_decoded(tmp_path):
    folder = tmp_path / "dir with space é"
    folder.mkdir()
    data = np.arange(1, 17, dtype="uint16").reshape(4, 4)
    transform = write_tif(folder / "b é 1.tif", data)
    href = (folder / "b é 1.tif").as_uri()
    assert "%20" in href and "%C3%A9" in href
    item = make_item("enc", dt.datetime(2021, 1, 1), {"b": (href, transform, [4, 4], None)})
    cube = xf.open_stac(item)
    np.testing.assert_array_equal(cube.isel(time=0, band=0).values, data.astype("float32"))
    # a relative href is a URI reference too: escapes decoded against the item's folder
    item = make_item(
        "rel", dt.datetime(2021, 1, 1), {"b": ("./b%20%C3%A9%201.tif", transform, [4, 4], None)}
    )
    item.set_self_href(str(folder / "item.json"))
    cube = xf.open_stac(item)
    np.testing.assert_array_equal(cube.isel(time=0, band=0).values, data.astype("float32"))


def test_local_path_decodes_file_urls():
    from xfusion.io._hrefs import local_href, local_path

    assert str(local_path("file:///d/caf%C3%A9%20x.tif")) == "/d/café x.tif"
    assert local_href("file:///d/caf%C3%A9%20x.tif") == "/d/café x.tif"
    assert local_href("/d/a%20b.tif") == "/d/a%20b.tif"  # a plain path is literal


def test_band_metadata_of_a_chunked_cube_is_read_without_computing(dn):
    paths, transform, _, _ = dn
    item = make_item(
        "a",
        dt.datetime(2021, 1, 1),
        {
            "B": (paths["dn"], transform, [8, 8], {"raster:bands": [{"scale": 1e-4}]}),
            "QA_PIXEL": (paths["qa"], transform, [8, 8], None),
        },
    )
    # DataArray.chunk also chunks the band_kind/band_scale coordinates into Dask arrays
    cube = xf.open_stac(item).chunk({"band": -1, "y": 4, "x": 4})
    assert hasattr(cube.band_kind.data, "dask")
    with raise_if_dask_computes():
        assert band_kinds(cube) == {"B": "continuous", "QA_PIXEL": "flags"}
        assert band_scaling(cube) == {"B": (1e-4, 0.0), "QA_PIXEL": (1.0, 0.0)}
        with pytest.raises(ScaleError, match="'B' is already scaled"):
            xf.scale(cube.sel(band=["B"]), 2.0)
        masked = xf.mask_bits(cube, "QA_PIXEL", [3], missing="drop")
    assert np.isnan(masked.isel(time=0, band=0).values[0, :4]).all()


# --- more of the same: raw limits on scaled cubes, scaled quality bands -----------------------


@pytest.mark.data
def test_mask_range_raw_limits_mask_the_same_pixels_scaled_or_not(shared_data):
    declared = real_item(shared_data, declare=True)
    plain = real_item(shared_data)
    assets = {"SR_B4.TIF": "SR_B4", "SR_B5.TIF": "SR_B5"}
    scaled = xf.open_stac(declared, assets=assets, chunks=256)
    raw = xf.open_stac(plain, assets=assets, chunks=256)
    by_hand = raw.xf.scale("LANDSAT_C2_SR")
    lo, hi = 7273, 43636  # the C2 SR valid range in DN
    dn = raw.values
    assert ((dn < lo) | (dn > hi)).sum() > 1000  # the limits do mask pixels here
    with raise_if_dask_computes():
        masks = [xf.mask_range(c, lo, hi, raw=True) for c in (scaled, raw, by_hand)]
    expected = np.isnan(np.where((dn >= lo) & (dn <= hi), dn, np.nan))
    for masked in masks:
        np.testing.assert_array_equal(np.isnan(masked.values), expected)
    # the same numbers as values of the scaled cube would mask everything
    assert np.isnan(xf.mask_range(scaled, lo, hi).values).all()
    unknown = xf.bands.set_band_scaling(scaled, {"SR_B5": None})
    with pytest.raises(ScaleError, match="scaling applied to band 'SR_B5' is unknown"):
        xf.mask_range(unknown, lo, hi, raw=True)


def test_mask_range_raw_per_band_limits_and_negative_scale():
    cube = xr.DataArray(
        np.array([[[100.0, 200.0, 300.0]], [[100.0, 200.0, 300.0]]], "float32"),
        dims=("band", "y", "x"),
        coords={"band": ["a", "b"]},
    )
    scaled = xf.scale(cube, {"a": 0.5, "b": -1.0}, {"a": 1.0})
    out = xf.mask_range(scaled, {"a": 150}, {"a": 250, "b": 250}, raw=True).values
    np.testing.assert_array_equal(np.isnan(out[:, 0]), [[True, False, True], [False, False, True]])


def test_mask_bits_refuses_a_scaled_quality_band():
    cube = xr.DataArray(
        np.zeros((2, 2, 2), "float32"), dims=("band", "y", "x"), coords={"band": ["B04", "QA60"]}
    )
    scaled = xf.bands.set_band_scaling(cube, {"QA60": (1e-4, 0.0)})
    with pytest.raises(BandError, match=r"quality band 'QA60' was scaled \(scale 0.0001"):
        xf.mask_bits(scaled, "QA60", "QA60")
    with pytest.raises(BandError, match="was scaled"):
        xf.mask_classes(scaled, "QA60", [1])


def test_write_stac_records_band_kinds_that_open_stac_reads_back(tmp_path):
    from xfusion.datasets import write_stac

    gbox = xf.grid((0, 0, 40, 40), "EPSG:32633", 10)
    values = np.stack(
        [
            np.linspace(0, 1, 16).reshape(4, 4),
            np.tile([0, 1024, 2048, 3072], (4, 1)),
            np.tile([1, 2, 2, 5], (4, 1)),
        ]
    ).astype("float32")
    cube = xr.DataArray(values, dims=("band", "y", "x"), coords={"band": ["B04", "QA60", "lab"]})
    cube = set_band_kinds(xf.grids.assign_grid(cube, gbox), {"lab": "categorical"})
    catalog = write_stac({"s": cube}, tmp_path)
    item = next(iter(pystac.read_file(str(catalog)).get_items(recursive=True)))
    qa = item.assets["QA60"].extra_fields["raster:bands"][0]["classification:bitfields"]
    assert [f["offset"] for f in qa] == [10, 11]
    lab = item.assets["lab"].extra_fields["raster:bands"][0]["classification:classes"]
    assert [c["value"] for c in lab] == [1, 2, 5]
    back = xf.open_stac(catalog.parent / "s" / "collection.json")
    # "lab" was continuous by name alone; the catalog now says what it is
    assert band_kinds(back) == {"B04": "continuous", "QA60": "flags", "lab": "categorical"}
    np.testing.assert_array_equal(back.isel(time=0).values, values)


@pytest.mark.data
def test_presets_find_the_quality_band_under_its_asset_key(shared_data):
    item = real_item(shared_data)
    cube = xf.open_stac(item, assets=["SR_B4.TIF", "QA_PIXEL.TIF"], chunks=256)
    masked = xf.mask_bits(cube, "QA_PIXEL", "QA_PIXEL")  # was: 'QA_PIXEL' not in cube
    assert masked.band.values.tolist() == ["SR_B4.TIF"]
    qa = read(item, "QA_PIXEL.TIF")
    bad = (qa & 0b11111) != 0
    assert not np.isfinite(masked.isel(time=0, band=0).values[bad]).any()
    both = cube.assign_coords(band=["qa_pixel", "QA_PIXEL.TIF"])
    with pytest.raises(BandError, match="preset 'QA_PIXEL' matches several bands"):
        xf.mask_bits(both, "QA_PIXEL", "QA_PIXEL")


@pytest.mark.parametrize(("field", "value"), [("scale", 0), ("scale", "inf"), ("offset", "nan")])
def test_malformed_declared_scaling_is_an_error_not_ignored(dn, field, value):
    paths, transform, _, _ = dn
    bands = {"raster:bands": [{field: value}]}
    item = make_item("odd", dt.datetime(2021, 1, 1), {"B": (paths["dn"], transform, [8, 8], bands)})
    # these used to zero the band, or blank it with NaN, without a word
    with pytest.raises(InputError, match=rf"asset 'B' of item 'odd' declares {field} "):
        xf.open_stac(item)
    assert band_scaling(xf.open_stac(item, scale_offset=False)) == {"B": (1.0, 0.0)}
