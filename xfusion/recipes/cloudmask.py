"""Multitemporal cloud masking: forecast the clear background from earlier images, cluster the rest.

The recipe follows the multitemporal cloud-masking workflow for Landsat 8: an image is stacked
with its ``max_lags`` most recent earlier clear images (:func:`xfusion.lags`); a linear ridge and
an RBF kernel ridge model forecast the cloud-free image from its two most recent lags; the
difference between the image and the forecast is clustered with k-means
(:class:`xfusion.models.kmeans.KMeans`, 3 and 5 clusters, ordered by brightness), and the
clusters that brighten the scene are labelled cloud. The result is compared with the truth
(synthetic scenes) and with the product's own QA cloud flags.

The forecasting models are trained on two sets of pixels, weighted as in the workflow:

* the *lag set* (all pixels of the clear lags): inputs ``(lag_2, lag_3)``, output ``lag_1``,
  weight ``β/n`` for its ``n`` pixels;
* the *image set* (pixels of the image outside the QA cloud mask grown by ``dilation_radius``):
  inputs ``(lag_1, lag_2)``, output the image, weight ``(1 − β)/m`` for its ``m`` pixels.

The loss ``β/n‖PₓW − P_y‖² + (1−β)/m‖EₓW − E_y‖² + λ‖W‖²`` is then ``Ridge(alpha=λ)`` (or the
Nyström kernel ridge) fitted on both sets with those sample weights. Pixels of a random set of
tiles (``holdout_fraction``) are kept out of training; forecast errors are measured there.

Baselines (``metrics.json`` ``baselines``, ``beats_baseline``): the k-means mask against Otsu
thresholds (:class:`~xfusion.models.baselines.ThresholdClassifier`) of the image's visible
brightness and of its brightening over the forecast, by IoU on the same pixels (against the
truth, or the QA mask without one); the forecast against persistence (the most recent clear
image) by RMSE on the same held-out clear pixels (``baselines["forecast"]``,
``forecast_beats_baseline``).

Run it with ``run(Config())`` (offline, on a synthetic scene written as a local STAC catalog) or
``xfusion run cloudmask --config cloudmask.toml``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

import dask
import numpy as np
import pandas as pd
import xarray as xr

import xfusion.accessor  # noqa: F401  (registers ``.xf``)
from xfusion.errors import ConfigError, InputError
from xfusion.models.baselines import ThresholdClassifier, score_predictions
from xfusion.models.evaluation import agreement, holdout_tiles
from xfusion.models.kmeans import KMeans, sample_pixels
from xfusion.preprocess.lags import cloud_fraction
from xfusion.preprocess.mask import flags_set
from xfusion.recipes._base import (
    AreaFields,
    ChunkFields,
    DateFields,
    RecipeConfig,
    RecipeResult,
    baseline_block,
    plain_coords,
    prepare_out_dir,
    require_bands,
    write_results,
    write_synthetic,
)

__all__ = ["Config", "agreement", "real_sources", "run"]

log = logging.getLogger(__name__)

_MODELS = ("ridge", "kernel")
#: Class values of the cloud-mask maps.
CLEAR, CLOUD, SHADOW = 0, 1, 2
_CLASS_NAMES = {CLEAR: "clear", CLOUD: "cloud", SHADOW: "shadow"}


@dataclasses.dataclass
class Config(ChunkFields, DateFields, AreaFields, RecipeConfig):
    """Configuration of the multitemporal cloud-masking recipe.

    The defaults run offline in a few seconds on a 64×64 synthetic Landsat-like series
    (:func:`xfusion.datasets.synthetic_scene` ``("cloudmask")``) written as a local STAC catalog.
    :func:`real_sources` gives the fields that switch to the workflow's real data. The fields
    every recipe shares (``out_dir``, ``seed``, ``source``, ``resume``, ``difficulty``,
    ``figures``, ``chunks``, ``persist``, ``bounds``, ``crs``, ``resolution``, ``start``,
    ``end``) are documented in :mod:`xfusion.recipes._config`; ``seed`` also draws the held-out
    tiles, the Nyström landmarks and the k-means sample.

    Parameters
    ----------
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
        Whose forecast the k-means differences are computed from (and compared with
        persistence).
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
    """

    out_dir: str = "xfusion-out/cloudmask"
    SOURCE_KEYS: ClassVar = {"stac": ("stac_items",)}
    size: int = 64
    bounds: tuple[float, ...] = (714720.0, 4363080.0, 735390.0, 4380300.0)
    crs: str = "EPSG:32630"
    resolution: float = 30.0
    start: str = "2015-04-01"
    end: str = "2015-06-24"
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
    scale_factor: float = 1.0
    scale_offset: float = 0.0
    ee_collection: str = "LANDSAT/LC08/C02/T1_TOA"
    stac_items: str = ""
    stac_assets: tuple[str, ...] = (
        "coastal", "blue", "green", "red", "nir08", "swir16", "swir22", "qa_pixel",
    )  # fmt: skip

    def checks(self) -> list[tuple[bool, str, str]]:
        """Return the rows of :meth:`validate` for this recipe's own fields."""
        return [
            (self.chunks >= 8, "chunks", ">= 8"),
            (self.forecast_model in _MODELS, "forecast_model", f"one of {_MODELS}"),
            (self.max_lags >= 3, "max_lags", ">= 3 (two lags as inputs, one as output)"),
            (0.0 <= self.beta <= 1.0, "beta", "between 0 and 1"),
            (0.0 < self.holdout_fraction < 1.0, "holdout_fraction", "strictly between 0 and 1"),
            (self.holdout_tile >= 1, "holdout_tile", ">= 1"),
            (len(self.n_clusters) >= 1 and min(self.n_clusters) >= 2, "n_clusters",
             "one or more cluster counts >= 2"),
            (0.0 < self.kernel_sampling_factor <= 1.0, "kernel_sampling_factor", "in (0, 1]"),
            (self.kernel_gamma > 0, "kernel_gamma", "> 0"),
            (self.ridge_alpha >= 0, "ridge_alpha", ">= 0"),
            (self.kernel_alpha >= 0, "kernel_alpha", ">= 0"),
            (self.dilation_radius >= 0, "dilation_radius", ">= 0"),
            (self.kmeans_sample >= max(self.n_clusters, default=2), "kmeans_sample",
             ">= the largest cluster count"),
            (len(self.bands) >= 1, "bands", "at least one band"),
            (self.kmeans_init >= 1, "kmeans_init", ">= 1"),
            (self.source != "stac" or bool(self.stac_items), "stac_items",
             "set for source='stac' (a STAC JSON file or URL)"),
            (self.source != "stac" or len(self.stac_assets) == len(self.bands) + 1, "stac_assets",
             f"{len(self.bands) + 1} assets (the bands {self.bands}, then {self.qa_band!r})"),
        ]  # fmt: skip


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
            "stac_assets": Config.stac_assets,
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
    with k-means (fit on a sample, applied lazily) → metrics and baselines → write
    ``outputs.zarr``, ``cloudmask.tif`` (the main mask as a COG), PNG figures, ``metrics.json``
    and ``model/`` (``ridge``, ``kernel_ridge``, ``kmeans_k<k>``: load them with
    :func:`xfusion.models.load_model`).

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
        truth; the baselines), ``cubes`` (image, forecasts, persistence, differences, masks)
        and the written paths.

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
    out = prepare_out_dir(config.out_dir, config=config)
    cube, truth = _open_source(config, out)
    stack = _prepare(cube, config)
    weights = _training_weights(stack, config)
    models = _fit_forecasts(stack, weights, config)
    forecasts = {name: _forecast(stack, model, config) for name, model in models.items()}
    differences = (stack["image"] - forecasts[config.forecast_model]).rename("differences")
    kmeans = _fit_clusters(differences, stack["image"], config)
    cubes = {
        "image": stack["image"],
        "forecast_ridge": forecasts["ridge"],
        "forecast_kernel": forecasts["kernel"],
        "differences": differences,
        "cloudmask": _cloud_masks(differences, kmeans, config),
        "qa_cloud": stack["qa_cloud"].astype(np.float32),
        "holdout": weights["holdout"].astype(np.float32),
        "persistence": stack["lags"][1].rename("persistence"),
    }
    if truth is not None:
        cubes.update(_target_truth(truth, stack["time"]))
    (computed,) = dask.compute(cubes)  # xf: computes every output cube once (small target image)
    cubes = {k: plain_coords(v) for k, v in computed.items()}
    metrics = _metrics(cubes, config, stack, weights)
    baselines = _baselines(cubes, metrics, config)
    return write_results(
        config,
        out,
        cubes,
        metrics,
        baselines=baselines,
        cog=("cloudmask", cubes["cloudmask"].sel(band=_main(config), drop=True)),
        models={
            "ridge": models["ridge"],
            "kernel_ridge": models["kernel"],
            **{f"kmeans_k{k}": model for k, model in kmeans.items()},
        },
        figures=lambda: _figures(out, cubes, config, {**metrics, **baselines}),
        chunks=config.chunks,
    )


