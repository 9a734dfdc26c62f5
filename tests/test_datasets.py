from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.linear_model import Ridge

import xfusion as xf
from xfusion.datasets import RECIPES, Scene, synthetic_scene, write_stac
from xfusion.errors import InputError, SourceError
from xfusion.grids import geobox_of
from xfusion.testing import raise_if_dask_computes
from xfusion.viz import quicklook, rgb_array

SMALL = 32


@pytest.fixture(scope="module")
def scenes() -> dict[str, Scene]:
    return {name: synthetic_scene(name, seed=3, size=SMALL) for name in RECIPES}


def _bits(qa: xr.DataArray, bits: list[int]) -> np.ndarray:
    q = qa.values.astype(np.int64)
    return np.bitwise_or.reduce([(q >> b) & 1 for b in bits]).astype(bool)


# --- the data model ----------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_cube_is_canonical(scenes, recipe):
    scene = scenes[recipe]
    assert scene.recipe == recipe and scene.truth and scene.sources
    assert set(scene.descriptions) == set(scene)
    finest = min(abs(geobox_of(c).resolution.x) for c in scene.values())
    bounds = None
    for key, cube in scene.items():
        assert cube.dtype == np.float32, key
        assert cube.dims in (("time", "band", "y", "x"), ("band", "y", "x")), key
        assert cube.band.size == len(set(cube.band.values.tolist()))
        # CRS readable by rioxarray and odc-geo, the same on both, a UTM zone.
        epsg = cube.rio.crs.to_epsg()
        assert epsg == cube.odc.geobox.crs.epsg and 32601 <= epsg <= 32760
        # Pixel-centre coordinates: the first x is half a pixel from the grid's left edge.
        gbox = geobox_of(cube)
        res = gbox.resolution.x
        assert cube.x.values[0] == pytest.approx(gbox.boundingbox.left + res / 2)
        # Coarse grids cover whole blocks of the finest one: same bounds, integer factor.
        factor = abs(res) / finest
        assert factor == pytest.approx(round(factor))
        b = tuple(gbox.boundingbox)
        bounds = bounds or b
        assert b == pytest.approx(bounds), key
        if "time" in cube.dims:
            assert np.all(np.diff(cube.time.values).astype(np.int64) > 0)


@settings(max_examples=8, deadline=None)
@given(recipe=st.sampled_from(sorted(RECIPES)), seed=st.integers(0, 2**31 - 1))
def test_reproducible_for_a_seed_different_for_another(recipe, seed):
    a = synthetic_scene(recipe, seed=seed, size=16)
    b = synthetic_scene(recipe, seed=seed, size=16)
    c = synthetic_scene(recipe, seed=seed + 1, size=16)
    for key in a:
        xr.testing.assert_identical(a[key], b[key])
    assert any(not a[k].equals(c[k]) for k in a)


def test_size_rounds_up_to_the_aggregation_factor():
    assert synthetic_scene("builtup", size=21)["s2"].sizes["x"] == 30
    assert synthetic_scene("nightlights", size=17)["landsat"].sizes["y"] == 32
    assert synthetic_scene("downscale", size=17)["modis"].sizes["x"] == 20
    assert synthetic_scene("water", size=17)["sar"].sizes["x"] == 17


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"recipe": "urban"}, "unknown recipe 'urban'; expected one of"),
        ({"recipe": "water", "size": 4}, "size must be an integer >= 16"),
        ({"recipe": "water", "size": 20.5}, "size must be an integer"),
        ({"recipe": "water", "seed": "x"}, "seed must be an integer"),
    ],
)
def test_bad_arguments_raise_input_error(kwargs, match):
    recipe = kwargs.pop("recipe")
    with pytest.raises(InputError, match=match):
        synthetic_scene(recipe, **kwargs)


# --- physical plausibility ---------------------------------------------------------------------


