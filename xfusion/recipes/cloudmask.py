"""Multitemporal cloud masking: forecast the clear background from earlier images, cluster the rest.

The recipe follows the multitemporal cloud-masking workflow for Landsat 8: an image is stacked
with its ``max_lags`` most recent earlier clear images (:func:`xfusion.lags`); a linear ridge and
an RBF kernel ridge model forecast the cloud-free image from its two most recent lags; the
difference between the image and the forecast is clustered with k-means (3 and 5 clusters,
ordered by brightness), and the clusters that brighten the scene are labelled cloud. The result
is compared with the truth (synthetic scenes) and with the product's own QA cloud flags.

The forecasting models are trained on two sets of pixels, weighted as in the workflow:

* the *lag set* (all pixels of the clear lags): inputs ``(lag_2, lag_3)``, output ``lag_1``,
  weight ``β/n`` for its ``n`` pixels;
* the *image set* (pixels of the image outside the QA cloud mask grown by ``dilation_radius``):
  inputs ``(lag_1, lag_2)``, output the image, weight ``(1 − β)/m`` for its ``m`` pixels.

The loss ``β/n‖PₓW − P_y‖² + (1−β)/m‖EₓW − E_y‖² + λ‖W‖²`` is then ``Ridge(alpha=λ)`` (or the
Nyström kernel ridge) fitted on both sets with those sample weights. Pixels of a random set of
tiles (``holdout_fraction``) are kept out of training; forecast errors are measured there.

Run it with ``run(Config())`` (offline, on a synthetic scene written as a local STAC catalog) or
``xfusion run cloudmask --config cloudmask.toml``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import dask
import dask.array as dsa
import numpy as np
import xarray as xr

import xfusion.accessor  # noqa: F401  (registers ``.xf``)
from xfusion.errors import BandError, ConfigError, InputError
from xfusion.grids import grid as make_grid
from xfusion.preprocess.lags import cloud_fraction
from xfusion.recipes._base import (
    RecipeConfig,
    RecipeResult,
    prepare_out_dir,
    write_cog,
    write_json,
    write_outputs,
)

__all__ = ["Config", "real_sources", "run"]

log = logging.getLogger(__name__)

_SOURCES = ("synthetic", "stac", "ee")
_MODELS = ("ridge", "kernel")
#: Class values of the cloud-mask maps.
CLEAR, CLOUD, SHADOW = 0, 1, 2


@dataclasses.dataclass
class Config(RecipeConfig):
    """Configuration of the multitemporal cloud-masking recipe.

    The defaults run offline in a few seconds on a 64×64 synthetic Landsat-like series
    (:func:`xfusion.datasets.synthetic_scene` ``("cloudmask")``) written as a local STAC catalog.
    :func:`real_sources` gives the fields that switch to the workflow's real data.

    Parameters
    ----------
    out_dir : str
        Output folder.
    seed : int
        Seed of the synthetic scene, the held-out tiles, the Nyström landmarks and k-means.
    source : {"synthetic", "stac", "ee"}
        Where the image series comes from.
    resume : bool
        Continue the ``outputs.zarr.partial`` of an interrupted run with the same
        configuration rather than starting over (see :mod:`xfusion.recipes._base`).
    size : int
        Side of the synthetic scene in pixels (``source="synthetic"`` only).
    chunks : int
        Spatial chunk size (pixels) of the opened cube.
    bands : tuple of str
        Reflectance bands used for forecasting and clustering (Landsat 8 B1…B7).
    qa_band : str
        The product's quality band (Landsat Collection-2 ``QA_PIXEL``).
    qa_cloud_bits : tuple of int
        ``qa_band`` bits of the product's cloud mask (2 cirrus, 3 cloud): the mask grown by
        ``dilation_radius`` excludes image pixels from training, and it is the mask our result
        is compared with.
    qa_lag_bits : tuple of int
        ``qa_band`` bits that make a pixel cloudy when choosing clear lags (1 dilated cloud,
        2 cirrus, 3 cloud, 4 shadow).
    max_cloud : float
        Largest fraction of ``qa_lag_bits`` pixels of a clear (lag) image.
    max_lags : int
        Number of earlier clear images stacked with the image (the workflow uses 3; at least 3).
    target : str, optional
        ISO date of the image to mask; by default the cloudiest image (by its QA cloud flags)
        that has ``max_lags`` earlier clear images.
    beta : float
        β, the weight of the lag set against the image set (0..1).
    ridge_alpha : float
        λ of the linear ridge model.
    kernel_alpha : float
        λ of the RBF kernel ridge model.
    kernel_gamma : float
        γ of the RBF kernel ``exp(−γ‖x − x'‖²)`` (reflectance units).
    kernel_sampling_factor : float
        Fraction of the training pixels used as Nyström landmarks (the workflow's sampling
        factor).
    dilation_radius : int
        Radius (pixels) by which the QA cloud mask is grown before it excludes image pixels from
        training.
    holdout_fraction : float
        Fraction of ``holdout_tile``-sized tiles kept out of training; forecast errors are
        measured on their clear pixels.
    holdout_tile : int
        Side of the held-out tiles in pixels.
    forecast_model : {"kernel", "ridge"}
        Whose forecast the k-means differences are computed from.
    n_clusters : tuple of int
        k-means cluster counts; the first gives the main map.
    cloud_threshold : float
        A cluster is cloud when its centre brightens the mean of the visible bands (B1…B4, or
        every band when those are absent) by more than this (reflectance), shadow when it darkens
        them by more.
    kmeans_sample : int
        Pixels sampled to fit k-means (it is then applied to every pixel).
    kmeans_init : int
        k-means restarts (scikit-learn ``n_init``); the best is kept.
    persist : bool
        Keep the target image and its lags in (distributed) memory once chosen, so the sources
        are read once rather than by every fitting step.
    scale_factor, scale_offset : float
        Applied to the reflectance bands after opening (``value * factor + offset``); 1 and 0
        for top-of-atmosphere reflectance, ``2.75e-5`` and ``-0.2`` for Collection-2 Level-2
        digital numbers read without STAC ``raster:bands`` scaling.
    ee_collection : str
        Earth Engine collection (``source="ee"``).
    stac_items : str
        STAC ItemCollection, Collection or Catalog JSON file (e.g. a saved ``pystac-client``
        search of the ``landsat-c2-l2`` collection; ``source="stac"``).
    stac_assets : tuple of str
        Asset keys read as ``bands`` followed by ``qa_band``, in that order (``source="stac"``).
    bounds : tuple of float
        ``(left, bottom, right, top)`` of the region in ``crs`` (real sources).
    crs : str
        CRS of the grid (real sources).
    resolution : float
        Pixel size in ``crs`` units (real sources).
    start, end : str
        Date range of the series (real sources).
    """

    out_dir: str = "xfusion-out/cloudmask"
    SOURCE_KEYS: ClassVar = {"stac": ("stac_items",)}
    size: int = 64
    chunks: int = 32
    bands: tuple[str, ...] = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
    qa_band: str = "QA_PIXEL"
    qa_cloud_bits: tuple[int, ...] = (2, 3)
    qa_lag_bits: tuple[int, ...] = (1, 2, 3, 4)
    max_cloud: float = 0.01
    max_lags: int = 3
    target: str | None = None
    beta: float = 0.5
    ridge_alpha: float = 1e-6
    kernel_alpha: float = 1e-3
    kernel_gamma: float = 10.0
    kernel_sampling_factor: float = 0.02
    dilation_radius: int = 3
    holdout_fraction: float = 0.25
    holdout_tile: int = 8
    forecast_model: str = "kernel"
    n_clusters: tuple[int, ...] = (3, 5)
    cloud_threshold: float = 0.02
    kmeans_sample: int = 20000
    kmeans_init: int = 4
    persist: bool = True
    scale_factor: float = 1.0
    scale_offset: float = 0.0
    ee_collection: str = "LANDSAT/LC08/C02/T1_TOA"
    stac_items: str = ""
    stac_assets: tuple[str, ...] = (
        "coastal",
        "blue",
        "green",
        "red",
        "nir08",
        "swir16",
        "swir22",
        "qa_pixel",
    )
    bounds: tuple[float, ...] = (714720.0, 4363080.0, 735390.0, 4380300.0)
    crs: str = "EPSG:32630"
    resolution: float = 30.0
    start: str = "2015-04-01"
    end: str = "2015-06-24"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check value ranges; raise :class:`~xfusion.errors.ConfigError` naming the field."""
        checks = [
            (self.source in _SOURCES, "source", f"one of {_SOURCES}"),
            (self.forecast_model in _MODELS, "forecast_model", f"one of {_MODELS}"),
            (self.max_lags >= 3, "max_lags", ">= 3 (two lags as inputs, one as output)"),
            (0.0 <= self.beta <= 1.0, "beta", "between 0 and 1"),
            (0.0 < self.holdout_fraction < 1.0, "holdout_fraction", "strictly between 0 and 1"),
            (self.holdout_tile >= 1, "holdout_tile", ">= 1"),
            (self.size >= 16, "size", ">= 16"),
            (self.chunks >= 8, "chunks", ">= 8"),
            (
                len(self.n_clusters) >= 1 and min(self.n_clusters) >= 2,
                "n_clusters",
                "one or more cluster counts >= 2",
            ),
            (0.0 < self.kernel_sampling_factor <= 1.0, "kernel_sampling_factor", "in (0, 1]"),
            (self.kernel_gamma > 0, "kernel_gamma", "> 0"),
            (self.ridge_alpha >= 0 and self.kernel_alpha >= 0, "ridge_alpha/kernel_alpha", ">= 0"),
            (self.dilation_radius >= 0, "dilation_radius", ">= 0"),
            (
                self.kmeans_sample >= max(self.n_clusters, default=2),
                "kmeans_sample",
                ">= the largest cluster count",
            ),
            (len(self.bands) >= 1, "bands", "at least one band"),
            (self.kmeans_init >= 1, "kmeans_init", ">= 1"),
            (len(self.bounds) == 4, "bounds", "(left, bottom, right, top)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(
                    f"config field {name!r} must be {expected}; got "
                    f"{getattr(self, name.split('/')[0], None)!r}"
                )
        if self.source == "stac" and len(self.stac_assets) != len(self.bands) + 1:
            raise ConfigError(
                f"stac_assets must name {len(self.bands) + 1} assets (the bands {self.bands} and "
                f"then {self.qa_band!r}); got {self.stac_assets}"
            )
        if self.source == "stac" and not self.stac_items:
            raise ConfigError("source='stac' needs stac_items (a STAC JSON file or URL)")


def real_sources() -> dict[str, dict[str, Any]]:
    """Config fields that run the workflow on real data, by source.

    ``"ee"``: Landsat 8 Collection-2 top-of-atmosphere reflectance on Earth Engine over the
    workflow's region near Valencia (Spain), the 2015 spring series up to the masked image of
    2015-06-23 (``LC08_199033_20150623``, the successor of ``LANDSAT/LC8_L1T_TOA_FMASK``
    ``LC81990332015174LGN00``). ``"stac"``: Landsat Collection-2 Level-2 surface reflectance
    from a STAC API (Microsoft Planetary Computer's ``landsat-c2-l2`` asset keys), saved as an
    ItemCollection file first.

    Examples
    --------
    >>> fields = real_sources()["ee"]
    >>> fields["ee_collection"]
    'LANDSAT/LC08/C02/T1_TOA'
    >>> Config(out_dir="out", **fields).source
    'ee'
    """
    region = {
        "bounds": (714720.0, 4363080.0, 735390.0, 4380300.0),
        "crs": "EPSG:32630",
        "resolution": 30.0,
        "start": "2015-04-01",
        "end": "2015-06-24",
        "target": "2015-06-23",
        "chunks": 512,
    }
    return {
        "ee": {
            "source": "ee",
            "ee_collection": "LANDSAT/LC08/C02/T1_TOA",
            "bands": ("B1", "B2", "B3", "B4", "B5", "B6", "B7"),
            "qa_band": "QA_PIXEL",
            "kernel_gamma": 0.01,
            "kernel_sampling_factor": 0.01,
            **region,
        },
        "stac": {
            "source": "stac",
            "stac_items": "landsat-c2-l2-valencia-2015.json",
            "stac_assets": (
                "coastal",
                "blue",
                "green",
                "red",
                "nir08",
                "swir16",
                "swir22",
                "qa_pixel",
            ),
            "bands": ("B1", "B2", "B3", "B4", "B5", "B6", "B7"),
            "qa_band": "QA_PIXEL",
            **region,
        },
    }


# ----------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------


def run(config: Config) -> RecipeResult:
    """Run the multitemporal cloud-masking recipe.

    Steps: open the series → choose the target image and its clear lags → fit the linear and
    kernel ridge background forecasts (computes) → forecast lazily → cluster the differences
    with k-means (fit on a sample, applied lazily) → metrics → write ``outputs.zarr``,
    ``cloudmask.tif`` (the main mask as a COG), PNG figures, ``metrics.json`` and ``model/``.

    This function computes: it fits models, evaluates metrics and writes files.

    Parameters
    ----------
    config : Config
        The configuration (the defaults run offline on a synthetic scene).

    Returns
    -------
    RecipeResult
        ``metrics`` (forecast RMSE on held-out clear pixels per model; accuracy, IoU and Cohen's
        κ of every mask against the truth and the QA mask; the QA mask's own agreement with the
        truth), ``cubes`` (image, forecasts, differences, masks) and the written paths.

    Examples
    --------
    >>> config = Config(out_dir="cloudmask-out", size=64, n_clusters=(3, 5))
    >>> config.forecast_model, config.max_lags
    ('kernel', 3)
    >>> result = run(config)  # doctest: +SKIP
    >>> result.metrics["accuracy"] > result.metrics["qa_accuracy"]  # doctest: +SKIP
    True
    """
    if not isinstance(config, Config):
        raise ConfigError(f"run needs a cloudmask Config; got {type(config).__name__}")
    config.validate()
    out = prepare_out_dir(config.out_dir, config=config)
    cube, truth = _open_source(config, out)
    stack = _prepare(cube, config)
    weights = _training_weights(stack, config)
    models = _fit_forecasts(stack, weights, config)
    forecasts = {name: _forecast(stack, model, config) for name, model in models.items()}
    differences = (stack["image"] - forecasts[config.forecast_model]).rename("differences")
    clusterings = _fit_clusters(differences, stack["image"], config)
    masks = _cloud_masks(differences, clusterings, config)
    cubes = {
        "image": stack["image"],
        "forecast_ridge": forecasts["ridge"],
        "forecast_kernel": forecasts["kernel"],
        "differences": differences,
        "cloudmask": masks,
        "qa_cloud": stack["qa_cloud"].astype(np.float32),
        "holdout": weights["holdout"].astype(np.float32),
    }
    if truth is not None:
        cubes.update(_target_truth(truth, stack["time"]))
    (computed,) = dask.compute(cubes)  # xf: computes every output cube once (small target image)
    cubes = {k: _plain(v) for k, v in computed.items()}
    metrics = _metrics(cubes, config, stack, weights)
    return _write_outputs(out, config, cubes, metrics, models, clusterings)


# ----------------------------------------------------------------------------------------------
# steps
# ----------------------------------------------------------------------------------------------


def _open_source(config: Config, out: Path) -> tuple[xr.DataArray, dict[str, xr.DataArray] | None]:
    """Open the series as a lazy cube (bands, then the QA band) and the truth where known."""
    import xfusion as xf

    band_names = [*config.bands, config.qa_band]
    chunks = {"y": config.chunks, "x": config.chunks}
    if config.source == "synthetic":
        from xfusion.datasets import synthetic_scene, write_stac

        scene = synthetic_scene("cloudmask", seed=config.seed, size=config.size)
        _check_bands(band_names, [str(b) for b in scene["landsat"].band.values], "synthetic scene")
        catalog = write_stac({"landsat": scene["landsat"]}, out / "stac", encodings=scene.encodings)
        cube = xf.open_stac(catalog, assets=band_names, chunks=chunks)
        truth = {"cloud": scene["truth_cloud"], "background": scene["truth_background"]}
        return cube, truth
    gbox = make_grid(config.bounds, config.crs, config.resolution)
    if config.source == "stac":
        cube = xf.open_stac(
            config.stac_items,
            grid=gbox,
            assets=dict(zip(config.stac_assets, band_names, strict=True)),
            chunks=chunks,
        )
        return _select_dates(cube, config), None
    cube = xf.open_ee(
        config.ee_collection,
        grid=gbox,
        start=config.start,
        end=config.end,
        bands=band_names,
        chunks={"time": 1, "y": config.chunks, "x": config.chunks},
    )
    return cube, None


def _select_dates(cube: xr.DataArray, config: Config) -> xr.DataArray:
    """Images with ``start <= time < end`` (the end date's own images included up to midnight)."""
    times = cube.time.to_index()
    keep = (times >= np.datetime64(config.start)) & (times < np.datetime64(config.end))
    if config.target is not None:
        keep |= times.normalize() == np.datetime64(config.target)
    return cube.isel(time=np.flatnonzero(keep))


def _check_bands(wanted: list[str], have: list[str], where: str) -> None:
    missing = [b for b in wanted if b not in have]
    if missing:
        raise BandError(f"band(s) {missing} not in the {where}; bands are {have}")


def _qa_flags(qa: xr.DataArray, bits: tuple[int, ...]) -> xr.DataArray:
    """Lazy boolean: any of ``bits`` set in the (float, NaN = no data) QA band."""
    bitmask = sum(1 << int(b) for b in bits)
    return (qa.fillna(0).astype(np.uint32) & bitmask) != 0


def _prepare(cube: xr.DataArray, config: Config) -> dict[str, Any]:
    """Scale, choose the target and its lags, and split the stack into named lazy pieces."""
    bands = list(config.bands)
    _check_bands([*bands, config.qa_band], [str(b) for b in cube.band.values], "opened cube")
    refl = cube.sel(band=bands)
    if (config.scale_factor, config.scale_offset) != (1.0, 0.0):
        refl = refl.xf.scale(config.scale_factor, config.scale_offset)
    qa = cube.sel(band=config.qa_band, drop=True)
    lag_flags = _qa_flags(qa, config.qa_lag_bits).where(qa.notnull())
    # cube.sel(band=[...]) keeps the per-band coordinates (band_kind, band_scale) that concat
    # needs on both sides.
    qa_with = xr.concat([refl, cube.sel(band=[config.qa_band])], dim="band")
    stacked = qa_with.xf.lags(
        config.max_lags,
        cloud_score=lag_flags,
        max_cloud=config.max_cloud,
        targets=config.target,
    )
    if config.target is None:
        stacked = _cloudiest(stacked, config)
    stacked = stacked.isel(time=0)
    if config.persist and stacked.chunks is not None:
        # The image and its lags are read by every later step: read the sources once.
        stacked = stacked.persist()
    image = stacked.sel(band=bands)
    qa_cloud = _qa_flags(stacked.sel(band=config.qa_band, drop=True), config.qa_cloud_bits)

    def lag(k: int) -> xr.DataArray:
        return stacked.sel(band=[f"{b}_lag_{k}" for b in bands]).assign_coords(band=bands)

    return {
        "time": stacked.time.values,
        "lag_times": [str(t) for t in next(iter(stacked.attrs["lag_times"].values()))],
        "image": image.rename("image"),
        "lags": {k: lag(k) for k in range(1, 4)},
        "qa_cloud": qa_cloud.rename("qa_cloud"),
        "valid": stacked.notnull().all("band"),
    }


def _cloudiest(stacked: xr.DataArray, config: Config) -> xr.DataArray:
    """Keep the candidate target with the largest QA cloud fraction (one small compute)."""
    qa = stacked.sel(band=config.qa_band, drop=True)
    flags = _qa_flags(qa, config.qa_cloud_bits).where(qa.notnull())
    score = cloud_fraction(stacked, flags)
    (values,) = dask.compute(score.data)  # xf: computes the candidates' QA cloud fractions
    return stacked.isel(time=[int(np.nanargmax(values))])


def _holdout_tiles(template: xr.DataArray, config: Config) -> xr.DataArray:
    """Boolean ``(y, x)``: pixels of randomly drawn held-out tiles (numpy; small)."""
    ny, nx = template.sizes["y"], template.sizes["x"]
    t = config.holdout_tile
    ty, tx = math.ceil(ny / t), math.ceil(nx / t)
    rng = np.random.default_rng(config.seed)
    n_out = max(1, round(config.holdout_fraction * ty * tx))
    tiles = np.zeros(ty * tx, bool)
    tiles[rng.permutation(ty * tx)[:n_out]] = True
    mask = np.repeat(np.repeat(tiles.reshape(ty, tx), t, axis=0), t, axis=1)[:ny, :nx]
    return xr.DataArray(mask, dims=("y", "x"), coords={"y": template.y, "x": template.x})


def _training_weights(stack: dict[str, Any], config: Config) -> dict[str, Any]:
    """β/n and (1 − β)/m sample weights of the lag and image sets (NaN = not a training pixel).

    Computes the two pixel counts ``n`` and ``m`` (one small compute).
    """
    lags = stack["lags"]
    holdout = _holdout_tiles(stack["image"], config)
    if stack["image"].chunks is not None:
        holdout = holdout.chunk(dict(zip(("y", "x"), stack["image"].chunks[1:], strict=True)))
    lag_ok = lags[1].notnull().all("band") & lags[2].notnull().all("band")
    lag_ok = lag_ok & lags[3].notnull().all("band") & ~holdout
    grown = stack["qa_cloud"].xf.dilate(config.dilation_radius)
    image_ok = lags[1].notnull().all("band") & lags[2].notnull().all("band")
    image_ok = image_ok & stack["image"].notnull().all("band") & ~grown & ~holdout
    n, m = dask.compute(lag_ok.sum().data, image_ok.sum().data)  # xf: computes the set sizes
    n, m = int(n), int(m)
    if n == 0 or m == 0:
        raise InputError(
            f"no training pixels: {n} in the lag set and {m} clear image pixels outside the "
            f"QA cloud mask grown by {config.dilation_radius} px and the held-out tiles"
        )
    nan = np.float32(np.nan)
    weight_lag = xr.where(lag_ok, np.float32(config.beta / n), nan)
    weight_image = xr.where(image_ok, np.float32((1 - config.beta) / m), nan)
    return {"holdout": holdout, "lag": weight_lag, "image": weight_image, "n": n, "m": m}


def _features(first: xr.DataArray, second: xr.DataArray, bands: list[str]) -> xr.DataArray:
    """Stack forecast inputs: the more recent image, then the one before, as named bands."""
    names = [f"{b}_lag_1" for b in bands] + [f"{b}_lag_2" for b in bands]
    return xr.concat([first, second], dim="band").assign_coords(band=names)


def _fit_forecasts(stack: dict[str, Any], weights: dict[str, Any], config: Config) -> dict:
    """Fit the linear and kernel ridge forecasts on both weighted sets (computes)."""
    from xfusion.models import KernelRidge, Ridge

    bands = list(config.bands)
    lags, image = stack["lags"], stack["image"]
    X = xr.concat(
        [_features(lags[2], lags[3], bands), _features(lags[1], lags[2], bands)],
        dim=xr.DataArray(["lag_set", "image_set"], dims="set", name="set"),
        coords="minimal",
        compat="override",
        join="override",
    )
    y = xr.concat([lags[1], image], dim=X.set, coords="minimal", compat="override", join="override")
    w = xr.concat(
        [weights["lag"], weights["image"]],
        dim=X.set,
        coords="minimal",
        compat="override",
        join="override",
    )
    X = X.where(w.notnull())  # held-out / cloudy rows never become Nyström landmarks
    X, y, w = (_strip(a) for a in (X, y, w))
    log.info(
        "fitting ridge and kernel ridge forecasts on %d + %d pixels", weights["n"], weights["m"]
    )
    ridge = Ridge(alpha=config.ridge_alpha).fit(X, y, sample_weight=w)
    kernel = KernelRidge(
        alpha=config.kernel_alpha,
        gamma=config.kernel_gamma,
        method="nystroem",
        random_state=config.seed,
        sampling_factor=config.kernel_sampling_factor,
    ).fit(X, y, sample_weight=w)
    return {"ridge": ridge, "kernel": kernel}


def _strip(da: xr.DataArray) -> xr.DataArray:
    """Drop scalar and lag-time coordinates that would not align between the two sets."""
    keep = {"band", "y", "x", "set", "spatial_ref"}
    return da.drop_vars([c for c in da.coords if c not in keep])


def _forecast(stack: dict[str, Any], model: Any, config: Config) -> xr.DataArray:
    """Forecast the cloud-free image lazily from its two most recent lags."""
    lags = stack["lags"]
    X = _strip(_features(lags[1], lags[2], list(config.bands)))
    out = X.xf.predict(model)
    out = out.assign_coords(time=stack["time"]) if "time" not in out.coords else out
    return out.rename("forecast")


def _visible(bands: list[str]) -> list[int]:
    idx = [i for i, b in enumerate(bands) if b in ("B1", "B2", "B3", "B4")]
    return idx or list(range(len(bands)))


def _fit_clusters(differences: xr.DataArray, image: xr.DataArray, config: Config) -> dict:
    """Fit k-means for every cluster count on a pixel sample (computes the sample)."""
    from sklearn.cluster import KMeans

    bands = list(config.bands)
    ny, nx = differences.sizes["y"], differences.sizes["x"]
    rng = np.random.default_rng(config.seed)
    take = np.sort(rng.choice(ny * nx, size=min(ny * nx, config.kmeans_sample), replace=False))
    iy, ix = np.unravel_index(take, (ny, nx))
    both = xr.concat([differences, image], dim="band").transpose("y", "x", "band").data
    picked = both.vindex[iy, ix] if isinstance(both, dsa.Array) else both[iy, ix]
    (sample,) = dask.compute(picked)  # xf: computes the k-means pixel sample
    sample = np.asarray(sample, dtype=np.float64)
    sample = sample[np.isfinite(sample).all(axis=1)]
    diff, radiance = sample[:, : len(bands)], sample[:, len(bands) :]
    visible = _visible(bands)
    result = {}
    for k in config.n_clusters:
        if diff.shape[0] < k:
            raise InputError(f"only {diff.shape[0]} valid pixels to fit k-means with {k} clusters")
        km = KMeans(n_clusters=k, random_state=config.seed, n_init=config.kmeans_init).fit(diff)
        # Order clusters by the brightness of their pixels in the image (darkest first).
        brightness = np.array(
            [radiance[km.labels_ == c][:, visible].mean() for c in range(k)], dtype=np.float64
        )
        order = np.argsort(brightness, kind="stable")
        change = km.cluster_centers_[:, visible].mean(axis=1)
        classes = np.full(k, CLEAR, dtype=np.float32)
        classes[change > config.cloud_threshold] = CLOUD
        classes[change < -config.cloud_threshold] = SHADOW
        result[k] = {
            "kmeans": km,
            "order": order,
            "brightness": brightness,
            "brightening": change,
            "classes": classes,
        }
    return result


def _lookup(block: np.ndarray, table: np.ndarray) -> np.ndarray:
    out = np.full(block.shape, np.nan, dtype=np.float32)
    ok = np.isfinite(block)
    out[ok] = table[block[ok].astype(np.int64)]
    return out


def _cloud_masks(differences: xr.DataArray, clusterings: dict, config: Config) -> xr.DataArray:
    """Lazy masks ``(band, y, x)`` (band ``k3``, ``k5``…): 0 clear, 1 cloud, 2 shadow, NaN."""
    maps = []
    for k, fit in clusterings.items():
        # k-means was fitted on unnamed rows of these bands, in this order: name them
        bands = [str(b) for b in differences.band.values]
        labels = differences.xf.predict(fit["kmeans"], bands=bands).isel(band=0, drop=True)
        mask = xr.apply_ufunc(
            _lookup,
            labels,
            kwargs={"table": fit["classes"]},
            dask="parallelized",
            output_dtypes=[np.float32],
        )
        maps.append(mask.expand_dims(band=[f"k{k}"]))
    out = xr.concat(maps, dim="band")
    out.attrs = {"classes": "0 clear, 1 cloud, 2 shadow", "forecast_model": config.forecast_model}
    return out.rename("cloudmask")


def _target_truth(truth: dict[str, xr.DataArray], time: Any) -> dict[str, xr.DataArray]:
    cloud = truth["cloud"].sel(time=time)
    return {
        "truth_cloud": cloud.sel(band="cloud", drop=True).rename("truth_cloud"),
        "truth_shadow": cloud.sel(band="shadow", drop=True).rename("truth_shadow"),
        "truth_background": truth["background"].sel(time=time).rename("truth_background"),
    }


def _plain(da: xr.DataArray) -> xr.DataArray:
    """Keep only grid and band coordinates of an output cube (Zarr- and COG-friendly)."""
    keep = {"band", "y", "x", "spatial_ref"}
    da = da.drop_vars([c for c in da.coords if c not in keep])
    if da.dtype == bool:
        da = da.astype(np.float32)
    return da


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------


def agreement(mask: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Accuracy, intersection over union and Cohen's κ of two boolean masks.

    Parameters
    ----------
    mask, reference : array of bool
        The masks (same shape); only their common pixels are compared.

    Returns
    -------
    dict
        ``accuracy``, ``iou`` (of the ``True`` class; 1 when both are empty) and ``kappa``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([True, True, False, False]); b = np.array([True, False, False, False])
    >>> {k: round(v, 3) for k, v in agreement(a, b).items()}
    {'accuracy': 0.75, 'iou': 0.5, 'kappa': 0.5}
    """
    a = np.asarray(mask, dtype=bool).ravel()
    b = np.asarray(reference, dtype=bool).ravel()
    n = a.size
    if n == 0:
        raise InputError("agreement needs at least one pixel")
    tp = float(np.sum(a & b))
    tn = float(np.sum(~a & ~b))
    union = float(np.sum(a | b))
    po = (tp + tn) / n
    pe = (a.mean() * b.mean()) + ((1 - a.mean()) * (1 - b.mean()))
    kappa = 1.0 if pe == 1 else (po - pe) / (1 - pe)
    return {"accuracy": po, "iou": tp / union if union else 1.0, "kappa": float(kappa)}


def _time_text(value: Any) -> str:
    if np.issubdtype(np.asarray(value).dtype, np.datetime64):
        return str(np.datetime_as_string(np.datetime64(value), unit="s"))
    return str(value)


def _rmse(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    diff = (a - b)[:, where]
    diff = diff[np.isfinite(diff)]
    return float(np.sqrt(np.mean(diff**2))) if diff.size else float("nan")


def _metrics(cubes: dict, config: Config, stack: dict, weights: dict) -> dict[str, Any]:
    image = cubes["image"].values  # xf: computes nothing (already computed)
    masks = cubes["cloudmask"]
    valid = np.isfinite(image).all(axis=0) & np.isfinite(masks.values).all(axis=0)
    holdout = cubes["holdout"].values.astype(bool)
    qa_cloud = cubes["qa_cloud"].values.astype(bool)
    has_truth = "truth_cloud" in cubes
    if has_truth:
        clear = (cubes["truth_cloud"].values == 0) & (cubes["truth_shadow"].values == 0)
    else:
        clear = ~qa_cloud
    eval_px = valid & holdout & clear
    metrics: dict[str, Any] = {
        "target_time": _time_text(stack["time"]),
        "lag_times": stack["lag_times"],
        "n_lag_set": weights["n"],
        "n_image_set": weights["m"],
        "n_heldout_clear": int(eval_px.sum()),
        "clear_reference": "truth" if has_truth else "qa",
    }
    for name in _MODELS:
        forecast = cubes[f"forecast_{name}"].values
        metrics[f"rmse_{name}"] = _rmse(forecast, image, eval_px)
        if has_truth:
            under = valid & ~clear
            metrics[f"background_rmse_{name}"] = _rmse(
                forecast, cubes["truth_background"].values, under
            )
    main = f"k{config.n_clusters[0]}"
    for band in masks.band.values:
        ours = masks.sel(band=band).values == CLOUD
        for key, value in agreement(ours[valid], qa_cloud[valid]).items():
            metrics[f"{band}_{key}_vs_qa"] = value
        if has_truth:
            truth = cubes["truth_cloud"].values.astype(bool)
            for key, value in agreement(ours[valid], truth[valid]).items():
                metrics[f"{band}_{key}"] = value
                if band == main:
                    metrics[key] = value
    if has_truth:
        truth = cubes["truth_cloud"].values.astype(bool)
        for key, value in agreement(qa_cloud[valid], truth[valid]).items():
            metrics[f"qa_{key}"] = value
    metrics["cloud_fraction"] = float(np.mean(masks.sel(band=main).values[valid] == CLOUD))
    metrics["qa_cloud_fraction"] = float(np.mean(qa_cloud[valid]))
    return metrics


# ----------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------


def _write_outputs(
    out: Path,
    config: Config,
    cubes: dict[str, xr.DataArray],
    metrics: dict[str, Any],
    models: dict[str, Any],
    clusterings: dict,
) -> RecipeResult:
    files: dict[str, Path] = {}
    files["zarr"] = write_outputs(cubes, out, config, chunks=config.chunks)
    main = cubes["cloudmask"].sel(band=f"k{config.n_clusters[0]}", drop=True)
    files["cog"] = write_cog(main.rename("cloudmask"), out / "cloudmask.tif")
    model_dir = out / "model"
    model_dir.mkdir(exist_ok=True)
    files["model_ridge"] = models["ridge"].save(model_dir / "ridge", fmt="msgpack")
    files["model_kernel"] = models["kernel"].save(model_dir / "kernel_ridge", fmt="msgpack")
    files["model_kmeans"] = write_json(_kmeans_json(clusterings), model_dir / "kmeans.json")
    files["config"] = config.to_toml(out / "config.toml")
    figures = _figures(out, cubes, config, metrics)
    files["metrics"] = write_json(metrics, out / "metrics.json")
    return RecipeResult(
        recipe="cloudmask", metrics=metrics, cubes=cubes, figures=figures, out_dir=out, files=files
    )


def _kmeans_json(clusterings: dict) -> dict[str, Any]:
    """k-means centres, brightness order and class of every cluster (JSON, no pickle)."""
    return {
        f"k{k}": {
            "cluster_centers": fit["kmeans"].cluster_centers_.tolist(),
            "brightness_order": fit["order"].tolist(),
            "brightness": fit["brightness"].tolist(),
            "brightening": fit["brightening"].tolist(),
            "classes": fit["classes"].astype(int).tolist(),
            "class_names": {str(CLEAR): "clear", str(CLOUD): "cloud", str(SHADOW): "shadow"},
        }
        for k, fit in clusterings.items()
    }


def _rgb(cube: xr.DataArray, bands: list[str], limits: tuple[float, float]) -> np.ndarray:
    names = [b for b in ("B4", "B3", "B2") if b in bands] or bands[:3]
    while len(names) < 3:
        names.append(names[-1])
    arr = np.stack([cube.sel(band=b).values for b in names], axis=-1)
    lo, hi = limits
    return np.nan_to_num(np.clip((arr - lo) / (hi - lo), 0, 1))


def _figures(out: Path, cubes: dict, config: Config, metrics: dict) -> dict[str, Path]:
    """PNG panels: image, forecast, difference, QA mask, our mask (and truth)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    bands = list(config.bands)
    image = cubes["image"]
    # stretch on the cloud-free forecast, so the ground stays visible beside the bright clouds
    forecast = cubes[f"forecast_{config.forecast_model}"].values
    values = forecast[np.isfinite(forecast)]
    limits = tuple(np.percentile(values, [2, 98])) if values.size else (0.0, 1.0)
    palette = ListedColormap(["#1b1b1b", "#f2f2f2", "#3b6fd1"])
    main = f"k{config.n_clusters[0]}"
    panels: list[tuple[str, Any, dict]] = [
        ("image", _rgb(image, bands, limits), {}),
        (
            f"{config.forecast_model} forecast",
            _rgb(cubes[f"forecast_{config.forecast_model}"], bands, limits),
            {},
        ),
        (
            "image − forecast (visible mean)",
            cubes["differences"].values[_visible(bands)].mean(axis=0),
            {"cmap": "RdBu_r", "vmin": -0.2, "vmax": 0.2},
        ),
        ("QA cloud mask", cubes["qa_cloud"].values, {"cmap": palette, "vmin": 0, "vmax": 2}),
        (
            f"k-means mask ({main})",
            cubes["cloudmask"].sel(band=main).values,
            {"cmap": palette, "vmin": 0, "vmax": 2},
        ),
    ]
    if "truth_cloud" in cubes:
        panels.append(
            ("truth cloud", cubes["truth_cloud"].values, {"cmap": palette, "vmin": 0, "vmax": 2})
        )
    fig = Figure(figsize=(3.2 * len(panels), 3.6), dpi=90, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, data, kwargs) in zip(axes, panels, strict=True):
        ax.imshow(data, interpolation="nearest", **kwargs)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    if "accuracy" in metrics:
        fig.suptitle(
            f"{metrics['target_time'][:10]}: accuracy {metrics['accuracy']:.3f} "
            f"(QA {metrics['qa_accuracy']:.3f}), κ {metrics['kappa']:.3f}",
            fontsize=10,
        )
    paths = {"panels": out / "cloudmask_panels.png"}
    fig.savefig(paths["panels"])

    fig = Figure(figsize=(4.5, 3.2), dpi=90, layout="constrained")
    ax = fig.subplots()
    names = list(_MODELS)
    ax.bar(names, [metrics[f"rmse_{n}"] for n in names], color=["#888888", "#d95f02"])
    ax.set_ylabel("RMSE on held-out clear pixels")
    ax.set_title("background forecast error")
    paths["forecast_rmse"] = out / "forecast_rmse.png"
    fig.savefig(paths["forecast_rmse"])
    return paths
