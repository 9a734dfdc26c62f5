"""Synthetic scenes with known truth for each of the five recipes.

Every scene is built from one landscape (settlements of clustered blobs and a road network, a
meandering river and lakes, vegetation with seasonal phenology, terrain with HAND) observed by
sensor-like cubes: reflectances mixed from land-cover endmember spectra with noise, clouds, cirrus
and shadows with imperfect QA flags, night-time radiance blurred and aggregated like VIIRS,
GHSL-like settlement classes, SAR backscatter with speckle, and a coarse SIF-like field that is the
area average of a fine one. The truth behind each observation is included, so every recipe has a
checkable answer offline.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from xfusion.datasets import _landscape as L
from xfusion.errors import InputError
from xfusion.grids import grid, grid_coords

__all__ = ["RECIPES", "SCENES", "Scene", "register_scene", "synthetic_scene"]

# Landsat 8 Collection-2 Level-2 encoding (USGS):
# SR = DN * 2.75e-5 - 0.2, ST = DN * 0.00341802 + 149 (kelvin).
LANDSAT_SR_SCALE, LANDSAT_SR_OFFSET = 2.75e-5, -0.2
LANDSAT_ST_SCALE, LANDSAT_ST_OFFSET = 0.00341802, 149.0

# QA_PIXEL bits of Landsat Collection 2 and QA60 bits of Sentinel-2 L1C.
QA_PIXEL_BITS = {"fill": 0, "dilated": 1, "cirrus": 2, "cloud": 3, "shadow": 4, "snow": 5,
                 "clear": 6, "water": 7}  # fmt: skip
QA60_BITS = {"opaque": 10, "cirrus": 11}


class Scene(dict):
    """A synthetic scene: a mapping of names to cubes, the truth included.

    Keys starting with ``"truth_"`` hold the truth; the others are observations as a sensor would
    deliver them. ``scene["s2"]`` is a cube; ``scene.cubes`` is the plain dict.

    Attributes
    ----------
    recipe : str
        The recipe the scene was made for.
    seed : int
        The random seed; the same seed gives the same scene.
    descriptions : dict of str
        The meaning of every key.
    encodings : dict
        Per cube and band, how a product stores it on disk (``dtype``, ``nodata``, ``scale``,
        ``offset``); :func:`xfusion.datasets.write_stac` writes the files that way. Bands without
        an entry are written as float32 with NaN nodata.
    """

    def __init__(
        self,
        cubes: Mapping[str, xr.DataArray],
        *,
        recipe: str,
        seed: int,
        descriptions: Mapping[str, str],
        encodings: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    ) -> None:
        super().__init__(cubes)
        self.recipe = recipe
        self.seed = seed
        self.descriptions = dict(descriptions)
        self.encodings = {k: dict(v) for k, v in (encodings or {}).items()}

    @property
    def cubes(self) -> dict[str, xr.DataArray]:
        """All cubes as a plain dict."""
        return dict(self)

    @property
    def truth(self) -> dict[str, xr.DataArray]:
        """The truth cubes (keys starting with ``"truth_"``)."""
        return {k: v for k, v in self.items() if k.startswith("truth_")}

    @property
    def sources(self) -> dict[str, xr.DataArray]:
        """The observation cubes (everything that is not truth)."""
        return {k: v for k, v in self.items() if not k.startswith("truth_")}

    def describe(self) -> str:
        """One line per key: name, dims and shape, and meaning."""
        lines = [f"synthetic {self.recipe!r} scene (seed={self.seed})"]
        for key, cube in self.items():
            shape = "×".join(f"{d}={s}" for d, s in zip(cube.dims, cube.shape, strict=True))
            lines.append(f"  {key:<18} {shape:<40} {self.descriptions.get(key, '')}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.describe()


# ---------------------------------------------------------------------------------------------
# helpers


def _geobox(left: float, top: float, n: int, res: float, crs: str):
    return grid((left, top - n * res, left + n * res, top), crs, res)


def _cube(
    data: np.ndarray,
    bands: list[str],
    gbox,
    *,
    times=None,
    name: str,
    **attrs: Any,
) -> xr.DataArray:
    dims = ("time", "band", "y", "x") if times is not None else ("band", "y", "x")
    coords: dict[str, Any] = {"band": list(bands), **grid_coords(gbox)}
    if times is not None:
        coords["time"] = pd.DatetimeIndex(times).as_unit("ns")
    return xr.DataArray(data.astype(np.float32), dims=dims, coords=coords, name=name, attrs=attrs)


def _round_up(size: int, factor: int) -> int:
    return int(math.ceil(size / factor) * factor)


def _cloud_covers(
    rng: np.random.Generator, k: int, *, clear_first: int = 0
) -> list[tuple[float, float]]:
    """(cloud cover, cirrus cover) per date: about a third of the dates clear."""
    covers = []
    for i in range(k):
        if i < clear_first or rng.random() < 0.3:
            covers.append((0.0, 0.0))
        else:
            covers.append((float(rng.uniform(0.1, 0.4)), float(rng.uniform(0.0, 0.35))))
    return covers


def _cloud_truth(clouds: list[L.Clouds]) -> np.ndarray:
    """(time, 3, n, n) with bands cloud, thin_cloud, shadow as 0/1."""
    return np.stack([np.stack([c.truth(), c.thin(), c.shadow]) for c in clouds]).astype(np.float32)


def _qa_pixel(clouds: L.Clouds, water: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Landsat QA_PIXEL-like flags, realistic but imperfect.

    Flags thick clouds (opacity > 0.4) with high confidence, cirrus only where it is thickest,
    a 3-pixel dilation ring around clouds and most (not all) shadows: thin clouds and cloud edges
    below the thresholds are missed, as in the real product.
    """
    b = QA_PIXEL_BITS
    cloud = clouds.thick > 0.4
    cirrus = clouds.cirrus > 0.2
    dilated = ndimage.binary_dilation(cloud, iterations=3) & ~cloud
    shadow = clouds.shadow & (rng.random(cloud.shape) < 0.9)
    qa = np.zeros(cloud.shape, dtype=np.int64)
    qa |= cloud.astype(np.int64) << b["cloud"] | (cloud.astype(np.int64) * 3) << 8
    qa |= cirrus.astype(np.int64) << b["cirrus"] | (cirrus.astype(np.int64) * 3) << 14
    qa |= dilated.astype(np.int64) << b["dilated"]
    qa |= shadow.astype(np.int64) << b["shadow"]
    clear = ~(cloud | cirrus | dilated | shadow)
    qa |= clear.astype(np.int64) << b["clear"]
    qa |= ((water > 0.5) & clear).astype(np.int64) << b["water"]
    return qa


