"""A synthetic landscape in pixel units: pure numpy/scipy, no xarray.

Everything here works on 2-D arrays of one shape ``(n, n)`` and a ``numpy.random.Generator``; the
scene builders in :mod:`xfusion.datasets.synthetic` turn the fields into georeferenced cubes.
Feature sizes scale with ``n`` so small test scenes keep the same structure as large ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Surface reflectance (0..1) of each land-cover endmember at the centre wavelength of the generic
# bands below. Values follow typical library spectra: clear water is dark beyond the red edge,
# green vegetation jumps at the NIR plateau, soil rises steadily into the SWIR, built-up surfaces
# are flat and moderately bright, clouds are bright and grey.
BANDS = ("coastal", "blue", "green", "red", "nir", "swir1", "swir2")
ENDMEMBERS: dict[str, np.ndarray] = {
    "water": np.array([0.070, 0.060, 0.050, 0.030, 0.020, 0.010, 0.005]),
    "vegetation": np.array([0.030, 0.035, 0.075, 0.040, 0.420, 0.210, 0.095]),
    "soil": np.array([0.100, 0.120, 0.160, 0.200, 0.270, 0.330, 0.280]),
    "urban": np.array([0.130, 0.140, 0.150, 0.160, 0.200, 0.240, 0.220]),
    "cloud": np.array([0.620, 0.600, 0.600, 0.600, 0.590, 0.450, 0.300]),
}
# Land surface temperature (K) of each endmember on a warm afternoon.
TEMPERATURE = {"water": 293.0, "vegetation": 299.0, "soil": 306.0, "urban": 311.0}
# Linear backscatter (sigma0) of each endmember for L-band HH and HV: specular water is dark,
# double-bounce built-up is bright, volume scattering makes vegetation bright in HV.
BACKSCATTER = {
    "water": (0.005, 0.0008),
    "vegetation": (0.08, 0.025),
    "soil": (0.04, 0.006),
    "urban": (0.60, 0.060),
}


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to zero mean and unit standard deviation.

    The filter is applied in the Fourier domain (periodic boundaries), so the cost does not grow
    with ``sigma``.
    """
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * transfer, s=shape)
    return (field - field.mean()) / (field.std() + 1e-12)