def test_water_scene_optical_sar_and_labels():
    scene = synthetic_scene("water", seed=1, size=96)
    cover = scene["truth_cover"]
    np.testing.assert_allclose(cover.sum("band"), 1.0, atol=1e-5)
    water = cover.sel(band="water").values > 0.95
    urban = cover.sel(band="urban").values > 0.4
    veg = cover.sel(band="vegetation").values > 0.6
    assert water.sum() > 20 and urban.sum() > 10 and veg.sum() > 20
    nir = scene["optical"].sel(band="NIR").values[0]
    red = scene["optical"].sel(band="Red").values[0]
    # Water is dark in the NIR, vegetation bright (the red edge).
    assert nir[water].mean() < 0.05 < 0.2 < nir[veg].mean()
    assert ((nir - red) / (nir + red))[veg].mean() > 0.5
    # SAR: specular water far darker than double-bounce built-up, in both polarisations.
    for pol in ("HH", "HV"):
        db = scene["sar"].sel(band=pol).values[0]
        assert db[urban].mean() - db[water].mean() > 10.0
    # Labels: 1 on water, 0 on land, NaN (nodata) on partial water and under clouds.
    label = scene["truth_water"].values[0]
    frac = cover.sel(band="water").values
    assert set(np.unique(label[np.isfinite(label)])) == {0.0, 1.0}
    assert np.all(label[np.isfinite(label) & (frac >= 0.95)] == 1.0)
    partial = (frac > 0.05) & (frac < 0.95)
    assert partial.any() and np.isnan(label[partial]).all()
    assert 0.02 < np.isnan(label).mean() < 0.5
    # HAND is zero on water, positive and growing away from it.
    hand = scene["terrain"].sel(band="HAND").values
    dist = ndimage.distance_transform_edt(frac <= 0.5)
    assert hand[frac > 0.5].max() == 0.0
    assert np.corrcoef(hand.ravel(), dist.ravel())[0, 1] > 0.3


def test_downscale_coarse_is_the_block_mean_of_the_fine_truth():
    scene = synthetic_scene("downscale", seed=2, size=40)
    fine, coarse = scene["truth_sif"], scene["tropomi"]
    reference = fine.coarsen(y=5, x=5).mean()  # independent: xarray's own block mean
    diff = coarse.values - reference.values
    assert np.abs(diff).max() < 0.03 and abs(diff.mean()) < 0.005
    assert 0.001 < diff.std() < 0.01  # small noise, not none
    # The fine field is driven by vegetation and is non-negative.
    ndvi = scene["modis"].sel(band="NDVI").values
    assert fine.min() >= 0
    assert np.corrcoef(ndvi.ravel(), fine.values.ravel())[0, 1] > 0.8
    # Seasonality: the peak period is greener than the first one.
    assert ndvi.mean(axis=(1, 2)).max() > ndvi[0].mean() + 0.05


def test_cloudmask_qa_flags_most_but_not_all_clouds():
    scene = synthetic_scene("cloudmask", seed=4, size=64)
    truth = scene["truth_cloud"]
    cloud = truth.sel(band="cloud").values.astype(bool)
    thin = truth.sel(band="thin_cloud").values.astype(bool)
    shadow = truth.sel(band="shadow").values.astype(bool)
    assert 0.05 < cloud.mean() < 0.5 and shadow.any()
    assert not cloud[:3].any()  # the first dates are clear
    qa = scene["landsat"].sel(band="QA_PIXEL")
    flagged = _bits(qa, [1, 2, 3])  # dilated, cirrus, cloud
    caught = flagged[cloud].mean()
    assert 0.5 < caught < 0.98
    missed = cloud & ~flagged
    assert thin[missed].mean() > 0.9  # what the product misses is thin cloud
    assert _bits(qa, [3])[~cloud].sum() == 0  # the cloud bit itself has no false alarms
    # Clouds are bright and shadows dark compared with the cloud-free background.
    blue = scene["landsat"].sel(band="B2").values
    background = scene["truth_background"].sel(band="B2").values
    thick = cloud & ~thin
    assert (blue - background)[thick].mean() > 0.2
    assert (blue / background)[shadow].mean() < 0.5
    # Outside clouds and shadows at most a haze below the 5 % opacity threshold remains.
    clear = ~cloud & ~shadow
    np.testing.assert_allclose(blue[clear], background[clear], atol=0.05 * 0.6)


def test_builtup_ghsl_viirs_and_growth():
    scene = synthetic_scene("builtup", seed=5, size=100)
    settlement = scene["truth_settlement"].sel(band="intensity")
    smod = scene["ghsl"].sel(band="smod_code").values[0]
    assert set(np.unique(smod)) <= {0.0, 1.0, 2.0, 3.0}
    intensity_1km = settlement.isel(time=0).coarsen(y=10, x=10).mean().values
    assert (smod >= 2).sum() >= 2
    assert intensity_1km[smod >= 2].min() > intensity_1km[smod < 2].mean() + 0.1
    # VIIRS follows the settlements aggregated to its 500 m grid.
    viirs = scene["viirs"].sel(band="avg_rad")
    year0 = viirs.sel(time=slice("2015-07", "2015-12")).mean("time").values
    agg = settlement.isel(time=0).coarsen(y=5, x=5).mean().values
    assert np.corrcoef(year0.ravel(), agg.ravel())[0, 1] > 0.8
    # Settlements grow, so the built-up area and the lights grow between 2015 and 2019.
    builtup = scene["truth_builtup"].sum(["band", "y", "x"]).values
    assert np.all(np.diff(builtup) >= 0) and builtup[-1] > builtup[0]
    year4 = viirs.sel(time=slice("2019-07", "2019-12")).mean("time").values
    assert year4.sum() > year0.sum()
    # Sentinel-2 DN are reflectance x 10000; QA60 flags opaque clouds (bit 10) only on clouds.
    s2 = scene["s2"]
    assert 0 < float(s2.sel(band="B4").min()) and float(s2.sel(band="B8").max()) < 12000
    opaque = _bits(s2.sel(band="QA60"), [10])
    cloud = scene["truth_cloud"].sel(band="cloud").values.astype(bool)
    assert opaque.any() and cloud[opaque].all() and opaque.sum() < cloud.sum()