def _radiance_coarse(rad_fine: np.ndarray, factor: int, rng: np.random.Generator, *, noise: float):
    """VIIRS-like observation: point-spread blur, area aggregation, additive noise (>= 0)."""
    blurred = ndimage.gaussian_filter(rad_fine, 0.6 * factor, mode="nearest")
    coarse = L.block_mean(blurred, factor)
    return np.clip(coarse + noise * rng.standard_normal(coarse.shape), 0.0, None)


def _smod(intensity_1km: np.ndarray) -> np.ndarray:
    """GHSL SMOD-like classes from 1 km mean settlement intensity: 0 rural ... 3 urban centre."""
    return np.digitize(intensity_1km, [0.08, 0.25, 0.5]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# scenes

#: The synthetic scenes, by name: a one-line description of each. The five scenes are named after
#: the workflows they were made for; a recipe names the scene it runs on, and a new one may add
#: its own with :func:`register_scene` (this module knows scenes, not recipes).
SCENES: dict[str, str] = {}
_BUILDERS: dict[str, Callable[[np.random.Generator, int], Scene]] = {}


def register_scene(
    name: str, description: str
) -> Callable[[Callable[[np.random.Generator, int], Scene]], Callable[..., Scene]]:
    """Register a scene builder ``(rng, size) -> Scene`` under ``name`` for :func:`synthetic_scene`.

    Examples
    --------
    >>> @register_scene("flat", "one band of zeros")
    ... def _flat(rng, size):
    ...     zeros = xr.DataArray(np.zeros((1, size, size), np.float32), dims=("band", "y", "x"),
    ...                          coords={"band": ["z"]})
    ...     return Scene({"zeros": zeros}, recipe="flat", seed=0, descriptions={"zeros": "0"})
    >>> synthetic_scene("flat", size=16)["zeros"].shape
    (1, 16, 16)
    >>> del SCENES["flat"], _BUILDERS["flat"]
    """

    def register(builder: Callable[[np.random.Generator, int], Scene]) -> Callable[..., Scene]:
        SCENES[name] = description
        _BUILDERS[name] = builder
        return builder

    return register


@register_scene(
    "builtup",
    "Sentinel-2 series, VIIRS monthly night lights and GHSL SMOD over growing "
    "settlements (Kathmandu-like, 2015-2019)",
)
def _builtup(rng: np.random.Generator, size: int, difficulty: str = "standard") -> Scene:
    if difficulty == "hard":
        return _builtup_hard(rng, size)
    n = _round_up(size, 10)
    fine = _geobox(320000.0, 3080000.0, n, 100.0, "EPSG:32645")  # Kathmandu valley, UTM 45N
    viirs_box = _geobox(320000.0, 3080000.0, n // 5, 500.0, "EPSG:32645")
    smod_box = _geobox(320000.0, 3080000.0, n // 10, 1000.0, "EPSG:32645")
    years = list(range(2015, 2020))
    land = L.make_landscape(rng, n, stages=len(years), towns=5, relief=600.0, base_elevation=1400.0)

    band_idx = [1, 2, 3, 4, 5, 6]  # blue, green, red, nir, swir1, swir2
    s2_bands = ["B2", "B3", "B4", "B8", "B11", "B12"]
    dates, s2, clouds = [], [], []
    for stage, year in enumerate(years):
        for month, day in ((7, 22), (9, 20), (11, 19)):
            date = pd.Timestamp(year, month, day)
            covers = _cloud_covers(rng, 1)[0]
            cl = L.make_clouds(rng, n, covers[0], cirrus_cover=covers[1])
            surface = L.reflectance(land.fractions(stage, date.dayofyear), band_idx, rng)
            dn = np.rint(L.apply_clouds(surface, cl, band_idx) * 10000.0)
            qa = ((cl.thick > 0.4).astype(np.int64) << QA60_BITS["opaque"]) | (
                (cl.cirrus > 0.2).astype(np.int64) << QA60_BITS["cirrus"]
            )
            s2.append(np.concatenate([dn, qa[None]]))
            clouds.append(cl)
            dates.append(date)

    months = [pd.Timestamp(y, m, 1) for y in years for m in range(7, 13)]
    radiance = [L.nightlight_radiance(land, stage) for stage in range(len(years))]
    viirs = []
    for month in months:
        rad = radiance[years.index(month.year)] * (1.0 + 0.04 * rng.standard_normal())
        viirs.append(_radiance_coarse(rad, 5, rng, noise=0.25)[None])
    intensity_1km = L.block_mean(land.settlement, 10)
    smod = _smod(intensity_1km)
    year_times = [pd.Timestamp(y, 7, 1) for y in years]

    cubes = {
        "s2": _cube(np.stack(s2), [*s2_bands, "QA60"], fine, times=dates, name="s2",
                    long_name="Sentinel-2 L1C-like digital numbers (reflectance x 10000)"),
        "viirs": _cube(np.stack(viirs), ["avg_rad"], viirs_box, times=months, name="viirs",
                       units="nW/cm2/sr"),
        "ghsl": _cube(smod[:1, None], ["smod_code"], smod_box, times=[pd.Timestamp(2015, 1, 1)],
                      name="ghsl"),
        "truth_settlement": _cube(land.settlement[:, None], ["intensity"], fine, times=year_times,
                                  name="truth_settlement"),
        "truth_builtup": _cube((smod >= 2)[:, None], ["builtup"], smod_box, times=year_times,
                               name="truth_builtup"),
        "truth_cloud": _cube(_cloud_truth(clouds), ["cloud", "thin_cloud", "shadow"], fine,
                             times=dates, name="truth_cloud"),
    }  # fmt: skip
    dn = {"dtype": "uint16", "nodata": 0}
    encodings = {
        "s2": {**{b: dn for b in s2_bands}, "QA60": {"dtype": "uint16", "nodata": None}},
        "ghsl": {"smod_code": {"dtype": "uint8", "nodata": 255}},
    }
    descriptions = {
        "s2": "Sentinel-2-like DN (x10000) B2,B3,B4,B8,B11,B12 at 100 m, 3 dates per Jul-Dec "
        "2015-2019, clouds/cirrus/shadows; QA60 bit 10 opaque, bit 11 cirrus (misses thin clouds)",
        "viirs": "VIIRS-like monthly avg_rad (nW/cm2/sr) at 500 m, Jul-Dec 2015-2019: blurred, "
        "aggregated and noisy night lights of the growing settlements",
        "ghsl": "GHSL-SMOD-like settlement classes at 1 km for 2015 (0 rural .. 3 urban centre; "
        "built-up is >= 2)",
        "truth_settlement": "settlement intensity (0..1) at 100 m per year 2015-2019 (growing)",
        "truth_builtup": "built-up (1) / not (0) at 1 km per year 2015-2019, the SMOD >= 2 rule "
        "applied to the true settlements of each year",
        "truth_cloud": "per S2 date at 100 m: cloud (any visible cloud), thin_cloud, shadow (0/1)",
    }
    return Scene(cubes, recipe="builtup", seed=0, descriptions=descriptions, encodings=encodings)


def _landsat_sr(
    land: L.Landscape, rng: np.random.Generator, doy: float, clouds: L.Clouds
) -> np.ndarray:
    """(9, n, n): SR_B1..SR_B7 and ST_B10 as Collection-2 DN, and QA_PIXEL."""
    idx = list(range(7))
    fr = land.fractions(0, doy)
    toa = L.apply_clouds(L.reflectance(fr, idx, rng), clouds, idx)
    sr_dn = np.clip(np.rint((toa - LANDSAT_SR_OFFSET) / LANDSAT_SR_SCALE), 1, 65535)
    temp = sum(fr[k] * L.TEMPERATURE[k] for k in fr) + 4.0 * np.sin(2 * np.pi * (doy - 110) / 365)
    temp = temp * (1 - clouds.opacity) + 265.0 * clouds.opacity - 3.0 * clouds.shadow
    temp = temp + 0.4 * rng.standard_normal(temp.shape)
    st_dn = np.clip(np.rint((temp - LANDSAT_ST_OFFSET) / LANDSAT_ST_SCALE), 1, 65535)
    qa = _qa_pixel(clouds, land.water, rng)
    return np.concatenate([sr_dn, st_dn[None], qa[None]])


LANDSAT_L2_BANDS = [f"SR_B{i}" for i in range(1, 8)] + ["ST_B10", "QA_PIXEL"]


def _landsat_encoding() -> dict[str, dict[str, Any]]:
    sr = {"dtype": "uint16", "nodata": 0, "scale": LANDSAT_SR_SCALE, "offset": LANDSAT_SR_OFFSET}
    st = {"dtype": "uint16", "nodata": 0, "scale": LANDSAT_ST_SCALE, "offset": LANDSAT_ST_OFFSET}
    return {
        **{b: sr for b in LANDSAT_L2_BANDS[:7]},
        "ST_B10": st,
        "QA_PIXEL": {"dtype": "uint16", "nodata": 1},
    }


@register_scene(
    "nightlights",
    "Landsat 8 C2 L2 dates, VIIRS at 480 m and the 30 m radiance truth (Nairobi-like)",
)
def _nightlights(rng: np.random.Generator, size: int, difficulty: str = "standard") -> Scene:
    if difficulty == "hard":
        return _nightlights_hard(rng, size)
    n = _round_up(size, 16)
    fine = _geobox(250000.0, 9870000.0, n, 30.0, "EPSG:32737")  # Nairobi, UTM 37S
    coarse = _geobox(250000.0, 9870000.0, n // 16, 480.0, "EPSG:32737")
    land = L.make_landscape(rng, n, towns=6, relief=150.0, base_elevation=1650.0, lakes=1)
    dates = [pd.Timestamp(d) for d in ("2021-01-14", "2021-02-15", "2021-07-09", "2021-09-11")]
    covers = _cloud_covers(rng, len(dates), clear_first=1)
    clouds = [L.make_clouds(rng, n, c, cirrus_cover=ci) for c, ci in covers]
    landsat = np.stack(
        [_landsat_sr(land, rng, d.dayofyear, c) for d, c in zip(dates, clouds, strict=True)]
    )
    rad = L.nightlight_radiance(land, 0)
    months = pd.date_range("2021-01-01", periods=6, freq="MS")
    viirs = np.stack(
        [_radiance_coarse(rad * (1 + 0.04 * rng.standard_normal()), 16, rng, noise=0.3)[None]
         for _ in months]
    )  # fmt: skip
    cubes = {
        "landsat": _cube(landsat, LANDSAT_L2_BANDS, fine, times=dates, name="landsat",
                         long_name="Landsat 8 C2 L2-like DN; SR = DN*2.75e-5-0.2, "
                         "ST = DN*0.00341802+149 K"),
        "viirs": _cube(viirs, ["avg_rad"], coarse, times=months, name="viirs", units="nW/cm2/sr"),
        "truth_radiance": _cube(rad[None], ["avg_rad"], fine, name="truth_radiance",
                                units="nW/cm2/sr"),
        "truth_cloud": _cube(_cloud_truth(clouds), ["cloud", "thin_cloud", "shadow"], fine,
                             times=dates, name="truth_cloud"),
    }  # fmt: skip
    descriptions = {
        "landsat": "Landsat-8-C2-L2-like DN at 30 m, 4 dates of 2021: SR_B1..SR_B7 (scale 2.75e-5, "
        "offset -0.2), ST_B10 (scale 0.00341802, offset 149 K), QA_PIXEL bits 1 dilated, 2 cirrus, "
        "3 cloud, 4 shadow, 6 clear, 7 water",
        "viirs": "VIIRS-like monthly avg_rad (nW/cm2/sr) at 480 m, Jan-Jun 2021: the fine radiance "
        "blurred by a point-spread function, area-averaged and noisy",
        "truth_radiance": "night-time radiance at 30 m (what a U-Net should recover): smoothed "
        "settlement intensity to a power plus lit roads near towns, dark water",
        "truth_cloud": "per Landsat date at 30 m: cloud, thin_cloud, shadow (0/1)",
    }
    return Scene(
        cubes, recipe="nightlights", seed=0, descriptions=descriptions,
        encodings={"landsat": _landsat_encoding()},
    )  # fmt: skip


def _nightlights_hard(rng: np.random.Generator, size: int) -> Scene:
    """Four cities, one per quadrant, whose lights differ in brightness scale by 10x or more."""
    n = _round_up(size, 32)  # each quadrant covers whole 480 m cells
    half = n // 2
    fine = _geobox(250000.0, 9870000.0, n, 30.0, "EPSG:32737")
    coarse = _geobox(250000.0, 9870000.0, n // 16, 480.0, "EPSG:32737")
    cities = []
    for _ in range(4):
        city = L.make_landscape(
            rng, half, towns=int(rng.integers(1, 4)), relief=float(rng.uniform(40.0, 300.0)),
            base_elevation=float(rng.uniform(20.0, 1800.0)), lakes=int(rng.integers(0, 3)),
        )  # fmt: skip
        aridity = rng.uniform(0.15, 1.0)  # dry cities are soil-coloured, humid ones green
        city.forest, city.crop = city.forest * aridity, city.crop * aridity
        cities.append(city)

    def tile(field: str, stage: bool = False) -> np.ndarray:
        parts = [getattr(c, field)[0] if stage else getattr(c, field) for c in cities]
        return np.block([[parts[0], parts[1]], [parts[2], parts[3]]])

    land = L.Landscape(
        settlement=tile("settlement", stage=True)[None], road=tile("road"), water=tile("water"),
        forest=tile("forest"), crop=tile("crop"), dem=tile("dem"), hand=tile("hand"),
    )  # fmt: skip
    region = np.kron(np.arange(4.0).reshape(2, 2), np.ones((half, half)))
    # Lights per unit of settlement differ between cities (wealth, electrification, lamp types).
    scales = np.geomspace(1.0, 10 ** rng.uniform(1.0, 1.25), 4)[rng.permutation(4)]
    scales = scales * rng.uniform(0.3, 0.6)
    scale = scales[region.astype(int)]
    airglow = 0.4 * (1.0 - 0.9 * land.water)
    rad = airglow + scale * (L.nightlight_radiance(land, 0) - airglow)
    dates = [pd.Timestamp(d) for d in ("2021-01-14", "2021-02-15", "2021-07-09", "2021-09-11")]
    covers = _cloud_covers(rng, len(dates), clear_first=1)
    clouds = [L.make_clouds(rng, n, c, cirrus_cover=ci) for c, ci in covers]
    landsat = np.stack(
        [_landsat_sr(land, rng, d.dayofyear, c) for d, c in zip(dates, clouds, strict=True)]
    )
    months = pd.date_range("2021-01-01", periods=6, freq="MS")
    viirs = np.stack(
        [_radiance_coarse(rad * (1 + 0.04 * rng.standard_normal()), 16, rng, noise=0.3)[None]
         for _ in months]
    )  # fmt: skip
    order = ", ".join(f"{s:.2f}" for s in scales)
    cubes = {
        "landsat": _cube(landsat, LANDSAT_L2_BANDS, fine, times=dates, name="landsat",
                         long_name="Landsat 8 C2 L2-like DN; SR = DN*2.75e-5-0.2, "
                         "ST = DN*0.00341802+149 K"),
        "viirs": _cube(viirs, ["avg_rad"], coarse, times=months, name="viirs", units="nW/cm2/sr"),
        "region": _cube(region[None], ["city"], fine, name="region"),
        "truth_radiance": _cube(rad[None], ["avg_rad"], fine, name="truth_radiance",
                                units="nW/cm2/sr"),
        "truth_city_scale": _cube(scale[None], ["scale"], fine, name="truth_city_scale"),
        "truth_cloud": _cube(_cloud_truth(clouds), ["cloud", "thin_cloud", "shadow"], fine,
                             times=dates, name="truth_cloud"),
    }  # fmt: skip
    descriptions = {
        "landsat": "Landsat-8-C2-L2-like DN at 30 m, 4 dates of 2021, over four different cities "
        "(one per quadrant: own terrain, towns, lakes and aridity, so the daytime look shifts "
        "between them); SR_B1..SR_B7 (scale 2.75e-5, offset -0.2), ST_B10 (scale 0.00341802, "
        "offset 149 K), QA_PIXEL bits 1 dilated, 2 cirrus, 3 cloud, 4 shadow, 6 clear, 7 water",
        "viirs": "VIIRS-like monthly avg_rad (nW/cm2/sr) at 480 m, Jan-Jun 2021: the fine radiance "
        "blurred, area-averaged and noisy; the only source that sees each city's brightness scale",
        "region": "city id (0..3, one per quadrant; 0 top left, 1 top right, 2 bottom left, "
        "3 bottom right) for per-city standardisation and held-out-city validation",
        "truth_radiance": "night-time radiance at 30 m: airglow plus each city's lights times its "
        f"brightness scale (cities 0..3: {order}; the largest is >= 10x the smallest), so a "
        "model fitted on some cities must generalise to brighter or dimmer ones",
        "truth_city_scale": "the brightness scale of each pixel's city (the multiplier of its "
        "lights above airglow)",
        "truth_cloud": "per Landsat date at 30 m: cloud, thin_cloud, shadow (0/1)",
    }
    return Scene(
        cubes, recipe="nightlights", seed=0, descriptions=descriptions,
        encodings={"landsat": _landsat_encoding()},
    )  # fmt: skip


@register_scene(
    "cloudmask",
    "12-date Landsat-like series with clouds, cirrus and shadows, imperfect QA, cloud "
    "and background truth",
)
def _cloudmask(rng: np.random.Generator, size: int, difficulty: str = "standard") -> Scene:
    if difficulty == "hard":
        return _cloudmask_hard(rng, size)
    n = size
    fine = _geobox(700000.0, 4400000.0, n, 30.0, "EPSG:32630")  # eastern Spain, UTM 30N
    land = L.make_landscape(rng, n, towns=3, relief=250.0, base_elevation=400.0)
    dates = pd.date_range("2015-04-05", periods=12, freq="16D")
    covers = _cloud_covers(rng, len(dates), clear_first=3)
    # Make sure the later dates carry clouds so every lag model has something to find.
    covers = [c if i < 3 or c[0] > 0 or i % 3 else (0.3, 0.3) for i, c in enumerate(covers)]
    idx = list(range(7))
    toa, background, clouds, qa = [], [], [], []
    for date, (cover, cirrus) in zip(dates, covers, strict=True):
        cl = L.make_clouds(rng, n, cover, cirrus_cover=cirrus)
        surface = L.reflectance(land.fractions(0, date.dayofyear), idx, rng, noise=0.005)
        background.append(surface)
        toa.append(L.apply_clouds(surface, cl, idx))
        qa.append(_qa_pixel(cl, land.water, rng)[None])
        clouds.append(cl)
    bands = [f"B{i}" for i in range(1, 8)]
    cubes = {
        "landsat": _cube(np.concatenate([np.stack(toa), np.stack(qa)], axis=1),
                         [*bands, "QA_PIXEL"],
                         fine, times=dates, name="landsat"),
        "truth_cloud": _cube(_cloud_truth(clouds), ["cloud", "thin_cloud", "shadow"], fine,
                             times=dates, name="truth_cloud"),
        "truth_background": _cube(np.stack(background), bands, fine, times=dates,
                                  name="truth_background"),
    }  # fmt: skip
    descriptions = {
        "landsat": "Landsat-8-like reflectance B1..B7 (0..1) at 30 m, 12 dates every 16 days from "
        "2015-04-05 (first three clear), with clouds, thin cirrus and displaced shadows; QA_PIXEL "
        "bits 1 dilated, 2 cirrus, 3 cloud, 4 shadow, 6 clear, 7 water that miss thin clouds",
        "truth_cloud": "per date: cloud (any visible cloud, thin included), thin_cloud, "
        "shadow (0/1)",
        "truth_background": "per date: the cloud-free surface reflectance B1..B7 under the clouds",
    }
    return Scene(
        cubes, recipe="cloudmask", seed=0, descriptions=descriptions,
        encodings={"landsat": {"QA_PIXEL": {"dtype": "uint16", "nodata": 1}}},
    )  # fmt: skip


def _cloudmask_hard(rng: np.random.Generator, size: int) -> Scene:
    """Build the standard cloudmask scene, then shift each date's brightness and cut swaths."""
    scene = _cloudmask(rng, size)
    landsat, background = scene["landsat"], scene["truth_background"]
    data, surface = landsat.values.copy(), background.values.copy()
    n = landsat.sizes["x"]
    haze_by_band = np.array([1.5, 1.3, 1.0, 0.8, 0.4, 0.2, 0.1])[:, None, None]  # path radiance
    fill = np.float32(1 << QA_PIXEL_BITS["fill"])
    for t in range(landsat.sizes["time"]):
        gain, haze = rng.uniform(0.85, 1.15), rng.uniform(0.0, 0.03)
        data[t, :7] = data[t, :7] * gain + haze * haze_by_band
        surface[t] = surface[t] * gain + haze * haze_by_band
        gap = np.zeros((n, n), dtype=bool)
        if t > 0 and rng.random() < 0.5:  # the first date stays whole, as a reference
            gap |= L.swath_gap(rng, n, rng.uniform(0.1, 0.3))
        if t > 0 and rng.random() < 0.3:
            gap |= L.scan_line_gaps(rng, n)
        data[t, :7, gap] = np.nan
        data[t, 7][gap] = fill
    scene["landsat"] = landsat.copy(data=data)
    scene["truth_background"] = background.copy(data=surface)
    scene.descriptions["landsat"] += (
        "; HARD: each date has its own brightness (gain 0.85-1.15 and a haze offset strongest in "
        "the blue), and dates after the first may lose a swath edge (10-30 %) or scan lines "
        "(Landsat-7-SLC-off-like stripes): NaN reflectance, QA_PIXEL fill bit 0 set"
    )
    scene.descriptions["truth_background"] += " (with the date's brightness shift, no gaps)"
    return scene


def _builtup_hard(rng: np.random.Generator, size: int) -> Scene:
    """Build the standard builtup scene, then add swath gaps, gains and VIIRS background drift."""
    scene = _builtup(rng, size)
    s2, viirs = scene["s2"], scene["viirs"]
    data, lights = s2.values.copy(), viirs.values.copy()
    n = s2.sizes["x"]
    for t in range(s2.sizes["time"]):
        data[t, :6] = np.rint(data[t, :6] * rng.uniform(0.9, 1.1))
        if rng.random() < 0.4:
            gap = L.swath_gap(rng, n, rng.uniform(0.1, 0.4))
            data[t, :6, gap] = np.nan
            data[t, 6][gap] = 0.0
    for t in range(viirs.sizes["time"]):
        stray = rng.uniform(0.5, 2.0) if rng.random() < 0.3 else 0.0  # stray light, moonlight
        lights[t] = lights[t] * rng.uniform(0.9, 1.1) + stray
    scene["s2"] = s2.copy(data=data)
    scene["viirs"] = viirs.copy(data=lights)
    scene.descriptions["s2"] += (
        "; HARD: per-date gain 0.9-1.1 and, on about 40 % of the dates, a swath edge with no data "
        "(NaN DN, QA60 0) over 10-40 % of the scene"
    )
    scene.descriptions["viirs"] += (
        "; HARD: per-month gain 0.9-1.1 and, in about 30 % of the months, a stray-light "
        "background of 0.5-2 nW/cm2/sr over the whole scene"
    )
    return scene


@register_scene(
    "water",
    "SAR HH/HV, optical, DEM and HAND with water labels (NaN nodata)",
)
def _water(rng: np.random.Generator, size: int, difficulty: str = "standard") -> Scene:
    if difficulty == "hard":
        return _water_hard(rng, size)
    n = size
    fine = _geobox(640000.0, 3380000.0, n, 30.0, "EPSG:32615")  # lower Mississippi, UTM 15N
    land = L.make_landscape(rng, n, towns=3, relief=25.0, base_elevation=15.0, lakes=3)
    date = pd.Timestamp("2010-06-15")
    fr = land.fractions(0, date.dayofyear)
    sigma0 = [sum(fr[k] * L.BACKSCATTER[k][pol] for k in fr) for pol in (0, 1)]
    looks = 4.0
    speckle = rng.gamma(looks, 1.0 / looks, size=(2, n, n))
    sar_db = 10.0 * np.log10(np.stack(sigma0) * speckle)
    optical = L.reflectance(fr, [3, 4, 5, 6], rng)  # red, nir, swir1, swir2: cloud-free composite
    # Labels from a cloudy optical classification: nodata under clouds and on partial water.
    label_clouds = L.make_clouds(rng, n, 0.12)
    label = np.where(land.water >= 0.95, 1.0, np.where(land.water <= 0.05, 0.0, np.nan))
    label[label_clouds.truth() | label_clouds.shadow] = np.nan
    cubes = {
        "sar": _cube(sar_db[None], ["HH", "HV"], fine, times=[date], name="sar", units="dB"),
        "optical": _cube(optical[None], ["Red", "NIR", "SWIR1", "SWIR2"], fine, times=[date],
                         name="optical"),
        "terrain": _cube(np.stack([land.dem, land.hand]), ["DEM", "HAND"], fine, name="terrain",
                         units="m"),
        "truth_water": _cube(label[None], ["water"], fine, name="truth_water"),
        "truth_cover": _cube(np.stack([fr[k] for k in ("water", "urban", "vegetation", "soil")]),
                             ["water", "urban", "vegetation", "soil"], fine, name="truth_cover"),
    }  # fmt: skip
    descriptions = {
        "sar": "L-band-SAR-like backscatter HH, HV in dB at 30 m (4-look gamma speckle): water "
        "dark, built-up bright",
        "optical": "cloud-free Landsat-like reflectance Red, NIR, SWIR1, SWIR2 (0..1) at 30 m",
        "terrain": "DEM (m) and HAND, height above nearest drainage (m), at 30 m",
        "truth_water": "water labels at 30 m: 1 water, 0 land, NaN nodata (cloud, cloud shadow "
        "or partial water), to be ignored in the loss",
        "truth_cover": "cover fractions (0..1, summing to 1) of water, urban, vegetation and soil "
        "at 30 m",
    }
    return Scene(cubes, recipe="water", seed=0, descriptions=descriptions)


def _water_hard(rng: np.random.Generator, size: int) -> Scene:
    """SAR that confuses dark land with water and an optical composite with clouds left in it."""
    n = size
    fine = _geobox(640000.0, 3380000.0, n, 30.0, "EPSG:32615")
    land = L.make_landscape(rng, n, towns=3, relief=25.0, base_elevation=15.0, lakes=3)
    wet = land.water > 0.5
    # Steep bluffs over the eastern part of the floodplain cast radar shadows.
    ramp = np.clip((np.arange(n) / n - 0.45) / 0.25, 0.0, 1.0)[None, :]
    hills = 120.0 * np.clip(L.smooth_noise(rng, (n, n), max(n / 40, 1.5)), 0.0, None) ** 1.5
    land.dem = (land.dem + hills * ramp * (1.0 - land.water)).astype(np.float32)
    land.hand = L.height_above_drainage(land.dem, wet).astype(np.float32)
    # Smooth wet bare soil (ponded fields, mud flats) on the low ground: as dark as water in SAR.
    low = ~wet & (land.hand < np.quantile(land.hand[~wet], 0.4)) & (land.settlement[0] < 0.2)
    field = L.smooth_noise(rng, (n, n), max(n / 30, 1.5))
    area = max(0.03 * n * n, 0.6 * wet.sum())
    smooth = low & (field >= np.quantile(field[low], max(0.0, 1.0 - area / max(low.sum(), 1))))
    date = pd.Timestamp("2010-06-15")
    fr = land.fractions(0, date.dayofyear)
    bare = np.where(smooth, 0.9, 0.0)  # ponded fields are bare: vegetation becomes soil
    fr["soil"] = fr["soil"] + fr["vegetation"] * bare
    fr["vegetation"] = fr["vegetation"] * (1.0 - bare)
    # Wind roughens part of the open water: brighter than calm water, so SAR misses it.
    wind = 1.0 + 5.0 * np.clip(L.smooth_noise(rng, (n, n), max(n / 10, 2.0)) - 0.8, 0.0, None)
    smooth_bs = (0.007, 0.0011)
    sigma0 = []
    for pol in (0, 1):
        soil = np.where(smooth, smooth_bs[pol], L.BACKSCATTER["soil"][pol])
        s = (fr["water"] * L.BACKSCATTER["water"][pol] * wind + fr["soil"] * soil
             + sum(fr[k] * L.BACKSCATTER[k][pol] for k in ("urban", "vegetation")))  # fmt: skip
        sigma0.append(s)
    gain, shadow = L.radar_terrain(land.dem, 30.0)
    floor = np.array([0.004, 0.0006])[:, None, None]  # noise-equivalent sigma0 in shadow
    sigma0 = np.where(shadow[None], floor, np.stack(sigma0) * gain[None])
    looks = 4.0
    speckle = rng.gamma(looks, 1.0 / looks, size=(2, n, n))
    sar_db = 10.0 * np.log10(np.maximum(sigma0, 1e-5) * speckle)
    surface = L.reflectance(fr, [3, 4, 5, 6], rng)
    darken = np.array([0.6, 0.55, 0.4, 0.4])[:, None, None]  # water absorbs in the NIR/SWIR
    surface = np.where(smooth[None], surface * darken, surface).astype(np.float32)
    # The optical composite still holds clouds and their shadows; thick cores have no data.
    clouds = L.make_clouds(rng, n, 0.25, cirrus_cover=0.2)
    optical = L.apply_clouds(surface, clouds, [3, 4, 5, 6])
    optical[:, clouds.thick > 0.8] = np.nan
    qa = _qa_pixel(clouds, land.water, rng).astype(np.float32)
    label_clouds = L.make_clouds(rng, n, 0.12)
    label = np.where(land.water >= 0.95, 1.0, np.where(land.water <= 0.05, 0.0, np.nan))
    label[label_clouds.truth() | label_clouds.shadow] = np.nan
    dem, hand = L.elevation_product(rng, land.dem, wet)
    cubes = {
        "sar": _cube(sar_db[None], ["HH", "HV"], fine, times=[date], name="sar", units="dB"),
        "optical": _cube(np.concatenate([optical, qa[None]])[None],
                         ["Red", "NIR", "SWIR1", "SWIR2", "QA_PIXEL"], fine, times=[date],
                         name="optical"),
        "terrain": _cube(np.stack([dem, hand]), ["DEM", "HAND"], fine, name="terrain",
                         units="m"),
        "truth_water": _cube(label[None], ["water"], fine, name="truth_water"),
        "truth_cover": _cube(np.stack([fr[k] for k in ("water", "urban", "vegetation", "soil")]),
                             ["water", "urban", "vegetation", "soil"], fine, name="truth_cover"),
        "truth_dark_land": _cube(np.stack([smooth, shadow & ~wet]), ["smooth_surface",
                                 "radar_shadow"], fine, name="truth_dark_land"),
        "truth_cloud": _cube(_cloud_truth([clouds]), ["cloud", "thin_cloud", "shadow"], fine,
                             times=[date], name="truth_cloud"),
    }  # fmt: skip
    descriptions = {
        "sar": "L-band-SAR-like backscatter HH, HV in dB at 30 m (4-look gamma speckle, looking "
        "east): calm water dark, but smooth wet bare soil on the low ground is as dark, radar "
        "shadows behind the eastern bluffs fall to the noise floor and wind-roughened water is "
        "brighter, so SAR alone is ambiguous",
        "optical": "Landsat-like reflectance Red, NIR, SWIR1, SWIR2 (0..1) at 30 m with clouds, "
        "cirrus and cloud shadows left in (NaN in thick cloud cores) and QA_PIXEL (bits 1 dilated, "
        "2 cirrus, 3 cloud, 4 shadow, 6 clear, 7 water) that misses thin cloud: it separates wet "
        "soil from water where clear and is unreliable elsewhere",
        "terrain": "DEM (m) and HAND, height above nearest drainage (m), at 30 m, as a global "
        "product gives them: water at bank height, metre-scale errors, HAND above the river's "
        "centreline (lakes and flooded ground are not at zero); steep bluffs in the east",
        "truth_water": "water labels at 30 m: 1 water, 0 land, NaN nodata (cloud, cloud shadow "
        "or partial water), to be ignored in the loss",
        "truth_cover": "cover fractions (0..1, summing to 1) of water, urban, vegetation and soil "
        "at 30 m (smooth wet surfaces count as soil)",
        "truth_dark_land": "land that SAR confuses with water (0/1): smooth_surface (wet bare "
        "soil), radar_shadow (terrain hidden from the sensor)",
        "truth_cloud": "clouds in the optical composite at 30 m: cloud, thin_cloud, shadow (0/1)",
    }
    return Scene(cubes, recipe="water", seed=0, descriptions=descriptions)


@register_scene(
    "downscale",
    "MODIS-like NDVI/EVI at 1 km and SIF at 5 km aggregated from a 1 km truth",
)
def _downscale(rng: np.random.Generator, size: int, difficulty: str = "standard") -> Scene:
    if difficulty == "hard":
        return _downscale_hard(rng, size)
    n = _round_up(size, 5)
    fine = _geobox(300000.0, 4800000.0, n, 1000.0, "EPSG:32615")  # US corn belt, UTM 15N
    coarse = _geobox(300000.0, 4800000.0, n // 5, 5000.0, "EPSG:32615")
    land = L.make_landscape(rng, n, towns=3, relief=60.0, base_elevation=300.0)
    land.crop = np.clip(land.crop * 1.6, 0.0, 1.0) * (1.0 - land.forest)
    doys = [129 + 16 * k for k in range(8)]
    times = [pd.Timestamp(2019, 1, 1) + pd.Timedelta(days=d - 1) for d in doys]
    vi, sif = [], []
    for doy in doys:
        fr = land.fractions(0, doy)
        clean = L.reflectance(fr, [1, 3, 4], rng, noise=0.0)
        blue, red, nir = L.reflectance(fr, [1, 3, 4], rng, noise=0.004)
        ndvi = (nir - red) / (nir + red)
        evi = 2.5 * (nir - red) / (nir + 6.0 * red - 7.5 * blue + 1.0)
        vi.append(np.stack([ndvi, evi]))
        ndvi_clean = (clean[2] - clean[1]) / (clean[2] + clean[1])
        fpar = np.clip(1.2 * ndvi_clean - 0.15, 0.0, 1.0)
        apar = 0.6 + 0.4 * np.cos(2 * np.pi * (doy - 190) / 365)
        context = ndimage.gaussian_filter(fr["vegetation"], 2.0, mode="nearest")
        sif.append(2.2 * fpar**1.5 * apar * (0.6 + 0.8 * context))
    sif = np.stack(sif)[:, None]
    sif_coarse = L.block_mean(sif, 5) + 0.005 * rng.standard_normal((len(doys), 1, n // 5, n // 5))
    cubes = {
        "modis": _cube(np.stack(vi), ["NDVI", "EVI"], fine, times=times, name="modis"),
        "tropomi": _cube(sif_coarse, ["SIF743"], coarse, times=times, name="tropomi",
                         units="mW/m2/nm/sr"),
        "truth_sif": _cube(sif, ["SIF743"], fine, times=times, name="truth_sif",
                           units="mW/m2/nm/sr"),
    }  # fmt: skip
    descriptions = {
        "modis": "MODIS-like 16-day NDVI and EVI at 1 km, 8 periods from 2019-05-09",
        "tropomi": "TROPOMI-like SIF743 at 5 km: the 5x5 area average of truth_sif plus noise "
        "(std 0.005)",
        "truth_sif": "SIF743 at 1 km driven by vegetation: fPAR(NDVI)^1.5 x seasonal APAR x "
        "neighbourhood vegetation",
    }
    return Scene(cubes, recipe="downscale", seed=0, descriptions=descriptions)


def _downscale_hard(rng: np.random.Generator, size: int) -> Scene:
    """Coarse labels over partial flight-track footprints of 100-pixel tiles; heavy-tailed SIF."""
    tile = 100  # 3 km tiles of 30 m pixels, as airborne SIF campaigns are gridded
    n = _round_up(size, tile)
    fine = _geobox(330000.0, 4450000.0, n, 30.0, "EPSG:32616")  # central Illinois, UTM 16N
    coarse = _geobox(330000.0, 4450000.0, n // tile, tile * 30.0, "EPSG:32616")
    land = L.make_landscape(rng, n, towns=2, relief=25.0, base_elevation=200.0, lakes=1)
    fields = L.parcels(rng, n, 25.0)
    count = int(fields.max()) + 1
    kind = rng.choice(3, size=count, p=[0.45, 0.35, 0.2])[fields]  # corn, soybean, other
    crop = (kind < 2) & (land.forest < 0.5)
    # Field vigour is log-normal (irrigation, soils, management), so SIF has a long right tail
    # while NDVI saturates over the most vigorous fields.
    vigor = np.exp(0.5 * rng.standard_normal(count))[fields]
    vigor = vigor * np.exp(0.15 * L.smooth_noise(rng, (n, n), 2.0))
    vigor = vigor * np.exp(0.25 * L.smooth_noise(rng, (n, n), n / 3))  # soils and rain by region
    urban = land.urban(0)
    ground = np.clip(1.0 - land.water - urban, 0.0, 1.0)
    quantum = np.where(crop, np.where(kind == 0, 1.35, 1.0), 0.75)  # C4 corn yields most
    doys = [167, 183, 199, 215]
    times = [pd.Timestamp(2016, 1, 1) + pd.Timedelta(days=d - 1) for d in doys]
    vi, sif = [], []
    for doy in doys:
        corn = 0.1 + 0.9 * np.exp(-0.5 * ((doy - 200.0) / 28.0) ** 2)
        soy = 0.1 + 0.9 * np.exp(-0.5 * ((doy - 222.0) / 28.0) ** 2)
        green = np.where(crop, np.where(kind == 0, corn, soy), land.greenness(doy))
        lai = 4.0 * green * np.where(crop, vigor, np.sqrt(vigor))
        cover = 1.0 - np.exp(-0.5 * lai)
        fr = {"water": land.water, "urban": urban, "vegetation": ground * cover,
              "soil": ground * (1.0 - cover)}  # fmt: skip
        blue, red, nir = L.reflectance(fr, [1, 3, 4], rng, noise=0.006)
        vi.append(np.stack([(nir - red) / (nir + red),
                            2.5 * (nir - red) / (nir + 6.0 * red - 7.5 * blue + 1.0)]))  # fmt: skip
        apar = 0.9 + 0.1 * np.cos(2 * np.pi * (doy - 180) / 365)
        sif.append(0.25 * quantum * apar * lai * ground)
    sif = np.stack(sif)[:, None].astype(np.float32)
    # Each tile is observed along a few flight tracks covering 10-30 % of it on each date; its
    # coarse label is the mean of the fine SIF over that footprint only.
    cells = n // tile
    footprint = np.zeros((len(doys), 1, n, n), dtype=bool)
    for t in range(len(doys)):
        for i in range(cells):
            for j in range(cells):
                track = L.footprint_tracks(rng, tile, float(rng.uniform(0.12, 0.28)))
                footprint[t, 0, i * tile : (i + 1) * tile, j * tile : (j + 1) * tile] = track
    weights = footprint.astype(np.float64)
    label = L.block_mean(sif * weights, tile) / L.block_mean(weights, tile)
    observed = np.where(footprint, sif, np.nan)
    cubes = {
        "modis": _cube(np.stack(vi), ["NDVI", "EVI"], fine, times=times, name="modis"),
        "cdl": _cube(np.stack([crop & (kind == 0), crop & (kind == 1)]), ["corn", "soybean"],
                     fine, name="cdl"),
        "tropomi": _cube(label, ["SIF743"], coarse, times=times, name="tropomi",
                         units="mW/m2/nm/sr"),
        "footprint": _cube(weights, ["weight"], fine, times=times, name="footprint"),
        "truth_sif": _cube(sif, ["SIF743"], fine, times=times, name="truth_sif",
                           units="mW/m2/nm/sr"),
        "truth_sif_observed": _cube(observed, ["SIF743"], fine, times=times,
                                    name="truth_sif_observed", units="mW/m2/nm/sr"),
    }  # fmt: skip
    descriptions = {
        "modis": "NDVI and EVI at 30 m (Landsat-like; the key is the standard scene's), 4 dates "
        "from 2016-06-15 every 16 days: NDVI saturates over the most vigorous fields",
        "cdl": "crop-type map at 30 m (0/1): corn and soybean fields; corn (C4) yields more SIF "
        "for the same greenness",
        "tropomi": "coarse SIF743 per 3 km tile (100 x 100 px, not a power of 2) and date: the "
        "mean of truth_sif over the tile's footprint only (10-30 % of the tile), not over the tile",
        "footprint": "per date at 30 m: 1 where the tile's coarse label was observed (one to three "
        "parallel flight tracks with gaps), 0 elsewhere; the weights of the coarse labels",
        "truth_sif": "SIF743 at 30 m: crop-specific yield x APAR x log-normal field vigour, so the "
        "target is heavy-tailed (bright outlier fields) and varies field by field",
        "truth_sif_observed": "truth_sif on the footprint, NaN elsewhere (like airborne fine SIF: "
        "for evaluation only, never for coarse-supervised training)",
    }
    return Scene(cubes, recipe="downscale", seed=0, descriptions=descriptions)


#: The old name of :data:`SCENES`.
RECIPES = SCENES


def synthetic_scene(
    recipe: str, *, seed: int = 0, size: int = 256, difficulty: str = "standard"
) -> Scene:
    """Generate the synthetic scene of a recipe, with its truth.

    Parameters
    ----------
    recipe : str
        Which scene: a name of :data:`SCENES` (``"builtup"``, ``"nightlights"``,
        ``"cloudmask"``, ``"water"``, ``"downscale"``: each workflow's sources; see each scene's
        ``descriptions`` for every key).
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same scene.
    size : int
        Pixels along each side of the finest grid, rounded up to a multiple of the recipe's
        coarsest aggregation factor (10 for ``builtup``, 16 for ``nightlights``, 5 for
        ``downscale``) so that coarse pixels cover whole fine blocks.
    difficulty : {"standard", "hard"}
        ``"standard"`` (the default, unchanged) or ``"hard"``: scenes that fail the way real data
        fails, for every scene. Hard ``downscale`` is
        30 m / 3 km (tiles of 100 px, size rounded up to a multiple of 100) with each coarse
        label the mean of a heavy-tailed fine SIF over a flight-track footprint of 10-30 % of
        its tile (extra keys ``footprint``, ``cdl``, ``truth_sif_observed``); hard
        ``nightlights`` joins four cities, one per quadrant, whose lights differ in brightness
        scale by 10x or more (size a multiple of 32; extra keys ``region``,
        ``truth_city_scale``); hard ``water`` has smooth wet soil and radar shadow as dark as
        water in SAR, wind-roughened water, and clouds left in the optical composite with a
        ``QA_PIXEL`` band (extra keys ``truth_dark_land``, ``truth_cloud``); hard ``cloudmask``
        and ``builtup`` are the standard scenes with per-date brightness shifts and no-data
        swaths (NaN, QA fill), and VIIRS stray-light months for ``builtup``. Each scene's
        ``descriptions`` say what is hard.

    Returns
    -------
    Scene
        A dict of eager float32 cubes with dims ``(time, band, y, x)`` (``(band, y, x)`` for
        static layers), NaN nodata, a ``band`` coordinate and the CRS on ``spatial_ref``. Keys
        starting with ``truth_`` are the truth.

    Examples
    --------
    >>> from xfusion.datasets import synthetic_scene
    >>> scene = synthetic_scene("downscale", size=40)
    >>> sorted(scene)
    ['modis', 'tropomi', 'truth_sif']
    >>> scene["tropomi"].sizes["x"] * 5 == scene["truth_sif"].sizes["x"]
    True
    >>> scene["modis"].rio.crs.to_epsg()
    32615
    >>> hard = synthetic_scene("downscale", size=100, difficulty="hard")
    >>> sorted(hard)
    ['cdl', 'footprint', 'modis', 'tropomi', 'truth_sif', 'truth_sif_observed']
    >>> 0.1 <= float(hard["footprint"].mean()) <= 0.3
    True
    """
    if recipe not in _BUILDERS:
        raise InputError(f"unknown recipe {recipe!r}; expected one of {sorted(_BUILDERS)}")
    if not isinstance(size, int | np.integer) or isinstance(size, bool) or size < 16:
        raise InputError(f"size must be an integer >= 16 pixels; got {size!r}")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise InputError(f"seed must be an integer; got {seed!r}")
    hard = [k for k, b in _BUILDERS.items() if "difficulty" in inspect.signature(b).parameters]
    if difficulty not in ("standard", "hard") or (difficulty == "hard" and recipe not in hard):
        raise InputError(
            f"difficulty must be 'standard' or 'hard' (scenes with a hard version: {hard}); "
            f"got {difficulty!r} for {recipe!r}"
        )
    extra = {"difficulty": difficulty} if difficulty != "standard" else {}
    scene = _BUILDERS[recipe](np.random.default_rng(int(seed)), int(size), **extra)
    scene.seed = int(seed)
    return scene
