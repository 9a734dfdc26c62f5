"""Downscale a coarse field (SIF) to the grid of fine auxiliary data (vegetation indices).

The SIF downscaling workflow (TROPOMI SIF at ~3.5×7 km with MODIS vegetation indices at 1 km, a
U-Net on Local Binary Pattern features): both series, on grids one an integer coarsening of the
other, are composited to the same 16-day periods (:mod:`xfusion.preprocess.series`); the
fine-grid features are the indices, the coarse field interpolated bilinearly and its Local
Binary Patterns (:mod:`xfusion.preprocess.coarse_features`). A U-Net is trained with **coarse
supervision**: its prediction, averaged over each coarse pixel (with the observations' footprint
weights, if any), is compared with the coarse observation, plus a smoothness penalty; no fine
truth is needed, the physical constraint is the loss. The scene is split in whole coarse pixels
(:mod:`xfusion.preprocess.strips`): an eastern strip held out, a southern validation strip
(best epoch), the training region. Baselines: bilinear interpolation and a pixel ridge fitted
against the coarse field (:mod:`xfusion.models.downscaling`). Metrics on the held-out strip:
fine RMSE, MAE and R² against the truth (synthetic scenes) and the aggregation consistency
(the prediction averaged back to the coarse grid against the observation).

Run it with ``run(Config())`` (offline, on a synthetic scene written as a local STAC catalog) or
``xfusion run downscale --config downscale.toml``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import dask
import numpy as np

import xfusion as xf
from xfusion.errors import ConfigError, InputError
from xfusion.models import downscaling
from xfusion.models.downscaling import aggregation_rmse, regression_scores
from xfusion.preprocess.coarse_features import coarse_features
from xfusion.preprocess.footprints import match_coarse, varying_bands
from xfusion.preprocess.series import common_composites, series_patches, time_as_bands
from xfusion.preprocess.strips import HELDOUT, TRAIN, VALIDATION, strip_regions
from xfusion.recipes import _base as recipe

__all__ = ["Config", "aggregation_rmse", "real_sources", "regression_scores", "run"]

_REDUCTIONS = ("median", "mean", "min", "max")
BASELINES = ("bilinear", "ridge")


@dataclasses.dataclass
class SeriesFields:
    """The two series and their periods.

    Parameters
    ----------
    vi_bands : tuple of str
        Fine auxiliary bands (MODIS ``MOD13A2``/``MOD13A1`` ``NDVI`` and ``EVI``).
    coarse_band : str
        Band of the coarse field (TROPOSIF ``SIF743``).
    vi_scale : float
        Factor applied to the vegetation indices after opening (``1e-4`` for MOD13 digital
        numbers from Earth Engine, the ``source="ee"`` default of ``from_dict``; 1 where the
        STAC ``raster:bands`` scale is applied).
    period : str
        Aggregation period of both series (pandas offset; the workflow's ``"16D"``).
    vi_composite, coarse_composite : {"median", "mean", "min", "max"}
        Reduction of each series within a period.
    """

    vi_bands: tuple[str, ...] = ("NDVI", "EVI")
    coarse_band: str = "SIF743"
    vi_scale: float = 1.0
    period: str = "16D"
    vi_composite: str = "median"
    coarse_composite: str = "mean"


@dataclasses.dataclass
class NetworkFields:
    """The features, the patches and the U-Net; the ridge baseline.

    Parameters
    ----------
    lbp_points : int
        Number of circle samples of the Local Binary Patterns of the coarse field.
    lbp_radius : float
        Radius of the Local Binary Patterns in coarse pixels.
    patch_size : int
        Side of the training patches in fine pixels: a multiple of the resolution factor and of
        ``2 ** len(widths)`` (the workflow crops its matrices to M×M).
    n_patches, n_validation_patches : int
        Patch locations drawn in the training and validation regions (a sample per period).
    widths : tuple of int
        U-Net encoder widths (the workflow's network is ``(16, 32, 64, 128, 256)`` with a 512
        bottleneck; a small one is enough on the synthetic scene and fast on a CPU).
    center : int, optional
        Width of the bottleneck (default: twice the last width).
    schedule : {"cosine", "constant", "exponential"}
        Learning-rate schedule (cosine decay settles the weights: the best epoch is no fluke).
    smoothness : float
        Weight of the penalty on squared differences of neighbouring fine predictions, added to
        the coarse-supervision loss (block averages alone leave the sub-block pattern free).
    ridge_alpha : float
        Regularisation of the pixel-ridge baseline.
    validation_fraction : float
        Fraction of the height of the region west of the held-out strip whose southern strip
        validates (selects the best epoch).
    """

    lbp_points: int = 8
    lbp_radius: float = 1.0
    patch_size: int = 20
    n_patches: int = 80
    n_validation_patches: int = 8
    widths: tuple[int, ...] = (16, 32)
    center: int | None = None
    schedule: str = "cosine"
    smoothness: float = 0.1
    ridge_alpha: float = 1e-3
    validation_fraction: float = 0.25


@dataclasses.dataclass
class SourceFields:
    """Where real data are read (``source="ee"`` or ``"stac"``).

    Parameters
    ----------
    fine_collection : str
        Fine vegetation-index source: Earth Engine collection id (``source="ee"``) or STAC
        ItemCollection/Collection/Catalog file (``source="stac"``).
    coarse_collection : str
        Coarse field source: an Earth Engine image collection of gridded SIF (``source="ee"``)
        or a STAC file of gridded SIF COGs (``source="stac"``).
    fine_assets, coarse_asset : tuple of str, str
        STAC asset keys read as ``vi_bands`` and ``coarse_band`` (``source="stac"``).
    coarse_resolution : float
        Pixel size of the coarse grid in ``crs`` units: an integer multiple of ``resolution``.
    footprint_collection : str
        Optional (``source="stac"``): a STAC file of per-date weights on the fine grid of the
        coarse observations' **footprints** (1 where observed, 0 elsewhere: a flight track, a
        sounding). The U-Net's loss, the ridge's fit and the aggregation metrics then average
        with those weights. The synthetic ``difficulty="hard"`` scene has its own.
    footprint_asset : str
        STAC asset key of the footprint weights.
    """

    fine_collection: str = "MODIS/061/MOD13A2"
    coarse_collection: str = ""
    fine_assets: tuple[str, ...] = ("NDVI", "EVI")
    coarse_asset: str = "SIF743"
    coarse_resolution: float = 5000.0
    footprint_collection: str = ""
    footprint_asset: str = "weight"


@dataclasses.dataclass
class Config(SourceFields, NetworkFields, SeriesFields, recipe.ModelRecipeConfig):
    """Configuration of the downscaling recipe.

    The defaults run offline in well under a minute on a 120×120 px synthetic scene
    (:func:`xfusion.datasets.synthetic_scene` ``("downscale")``: MODIS-like NDVI/EVI at 1 km, a
    TROPOMI-like SIF at 5 km, 8 periods of 16 days in 2019); :func:`real_sources` gives the
    fields of real data. Fields: the shared groups (:mod:`xfusion.recipes._config`; ``chunks``
    in fine pixels), :class:`SeriesFields`, :class:`NetworkFields`, :class:`SourceFields`, and:

    Parameters
    ----------
    size : int
        Side of the synthetic scene in fine pixels (``source="synthetic"`` only; rounded up to
        a multiple of 5).
    resolution : float
        Pixel size of the fine grid in ``crs`` units (real sources, in ``bounds``).
    start, end : str
        Date range; ``start`` anchors the periods (on a synthetic scene, its first date does).
    holdout_fraction : float
        Fraction of the width held out (eastern strip, whole coarse pixels); every metric is
        measured there.
    epochs : int
        Training length (passes over the training patches).
    learning_rate : float
        Initial Adam learning rate.
    constrain : {"none", "shift", "scale"}
        After prediction, shift (or scale, for positive fields) every coarse cell of the U-Net's
        and both baselines' maps so its weighted mean equals the observation
        (:func:`~xfusion.preprocess.footprints.match_coarse`; the pattern inside is kept);
        ``"none"``: the raw prediction, ``aggregation_rmse`` says how close it comes.
    unet_inputs : {"all", "varying"}
        The U-Net's features: all, or those that vary inside the coarse cells
        (:func:`~xfusion.preprocess.footprints.varying_bands`: without the cell-constant Local
        Binary Patterns it cannot fit the coarse values through them and must learn the
        pattern inside the cells).

    With ``difficulty="hard"`` (synthetic), the fields left at their defaults take
    :attr:`HARD_DEFAULTS`: 30 m pixels in 3 km tiles of 100 px (a 4×4-tile scene, a tile per
    patch, from 2016-06-15), and ``unet_inputs="varying"``.
    """

    out_dir: str = "xfusion-out/downscale"
    MIN_SIZE: ClassVar = 40
    size: int = 120
    # the workflow's region, season and training (the shared groups' fields, other defaults)
    bounds: tuple[float, ...] = (300000.0, 4680000.0, 420000.0, 4800000.0)
    crs: str = "EPSG:32615"
    resolution: float = 1000.0
    start: str = "2019-05-09"
    end: str = "2019-09-14"
    SOURCE_KEYS: ClassVar = {
        "ee": ("coarse_collection",),
        "stac": ("fine_collection", "coarse_collection"),
    }
    chunks: int = 60
    holdout_fraction: float = 0.33
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 0.01
    SOURCE_DEFAULTS: ClassVar = {"ee": {"vi_scale": 1e-4}}
    constrain: str = "none"
    unet_inputs: str = "all"
    #: Defaults of the fields left unchanged with ``difficulty="hard"`` on a synthetic scene.
    HARD_DEFAULTS: ClassVar = {
        "size": 400,
        "chunks": 100,
        "patch_size": 100,
        "n_patches": 9,
        "n_validation_patches": 3,
        "start": "2016-06-15",
        "end": "2016-08-15",
        # measured on the hard scene, seed 0: held-out RMSE 0.810 without the cell-constant LBP
        # features against 0.849 with all (bilinear 0.827, ridge 0.748)
        "unet_inputs": "varying",
    }

    def __post_init__(self) -> None:
        if self.difficulty == "hard" and self.source == "synthetic":
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for key, value in self.HARD_DEFAULTS.items():
                if getattr(self, key) == defaults[key]:
                    setattr(self, key, value)
        super().__post_init__()

    def checks(self) -> list[tuple[bool, str, str]]:
        """Return the rows of :meth:`validate` for this recipe's own fields."""
        mult, ratio = 2 ** len(self.widths), self.coarse_resolution / self.resolution
        real, stac = self.source != "synthetic", self.source == "stac"
        return [
            *recipe.at_least(self, 16, "chunks"),
            (len(self.vi_bands) >= 1, "vi_bands", "at least one band"),
            *recipe.one_of(self, "vi_composite", _REDUCTIONS),
            *recipe.one_of(self, "coarse_composite", _REDUCTIONS),
            *recipe.at_least(self, 1, "lbp_points"),
            (self.lbp_radius > 0, "lbp_radius", "> 0"),
            (len(self.widths) >= 1 and min(self.widths) >= 1, "widths", "positive widths"),
            (self.patch_size >= 2 and self.patch_size % mult == 0, "patch_size",
             f"a multiple of {mult} (2 ** len(widths))"),
            *recipe.at_least(self, 1, "n_patches", "n_validation_patches"),
            *recipe.one_of(self, "schedule", ("cosine", "constant", "exponential")),
            *recipe.at_least(self, 0, "smoothness", "ridge_alpha"),
            (0.0 < self.validation_fraction < 1.0, "validation_fraction",
             "strictly between 0 and 1"),
            (self.coarse_resolution >= self.resolution, "coarse_resolution", ">= resolution"),
            (not real or abs(ratio - round(ratio)) <= 1e-9, "coarse_resolution",
             f"resolution ({self.resolution}) times an integer factor"),
            (not real or self.patch_size % max(1, round(ratio)) == 0, "patch_size",
             f"a multiple of the resolution factor {round(ratio)}"),
            (not real or bool(self.coarse_collection), "coarse_collection",
             f"set for source={self.source!r} (the gridded coarse field)"),
            (not stac or len(self.fine_assets) == len(self.vi_bands), "fine_assets",
             f"one asset per band of vi_bands {self.vi_bands}"),
            *recipe.one_of(self, "constrain", ("none", "shift", "scale")),
            (self.unet_inputs in ("all", "varying"), "unet_inputs", "'all' or 'varying'"),
            (not self.footprint_collection or stac, "footprint_collection",
             "set only with source='stac'"),
        ]  # fmt: skip