def block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor``×``factor`` blocks of the last two axes (exact sizes)."""
    *lead, h, w = arr.shape
    return arr.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def _polyline_distance(shape: tuple[int, int], lines: list[np.ndarray]) -> np.ndarray:
    """Distance in pixels from every pixel to the nearest of the polylines ((k, 2) row/col)."""
    mask = np.zeros(shape, dtype=bool)
    for pts in lines:
        seg = np.diff(pts, axis=0)
        steps = np.maximum(np.ceil(np.hypot(seg[:, 0], seg[:, 1]) * 2).astype(int), 1)
        dense = np.concatenate(
            [
                p + np.linspace(0, 1, s, endpoint=False)[:, None] * d
                for p, d, s in zip(pts[:-1], seg, steps, strict=True)
            ]
            + [pts[-1:]]
        )
        rc = np.rint(dense).astype(int)
        ok = (rc[:, 0] >= 0) & (rc[:, 0] < shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < shape[1])
        mask[rc[ok, 0], rc[ok, 1]] = True
    if not mask.any():
        return np.full(shape, np.inf)
    return ndimage.distance_transform_edt(~mask)


@dataclass
class Landscape:
    """The static fields of a synthetic landscape and its settlement history.

    Attributes
    ----------
    settlement : ndarray (stages, n, n)
        Settlement intensity in [0, 1] at each growth stage (stage 0 is the earliest).
    road : ndarray (n, n)
        Road cover fraction in [0, 1].
    water : ndarray (n, n)
        Open-water cover fraction in [0, 1] (river and lakes, soft 1-pixel edges).
    forest, crop : ndarray (n, n)
        Fractions of the vegetated land that are forest (weak phenology) and cropland (strong).
    dem : ndarray (n, n)
        Elevation in metres.
    hand : ndarray (n, n)
        Height above the nearest drainage (river or lake pixel) in metres, >= 0.
    """

    settlement: np.ndarray
    road: np.ndarray
    water: np.ndarray
    forest: np.ndarray
    crop: np.ndarray
    dem: np.ndarray
    hand: np.ndarray

    def urban(self, stage: int) -> np.ndarray:
        """Built-up cover fraction at ``stage``: settlement plus roads, never over water."""
        built = 1.0 - (1.0 - 0.9 * self.settlement[stage]) * (1.0 - 0.7 * self.road)
        return np.clip(built, 0.0, 1.0) * (1.0 - self.water)

    def greenness(self, doy: float) -> np.ndarray:
        """Green vegetation density of the vegetated land on day of year ``doy`` (0..1).

        Cropland peaks sharply in late summer; forest stays green with a weak seasonal swing;
        the rest is grassland with a moderate cycle.
        """
        crop_green = 0.15 + 0.8 * np.exp(-0.5 * ((doy - 215.0) / 40.0) ** 2)
        forest_green = 0.82 + 0.08 * np.cos(2 * np.pi * (doy - 200.0) / 365.0)
        grass_green = 0.35 + 0.25 * np.cos(2 * np.pi * (doy - 190.0) / 365.0)
        grass = np.clip(1.0 - self.forest - self.crop, 0.0, 1.0)
        return self.forest * forest_green + self.crop * crop_green + grass * grass_green

    def fractions(self, stage: int, doy: float) -> dict[str, np.ndarray]:
        """Cover fractions (water, urban, vegetation, soil) summing to one in every pixel."""
        water = self.water
        urban = self.urban(stage)
        land = np.clip(1.0 - water - urban, 0.0, 1.0)
        vegetation = land * self.greenness(doy)
        return {"water": water, "urban": urban, "vegetation": vegetation, "soil": land - vegetation}


def make_landscape(
    rng: np.random.Generator,
    n: int,
    *,
    stages: int = 1,
    towns: int = 4,
    relief: float = 300.0,
    base_elevation: float = 1200.0,
    lakes: int = 2,
) -> Landscape:
    """Generate a landscape of ``n``×``n`` pixels with ``stages`` settlement growth stages."""
    shape = (n, n)
    rows, cols = np.mgrid[0:n, 0:n].astype(float)

    # River: a meander across the scene from west to east, 1.5-3 % of the width wide.
    x = np.linspace(-0.05 * n, 1.05 * n, 200)
    wander = np.cumsum(rng.normal(0, 0.01 * n, x.size))
    wander -= np.linspace(wander[0], wander[-1], x.size)
    y = (
        rng.uniform(0.3, 0.7) * n
        + 0.08 * n * np.sin(2 * np.pi * x / (rng.uniform(0.35, 0.6) * n) + rng.uniform(0, 6.3))
        + wander
    )
    river_line = np.stack([y, x], axis=1)
    d_river = _polyline_distance(shape, [river_line])
    half_width = max(0.012 * n, 1.2)
    water = np.clip(half_width + 0.5 - d_river, 0.0, 1.0)

    # Terrain: multi-scale relief tilted towards the river, with a valley carved along it.
    dem = base_elevation + relief * (
        0.6 * smooth_noise(rng, shape, n / 8) + 0.3 * smooth_noise(rng, shape, n / 25)
    )
    dem += relief * 0.8 * np.tanh(d_river / (0.15 * n))
    # Lakes sit in the lowlands: centres drawn among the lowest pixels away from the river.
    low = np.argsort((dem + 1e3 * (d_river < 0.1 * n)).ravel())[: max(n * n // 20, 1)]
    for _ in range(lakes):
        r0, c0 = np.unravel_index(rng.choice(low), shape)
        a, b = rng.uniform(0.03, 0.07) * n, rng.uniform(0.02, 0.05) * n
        theta = rng.uniform(0, np.pi)
        dr, dc = rows - r0, cols - c0
        u = (dr * np.cos(theta) + dc * np.sin(theta)) / a
        v = (-dr * np.sin(theta) + dc * np.cos(theta)) / b
        edge = (1.0 - np.sqrt(u**2 + v**2)) * min(a, b)  # ~ pixels inside the ellipse
        water = np.maximum(water, np.clip(edge + 0.5, 0.0, 1.0))
    wet = water > 0.5
    dem = np.where(wet, dem.min() - 5.0, dem)
    dem = ndimage.gaussian_filter(dem, 1.0)
    # HAND: elevation above the nearest drainage pixel (Euclidean nearest, a common proxy).
    _, (ir, ic) = ndimage.distance_transform_edt(~wet, return_indices=True)
    hand = np.clip(dem - dem[ir, ic], 0.0, None)
    hand[wet] = 0.0

    # Settlements: towns on dry land (preferably low, flat ground), each a cluster of gaussian
    # blobs; blobs are born at a stage and grow with every stage after it.
    candidates = np.flatnonzero((~wet).ravel() & (hand.ravel() < np.quantile(hand, 0.6)))
    centres = np.array(np.unravel_index(rng.choice(candidates, towns, replace=False), shape)).T
    settlement = np.zeros((stages, *shape))
    for t_idx, (r0, c0) in enumerate(centres):
        size = 1.0 if t_idx == 0 else rng.uniform(0.35, 0.7)  # the first town is the city
        n_blobs = int(4 + 10 * size)
        for _ in range(n_blobs):
            br = r0 + rng.normal(0, 0.05 * n * size)
            bc = c0 + rng.normal(0, 0.05 * n * size)
            sigma0 = rng.uniform(0.012, 0.03) * n * size + 0.7
            amp = rng.uniform(0.5, 1.0)
            born = 0 if rng.random() < 0.7 else rng.integers(0, stages)
            d2 = (rows - br) ** 2 + (cols - bc) ** 2
            for s in range(born, stages):
                sigma = sigma0 * (1.0 + 0.12 * (s - born))
                settlement[s] = 1.0 - (1.0 - settlement[s]) * (
                    1.0 - amp * np.exp(-0.5 * d2 / sigma**2)
                )
    # Roads: connect each town to its nearest predecessor, plus two roads leaving the scene.
    lines = []
    for i in range(1, towns):
        j = int(np.argmin(np.hypot(*(centres[:i] - centres[i]).T)))
        lines.append(_wiggly(rng, centres[i], centres[j], n))
    for _ in range(2):
        edge_pt = np.array([rng.uniform(0, n), rng.choice([-1.0, n + 1.0])])[rng.permutation(2)]
        lines.append(_wiggly(rng, centres[0], edge_pt, n))
    d_road = _polyline_distance(shape, lines)
    road = np.clip(1.0 - d_road / 1.0, 0.0, 1.0) * 0.8 * (1.0 - water)
    # Ribbon development along the roads, strongest near the towns.
    ribbon = 0.25 * np.exp(-d_road / 2.0) * ndimage.gaussian_filter(settlement[-1], n / 20)
    settlement = np.clip(settlement + ribbon[None] / max(ribbon.max(), 1e-6) * 0.25, 0.0, 1.0)
    settlement *= 1.0 - water

    # Vegetation: forest on the hills, cropland on the gentle lowlands.
    forest = np.clip(
        0.5 + 0.6 * smooth_noise(rng, shape, n / 15) + 0.8 * (hand / (hand.max() + 1e-6) - 0.4),
        0,
        1,
    )
    crop = np.clip(0.5 + 0.7 * smooth_noise(rng, shape, n / 20), 0.0, 1.0) * (1.0 - forest)
    f32 = np.float32
    return Landscape(
        settlement=settlement.astype(f32),
        road=road.astype(f32),
        water=water.astype(f32),
        forest=forest.astype(f32),
        crop=crop.astype(f32),
        dem=dem.astype(f32),
        hand=hand.astype(f32),
    )


def _wiggly(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Return a slightly winding polyline from ``a`` to ``b`` (row/col)."""
    t = np.linspace(0.0, 1.0, 12)[:, None]
    pts = a[None] * (1 - t) + b[None] * t
    normal = np.array([-(b - a)[1], (b - a)[0]]) / (np.hypot(*(b - a)) + 1e-9)
    offset = np.cumsum(rng.normal(0, 0.01 * n, t.shape[0]))
    offset -= np.linspace(offset[0], offset[-1], t.shape[0])
    return pts + offset[:, None] * normal[None]


