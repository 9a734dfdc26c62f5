"""Interactive maps: display images against rasterio warps, offline pages, headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import folium
import matplotlib
import numpy as np
import pytest
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from pyproj import Transformer
from rasterio.crs import CRS as RioCRS
from rasterio.transform import from_bounds
from rasterio.warp import Resampling, reproject

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion._viz_maps import explore, make_offline, save_html, split_map
from xfusion.errors import BandError, GridError, InputError
from xfusion.grids import assign_grid
from xfusion.testing import raise_if_dask_computes

UTM = xf.grid((500000, 4000000, 503000, 4002000), "EPSG:32633", 50)  # 60 x 40 px
MERC = xf.grid((1669800, 4321800, 1672800, 4323800), "EPSG:3857", 50)


# A script or style sheet loaded from the network (a hyperlink in an attribution is fine).
REMOTE = r'<(script|link)[^>]*(src|href)="https?://'


def _cube(values, gbox, bands):
    return synthetic_cube(np.asarray(values, dtype=np.float32), bands, grid=gbox)


def _ramp(gbox=UTM, nan_box=True):
    h, w = gbox.shape
    v = np.add.outer(np.arange(h) * 0.5, np.arange(w)).astype(np.float32)
    if nan_box:
        v[3:9, 4:12] = np.nan
    return _cube(v[None], gbox, ["ndvi"])


def _overlays(m):
    """(RGBA uint8 image, bounds, name) of every image overlay on the map."""
    out = []
    for child in m._children.values():
        if isinstance(child, folium.raster_layers.ImageOverlay):
            png = base64.b64decode(child.url.split(",", 1)[1])
            img = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
            out.append((img, child.bounds, child.layer_name))
    return out


def _maybe_chunk(da, chunked):
    return da.chunk({"y": 16, "x": 16}) if chunked else da


def _reference_warp(values, gbox, bounds, shape):
    """Warp ``values`` with rasterio onto the Web-Mercator grid spanning ``bounds`` (lat/lon)."""
    to_merc = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    (south, west), (north, east) = bounds
    left, bottom = to_merc.transform(west, south)
    right, top = to_merc.transform(east, north)
    dst = np.full(shape, np.nan, dtype=np.float64)
    reproject(
        np.asarray(values, dtype=np.float64),
        dst,
        src_transform=gbox.affine,
        src_crs=RioCRS.from_epsg(gbox.crs.epsg),
        dst_transform=from_bounds(left, bottom, right, top, shape[1], shape[0]),
        dst_crs=RioCRS.from_epsg(3857),
        resampling=Resampling.nearest,
        src_nodata=np.nan,
        dst_nodata=np.nan,
    )
    return dst


@pytest.mark.parametrize("chunked", [False, True])
def test_explore_single_band_matches_rasterio_warp(chunked):
    da = _ramp()
    with raise_if_dask_computes(max_computes=1):
        m = explore(_maybe_chunk(da, chunked), cmap="viridis", vmin=0, vmax=80)
    ((img, bounds, name),) = _overlays(m)
    assert name == "ndvi"
    ref = _reference_warp(da.values[0], UTM, bounds, img.shape[:2])
    expected = np.round(matplotlib.colormaps["viridis"](np.clip(ref / 80, 0, 1)) * 255)
    valid = np.isfinite(ref)
    # NaN (no data and outside the rotated UTM footprint) is transparent.
    agree_alpha = np.mean((img[..., 3] == 255) == valid)
    assert agree_alpha > 0.98
    both = valid & (img[..., 3] == 255)
    close = np.all(np.abs(img[both][:, :3].astype(int) - expected[both][:, :3]) <= 1, axis=1)
    assert close.mean() > 0.97  # pixels at the edge of a source pixel may fall either way
    # The overlay covers the cube's footprint in latitude/longitude.
    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    bb = UTM.boundingbox
    lons, lats = to_ll.transform(
        [bb.left, bb.right, bb.left, bb.right], [bb.bottom] * 2 + [bb.top] * 2
    )
    (south, west), (north, east) = bounds
    assert south <= min(lats) + 1e-4 and north >= max(lats) - 1e-4
    assert west <= min(lons) + 1e-4 and east >= max(lons) - 1e-4
    # ... and not much more: at most two display pixels beyond it on each side.
    py, px = (north - south) / img.shape[0], (east - west) / img.shape[1]
    assert south >= min(lats) - 2 * py and north <= max(lats) + 2 * py
    assert west >= min(lons) - 2 * px and east <= max(lons) + 2 * px


@pytest.mark.parametrize("chunked", [False, True])
def test_explore_rgb_percentile_stretch_on_mercator_cube(chunked):
    rng = np.random.default_rng(1)
    values = rng.gamma(2.0, 0.05, size=(3, *MERC.shape)).astype(np.float32)
    values[1, 0, 0] = np.nan
    da = _cube(values, MERC, ["B4", "B3", "B2"])
    with raise_if_dask_computes(max_computes=1):
        m = explore(_maybe_chunk(da, chunked), stretch=(5, 95))
    ((img, _, _),) = _overlays(m)
    # A Web-Mercator cube is shown on its own grid, so pixels map one to one.
    assert img.shape[:2] == MERC.shape
    for b in range(3):
        lo, hi = np.nanpercentile(values[b], [5, 95])
        expected = np.round(np.clip((values[b] - lo) / (hi - lo), 0, 1) * 255)
        ok = np.isfinite(values).all(axis=0)
        assert np.abs(img[..., b][ok].astype(int) - expected[ok]).max() <= 1
    assert img[0, 0, 3] == 0 and img[1, 1, 3] == 255


def test_explore_eager_and_chunked_give_the_same_page_image():
    da = _ramp()
    a = _overlays(explore(da, max_size=32))[0]
    b = _overlays(explore(da.chunk({"y": 7, "x": 9}), max_size=32))[0]
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    assert max(a[0].shape[:2]) == 32


def test_explore_page_is_offline_with_layer_control_legend_and_bounds():
    m = explore(_ramp(), name="NDVI 2019")
    html = m.get_root().render()
    assert not re.search(REMOTE, html)
    assert "Leaflet 1.9.4" in html
    assert "L.control.layers" in html and html.count("L.control.layers") == 1
    assert html.rindex("L.imageOverlay") < html.index("L.control.layers")
    assert "fitBounds" in html
    assert "NDVI 2019" in html and "linear-gradient" in html


def test_explore_basemap_is_optional():
    assert "L.tileLayer" not in explore(_ramp()).get_root().render()
    assert "L.tileLayer" in explore(_ramp(), basemap="OpenStreetMap").get_root().render()


def test_explore_layers_mapping_and_adding_to_a_map():
    rng = np.random.default_rng(0)
    da = _cube(rng.random((4, *UTM.shape)), UTM, ["B2", "B3", "B4", "B8"])
    m = explore(
        da,
        layers={
            "true colour": {"bands": ["B4", "B3", "B2"]},
            "NIR": {"bands": "B8", "cmap": "magma"},
        },
    )
    names = [name for _, _, name in _overlays(m)]
    assert names == ["true colour", "NIR"]
    m = explore(_ramp(), m=m, name="ramp")
    assert [name for _, _, name in _overlays(m)] == ["true colour", "NIR", "ramp"]
    html = m.get_root().render()
    assert html.count("L.control.layers") == 1
    assert html.rindex("L.imageOverlay") < html.index("L.control.layers")
    assert html.count("xf-legend") >= 2  # one legend per single-band layer


def test_explore_default_bands_and_time_selection():
    rng = np.random.default_rng(0)
    values = rng.random((2, 4, *UTM.shape))
    da = assign_grid(
        xr.DataArray(
            values.astype(np.float32),
            dims=("time", "band", "y", "x"),
            coords={"time": np.array(["2019-01-01", "2019-02-01"], dtype="datetime64[ns]"),
                    "band": ["B2", "B3", "B4", "B8"]},
        ),
        UTM,
    )  # fmt: skip
    with pytest.raises(InputError, match="2 time steps"):
        explore(da)
    m = explore(da, time="2019-02-01", vmin=0, vmax=1, stretch=(0, 100))
    # Without bands, a four-band cube with B4/B3/B2 is drawn in true colour.
    assert _overlays(m)[0][2] == "B4/B3/B2"
    same = explore(da.isel(time=[1]), vmin=0, vmax=1)
    np.testing.assert_array_equal(_overlays(m)[0][0], _overlays(same)[0][0])


def test_explore_errors_name_the_problem():
    da = _ramp()
    with pytest.raises(BandError, match=r"band 'B8' not in cube; bands are \['ndvi'\]"):
        explore(da, bands="B8")
    two = _cube(np.zeros((2, *UTM.shape)), UTM, ["a", "b"])
    with pytest.raises(BandError, match="choose one"):
        explore(two)
    with pytest.raises(InputError, match="one band"):
        explore(two, bands=["a", "b"])
    with pytest.raises(GridError):
        explore(xr.DataArray(np.zeros((1, 3, 3)), dims=("band", "y", "x")))
    with pytest.raises(InputError, match="opacity"):
        explore(da, opacity=2)
    with pytest.raises(InputError, match="unknown options"):
        explore(da, layers={"x": {"colour": "red"}})
    with pytest.raises(InputError, match="DataArray"):
        explore(np.zeros((3, 3)))
    with pytest.raises(InputError, match="no 'time'"):
        explore(da, time="2019")


def test_split_map_shares_one_colour_scale():
    left = _cube(np.zeros((1, *MERC.shape)), MERC, ["v"])
    right = _cube(np.ones((1, *MERC.shape)), MERC, ["v"])
    m = split_map(left, right, left_name="2015", right_name="2019", cmap="viridis")
    (a, _, na), (b, _, nb) = _overlays(m)
    assert (na, nb) == ("2015", "2019")
    viridis = matplotlib.colormaps["viridis"]
    for img, value in ((a, 0.0), (b, 1.0)):
        expected = np.round(np.array(viridis(value)[:3]) * 255)
        assert np.abs(img[..., :3].reshape(-1, 3) - expected).max() <= 1
    html = m.get_root().render()
    assert "xf-split-range" in html and "createPane" in html
    assert not re.search(REMOTE, html)
    with pytest.raises(InputError, match="unknown arguments"):
        split_map(left, right, colour="red")
    with pytest.raises(InputError, match="position"):
        split_map(left, right, position=1.5)


def test_save_html_and_make_offline(tmp_path):
    m = folium.Map(tiles=None)
    m.get_root().render()  # folium adds its CDN links on render
    make_offline(m)
    assert not re.search(REMOTE, m.get_root().render())
    out = save_html(explore(_ramp()), tmp_path / "map.html")
    assert out.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(InputError):
        save_html("not a map", tmp_path / "x.html")


# --------------------------------------------------------------------------------------------
# Headless Chromium: the page shows the raster, not a blank page.
# --------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _screenshot(html_path, tmp_path):
    png = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}",
        "--window-size=800,600",
        "--virtual-time-budget=5000",
        html_path.as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png.exists(), "chromium wrote no screenshot"
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _near(shot, colour, tol=12):
    return np.all(np.abs(shot - np.asarray(colour)) <= tol, axis=-1)


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)"
)


@needs_chromium
def test_chromium_renders_explore_layer(tmp_path):
    magenta = _cube(np.stack([np.ones(UTM.shape), np.zeros(UTM.shape), np.ones(UTM.shape)]),
                    UTM, ["r", "g", "b"])  # fmt: skip
    path = save_html(explore(magenta, vmin=0, vmax=1), tmp_path / "map.html")
    shot = _screenshot(path, tmp_path)
    assert _near(shot, (255, 0, 255)).mean() > 0.10


@needs_chromium
def test_chromium_renders_split_map_sides(tmp_path):
    left = _cube(np.zeros((1, *MERC.shape)), MERC, ["v"])
    right = _cube(np.ones((1, *MERC.shape)), MERC, ["v"])
    viridis = matplotlib.colormaps["viridis"]
    for position in (0.5, 0.45):
        m = split_map(left, right, cmap="viridis", legend=False, position=position)
        shot = _screenshot(save_html(m, tmp_path / "split.html"), tmp_path)
        dark = _near(shot, np.round(np.array(viridis(0.0)[:3]) * 255))
        yellow = _near(shot, np.round(np.array(viridis(1.0)[:3]) * 255))
        assert dark.mean() > 0.02 and yellow.mean() > 0.02
        # The left cube is shown left of the divider, the right cube right of it.
        cols = np.arange(shot.shape[1])
        cut = shot.shape[1] * position
        # (the divider line and its shadow cover a few pixels at the cut)
        assert cut - 8 <= cols[dark.any(axis=0)].max() <= cut + 1
        assert cut - 1 <= cols[yellow.any(axis=0)].min() <= cut + 8


@pytest.mark.parametrize("chunked", [False, True])
def test_explore_average_resampling_equals_block_means(chunked):
    rng = np.random.default_rng(3)
    values = rng.random((1, *MERC.shape)).astype(np.float32)  # 40 x 60 on a Web-Mercator grid
    da = _cube(values, MERC, ["v"])
    m = explore(_maybe_chunk(da, chunked), max_size=30, resampling="average", vmin=0, vmax=1)
    ((img, _, _),) = _overlays(m)
    means = values[0].reshape(20, 2, 30, 2).mean(axis=(1, 3))
    expected = np.round(matplotlib.colormaps["viridis"](means)[..., :3] * 255)
    assert img.shape[:2] == (20, 30)
    assert np.abs(img[..., :3].astype(int) - expected).max() <= 1


@pytest.mark.parametrize("chunked", [False, True])
def test_explore_picks_the_named_bands(chunked):
    rng = np.random.default_rng(4)
    values = rng.random((4, *MERC.shape)).astype(np.float32)
    da = _cube(values, MERC, ["B2", "B3", "B4", "B8"])
    ((rgb, _, _),) = _overlays(explore(_maybe_chunk(da, chunked), bands=["B8", "B4", "B3"],
                                       vmin=0, vmax=1))  # fmt: skip
    expected = np.round(np.moveaxis(values[[3, 2, 1]], 0, -1) * 255)
    assert np.abs(rgb[..., :3].astype(int) - expected).max() <= 1
    # One band picked with .sel keeps its name and is drawn with the colour map.
    ((img, _, name),) = _overlays(explore(_maybe_chunk(da, chunked).sel(band="B8"), vmin=0, vmax=1))
    assert name == "B8"
    expected = np.round(matplotlib.colormaps["viridis"](values[3])[..., :3] * 255)
    assert np.abs(img[..., :3].astype(int) - expected).max() <= 1


def test_explore_real_landsat_scene_at_high_latitude(shared_data):
    """A real Landsat scene in East Greenland (UTM 24N, ~70° N), against a rasterio warp."""
    import rioxarray

    folder = shared_data / "landsat_c2l2_stac" / "assets"
    stem = "LC08_L2SP_005009_20150710_20200908_02_T2_SR_"
    bands = []
    for band in ("B4", "B3", "B2"):
        raw = rioxarray.open_rasterio(folder / f"{stem}{band}.TIF", chunks={"y": 256, "x": 256})
        bands.append(raw.where(raw != 0).astype(np.float32) * 2.75e-5 - 0.2)
    cube = xr.concat(bands, "band").assign_coords(band=["SR_B4", "SR_B3", "SR_B2"])
    with raise_if_dask_computes(max_computes=1):
        m = explore(cube, max_size=128, stretch=(2, 98))
    ((img, bounds, name),) = _overlays(m)
    assert name == "SR_B4/SR_B3/SR_B2" and max(img.shape[:2]) == 128
    gbox = xf.grids.geobox_of(cube)
    red = cube.isel(band=0).values
    ref = _reference_warp(red, gbox, bounds, img.shape[:2])
    valid = np.isfinite(ref)
    assert np.mean((img[..., 3] == 255) == valid) > 0.98
    lo, hi = np.nanpercentile(ref, [2, 98])
    expected = np.round(np.clip((ref - lo) / (hi - lo), 0, 1) * 255)
    both = valid & (img[..., 3] == 255)
    assert np.mean(np.abs(img[..., 0][both].astype(int) - expected[both]) <= 2) > 0.97


def test_explore_legend_shows_the_colour_limits():
    m = explore(_ramp(), vmin=0, vmax=20000, cmap="magma", name="radiance")
    (html,) = [c.html for c in m._children.values() if getattr(c, "class_name", "") == "xf-legend"]
    assert "radiance" in html
    ticks = re.findall(r'text-align:(?:left|center|right)">([^<]*)<', html)
    assert ticks == ["0", "10,000", "20,000"]
    magma = matplotlib.colormaps["magma"]
    first, last = (matplotlib.colors.to_hex(magma(v)) for v in (0.0, 1.0))
    assert f"{first} 0%" in html and f"{last} 100%" in html


@pytest.mark.parametrize("chunked", [False, True])
def test_explore_and_split_map_draw_class_maps(chunked):
    rng = np.random.default_rng(5)
    codes = rng.choice([0.0, 1.0, 2.0], size=MERC.shape)
    codes[:3, :3] = np.nan
    classes = {0: ("non built-up", "#d9d9d9"), 1: ("built-up", "#d7301f"), 2: "water"}
    da = _maybe_chunk(_cube(codes[None], MERC, ["smod"]), chunked)
    m = explore(da, classes=classes)
    ((img, _, _),) = _overlays(m)
    tab10 = matplotlib.colormaps["tab10"]
    for code, colour in ((0, "#d9d9d9"), (1, "#d7301f"), (2, tab10(2))):
        expected = np.round(np.array(matplotlib.colors.to_rgba(colour)) * 255)
        np.testing.assert_array_equal(
            img[codes == code], np.broadcast_to(expected, (np.sum(codes == code), 4))
        )
    assert np.all(img[np.isnan(codes)][:, 3] == 0)
    (legend,) = [
        c.html for c in m._children.values() if getattr(c, "class_name", "") == "xf-legend"
    ]
    assert [t for t in ("non built-up", "built-up", "water") if t in legend] == [
        "non built-up",
        "built-up",
        "water",
    ]
    assert "#d7301f" in legend
    # A split map of two years of classes shares the table.
    later = _cube(np.where(np.isnan(codes), np.nan, 1.0)[None], MERC, ["smod"])
    (a, _, _), (b, _, _) = _overlays(split_map(da, later, classes=classes))
    np.testing.assert_array_equal(a, img)
    assert np.all(b[np.isfinite(codes)][:, :3] == [215, 48, 31])
    with pytest.raises(InputError, match=r"codes \[2.0\] that are not in classes"):
        explore(da, classes={0: "a", 1: "b"})
    with pytest.raises(InputError, match="'nearest' or 'mode'"):
        explore(da, classes=classes, resampling="average")
    rgb = _cube(np.zeros((3, *MERC.shape)), MERC, ["r", "g", "b"])
    with pytest.raises(InputError, match="one band of class codes"):
        explore(rgb, classes=classes)


@settings(max_examples=8, deadline=None)
@given(cy=st.integers(5, 40), cx=st.integers(5, 60), max_size=st.integers(8, 80))
@example(cy=5, cx=5, max_size=27)  # zoom_to once overshot the size by a pixel here
def test_explore_display_does_not_depend_on_chunks(cy, cx, max_size):
    da = _ramp()
    eager = _overlays(explore(da, max_size=max_size, vmin=0, vmax=80))[0]
    lazy = _overlays(explore(da.chunk({"y": cy, "x": cx}), max_size=max_size, vmin=0, vmax=80))[0]
    np.testing.assert_array_equal(eager[0], lazy[0])
    assert eager[1] == lazy[1] and max(eager[0].shape[:2]) <= max_size