def real_sources() -> dict[str, dict[str, Any]]:
    """Config fields that run the workflow on real data, by source.

    Both read the growing season of 2019 over the US corn belt (central Iowa, UTM 15N).
    ``"ee"``: MODIS Terra vegetation indices at 1 km every 16 days (``MODIS/061/MOD13A2``,
    ``NDVI``/``EVI`` digital numbers scaled by 1e-4) with a gridded TROPOMI SIF collection
    (``SIF743``, e.g. the TROPOSIF L2B product gridded to 0.05° and uploaded as an Earth Engine
    image collection, one image per day; set ``coarse_collection`` to its asset id).
    ``"stac"``: MODIS ``modis-13A1-061`` (500 m, 16 days; Microsoft Planetary Computer asset keys
    ``500m_16_days_NDVI``/``500m_16_days_EVI``) saved as an ItemCollection file, with a STAC
    catalog of gridded SIF COGs (asset ``SIF743``), e.g. written with
    :func:`xfusion.datasets.write_stac`.

    Examples
    --------
    >>> sorted(real_sources()), real_sources()["ee"]["fine_collection"]
    (['ee', 'stac'], 'MODIS/061/MOD13A2')
    >>> Config(out_dir="out", **real_sources()["ee"]).vi_scale
    0.0001
    """
    region = {
        "bounds": (380000.0, 4580000.0, 580000.0, 4780000.0),
        "crs": "EPSG:32615",
        "start": "2019-05-09",
        "end": "2019-09-30",
        "chunks": 256,
        "patch_size": 160,
        "n_patches": 400,
        "widths": (16, 32, 64, 128, 256),
        "center": 512,
        "epochs": 60,
        "vi_bands": ("NDVI", "EVI"),
        "coarse_band": "SIF743",
        "coarse_resolution": 5000.0,
    }
    return {
        "ee": {
            "source": "ee",
            "fine_collection": "MODIS/061/MOD13A2",
            "vi_scale": 1e-4,
            "coarse_collection": "users/your-name/TROPOSIF_L2B_005deg_daily_2019",
            "resolution": 1000.0,
            **region,
        },
        "stac": {
            "source": "stac",
            "fine_collection": "modis-13A1-061-iowa-2019.json",
            "fine_assets": ("500m_16_days_NDVI", "500m_16_days_EVI"),
            "coarse_collection": "troposif-iowa-2019/catalog.json",
            "coarse_asset": "SIF743",
            "resolution": 500.0,
            **region,
        },
    }