def reflectance(
    fractions: dict[str, np.ndarray],
    bands: list[int],
    rng: np.random.Generator,
    *,
    noise: float = 0.01,
) -> np.ndarray:
    """Linear mixture of endmember spectra for generic band indices, with sensor noise.

    Returns an array ``(len(bands), n, n)`` of surface reflectance; noise is 3 % multiplicative
    plus ``noise`` additive (both gaussian).
    """
    shape = (len(bands), *next(iter(fractions.values())).shape)
    out = np.zeros(shape, dtype=np.float32)
    for name, frac in fractions.items():
        out += ENDMEMBERS[name][bands][:, None, None].astype(np.float32) * frac[None]
    out *= 1.0 + np.float32(0.03) * rng.standard_normal(shape, dtype=np.float32)
    if noise:
        out += np.float32(noise) * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(out, np.float32(0.0005), np.float32(1.2))


@dataclass
class Clouds:
    """Cloud layers of one acquisition (all ``(n, n)``).

    ``opacity`` is the total cloud opacity in [0, 1] (thick clouds and thin cirrus), ``thick`` the
    opacity of the thick cumulus layer alone, ``cirrus`` of the thin cirrus layer alone, ``shadow``
    a boolean mask of cloud shadows on the ground (not under a cloud).
    """

    opacity: np.ndarray
    thick: np.ndarray
    cirrus: np.ndarray
    shadow: np.ndarray

    # The truth: anything above 5 % opacity obscures the surface measurably.
    def truth(self) -> np.ndarray:
        """Boolean cloud truth: every pixel with a visible cloud, however thin."""
        return self.opacity > 0.05

    def thin(self) -> np.ndarray:
        """Boolean mask of visible clouds that are thin (opacity below 0.4)."""
        return self.truth() & (self.opacity < 0.4)