def test_nightlights_radiance_needs_spatial_context():
    scene = synthetic_scene("nightlights", seed=6, size=96)
    landsat = scene["landsat"]
    sr = landsat.sel(band=[f"SR_B{i}" for i in range(1, 8)]) * 2.75e-5 - 0.2
    assert 0.0 < float(sr.min()) and float(sr.max()) < 1.0
    kelvin = landsat.sel(band="ST_B10") * 0.00341802 + 149.0
    assert 250 < float(kelvin.min()) and float(kelvin.max()) < 330
    qa = landsat.sel(band="QA_PIXEL")
    clear = _bits(qa, [6])
    assert not (clear & _bits(qa, [1, 3, 4])).any()  # clear excludes cloud, dilation, shadow
    truth = scene["truth_radiance"].values[0]
    # A pixelwise linear model explains the radiance less well than one given the neighbourhood.
    x = landsat.isel(time=0).sel(band=[*sr.band.values.tolist(), "ST_B10"]).values
    x = (x - x.mean((1, 2), keepdims=True)) / x.std((1, 2), keepdims=True)
    context = [ndimage.gaussian_filter(x, (0, s, s)) for s in (2, 4, 8)]
    pixel = x.reshape(8, -1).T
    spatial = np.concatenate([x, *context]).reshape(32, -1).T

    def r2(a):
        return Ridge(alpha=1.0).fit(a, truth.ravel()).score(a, truth.ravel())

    assert r2(spatial) > r2(pixel) + 0.08
    # VIIRS is the blurred, aggregated truth: it tracks the 480 m block means closely.
    viirs = scene["viirs"].mean("time").values[0]
    blocks = scene["truth_radiance"].coarsen(y=16, x=16).mean().values[0]
    assert np.corrcoef(viirs.ravel(), blocks.ravel())[0, 1] > 0.8
    assert viirs.mean() == pytest.approx(blocks.mean(), rel=0.15)


# --- write_stac --------------------------------------------------------------------------------


def _decode(scene, key, cube):
    out = cube.astype("float64")
    for band, enc in scene.encodings.get(key, {}).items():
        scale, offset = enc.get("scale", 1.0), enc.get("offset", 0.0)
        out.loc[{"band": band}] = cube.sel(band=band) * scale + offset
    return out


@pytest.fixture(scope="module")
def nightlights_catalog(tmp_path_factory):
    scene = synthetic_scene("nightlights", seed=7, size=32)
    path = write_stac(scene, tmp_path_factory.mktemp("stac"))
    return scene, path


def test_write_stac_layout_and_metadata(nightlights_catalog):
    scene, path = nightlights_catalog
    root = path.parent
    catalog = json.loads(path.read_text())
    children = {link["href"] for link in catalog["links"] if link["rel"] == "child"}
    assert children == {f"./{k}/collection.json" for k in scene}
    items = sorted((root / "landsat").glob("*/*.json"))
    assert len(items) == scene["landsat"].sizes["time"]
    item = json.loads(items[0].read_text())
    gbox = geobox_of(scene["landsat"])
    assert item["properties"]["proj:epsg"] == 32737
    assert item["properties"]["proj:shape"] == [32, 32]
    assert item["properties"]["proj:transform"] == list(gbox.affine)[:6]
    assert set(item["assets"]) == set(scene["landsat"].band.values.tolist())
    sr = item["assets"]["SR_B3"]
    assert sr["href"] == "./SR_B3.tif"
    assert sr["raster:bands"] == [
        {"data_type": "uint16", "nodata": 0, "scale": 2.75e-5, "offset": -0.2}
    ]
    (qa,) = item["assets"]["QA_PIXEL"]["raster:bands"]
    bitfields = qa.pop("classification:bitfields")  # QA_PIXEL is a flag band: its bits in use
    assert qa == {"data_type": "uint16", "nodata": 1}
    assert {f["offset"] for f in bitfields} <= {1, 2, 3, 4, 6, 7} and bitfields
    # The geometry is the grid's footprint in longitude/latitude (near Nairobi).
    lon, lat = np.array(item["geometry"]["coordinates"][0]).T
    assert 36 < lon.min() < lon.max() < 37.5 and -2 < lat.min() < lat.max() < 0
    # Every file is a tiled, DEFLATE-compressed GeoTIFF on the cube's grid with the stored DN.
    with rasterio.open(root / "landsat" / item["id"] / "SR_B3.tif") as src:
        assert src.profile["tiled"] and src.compression.name.lower() == "deflate"
        assert src.dtypes[0] == "uint16" and src.nodata == 0
        assert src.crs.to_epsg() == 32737 and src.transform == gbox.affine
        expected = scene["landsat"].sel(band="SR_B3").isel(time=0).values
        np.testing.assert_array_equal(src.read(1), expected)
    with rasterio.open(root / "viirs" / "viirs_20210101" / "avg_rad.tif") as src:
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)