def run(config: Config) -> recipe.RecipeResult:
    """Run the downscaling recipe (computes: trains, scores and writes ``config.out_dir``).

    Open both series → composite them to ``period`` → fine features → training and validation
    patches → train the U-Net and the ridge → predict lazily (and ``constrain``) → score on the
    held-out strip → :func:`~xfusion.recipes._base.write_results`: ``outputs.zarr`` (the
    downscaled series, both baselines, features, coarse composites, regions, truth),
    ``downscaled.tif`` (a band per period), figures, ``metrics.json`` (``rmse``, ``mae``,
    ``r2``, ``aggregation_rmse``, ``aggregation_max_error_fraction``, each also ``bilinear_``
    and ``ridge_``; ``rmse_ratio``: U-Net over bilinear) and ``model/``.

    Examples
    --------
    >>> config = Config(out_dir="downscale-out", epochs=30)
    >>> config.period, config.patch_size
    ('16D', 20)
    >>> result = run(config)  # doctest: +SKIP
    >>> result.metrics["rmse"] <= 0.8 * result.metrics["bilinear_rmse"]  # doctest: +SKIP
    True
    """
    if not isinstance(config, Config):
        raise ConfigError(f"run needs a downscale Config; got {type(config).__name__}")
    out = recipe.prepare_out_dir(config.out_dir, config=config)
    fine, coarse, footprint, truth = _open_sources(config, out)
    recipe.require_bands(fine, config.vi_bands, "fine cube")
    recipe.require_bands(coarse, [config.coarse_band], "coarse cube")
    # a synthetic scene's periods start at its first date (the standard scene's is ``start``)
    start = str(fine.time.values.min())[:10] if config.source == "synthetic" else config.start
    fine, coarse, footprint = common_composites(
        fine.sel(band=list(config.vi_bands)), coarse.sel(band=[config.coarse_band]),
        freq=config.period, start=start, how=(config.vi_composite, config.coarse_composite),
        footprint=footprint,
    )  # fmt: skip
    factor = recipe.coarsening_factor(fine, coarse)
    features, target = coarse_features(
        fine, coarse, **config.pick("lbp_points", "lbp_radius"), chunks=config.spatial_chunks()
    )
    if config.persist and features.chunks is not None:
        # patches and prediction both read the features: read and aggregate the sources once
        features, target = dask.persist(features, target)
    try:
        fields = ("holdout_fraction", "validation_fraction", "patch_size")
        regions = strip_regions(features, factor, **config.pick(*fields))
    except InputError as err:  # the config's fields do not fit the scene
        raise ConfigError(str(err)) from err
    train, validation = (
        series_patches(features, target, regions == kind, size=config.patch_size, n=n,
                       seed=seed, stride=factor, footprint=footprint)
        for kind, n, seed in ((TRAIN, config.n_patches, config.seed),
                              (VALIDATION, config.n_validation_patches, config.seed + 1))
    )  # fmt: skip
    bands = recipe.band_names(features)
    if config.unet_inputs == "varying":
        bands = varying_bands(train["inputs"], factor)
        train, validation = train.sel(band=bands), validation.sel(band=bands)
    fields = ("smoothness", "widths", "center", "schedule")
    unet = xf.models.UNetRegressor(
        coarse_factor=factor, optimizer="adam", **config.pick(*fields), **config.training_options()
    ).fit(train, validation_data=validation)
    ridge = downscaling.fit_coarse_ridge(
        fine, coarse, alpha=config.ridge_alpha, footprint=footprint,
        cells=regions.values[::factor, ::factor] != HELDOUT,  # xf: computes nothing (numpy map)
    )  # fmt: skip
    band = [config.coarse_band]
    cubes = {
        "downscaled": features.sel(band=bands).xf.predict(unet).assign_coords(band=band),
        "bilinear": features.sel(band=[f"{config.coarse_band}_bilinear"]).assign_coords(band=band),
        "ridge": fine.xf.predict(ridge).assign_coords(band=band),
    }
    for name, cube in cubes.items():
        if config.constrain != "none":
            cube = match_coarse(cube.rename(name), coarse, footprint=footprint,
                                method=config.constrain)  # fmt: skip
        cubes[name] = cube.rename(name)
    cubes |= {
        "features": features.rename("features"),
        "coarse": coarse.rename("coarse"),
        "regions": regions.astype(np.float32).rename("regions"),
    }
    if footprint is not None:
        cubes["footprint"] = footprint.rename("footprint")
    if truth is not None:  # the synthetic truth, on the output periods
        truth = truth.sel(time=fine.time.values, method="nearest")
        cubes["truth"] = truth.assign_coords(time=fine.time.values).rename("truth")
    (computed,) = dask.compute(cubes)  # xf: computes every output cube once (small scene)
    cubes = {k: recipe.plain_coords(v) for k, v in computed.items()}
    metrics = _metrics(cubes, factor, unet, ridge, train, validation, config)
    return recipe.write_results(
        config, out, cubes, metrics, baselines=_baselines(metrics),
        cog=("downscaled", time_as_bands(cubes["downscaled"])),
        models={"unet": unet, "ridge": ridge},
        figures=lambda: _figures(out, cubes, metrics, unet, config), chunks=config.chunks,
    )  # fmt: skip