def make_clouds(
    rng: np.random.Generator, n: int, cover: float, *, cirrus_cover: float = 0.0
) -> Clouds:
    """Clouds covering about ``cover`` of the scene with thick cumulus, plus thin cirrus.

    Shadows are the thick clouds displaced by a fixed sun/view geometry offset.
    """
    shape = (n, n)
    thick = np.zeros(shape)
    if cover > 0:
        field = smooth_noise(rng, shape, n / 14)
        thr = np.quantile(field, 1.0 - cover)
        thick = np.clip((field - thr) / 0.6, 0.0, 1.0) ** 0.8
    cirrus = np.zeros(shape)
    if cirrus_cover > 0:
        field = smooth_noise(rng, shape, n / 6)
        thr = np.quantile(field, 1.0 - cirrus_cover)
        cirrus = 0.3 * np.clip((field - thr) / 1.0, 0.0, 1.0)
    opacity = 1.0 - (1.0 - thick) * (1.0 - cirrus)
    shift = (round(0.04 * n) + 1, -round(0.03 * n) - 1)
    shadow = np.roll(thick > 0.3, shift, axis=(0, 1)) & (opacity <= 0.05)
    return Clouds(opacity=opacity, thick=thick, cirrus=cirrus, shadow=shadow)


def apply_clouds(surface: np.ndarray, clouds: Clouds, bands: list[int]) -> np.ndarray:
    """Top-of-atmosphere-like reflectance: surface blended with cloud spectra, shadows darkened."""
    cloud = ENDMEMBERS["cloud"][bands][:, None, None].astype(np.float32)
    opacity = clouds.opacity[None].astype(np.float32)
    out = surface * (1.0 - opacity) + cloud * opacity
    return np.where(clouds.shadow[None], out * np.float32(0.35), out)


def nightlight_radiance(landscape: Landscape, stage: int) -> np.ndarray:
    """Fine-resolution night-time radiance (nW/cm²/sr) of a landscape stage.

    Light depends on the neighbourhood, not on the pixel alone: the settlement intensity smoothed
    over a few pixels (glow of the built-up area) raised to a power (dense centres are much
    brighter), plus street lighting on roads near towns, nothing over water.
    """
    n = landscape.water.shape[0]
    urban = landscape.settlement[stage]
    near = ndimage.gaussian_filter(urban, max(n / 60, 1.0))
    town = ndimage.gaussian_filter(urban, max(n / 20, 2.0))
    rad = 0.4 + 60.0 * near**1.6 + 12.0 * landscape.road * np.clip(town * 3.0, 0.0, 1.0)
    return rad * (1.0 - 0.9 * landscape.water)


# ---------------------------------------------------------------------------------------------
# What makes real scenes hard: partial footprints, field parcels, smooth dark surfaces, terrain


def footprint_tracks(rng: np.random.Generator, side: int, fraction: float) -> np.ndarray:
    """Boolean ``(side, side)`` footprint of parallel sounding tracks covering ``fraction``.

    One to three parallel straight tracks at a random heading, each with up to two gaps along
    it, like an airborne spectrometer's flight lines over a tile. The track width is found by
    bisection so that the covered share matches ``fraction`` to within a pixel row.
    """
    rows, cols = np.mgrid[0:side, 0:side].astype(float) + 0.5 - side / 2.0
    theta = rng.uniform(0.0, np.pi)
    across = rows * np.cos(theta) - cols * np.sin(theta)
    along = rows * np.sin(theta) + cols * np.cos(theta)
    across = across + 0.02 * side * np.sin(2 * np.pi * along / side + rng.uniform(0, 6.3))
    dist = np.full((side, side), np.inf)
    for offset in rng.uniform(-0.4, 0.4, int(rng.integers(1, 4))) * side:
        d = np.abs(across - offset)
        for _ in range(int(rng.integers(0, 3))):
            start, length = rng.uniform(-0.5, 0.4) * side, rng.uniform(0.05, 0.15) * side
            d[(along >= start) & (along < start + length)] = np.inf
        dist = np.minimum(dist, d)
    lo, hi = 0.0, float(side)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (dist <= mid).mean() < fraction else (lo, mid)
    return dist <= hi