# ----------------------------------------------------------------------------------------------
# steps
# ----------------------------------------------------------------------------------------------


def _main(config: Config) -> str:
    """Band of the main mask (the first cluster count)."""
    return f"k{config.n_clusters[0]}"


def _open_source(config: Config, out: Path) -> tuple[xr.DataArray, dict[str, xr.DataArray] | None]:
    """Open the series as a lazy cube (bands, then the QA band) and the truth where known."""
    import xfusion as xf

    names = [*config.bands, config.qa_band]
    chunks = config.spatial_chunks()
    if config.source == "synthetic":
        scene, catalog = write_synthetic("cloudmask", config, out, {"landsat": names})
        cube = xf.open_stac(catalog / "catalog.json", assets=names, chunks=chunks)
        return cube, {"cloud": scene["truth_cloud"], "background": scene["truth_background"]}
    if config.source == "stac":
        assets = dict(zip(config.stac_assets, names, strict=True))
        cube = xf.open_stac(config.stac_items, grid=config.grid(), assets=assets, chunks=chunks)
        return config.select_dates(cube, also=config.target), None
    cube = xf.open_ee(
        config.ee_collection,
        grid=config.grid(),
        start=config.start,
        end=config.end,
        bands=names,
        chunks={"time": 1, **chunks},
    )
    return cube, None