def _open_sources(config: Config, out: Path) -> tuple[Any, Any, Any, Any]:
    """Open the fine and coarse series lazily, the footprints if any, the synthetic truth."""
    bands, chunks = list(config.vi_bands), config.spatial_chunks()
    if config.source == "synthetic":
        wanted = {"modis": bands, "tropomi": [config.coarse_band]}
        if config.difficulty == "hard":  # coarse values over partial footprints
            wanted["footprint"] = ["weight"]
        scene, catalog = recipe.write_synthetic("downscale", config, out, wanted)
        opened = [
            xf.open_stac(catalog / key / "collection.json", assets=names, chunks=chunks)
            for key, names in wanted.items()
        ]
        return *opened[:2], (opened[2] if len(opened) > 2 else None), scene["truth_sif"]
    fine_grid, coarse_grid = config.grid(), config.grid(config.coarse_resolution)
    if config.source == "stac":
        reads = [
            (config.fine_collection, fine_grid, dict(zip(config.fine_assets, bands, strict=True))),
            (config.coarse_collection, coarse_grid, {config.coarse_asset: config.coarse_band}),
        ]
        if config.footprint_collection:
            reads.append(
                (config.footprint_collection, fine_grid, {config.footprint_asset: "weight"})
            )
        opened = [
            config.select_dates(xf.open_stac(path, grid=grid, assets=assets, chunks=chunks))
            for path, grid, assets in reads
        ]
        fine, coarse, footprint = *opened[:2], (opened[2] if len(opened) > 2 else None)
    else:
        dates = {"start": config.start, "end": config.end, "chunks": {"time": 1, **chunks}}
        fine = xf.open_ee(config.fine_collection, grid=fine_grid, bands=bands, **dates)
        coarse = xf.open_ee(
            config.coarse_collection, grid=coarse_grid, bands=[config.coarse_band], **dates
        )
        footprint = None
    if config.vi_scale != 1.0:
        fine = fine.xf.scale(config.vi_scale)
    return fine, coarse, footprint, None