def parcels(rng: np.random.Generator, n: int, field: float) -> np.ndarray:
    """Integer labels ``(n, n)`` of Voronoi field parcels about ``field`` pixels across."""
    count = max(int((n / field) ** 2), 1)
    seeds = np.zeros((n, n), dtype=bool)
    seeds.flat[rng.choice(n * n, count, replace=False)] = True
    ids = np.full((n, n), -1, dtype=np.int64)
    ids[seeds] = np.arange(int(seeds.sum()))
    _, (ir, ic) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    return ids[ir, ic]


def height_above_drainage(dem: np.ndarray, wet: np.ndarray) -> np.ndarray:
    """HAND: elevation above the nearest (Euclidean) drainage pixel, 0 on the drainage itself."""
    _, (ir, ic) = ndimage.distance_transform_edt(~wet, return_indices=True)
    hand = np.clip(dem - dem[ir, ic], 0.0, None)
    hand[wet] = 0.0
    return hand


def radar_terrain(dem: np.ndarray, res: float, incidence: float = 35.0) -> tuple[np.ndarray, ...]:
    """Terrain effects on side-looking radar that looks east (range along +x).

    Returns ``(gain, shadow)``: the backscatter gain of the local incidence angle (cosine-squared
    law relative to flat ground, so slopes facing away from the sensor darken) and the geometric
    radar shadow (a pixel hidden from the sensor by terrain nearer in range).
    """
    tan_inc = np.tan(np.radians(incidence))
    slope_x = np.gradient(dem, res, axis=1)  # rise per metre eastwards: > 0 faces the sensor
    local = np.radians(incidence) - np.arctan(slope_x)
    gain = np.clip(np.cos(local), 0.0, None) ** 2 / np.cos(np.radians(incidence)) ** 2
    # A ray towards the sensor rises by 1/tan(incidence) per metre of ground nearer in range.
    height = dem + np.arange(dem.shape[1])[None, :] * res / tan_inc
    horizon = np.maximum.accumulate(height, axis=1)
    shadow = np.zeros(dem.shape, dtype=bool)
    shadow[:, 1:] = horizon[:, :-1] > height[:, 1:] + 1e-6
    return gain, shadow | (local >= np.pi / 2)


def elevation_product(
    rng: np.random.Generator, dem: np.ndarray, wet: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """DEM and HAND as a global elevation product delivers them, not as the truth.

    Water surfaces take the elevation of their nearest bank (a DEM sees the water surface, not the
    bed), the DEM carries correlated and random errors of a metre or two, and the drainage that
    HAND refers to is the river's centreline, not today's water extent: lakes and flooded ground
    sit metres above it, and neither the DEM nor HAND marks the water exactly.
    """
    from skimage.morphology import skeletonize

    _, (ir, ic) = ndimage.distance_transform_edt(wet, return_indices=True)
    surface = dem[ir, ic]  # every wet pixel takes its nearest dry neighbour's height
    error = 1.5 * smooth_noise(rng, dem.shape, 3.0) + 0.5 * rng.standard_normal(dem.shape)
    observed = surface + error
    labels, count = ndimage.label(wet)
    if count == 0:
        return observed, np.clip(observed - observed.min(), 0.0, None)
    river = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    drainage = skeletonize(river)
    return observed, height_above_drainage(observed, drainage)


def swath_gap(rng: np.random.Generator, n: int, cover: float) -> np.ndarray:
    """Boolean ``(n, n)`` no-data area beyond a straight swath edge, about ``cover`` of the scene.

    Like the edge of an orbit's swath across a tiled product: everything on one side of a line at
    a random, slightly tilted heading has no data.
    """
    rows, cols = np.mgrid[0:n, 0:n].astype(float)
    theta = rng.uniform(-0.3, 0.3) + rng.choice([0.0, np.pi / 2, np.pi, 1.5 * np.pi])
    along = (rows - n / 2) * np.sin(theta) + (cols - n / 2) * np.cos(theta)
    return along > np.quantile(along, 1.0 - cover)


def scan_line_gaps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Boolean ``(n, n)`` wedge-shaped stripes of missing scan lines (Landsat 7 SLC-off-like).

    Stripes about every 15 rows, tilted a little, zero width along the centre column and about
    two pixels wide at the east and west edges.
    """
    rows, cols = np.mgrid[0:n, 0:n].astype(float)
    phase = rng.uniform(0.0, 15.0)
    tilted = rows + 0.12 * (cols - n / 2) + phase
    width = 2.2 * np.abs(cols - n / 2) / (n / 2)
    return np.mod(tilted, 15.0) < width