def _prepare(cube: xr.DataArray, config: Config) -> dict[str, Any]:
    """Scale, choose the target and its lags, and split the stack into named lazy pieces."""
    bands = list(config.bands)
    require_bands(cube, [*bands, config.qa_band], "opened cube")
    refl = cube.sel(band=bands)
    if (config.scale_factor, config.scale_offset) != (1.0, 0.0):
        refl = refl.xf.scale(config.scale_factor, config.scale_offset)
    qa = cube.sel(band=config.qa_band, drop=True)
    lag_flags = flags_set(cube, config.qa_band, list(config.qa_lag_bits)).where(qa.notnull())
    # cube.sel(band=[...]) keeps the per-band coordinates (band_kind, band_scale) that concat
    # needs on both sides.
    qa_with = xr.concat([refl, cube.sel(band=[config.qa_band])], dim="band")
    stacked = qa_with.xf.lags(
        config.max_lags, cloud_score=lag_flags, max_cloud=config.max_cloud, targets=config.target
    )
    if config.target is None:
        stacked = _cloudiest(stacked, config)
    stacked = stacked.isel(time=0)
    if config.persist and stacked.chunks is not None:
        # The image and its lags are read by every later step: read the sources once.
        stacked = stacked.persist()

    def lag(k: int) -> xr.DataArray:
        return stacked.sel(band=[f"{b}_lag_{k}" for b in bands]).assign_coords(band=bands)

    qa_cloud = flags_set(stacked, config.qa_band, list(config.qa_cloud_bits))
    return {
        "time": stacked.time.values,
        "lag_times": [str(t) for t in next(iter(stacked.attrs["lag_times"].values()))],
        "image": stacked.sel(band=bands).rename("image"),
        "lags": {k: lag(k) for k in range(1, 4)},
        "qa_cloud": qa_cloud.rename("qa_cloud"),
    }