def _metrics(cubes, factor, unet, ridge, train, validation, config) -> dict[str, Any]:
    """Sizes, training and the scores of the U-Net and both baselines on the held-out strip."""
    held = cubes["regions"].values == HELDOUT  # xf: computes nothing (already computed)
    fields = {name: cubes[name].isel(band=0).values for name in ("downscaled", *BASELINES)}
    optional = {k: cubes[k].isel(band=0).values for k in ("truth", "footprint") if k in cubes}
    scores = downscaling.downscaling_scores(
        fields, cubes["coarse"].isel(band=0).values, held, factor,
        truth=optional.get("truth"), weights=optional.get("footprint"),
    )  # fmt: skip
    metrics: dict[str, Any] = {
        "factor": factor,
        "periods": [str(t)[:10] for t in cubes["downscaled"].time.values],
        "n_train_samples": int(train.sizes["sample"]),
        "n_validation_samples": int(validation.sizes["sample"]),
        "n_heldout_pixels": int(held.sum()),
        "epochs_run": len(unet.history_["loss"]),
        "best_val_loss": float(np.min(unet.history_["val_loss"])),
        "constrain": config.constrain,
        "footprints": "footprint" in cubes,
    }
    for name, prefix in (("downscaled", ""), ("bilinear", "bilinear_"), ("ridge", "ridge_")):
        metrics |= {prefix + key: value for key, value in scores[name].items()}
    if "truth" in cubes:
        metrics["rmse_ratio"] = metrics["rmse"] / metrics["bilinear_rmse"]
        metrics["ridge_rmse_ratio"] = metrics["ridge_rmse"] / metrics["bilinear_rmse"]
    metrics["ridge_coef"] = [float(c) for c in np.ravel(ridge.coef_)]
    return metrics