@pytest.mark.parametrize("key", ["landsat", "viirs", "truth_radiance"])
def test_write_stac_round_trip_through_open_stac(nightlights_catalog, key):
    scene, path = nightlights_catalog
    cube = scene[key]
    opened = xf.open_stac(path.parent / key / "collection.json")
    assert geobox_of(opened) == geobox_of(cube)
    expected = _decode(scene, key, cube)
    if "time" not in cube.dims:
        opened = opened.squeeze("time", drop=True)
    else:
        np.testing.assert_array_equal(opened.time.values, cube.time.values)
    assert opened.band.values.tolist() == cube.band.values.tolist()
    np.testing.assert_allclose(opened.values, expected.values, rtol=1e-6, atol=1e-6)


def test_write_stac_chunked_scene_computes_once_per_item(tmp_path):
    scene = synthetic_scene("downscale", seed=8, size=20)
    chunked = Scene(
        {k: v.chunk({"y": 8, "x": 8}) for k, v in scene.items()},
        recipe=scene.recipe,
        seed=scene.seed,
        descriptions=scene.descriptions,
    )
    n_items = sum(c.sizes.get("time", 1) for c in scene.values())
    with raise_if_dask_computes(max_computes=n_items) as counter:
        lazy_path = write_stac(chunked, tmp_path / "lazy")
    assert counter.total_computes == n_items
    eager_path = write_stac(scene, tmp_path / "eager")
    for tif in sorted(eager_path.parent.rglob("*.tif")):
        twin = lazy_path.parent / tif.relative_to(eager_path.parent)
        with rasterio.open(tif) as a, rasterio.open(twin) as b:
            np.testing.assert_array_equal(a.read(), b.read())


def test_write_stac_errors(tmp_path):
    scene = synthetic_scene("water", size=16)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SourceError, match="cannot write a STAC catalog to"):
        write_stac(scene, blocker / "stac")
    with pytest.raises(InputError, match=r"must be an xarray\.DataArray"):
        write_stac({"sar": np.zeros((2, 4, 4))}, tmp_path / "a")
    with pytest.raises(InputError, match="has dims"):
        write_stac({"sar": scene["sar"].isel(band=0)}, tmp_path / "b")
    with pytest.raises(InputError, match="non-empty mapping"):
        write_stac({}, tmp_path / "c")
    nan_qa = scene["sar"].copy()
    nan_qa[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="has NaN but is stored as uint16"):
        write_stac({"sar": nan_qa}, tmp_path / "d", encodings={"sar": {"HH": {"dtype": "uint16"}}})


# --- quicklooks ----------------------------------------------------------------------------------


def test_rgb_array_matches_numpy_and_chunked_equals_eager(scenes):
    cube = scenes["cloudmask"]["landsat"].isel(time=0)
    eager = rgb_array(cube, stretch=(2, 98))
    chunked = rgb_array(cube.chunk({"x": 8}), stretch=(2, 98))
    np.testing.assert_array_equal(eager, chunked)
    red = cube.sel(band="B4").values.astype(np.float64)
    lo, hi = np.percentile(red, [2, 98])
    np.testing.assert_allclose(eager[..., 0], np.clip((red - lo) / (hi - lo), 0, 1))
    with pytest.raises(xf.errors.BandError, match="band 'B9' not in cube"):
        rgb_array(cube, ["B9", "B3", "B2"])


def test_quicklook_png(tmp_path, scenes):
    import matplotlib.image

    scene = scenes["nightlights"]
    with raise_if_dask_computes(max_computes=0):
        panels = {
            "day": scene["landsat"].chunk({"x": 16}).sel(band=["SR_B4", "SR_B3", "SR_B2"]),
            "night": scene["viirs"].chunk({"x": 1}),
        }
    out = quicklook(panels, tmp_path / "q.png")
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[1] > img.shape[0] > 100
    assert img[..., :3].std() > 0.1
    with pytest.raises(InputError, match="has 9 bands"):
        quicklook({"all": scene["landsat"]}, tmp_path / "x.png")
    with pytest.raises(SourceError, match="cannot write quicklook"):
        quicklook(panels, Path(tmp_path / "missing" / "q.png"))