def _cloudiest(stacked: xr.DataArray, config: Config) -> xr.DataArray:
    """Keep the candidate target with the largest QA cloud fraction (one small compute)."""
    qa = stacked.sel(band=config.qa_band, drop=True)
    flags = flags_set(stacked, config.qa_band, list(config.qa_cloud_bits)).where(qa.notnull())
    score = cloud_fraction(stacked, flags)
    (values,) = dask.compute(score.data)  # xf: computes the candidates' QA cloud fractions
    return stacked.isel(time=[int(np.nanargmax(values))])


def _training_weights(stack: dict[str, Any], config: Config) -> dict[str, Any]:
    """β/n and (1 − β)/m sample weights of the lag and image sets (NaN = not a training pixel).

    Computes the two pixel counts ``n`` and ``m`` (one small compute).
    """
    lags, image = stack["lags"], stack["image"]
    holdout = holdout_tiles(image, config.holdout_tile, config.holdout_fraction, seed=config.seed)
    if image.chunks is not None:
        holdout = holdout.chunk(dict(zip(("y", "x"), image.chunks[1:], strict=True)))
    recent = lags[1].notnull().all("band") & lags[2].notnull().all("band")
    lag_ok = recent & lags[3].notnull().all("band") & ~holdout
    grown = stack["qa_cloud"].xf.dilate(config.dilation_radius)
    image_ok = recent & image.notnull().all("band") & ~grown & ~holdout
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
    return plain_coords(xr.concat([first, second], dim="band").assign_coords(band=names))


def _fit_forecasts(stack: dict[str, Any], weights: dict[str, Any], config: Config) -> dict:
    """Fit the linear and kernel ridge forecasts on both weighted sets (computes)."""
    from xfusion.models import KernelRidge, Ridge

    bands, lags = list(config.bands), stack["lags"]
    sets = xr.DataArray(["lag_set", "image_set"], dims="set", name="set")
    both = {"coords": "minimal", "compat": "override", "join": "override"}
    X = xr.concat(
        [_features(lags[2], lags[3], bands), _features(lags[1], lags[2], bands)], sets, **both
    )
    y = xr.concat([lags[1], stack["image"]], dim=X.set, **both)
    w = xr.concat([weights["lag"], weights["image"]], dim=X.set, **both)
    X = X.where(w.notnull())  # held-out / cloudy rows never become Nyström landmarks
    X, y, w = (plain_coords(a) for a in (X, y, w))
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


def _forecast(stack: dict[str, Any], model: Any, config: Config) -> xr.DataArray:
    """Forecast the cloud-free image lazily from its two most recent lags."""
    lags = stack["lags"]
    return _features(lags[1], lags[2], list(config.bands)).xf.predict(model).rename("forecast")


def _visible(bands: list[str]) -> list[int]:
    idx = [i for i, b in enumerate(bands) if b in ("B1", "B2", "B3", "B4")]
    return idx or list(range(len(bands)))


def _fit_clusters(differences: xr.DataArray, image: xr.DataArray, config: Config) -> dict:
    """k-means per cluster count on a pixel sample, clusters labelled by brightening (computes).

    Clusters are ordered by the brightness of their pixels in the image (darkest first); a
    cluster whose centre brightens the visible bands by more than ``cloud_threshold`` is cloud,
    one that darkens them by more is shadow.
    """
    bands = list(config.bands)
    named = image.assign_coords(band=[f"{b}_image" for b in bands])
    both = xr.concat([differences, named], dim="band", coords="minimal", compat="override")
    sample = sample_pixels(both, config.kmeans_sample, seed=config.seed)
    diff, radiance = sample[bands], sample[[f"{b}_image" for b in bands]].to_numpy()
    visible = _visible(bands)
    result = {}
    for k in config.n_clusters:
        km = KMeans(k, n_init=config.kmeans_init, random_state=config.seed).fit(diff)
        brightness = np.array(
            [radiance[km.labels_ == c][:, visible].mean() for c in range(k)], dtype=np.float64
        )
        change = km.cluster_centers_[:, visible].mean(axis=1)
        classes = np.full(k, CLEAR, dtype=np.float32)
        classes[change > config.cloud_threshold] = CLOUD
        classes[change < -config.cloud_threshold] = SHADOW
        order = np.argsort(brightness, kind="stable")
        info = {"brightness": brightness, "brightening": change, "brightness_order": order}
        result[k] = km.label_clusters(classes, names=_CLASS_NAMES, info=info)
    return result