def _baselines(metrics: dict[str, Any]) -> dict[str, Any]:
    """Compare the U-Net with both baselines: by ``rmse`` (truth) or ``aggregation_rmse`` (none).

    With a truth, the largest aggregation error over the observations' range is compared too
    (``baselines["aggregation"]``, ``aggregation_beats_baseline``).
    """

    def versus(key: str) -> dict[str, Any]:
        scores = {name: {key: metrics[f"{name}_{key}"]} for name in BASELINES}
        return recipe.baseline_block(
            {key: metrics[key]}, scores, metric=key, higher_is_better=False
        )

    block = versus("rmse" if "rmse" in metrics else "aggregation_rmse")
    if "rmse" in metrics:
        aggregation = versus("aggregation_max_error_fraction")
        block["baselines"]["aggregation"] = aggregation["baselines"]
        block["aggregation_beats_baseline"] = aggregation["beats_baseline"]
    return block


def _figures(out: Path, cubes: dict, metrics: dict, unet: Any, config: Config) -> dict[str, Path]:
    """Draw the maps at the season's peak, the held-out truth panels and the training curves."""
    t = int(np.nanargmax(np.nanmean(cubes["coarse"].isel(band=0).values, axis=(1, 2))))  # peak
    held = cubes["regions"].values == HELDOUT
    paths = {"maps": out / "downscale_maps.png"}
    titles = {"coarse": "coarse observation", "bilinear": "bilinear", "ridge": "pixel ridge",
              "downscaled": "U-Net (coarse-supervised)", "truth": "truth"}  # fmt: skip
    downscaling.plot_downscaled(
        {title: cubes[name] for name, title in titles.items() if name in cubes}, held, time=t,
        units=config.coarse_band, path=paths["maps"],
        title=f"{config.coarse_band} {metrics['periods'][t]} (held-out strip right of the dashes)",
    )  # fmt: skip
    if "truth" in cubes:
        paths["panels"] = out / "downscale_panels.png"
        xf.viz.plot_panels(
            cubes["truth"].isel(time=t).where(held), cubes["downscaled"].isel(time=t).where(held),
            titles=["truth (held out)", "U-Net"], units=config.coarse_band, path=paths["panels"],
        )  # fmt: skip
    paths["loss"] = out / "training_loss.png"
    xf.viz.plot_loss(unet.history_, path=paths["loss"])
    return paths
