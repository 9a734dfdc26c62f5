"""The ``difficulty="hard"`` synthetic scenes fail the way real data fails, and "standard" is kept.

Each property is measured on real values: footprint shares and footprint means for the coarse
SIF labels, the spread of city brightness scales, and Otsu thresholds on SAR against optical.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage, stats

import xfusion as xf
from xfusion.datasets import RECIPES, Scene, synthetic_scene, write_stac
from xfusion.datasets.synthetic import _BUILDERS, SCENES, register_scene
from xfusion.errors import InputError
from xfusion.grids import geobox_of

HARD = ("builtup", "cloudmask", "downscale", "nightlights", "water")

# Per recipe and key, for seed=3, size=48: (NaN count, sum, sum of squares) of the standard scenes
# as built before the hard option existed. Sums (float64 over the float32 values) tolerate
# last-bit differences between machines but change with any change to a scene.
STANDARD = {
    "builtup": {
        "s2": (0, 495323723.0, 1601712123921.0),
        "viirs": (0, 17106.864660463645, 395603.6917126918),
        "ghsl": (0, 12.0, 26.0),
        "truth_settlement": (0, 1389.6504099469296, 1052.6690308280797),
        "truth_builtup": (0, 18.0, 18.0),
        "truth_cloud": (0, 17896.0, 17896.0),
    },
    "nightlights": {
        "landsat": (0, 1302343578.0, 32046427185444.0),
        "viirs": (0, 269.3325114250183, 1904.8651997804263),
        "truth_radiance": (0, 12263.101136408746, 485156.3393880516),
        "truth_cloud": (0, 2196.0, 2196.0),
    },
    "cloudmask": {
        "landsat": (0, 29897759.99948897, 1283974249836.6145),
        "truth_cloud": (0, 7801.0, 7801.0),
        "truth_background": (0, 28037.950952621584, 6207.4817545254145),
    },
    "water": {
        "sar": (0, -69502.53791328403, 1184902.8156343456),
        "optical": (0, 1777.3928732333588, 460.3811757590795),
        "terrain": (0, 119602.03381750919, 4599141.20518635),
        "truth_water": (557, 119.0, 119.0),
        "truth_cover": (0, 2304.0000026958032, 1446.749459730786),
    },
    "downscale": {
        "modis": (0, 20581.50466778611, 12440.48910959496),
        "tropomi": (0, 852.111214376986, 1110.4507849275228),
        "truth_sif": (0, 21296.85057313033, 29325.34129437471),
    },
}


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the split of the histogram with the largest between-class variance."""
    counts, edges = np.histogram(values, bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    below = np.cumsum(counts)
    above = below[-1] - below
    moment = np.cumsum(counts * centres)
    mean_below = moment / np.maximum(below, 1)
    mean_above = (moment[-1] - moment) / np.maximum(above, 1)
    return float(centres[np.argmax(below * above * (mean_below - mean_above) ** 2)])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _best_threshold_iou(scene, band: str) -> float:
    """The best IoU with the water of thresholding a terrain band from below."""
    values = scene["terrain"].sel(band=band).values
    water = scene["truth_cover"].sel(band="water").values >= 0.5
    return max(_iou(values <= t, water) for t in np.percentile(values, np.arange(1, 30)))


def _dark_land(scene) -> np.ndarray:
    """Dry land (water cover < 5 %) darker in HV than the median open-water pixel."""
    hv = scene["sar"].sel(band="HV").values[0]
    frac = scene["truth_cover"].sel(band="water").values
    return (frac < 0.05) & (hv < np.median(hv[frac >= 0.95]))


# --- "standard" is what it was ------------------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted(STANDARD))
def test_standard_scenes_are_unchanged(recipe):
    scene = synthetic_scene(recipe, seed=3, size=48)
    assert set(scene) == set(STANDARD[recipe])
    for key, (nans, total, squares) in STANDARD[recipe].items():
        values = scene[key].values.astype(np.float64)
        finite = values[np.isfinite(values)]
        assert int(np.isnan(values).sum()) == nans, key
        assert finite.sum() == pytest.approx(total, rel=1e-6), key
        assert (finite**2).sum() == pytest.approx(squares, rel=1e-6), key
    explicit = synthetic_scene(recipe, seed=3, size=48, difficulty="standard")
    for key in scene:
        xr.testing.assert_identical(scene[key], explicit[key])


def test_difficulty_errors_name_what_is_allowed():
    with pytest.raises(InputError, match=r"difficulty must be 'standard' or 'hard'.*'extreme'"):
        synthetic_scene("water", size=16, difficulty="extreme")

    @register_scene("flat", "one band of zeros, no hard version")
    def _flat(rng, size):
        zeros = xr.DataArray(np.zeros((1, size, size), np.float32), dims=("band", "y", "x"))
        return Scene({"zeros": zeros}, recipe="flat", seed=0, descriptions={"zeros": "0"})

    try:
        assert synthetic_scene("flat", size=16)["zeros"].shape == (1, 16, 16)
        listed = r"hard version: \['builtup'[^\]]*'water'[^\]]*\]\); got 'hard' for 'flat'"
        with pytest.raises(InputError, match=listed):
            synthetic_scene("flat", size=16, difficulty="hard")
    finally:
        del SCENES["flat"], _BUILDERS["flat"]


# --- every hard scene is a canonical, reproducible scene -----------------------------------------


@pytest.mark.parametrize("recipe", HARD)
def test_hard_scenes_are_canonical_and_reproducible(recipe):
    assert recipe in RECIPES
    scene = synthetic_scene(recipe, seed=5, size=96, difficulty="hard")
    again = synthetic_scene(recipe, seed=5, size=96, difficulty="hard")
    other = synthetic_scene(recipe, seed=6, size=96, difficulty="hard")
    standard = synthetic_scene(recipe, seed=5, size=96)
    assert set(standard) <= set(scene)  # recipes find the keys they read in either difficulty
    assert set(scene.descriptions) == set(scene) and all(scene.descriptions.values())
    finest = min(abs(geobox_of(c).resolution.x) for c in scene.values())
    bounds = tuple(geobox_of(next(iter(scene.values()))).boundingbox)
    for key, cube in scene.items():
        assert cube.dtype == np.float32, key
        assert cube.dims in (("time", "band", "y", "x"), ("band", "y", "x")), key
        gbox = geobox_of(cube)
        factor = abs(gbox.resolution.x) / finest
        assert factor == pytest.approx(round(factor)), key
        assert tuple(gbox.boundingbox) == pytest.approx(bounds), key
        xr.testing.assert_identical(cube, again[key])
    assert any(not scene[k].equals(other[k]) for k in scene)


# --- downscale: partial footprints over 100 px tiles, heavy-tailed target -----------------------


def test_hard_downscale_labels_are_footprint_means_over_100px_tiles():
    scene = synthetic_scene("downscale", seed=0, size=128, difficulty="hard")
    truth, weights, label = scene["truth_sif"], scene["footprint"], scene["tropomi"]
    assert truth.sizes["x"] == 200 and label.sizes["x"] == 2  # size rounds up to whole tiles
    tile = abs(geobox_of(label).resolution.x) / abs(geobox_of(truth).resolution.x)
    assert tile == pytest.approx(100.0)
    # Every tile on every date is observed over 10-30 % of its pixels, never all of it.
    share = weights.coarsen(y=100, x=100).mean().values
    assert share.shape == label.shape
    assert 0.10 <= share.min() and share.max() <= 0.30
    assert set(np.unique(weights.values)) == {0.0, 1.0}
    assert not weights.isel(time=0).equals(weights.isel(time=1))  # new tracks each date
    # The coarse label is the mean of the fine truth over the footprint (float32 precision).
    t64, w64 = truth.astype("float64"), weights.astype("float64").values
    footprint_sum = (t64 * w64).coarsen(y=100, x=100).sum().values
    footprint_mean = footprint_sum / weights.astype("float64").coarsen(y=100, x=100).sum().values
    np.testing.assert_allclose(label.values, footprint_mean, rtol=1e-6)
    # ... which is not the tile mean: the mismatch footprint-blind training makes.
    tile_mean = t64.coarsen(y=100, x=100).mean().values
    assert np.abs(label.values - tile_mean).mean() > 0.05 * float(truth.std())
    # Footprints are contiguous tracks: few pieces per tile, the largest a real strip.
    for t in range(weights.sizes["time"]):
        for i in range(2):
            for j in range(2):
                cell = weights.values[t, 0, i * 100 : (i + 1) * 100, j * 100 : (j + 1) * 100]
                labels, pieces = ndimage.label(cell > 0)
                assert 1 <= pieces <= 9
                assert np.bincount(labels.ravel())[1:].max() >= 0.04 * cell.size
    # The observed fine SIF is the truth on the footprint and NaN elsewhere.
    observed = scene["truth_sif_observed"].values
    inside = w64 > 0
    np.testing.assert_array_equal(observed[inside], truth.values[inside])
    assert np.isnan(observed[~inside]).all()
    # Heavy right tail: bright outlier fields far above the median.
    values = truth.values.ravel()
    assert stats.skew(values) > 1.0
    assert np.percentile(values, 99) > 2.5 * np.median(values)
    assert values.min() >= 0.0


# --- nightlights: cities whose brightness differs by 10x ----------------------------------------


def test_hard_nightlights_cities_differ_tenfold_in_brightness():
    scene = synthetic_scene("nightlights", seed=1, size=100, difficulty="hard")
    region = scene["region"].values[0]
    assert region.shape == (128, 128)  # size rounds up to a multiple of 32
    quadrants = np.kron(np.arange(4).reshape(2, 2), np.ones((64, 64)))
    np.testing.assert_array_equal(region, quadrants)
    scale = scene["truth_city_scale"].values[0]
    per_city = np.array([np.unique(scale[region == r]) for r in range(4)])
    assert per_city.shape == (4, 1)  # one scale per city
    assert per_city.max() / per_city.min() >= 10.0
    # The radiance itself shows it: the brightest pixels of the cities span a wide range...
    radiance = scene["truth_radiance"].values[0]
    bright = np.array([np.percentile(radiance[region == r], 99) for r in range(4)])
    assert bright.max() / bright.min() > 4.0
    # ... and the coarse VIIRS, the only source that sees the scale, ranks the cities the same.
    viirs = scene["viirs"].mean("time").values[0]
    coarse_region = region[::16, ::16]
    city_mean = [viirs[coarse_region == r].mean() for r in range(4)]
    truth_mean = [radiance[region == r].mean() for r in range(4)]
    assert stats.spearmanr(city_mean, truth_mean)[0] == pytest.approx(1.0)
    assert "brightness scale" in scene.descriptions["truth_radiance"]


# --- water: SAR alone is ambiguous, optical is cloudy in places ---------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_water_sar_alone_is_ambiguous_and_optical_cloudy(seed):
    hard = synthetic_scene("water", seed=seed, size=128, difficulty="hard")
    standard = synthetic_scene("water", seed=seed, size=128)
    cover = hard["truth_cover"].sel(band="water").values
    water = cover >= 0.5
    optical = hard["optical"].isel(time=0)
    nir = optical.sel(band="NIR").values
    qa = optical.sel(band="QA_PIXEL").values.astype(np.int64)
    clear = ((qa >> 6) & 1).astype(bool) & np.isfinite(nir)
    assert 0.4 < clear.mean() < 0.9  # cloudy in places
    # Thick cloud cores have no data; every NaN lies under a true cloud.
    clouds = hard["truth_cloud"].sel(band="cloud").values[0].astype(bool)
    assert np.isnan(nir).any() and clouds[np.isnan(nir)].all()
    # Otsu on either SAR band alone finds the water far worse than Otsu on optical where clear.
    sar_iou = max(
        _iou(db[clear] < _otsu(db[clear]), water[clear])
        for db in (hard["sar"].sel(band=b).values[0] for b in ("HH", "HV"))
    )
    log_nir = np.log10(nir[clear])
    optical_iou = _iou(log_nir < _otsu(log_nir), water[clear])
    assert sar_iou <= optical_iou - 0.1
    # Ambiguous SAR pixels: dry land darker in HV than the typical open water, absent in the
    # standard scene of the same seed; optical (NIR) tells them from water where clear.
    assert _dark_land(hard).sum() > 0.3 * water.sum()
    assert _dark_land(standard).sum() < 0.02 * water.sum()
    smooth = hard["truth_dark_land"].sel(band="smooth_surface").values.astype(bool)
    shadow = hard["truth_dark_land"].sel(band="radar_shadow").values.astype(bool)
    assert smooth.any() and shadow.any() and not (water & (smooth | shadow)).any()
    assert np.median(nir[smooth & clear]) > 3 * np.median(nir[water & clear])
    # Terrain does not give the water away: no HAND or DEM threshold finds it, while in the
    # standard scene HAND is zero exactly on the water.
    assert _best_threshold_iou(standard, "HAND") > 0.8
    assert _best_threshold_iou(hard, "HAND") < 0.5 and _best_threshold_iou(hard, "DEM") < 0.5


# --- cloudmask and builtup: brightness shifts and no-data swaths --------------------------------


def test_hard_cloudmask_has_brightness_shifts_and_gaps_over_the_same_clouds():
    hard = synthetic_scene("cloudmask", seed=2, size=96, difficulty="hard")
    standard = synthetic_scene("cloudmask", seed=2, size=96)
    xr.testing.assert_identical(hard["truth_cloud"], standard["truth_cloud"])  # same clouds
    red = hard["landsat"].sel(band="B4").values
    qa = hard["landsat"].sel(band="QA_PIXEL").values.astype(np.int64)
    gap = np.isnan(red)
    assert not gap[0].any() and gap.mean(axis=(1, 2)).max() > 0.1  # swaths after the first date
    assert np.isnan(hard["landsat"].sel(band="B1").values[gap]).all()
    assert (qa[gap] == 1).all() and (qa[~gap] & 1 == 0).all()  # QA_PIXEL fill bit, fill only
    # The brightness of each date is its own: the ratio to the standard scene varies by date.
    ratio = np.nanmedian(red / standard["landsat"].sel(band="B4").values, axis=(1, 2))
    assert ratio.max() - ratio.min() > 0.15
    # The background truth carries the same shift and has no gaps.
    background = hard["truth_background"].sel(band="B4").values
    assert np.isfinite(background).all()
    clear = ~hard["truth_cloud"].sel(band="cloud").values.astype(bool) & ~gap
    shadow = hard["truth_cloud"].sel(band="shadow").values.astype(bool)
    np.testing.assert_allclose(red[clear & ~shadow], background[clear & ~shadow], atol=0.05)


def test_hard_builtup_has_swath_gaps_and_viirs_background_drift():
    hard = synthetic_scene("builtup", seed=1, size=100, difficulty="hard")
    standard = synthetic_scene("builtup", seed=1, size=100)
    xr.testing.assert_identical(hard["truth_settlement"], standard["truth_settlement"])
    s2 = hard["s2"]
    gap = np.isnan(s2.sel(band="B4").values)
    assert 0.1 < gap.mean(axis=(1, 2)).max() <= 0.4 and (gap.mean(axis=(1, 2)) == 0).any()
    assert (s2.sel(band="QA60").values[gap] == 0).all()
    shift = (hard["viirs"] - standard["viirs"]).mean(["band", "y", "x"]).values
    assert shift.max() > 0.5 and (np.abs(shift) < 0.4).sum() > len(shift) / 2


def test_hard_gaps_survive_write_stac_and_open_stac(tmp_path):
    scene = synthetic_scene("cloudmask", seed=0, size=32, difficulty="hard")
    path = write_stac({"landsat": scene["landsat"]}, tmp_path, encodings=scene.encodings)
    opened = xf.open_stac(path.parent / "landsat" / "collection.json")
    red = scene["landsat"].sel(band="B4").values
    assert np.isnan(red).any()
    np.testing.assert_array_equal(np.isnan(opened.sel(band="B4").values), np.isnan(red))
    np.testing.assert_allclose(opened.sel(band="B4").values, red, rtol=1e-6)