def _cloud_masks(differences: xr.DataArray, kmeans: dict, config: Config) -> xr.DataArray:
    """Lazy masks ``(band, y, x)`` (band ``k3``, ``k5``…): 0 clear, 1 cloud, 2 shadow, NaN."""
    maps = [
        model.predict(differences).isel(band=0, drop=True).expand_dims(band=[f"k{k}"])
        for k, model in kmeans.items()
    ]
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


# ----------------------------------------------------------------------------------------------
# metrics and baselines
# ----------------------------------------------------------------------------------------------


def _time_text(value: Any) -> str:
    if np.issubdtype(np.asarray(value).dtype, np.datetime64):
        return str(np.datetime_as_string(np.datetime64(value), unit="s"))
    return str(value)


def _rmse(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    diff = (a - b)[:, where]
    diff = diff[np.isfinite(diff)]
    return float(np.sqrt(np.mean(diff**2))) if diff.size else float("nan")


def _pixels(cubes: dict) -> dict[str, np.ndarray]:
    """Masks of the scored pixels: ``valid``, ``clear`` and held-out clear ``eval`` (numpy)."""
    image = cubes["image"].values  # xf: computes nothing (already computed)
    valid = np.isfinite(image).all(axis=0) & np.isfinite(cubes["cloudmask"].values).all(axis=0)
    if "truth_cloud" in cubes:
        clear = (cubes["truth_cloud"].values == 0) & (cubes["truth_shadow"].values == 0)
        reference = cubes["truth_cloud"].values.astype(bool)
    else:
        reference = cubes["qa_cloud"].values.astype(bool)
        clear = ~reference
    held = cubes["holdout"].values.astype(bool)
    return {"valid": valid, "clear": clear, "eval": valid & held & clear, "reference": reference}


def _metrics(cubes: dict, config: Config, stack: dict, weights: dict) -> dict[str, Any]:
    px = _pixels(cubes)
    valid, clear, image = px["valid"], px["clear"], cubes["image"].values
    qa_cloud = cubes["qa_cloud"].values.astype(bool)
    has_truth = "truth_cloud" in cubes
    metrics: dict[str, Any] = {
        "target_time": _time_text(stack["time"]),
        "lag_times": stack["lag_times"],
        "n_lag_set": weights["n"],
        "n_image_set": weights["m"],
        "n_heldout_clear": int(px["eval"].sum()),
        "clear_reference": "truth" if has_truth else "qa",
    }
    for name in _MODELS:
        forecast = cubes[f"forecast_{name}"].values
        metrics[f"rmse_{name}"] = _rmse(forecast, image, px["eval"])
        if has_truth:
            background = cubes["truth_background"].values
            metrics[f"background_rmse_{name}"] = _rmse(forecast, background, valid & ~clear)
    masks, main = cubes["cloudmask"], _main(config)
    for band in masks.band.values:
        ours = masks.sel(band=band).values == CLOUD
        for key, value in agreement(ours[valid], qa_cloud[valid]).items():
            metrics[f"{band}_{key}_vs_qa"] = value
        if has_truth:
            for key, value in agreement(ours[valid], px["reference"][valid]).items():
                metrics[f"{band}_{key}"] = value
                if band == main:
                    metrics[key] = value
    if has_truth:
        for key, value in agreement(qa_cloud[valid], px["reference"][valid]).items():
            metrics[f"qa_{key}"] = value
    metrics["cloud_fraction"] = float(np.mean(masks.sel(band=main).values[valid] == CLOUD))
    metrics["qa_cloud_fraction"] = float(np.mean(qa_cloud[valid]))
    return metrics


def _visible_mean(cube: xr.DataArray, bands: list[str]) -> np.ndarray:
    return cube.values[_visible(bands)].mean(axis=0)


def _baselines(cubes: dict, metrics: dict, config: Config) -> dict[str, Any]:
    """Score the mask against Otsu thresholds (IoU), the forecast against persistence (RMSE).

    The thresholds are fitted (unsupervised: Otsu, cloud above) and scored on the pixels the
    mask is scored on, against the same reference (truth, else the QA mask); persistence is
    scored on the same held-out clear pixels as the forecasts.
    """
    px, bands = _pixels(cubes), list(config.bands)
    valid, reference = px["valid"], px["reference"][px["valid"]]
    indices = pd.DataFrame(
        {
            "brightness": _visible_mean(cubes["image"], bands)[valid],
            "brightening": _visible_mean(cubes["differences"], bands)[valid],
        }
    )
    scores = {}
    for name in indices.columns:
        otsu = ThresholdClassifier(name, above=True).fit(indices)
        scores[f"otsu_{name}"] = {
            **score_predictions(otsu.predict(indices), reference, task="segmentation"),
            "threshold": otsu.threshold_,
        }
    ours = cubes["cloudmask"].sel(band=_main(config)).values[valid] == CLOUD
    model = score_predictions(ours, reference, task="segmentation")
    block = baseline_block(model, scores, metric="iou")
    persistence = {"rmse": _rmse(cubes["persistence"].values, cubes["image"].values, px["eval"])}
    forecast = baseline_block(
        {"rmse": metrics[f"rmse_{config.forecast_model}"]},
        {"persistence": persistence},
        metric="rmse",
    )
    block["baselines"]["forecast"] = forecast["baselines"]
    block["forecast_beats_baseline"] = forecast["beats_baseline"]
    return block


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------


def _rgb(cube: xr.DataArray, bands: list[str], limits: tuple[float, float]) -> np.ndarray:
    names = [b for b in ("B4", "B3", "B2") if b in bands] or bands[:3]
    while len(names) < 3:
        names.append(names[-1])
    arr = np.stack([cube.sel(band=b).values for b in names], axis=-1)
    lo, hi = limits
    return np.nan_to_num(np.clip((arr - lo) / (hi - lo), 0, 1))


def _figures(out: Path, cubes: dict, config: Config, metrics: dict) -> dict[str, Path]:
    """PNG panels: image, forecast, difference, QA mask, our mask (and truth); forecast RMSE."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    bands, model = list(config.bands), config.forecast_model
    # stretch on the cloud-free forecast, so the ground stays visible beside the bright clouds
    forecast = cubes[f"forecast_{model}"].values
    values = forecast[np.isfinite(forecast)]
    limits = tuple(np.percentile(values, [2, 98])) if values.size else (0.0, 1.0)
    classes = {"cmap": ListedColormap(["#1b1b1b", "#f2f2f2", "#3b6fd1"]), "vmin": 0, "vmax": 2}
    main = _main(config)
    panels: list[tuple[str, Any, dict]] = [
        ("image", _rgb(cubes["image"], bands, limits), {}),
        (f"{model} forecast", _rgb(cubes[f"forecast_{model}"], bands, limits), {}),
        ("image − forecast (visible mean)", _visible_mean(cubes["differences"], bands),
         {"cmap": "RdBu_r", "vmin": -0.2, "vmax": 0.2}),
        ("QA cloud mask", cubes["qa_cloud"].values, classes),
        (f"k-means mask ({main})", cubes["cloudmask"].sel(band=main).values, classes),
    ]  # fmt: skip
    if "truth_cloud" in cubes:
        panels.append(("truth cloud", cubes["truth_cloud"].values, classes))
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
    persistence = metrics["baselines"]["forecast"]["scores"]["persistence"]["rmse"]
    rmse = {"persistence": persistence, **{name: metrics[f"rmse_{name}"] for name in _MODELS}}
    ax.bar(list(rmse), list(rmse.values()), color=["#bbbbbb", "#888888", "#d95f02"])
    ax.set_ylabel("RMSE on held-out clear pixels")
    ax.set_title("background forecast error")
    paths["forecast_rmse"] = out / "forecast_rmse.png"
    fig.savefig(paths["forecast_rmse"])
    return paths
