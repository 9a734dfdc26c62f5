"""Multitemporal cloud masking: forecast the clear background from earlier images, cluster the rest.

The recipe follows the multitemporal cloud-masking workflow for Landsat 8 (bands B1…B7 and
``QA_PIXEL``; a synthetic series offline, Earth Engine or STAC for real data): an image is
stacked with its ``max_lags`` most recent earlier clear images (:func:`xfusion.lags`); a linear
ridge and an RBF kernel ridge forecast the cloud-free image from its two most recent lags,
fitted on the β-weighted lag and image sets of the workflow; the image − forecast difference is
clustered with k-means (3 and 5 clusters) and the clusters that brighten the scene are cloud
(the steps are :mod:`xfusion.models.multitemporal`'s).

Metrics: forecast RMSE on the clear pixels of held-out tiles (``holdout_fraction``); accuracy,
IoU and Cohen's κ of every mask against the truth (synthetic scenes) and the product's QA cloud
flags. Baselines (``baselines``, ``beats_baseline``): Otsu thresholds of the image's brightness
and of its brightening over the forecast (IoU, same pixels and reference), and persistence, the
most recent clear image, for the forecast (RMSE, ``forecast_beats_baseline``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import dask

import xfusion as xf
from xfusion.errors import ConfigError
from xfusion.models import multitemporal as mt
from xfusion.models.evaluation import agreement
from xfusion.recipes import _base as recipe

__all__ = ["Config", "agreement", "real_sources", "run"]

CLEAR, CLOUD, SHADOW = mt.CLEAR, mt.CLOUD, mt.SHADOW


@dataclasses.dataclass
class Config(
    recipe.ReflectanceFields,
    recipe.ChunkFields,
    recipe.DateFields,
    recipe.AreaFields,
    recipe.RecipeConfig,
):
    """Configuration of the multitemporal cloud-masking recipe.

    The defaults run offline in seconds on a 64×64 synthetic Landsat-like series;
    :func:`real_sources` gives the real data's fields. Shared fields: :mod:`xfusion.recipes._config`
    (``seed`` also draws the held-out tiles, the Nyström landmarks and the k-means sample).

    ``bands`` (forecast and clustered), ``qa_band``, ``scale_factor`` and ``scale_offset`` are
    :class:`~xfusion.recipes._config.ReflectanceFields`'.

    Parameters
    ----------
    qa_cloud_bits : tuple of int
        ``qa_band`` bits of the product's cloud mask (2 cirrus, 3 cloud), grown by
        ``dilation_radius`` to exclude image pixels from training; our mask is compared with it.
    qa_lag_bits : tuple of int
        ``qa_band`` bits of a cloudy pixel when choosing clear lags (1, 2, 3 clouds, 4 shadow).
    max_cloud : float
        Largest fraction of ``qa_lag_bits`` pixels of a clear (lag) image.
    max_lags : int
        Earlier clear images stacked with the image (the workflow's 3; at least 3).
    target : str, optional
        ISO date of the image to mask; by default the cloudiest image (QA cloud flags) that has
        ``max_lags`` earlier clear images.
    beta : float
        β, the weight of the lag set against the image set (0..1).
    ridge_alpha, kernel_alpha : float
        λ of the linear and of the RBF kernel ridge model.
    kernel_gamma : float
        γ of the RBF kernel ``exp(−γ‖x − x'‖²)`` (reflectance units).
    kernel_sampling_factor : float
        Fraction of the training pixels used as Nyström landmarks (the workflow's factor).
    dilation_radius : int
        Radius (pixels) by which the QA cloud mask is grown before it excludes image pixels.
    holdout_fraction : float
        Fraction of the ``holdout_tile`` tiles kept out of training; forecasts are scored there.
    holdout_tile : int
        Side of the held-out tiles in pixels.
    forecast_model : {"kernel", "ridge"}
        Whose forecast the k-means differences come from (and is compared with persistence).
    n_clusters : tuple of int
        k-means cluster counts; the first gives the main map.
    cloud_threshold : float
        A cluster is cloud when its centre brightens the visible bands' mean (B1…B4, else every
        band) by more than this (reflectance), shadow when it darkens it by more.
    kmeans_sample : int
        Pixels sampled to fit k-means (it is then applied to every pixel).
    kmeans_init : int
        k-means restarts (scikit-learn ``n_init``); the best is kept.
    ee_collection : str
        Earth Engine collection (``source="ee"``).
    stac_items : str
        STAC ItemCollection, Collection or Catalog JSON file (``source="stac"``; e.g. a saved
        ``pystac-client`` search of ``landsat-c2-l2``).
    stac_assets : tuple of str
        Asset keys read as ``bands`` followed by ``qa_band``, in that order (``source="stac"``).
    """

    out_dir: str = "xfusion-out/cloudmask"
    SOURCE_KEYS: ClassVar = {"stac": ("stac_items",)}
    # the workflow's region and series (the group fields keep their place in the field order)
    bounds: tuple[float, ...] = (714720.0, 4363080.0, 735390.0, 4380300.0)
    crs: str = "EPSG:32630"
    resolution: float = 30.0
    chunks: int = 32
    start: str = "2015-04-01"
    end: str = "2015-06-24"
    size: int = 64
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
    ee_collection: str = "LANDSAT/LC08/C02/T1_TOA"
    stac_items: str = ""
    stac_assets: tuple[str, ...] = (
        "coastal", "blue", "green", "red", "nir08", "swir16", "swir22", "qa_pixel",
    )  # fmt: skip

    def checks(self) -> list[tuple[bool, str, str]]:
        """Return the rows of :meth:`validate` for this recipe's own fields."""
        stac, bands = self.source == "stac", self.bands
        return [
            *recipe.at_least(self, 8, "chunks"),
            *recipe.at_least(self, 1, "holdout_tile", "kmeans_init"),
            *recipe.at_least(self, 0, "ridge_alpha", "kernel_alpha", "dilation_radius"),
            *recipe.one_of(self, "forecast_model", mt.FORECAST_MODELS),
            (self.max_lags >= 3, "max_lags", ">= 3 (two lags as inputs, one as output)"),
            (0.0 <= self.beta <= 1.0, "beta", "between 0 and 1"),
            (0.0 < self.holdout_fraction < 1.0, "holdout_fraction", "strictly between 0 and 1"),
            (len(self.n_clusters) >= 1 and min(self.n_clusters) >= 2, "n_clusters",
             "one or more cluster counts >= 2"),
            (0.0 < self.kernel_sampling_factor <= 1.0, "kernel_sampling_factor", "in (0, 1]"),
            (self.kernel_gamma > 0, "kernel_gamma", "> 0"),
            (self.kmeans_sample >= max(self.n_clusters, default=2), "kmeans_sample",
             ">= the largest cluster count"),
            (not stac or bool(self.stac_items), "stac_items",
             "set for source='stac' (a STAC JSON file or URL)"),
            (not stac or len(self.stac_assets) == len(bands) + 1, "stac_assets",
             f"{len(bands) + 1} assets (the bands {bands}, then {self.qa_band!r})"),
        ]  # fmt: skip

    def main(self) -> str:
        """Band of the main mask (the first cluster count): ``"k3"``."""
        return f"k{self.n_clusters[0]}"


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
    # the defaults are the workflow's region and series; the real image is the 2015-06-23 one
    landsat = {k: getattr(Config, k) for k in ("bounds", "crs", "resolution", "start", "end")}
    landsat |= {"target": "2015-06-23", "chunks": 512, "bands": Config.bands, "qa_band": "QA_PIXEL"}
    return {
        "ee": {
            "source": "ee",
            "ee_collection": "LANDSAT/LC08/C02/T1_TOA",
            "kernel_gamma": 0.01,
            "kernel_sampling_factor": 0.01,
            **landsat,
        },
        "stac": {
            "source": "stac",
            "stac_items": "landsat-c2-l2-valencia-2015.json",
            "stac_assets": Config.stac_assets,
            **landsat,
        },
    }


def run(config: Config) -> recipe.RecipeResult:
    """Run the multitemporal cloud-masking recipe (computes: fits, scores and writes).

    Open the series → choose the target image and its clear lags → fit the linear and kernel
    ridge forecasts → forecast lazily → cluster the differences with k-means → metrics and
    baselines → :func:`~xfusion.recipes._base.write_results`: ``outputs.zarr``,
    ``cloudmask.tif`` (the main mask), figures, ``metrics.json`` and ``model/`` (``ridge``,
    ``kernel_ridge``, ``kmeans_k<k>``, for :func:`xfusion.models.load_model`).

    Examples
    --------
    >>> result = run(Config(out_dir="cloudmask-out"))  # doctest: +SKIP
    >>> result.metrics["accuracy"] > result.metrics["qa_accuracy"]  # doctest: +SKIP
    True
    """
    if not isinstance(config, Config):
        raise ConfigError(f"run needs a cloudmask Config; got {type(config).__name__}")
    out = recipe.prepare_out_dir(config.out_dir, config=config)
    cube, truth = _open_source(config, out)
    stack, bands = _prepare(cube, config), list(config.bands)
    weights = mt.training_weights(
        stack, **config.pick("beta", "dilation_radius", "holdout_tile", "holdout_fraction", "seed")
    )
    fields = ("ridge_alpha", "kernel_alpha", "kernel_gamma", "kernel_sampling_factor", "seed")
    models = mt.fit_forecasts(stack, weights, bands, **config.pick(*fields))
    forecasts = {name: mt.forecast(stack, model, bands) for name, model in models.items()}
    differences = (stack["image"] - forecasts[config.forecast_model]).rename("differences")
    fields = ("kmeans_sample", "kmeans_init", "cloud_threshold", "seed")
    kmeans = mt.fit_clusters(differences, stack["image"], config.n_clusters, **config.pick(*fields))
    masks = mt.cluster_masks(differences, kmeans, config.forecast_model)
    cubes = mt.output_cubes(stack, weights, forecasts, differences, masks, truth)
    (computed,) = dask.compute(cubes)  # xf: computes every output cube once (small target image)
    cubes = {k: recipe.plain_coords(v) for k, v in computed.items()}
    metrics = mt.mask_scores(cubes, stack, weights, config.main())
    forecast_rmse = metrics[f"rmse_{config.forecast_model}"]
    scored = mt.mask_baselines(cubes, forecast_rmse, config.main())
    block = recipe.baseline_block(*scored["mask"], metric="iou")
    forecast = recipe.baseline_block(*scored["forecast"], metric="rmse")
    block["baselines"]["forecast"] = forecast["baselines"]
    block["forecast_beats_baseline"] = forecast["beats_baseline"]
    models = {"ridge": models["ridge"], "kernel_ridge": models["kernel"]}
    models |= {f"kmeans_k{k}": model for k, model in kmeans.items()}
    outputs = {
        "cog": ("cloudmask", cubes["cloudmask"].sel(band=config.main(), drop=True)),
        "models": models,
        "figures": lambda: _figures(out, cubes, config, {**metrics, **block}),
        "chunks": config.chunks,
    }
    return recipe.write_results(config, out, cubes, metrics, baselines=block, **outputs)


def _open_source(config: Config, out: Any) -> tuple[Any, dict[str, Any] | None]:
    """Open the series as a lazy cube (bands, then the QA band) and the truth where known."""
    names = [*config.bands, config.qa_band]
    chunks = config.spatial_chunks()
    if config.source == "synthetic":
        scene, catalog = recipe.write_synthetic("cloudmask", config, out, {"landsat": names})
        cube = xf.open_stac(catalog / "catalog.json", assets=names, chunks=chunks)
        return cube, {"cloud": scene["truth_cloud"], "background": scene["truth_background"]}
    if config.source == "stac":
        assets = dict(zip(config.stac_assets, names, strict=True))
        cube = xf.open_stac(config.stac_items, grid=config.grid(), assets=assets, chunks=chunks)
        return config.select_dates(cube, also=config.target), None
    dates = {"start": config.start, "end": config.end, "chunks": {"time": 1, **chunks}}
    return xf.open_ee(config.ee_collection, grid=config.grid(), bands=names, **dates), None


def _prepare(cube: Any, config: Config) -> dict[str, Any]:
    """Scale the bands, choose the target and its lags: the stack's lazy pieces."""
    fields = ("max_lags", "max_cloud", "qa_lag_bits", "qa_cloud_bits", "target", "persist")
    qa = cube.sel(band=[config.qa_band])
    return mt.lag_stack(config.reflectance(cube), qa, **config.pick(*fields))


def _figures(out: Any, cubes: dict, config: Config, metrics: dict) -> dict[str, Any]:
    """PNG panels: image, forecast, difference, QA mask, our mask (and truth); forecast RMSE."""
    paths = {"panels": out / "cloudmask_panels.png", "forecast_rmse": out / "forecast_rmse.png"}
    mt.plot_masks(cubes, metrics, **config.pick("forecast_model"), main=config.main(),
                  path=paths["panels"])  # fmt: skip
    persistence = metrics["baselines"]["forecast"]["scores"]["persistence"]["rmse"]
    rmse = {"persistence": persistence, **{m: metrics[f"rmse_{m}"] for m in mt.FORECAST_MODELS}}
    mt.plot_forecast_errors(rmse, path=paths["forecast_rmse"])
    return paths
