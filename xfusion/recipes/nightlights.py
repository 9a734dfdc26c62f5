"""Night-light radiance at Landsat resolution from daytime Landsat 8 bands with a U-Net.

The recipe generalises a published workflow (Nairobi and Abuja evaluation regions): a
cloud-masked median composite of Landsat 8 surface reflectance (seven optical bands) and surface
temperature (thermal bands clamped to 273.15–373.15 K and rescaled to 0–1) is paired with the
median of VIIRS monthly night lights (``avg_rad`` ÷ 60) resampled onto the 30 m grid; a
regression U-Net is trained on patches cut from a training region (MSE loss, SGD in the workflow,
Adam by default here because it converges in fewer CPU epochs), then applied blockwise over the
whole region with a halo around every block, and scored on a separate evaluation region.

Where the scene names its cities (the hard synthetic scene's ``region`` cube), the U-Net
standardises its target per area (``target_standardize="auto"`` → ``"per_region"``): each
city's training part is standardised by its own VIIRS statistics, and the map of every area (a
city's training, evaluation or other part) is scaled back with that area's VIIRS mean and
standard deviation, so a held-out city whose lights are ten times brighter or dimmer than the
training cities' is predicted at its own scale. ``metrics.json`` also scores VIIRS on the
30 m grid itself against the truth (``viirs_rmse``, ``viirs_r2``), what the coarse product says
without a model.

Two cheap baselines learn from the same training pixels and the same features as the U-Net: a
pixelwise :class:`~xfusion.models.Ridge` and gradient boosting
(:func:`xfusion.models.baselines.fit_baselines`). Both are mapped over the region and scored on
the same evaluation pixels. Where the reference is a 30 m truth (synthetic scenes), VIIRS
resampled onto the 30 m grid itself (``target_resampling``, no model) is a third baseline,
``viirs_resampled``: it is observed wherever the U-Net predicts, so a super-resolution model
must beat it to be worth running. ``metrics.json`` says in its ``baselines`` block whether the
U-Net beats the best of them by the margin (RMSE at least 10 % lower).

The steps of :func:`run`:

1. open the sources lazily: the synthetic scene written as a local STAC catalog
   (:func:`~xfusion.recipes._base.write_synthetic`) and read back with :func:`xfusion.open_stac`
   (``source="synthetic"``), STAC catalogs (``"stac"``) or Earth Engine collections (``"ee"``);
2. preprocess lazily: QA_PIXEL cloud/shadow bits, the optical valid range, Collection-2 scaling,
   thermal clamp and rescale, median composites, VIIRS normalisation and resampling to 30 m;
3. cut training and validation patches from the training region and fit the U-Net, the Ridge
   and the gradient boosting on them (this computes);
4. predict the three maps over the whole region lazily with ``cube.xf.predict(model)``, and
   correct the U-Net's with VIIRS (``viirs_correction``);
5. score them on the evaluation region: against the 30 m radiance truth where the scene has one
   (synthetic), else against VIIRS on the 30 m grid, and against VIIRS at its own resolution;
6. write ``outputs.zarr``, ``radiance.tif``, ``model/unet``, ``model/ridge``, ``config.toml``,
   the PNG figures and ``metrics.json`` (:func:`~xfusion.recipes._base.write_results`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Self

import dask
import pandas as pd
import xarray as xr

import xfusion.accessor  # noqa: F401  (registers ``.xf``)
from xfusion.errors import ConfigError
from xfusion.grids import geobox_of
from xfusion.grids import grid as make_grid
from xfusion.models.baselines import score_predictions
from xfusion.preprocess.holdout import boxes_overlap, patch_pixels, split_box, window
from xfusion.recipes import _base as recipe

__all__ = ["REAL_SOURCES", "Config", "real_sources", "run"]

log = logging.getLogger(__name__)

_OPTIMIZERS = ("sgd", "adam", "adamw")
_LOSSES = ("masked_mse", "huber")
_TARGET_STANDARDIZE = ("auto", "global", "per_region")
_REGION = "region"
_RESAMPLINGS = ("nearest", "bilinear", "cubic")
_CORRECTIONS = ("none", "additive")
_TARGET = "avg_rad"

#: The real datasets of the published workflow (Earth Engine ids, bands, dates, region).
REAL_SOURCES: dict[str, Any] = {
    "source": "ee",
    # Nairobi and its surroundings (an evaluation region of the workflow).
    "bounds": (36.60, -1.45, 37.10, -1.10),
    "bounds_crs": "EPSG:4326",
    "crs": "EPSG:32737",
    "resolution": 30.0,
    "viirs_resolution": 480.0,
    "landsat_collection": "LANDSAT/LC08/C02/T1_L2",
    "viirs_collection": "NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG",
    "start": "2020-01-01",
    "end": "2022-12-31",
    "viirs_start": "2020-01-01",
    "viirs_end": "2022-12-31",
    "target_resampling": "nearest",
    "patch_size": 256,
    "n_patches": 4800,
    "n_validation_patches": 200,
    "preset": "seed",
    "optimizer": "sgd",
    "learning_rate": 0.01,
    "batch_size": 48,
    "epochs": 10,
    "chunks": 512,
    "viirs_correction": "none",
}


def real_sources() -> dict[str, dict[str, Any]]:
    """Config fields that run the published workflow on real data, by source.

    ``"ee"``: Landsat 8 C2 L2 (``LANDSAT/LC08/C02/T1_L2``: ``SR_B1``–``SR_B7``, ``ST_B10``,
    ``QA_PIXEL``) and VIIRS ``avg_rad`` of ``NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG`` ÷ 60,
    2020–2022, over Nairobi; 256-px patches, the workflow's U-Net (``preset="seed"``), SGD,
    batch 48 (:data:`REAL_SOURCES`).

    Examples
    --------
    >>> Config(out_dir="nairobi", **real_sources()["ee"]).landsat_collection
    'LANDSAT/LC08/C02/T1_L2'
    """
    return {"ee": dict(REAL_SOURCES)}


@dataclasses.dataclass
class Config(recipe.ModelRecipeConfig):
    """Configuration of the night-lights recipe; the defaults run offline on a synthetic scene.

    Load one from TOML with ``Config.from_toml(path)`` (top-level keys, or one
    ``[nightlights]`` table); :func:`real_sources` (or :meth:`real_sources`) gives the
    published workflow on Earth Engine. For STAC, set ``source="stac"``, ``landsat_collection``
    to a Landsat C2 L2 collection or item collection (e.g. Planetary Computer's
    ``landsat-c2-l2``, whose assets are named ``red``, ``nir08``, ``lwir11``, ``qa_pixel`` …:
    list them in ``optical_bands``/``thermal_bands``/``qa_band``), ``viirs_collection`` to a
    VIIRS monthly collection, and ``bounds``. The fields every recipe shares (``out_dir``,
    ``seed``, ``source``, ``resume``, ``difficulty``, ``figures``, ``persist``) are documented
    in :mod:`xfusion.recipes._config`.

    Parameters
    ----------
    size : int
        Synthetic scene only: pixels (30 m) along each side, a multiple of 16 (the VIIRS pixel
        is 16 Landsat pixels; 32 for ``difficulty="hard"``) and at least ``3 * patch_size / 2``.
        The default, 384 px (11.5 km), puts several towns in both the training and the
        evaluation region; on smaller scenes scores vary more from seed to seed.
    bounds : (left, bottom, right, top), optional
        Area to map, in ``bounds_crs``. Required for ``"ee"``; for ``"stac"`` it defaults to the
        Landsat items' own grid, for ``"synthetic"`` it is the scene.
    bounds_crs : str
        CRS of ``bounds`` (default longitude/latitude).
    crs : str, optional
        CRS of the 30 m grid where ``bounds`` are given (required for ``"ee"``). Nairobi:
        ``"EPSG:32737"`` (UTM 37S).
    resolution : float
        Pixel size of the Landsat grid in ``crs`` units (30 m).
    viirs_resolution : float
        Pixel size at which VIIRS is read where ``bounds`` are given: a multiple of
        ``resolution`` (480 m = 16 × 30 m, close to VIIRS's 15 arc-seconds), so the coarse grid
        lines up with the fine one.
    landsat_collection, viirs_collection : str
        The two sources: STAC paths or URLs (``"stac"``) or Earth Engine ids (``"ee"``);
        ignored for synthetic scenes (collections ``landsat`` and ``viirs`` of the catalog).
    optical_bands : tuple of str
        Surface-reflectance bands (Collection-2 ``SR_B1`` … ``SR_B7``).
    thermal_bands : tuple of str
        Surface-temperature bands (``ST_B10``; Collection 1 also had B11).
    qa_band : str
        The quality band (``QA_PIXEL``).
    qa_bits : tuple of int
        ``QA_PIXEL`` bits whose pixels are masked: 0 fill (real scenes have fill pixels with
        reflectance > 0 along their edges), 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow
        (the workflow used Collection 1's cloud and shadow bits, which are bits 3 and 4 of
        Collection 2).
    sr_valid_range : (float, float)
        Valid optical digital numbers, both ends excluded; a pixel is dropped where any optical
        band is outside (7273–43636: reflectance 0–1 in Collection 2, like the workflow's
        ``0 < SR < 10000`` on Collection 1).
    sr_scale, sr_offset : float
        Reflectance = DN × ``sr_scale`` + ``sr_offset`` (Collection 2: 2.75e-5, −0.2).
    st_scale, st_offset : float
        Temperature (K) = DN × ``st_scale`` + ``st_offset`` (Collection 2: 0.00341802, 149).
    thermal_range : (float, float)
        Temperatures are clamped to this range (273.15–373.15 K) and rescaled to 0–1 over it.
    start, end : str
        Dates of the Landsat median composite, both included.
    viirs_start, viirs_end : str
        Dates of the VIIRS median composite, both included.
    viirs_band : str
        Night-light radiance band (``avg_rad``, nW/cm²/sr).
    radiance_norm : float
        VIIRS radiance is divided by this (60, as in the workflow); predictions and RMSE are in
        these normalised units (``rmse_radiance`` in metrics is in nW/cm²/sr).
    target_resampling : {"nearest", "bilinear", "cubic"}
        How VIIRS is resampled onto the 30 m grid to make the training target: every 30 m pixel
        takes the value of the VIIRS pixel it lies in (``"nearest"``, as Earth Engine samples
        it in the workflow), or a smooth interpolation (``"bilinear"``, the default), which has
        no block edges to learn: on the synthetic scene it lowers the U-Net's held-out RMSE
        by about a fifth.
    train_region, eval_region : (left, bottom, right, top), optional
        Boxes in the grid's CRS where training and evaluation patches and pixels lie (they must
        not overlap). Default: the east ``holdout_fraction`` of the grid evaluates, the rest
        trains, split on a VIIRS pixel edge.
    holdout_fraction : float
        Share of the grid's width (east) held out for evaluation when the regions are not given.
    patch_size : int
        Side of the training patches in pixels (a multiple of ``2 ** depth`` of the U-Net; the
        workflow used 256).
    n_patches : int
        Training patches drawn from the training region.
    n_validation_patches : int
        Validation patches (another draw from the training region, ``seed + 1``): their loss is
        drawn beside the training loss and picks the U-Net's best epoch (0: the training loss
        picks it). The evaluation region is never seen before scoring.
    coarse_supervision : bool
        Compare the prediction averaged over VIIRS pixels with VIIRS (the loss of a downscaling
        model) instead of every 30 m pixel with the VIIRS value it lies in (the workflow's).
    activation : {"linear", "sigmoid"}
        Output of the U-Net: linear (targets standardised), or a sigmoid over the training
        targets' range (the workflow's; it keeps predictions within the radiance seen in
        training).
    preset : {"small", "seed"}
        U-Net architecture (``"seed"`` is the workflow's 32-64-128-256-512 network).
    widths : tuple of int, optional
        Encoder widths overriding ``preset``.
    optimizer : {"sgd", "adam", "adamw"}
        The workflow used SGD; Adam converges in fewer epochs on a CPU.
    learning_rate, momentum : float
        Learning rate, and SGD momentum.
    batch_size, epochs : int
        Mini-batch size (the workflow: 48) and passes over the training patches (20 by
        default; the workflow used 10 of many more patches).
    loss : {"huber", "masked_mse"}
        The U-Net's loss on the (standardised) target: Huber (quadratic up to one standard
        deviation, linear beyond: bright city centres do not dominate) or the masked MSE of
        the workflow.
    target_standardize : {"auto", "per_region", "global"}
        ``"auto"`` (default): ``"per_region"`` where the scene names its cities (the hard
        synthetic scene's ``region`` cube), else ``"global"``; on a scene of one city the
        per-area scaling confuses what an area holds (a third of the scene with one bright
        town, another with none) with how brightly it is lit (standard scene, seed 2: R² −3.0
        with it). ``"per_region"``: the U-Net learns the target standardised per area — each
        city of the scene (the hard synthetic scene's ``region`` cube; one city elsewhere)
        split into its training part, its evaluation part and the rest — and every area's map
        is scaled back with the mean and standard deviation of VIIRS (on the 30 m grid) over
        that area. VIIRS is observed everywhere, so a held-out city gets its own brightness
        scale from its own VIIRS, never from its 30 m truth; the daytime bands cannot tell how
        brightly a city is lit (wealth, electrification). ``"global"``: one target mean and
        standard deviation from the training patches (the workflow's).
    augment : bool
        Random flips and quarter turns of the training patches.
    bn_momentum : float
        Momentum of the BatchNorm running statistics used at prediction time. They start from
        mean 0 and variance 1 and must forget those within the run: ``bn_momentum ** steps``
        should be small (0.9 over the default run's 30 steps leaves 4 %; use less for shorter
        runs, 0.99 for long ones).
    viirs_correction : {"additive", "none"}
        ``"additive"`` (default): the U-Net's map is made consistent with VIIRS, which is
        observed wherever the map is made: its average over every VIIRS pixel is replaced by
        VIIRS's, ``prediction + resample(viirs − average(prediction))`` (both on the 30 m grid
        with ``target_resampling``), which equals VIIRS on the 30 m grid plus the U-Net's
        detail within the VIIRS pixels. ``metrics.json`` then also holds the uncorrected map's
        ``unet_raw_rmse``, ``unet_raw_r2``, and its ``baselines`` block the uncorrected map's
        comparison (``unet_uncorrected``). Seeds 0–4, held-out RMSE: hard scene 0.090 ± 0.053
        (uncorrected 0.136 ± 0.094; VIIRS resampled 0.101 ± 0.058), standard scene 0.043 ±
        0.009 (0.067 ± 0.020; 0.053 ± 0.011). ``"none"``: the U-Net's map as predicted (the
        published workflow's, :func:`real_sources`).
    ridge_alpha : float
        Regularisation of the pixelwise Ridge baseline.
    chunks : int
        Side of the Dask blocks of the prediction (each read with a halo).
    halo : int, optional
        Context read around every block when predicting (default the model's, 64 px for depth
        3; the workflow's "kernel buffer").

    Examples
    --------
    >>> config = Config.from_dict({"out_dir": "out", "epochs": 5})
    >>> config.source, config.epochs, config.optimizer
    ('synthetic', 5, 'adam')
    >>> Config.real_sources(out_dir="nairobi").landsat_collection
    'LANDSAT/LC08/C02/T1_L2'
    """

    out_dir: str = "xfusion-out/nightlights"
    SOURCE_KEYS: ClassVar = {
        "ee": ("landsat_collection", "viirs_collection", "bounds", "crs"),
        "stac": ("landsat_collection", "viirs_collection"),
    }
    size: int = 384
    bounds_crs: str | None = "EPSG:4326"
    start: str = "2021-01-01"
    end: str = "2021-12-31"
    chunks: int = 128
    holdout_fraction: float = 1 / 3
    learning_rate: float = 0.003
    viirs_resolution: float = 480.0
    landsat_collection: str = "landsat"
    viirs_collection: str = "viirs"
    optical_bands: tuple[str, ...] = tuple(f"SR_B{i}" for i in range(1, 8))
    thermal_bands: tuple[str, ...] = ("ST_B10",)
    qa_band: str = "QA_PIXEL"
    qa_bits: tuple[int, ...] = (0, 1, 2, 3, 4)
    sr_valid_range: tuple[float, ...] = (7273.0, 43636.0)
    sr_scale: float = 2.75e-5
    sr_offset: float = -0.2
    st_scale: float = 0.00341802
    st_offset: float = 149.0
    thermal_range: tuple[float, ...] = (273.15, 373.15)
    viirs_start: str = "2021-01-01"
    viirs_end: str = "2021-12-31"
    viirs_band: str = "avg_rad"
    radiance_norm: float = 60.0
    target_resampling: str = "bilinear"
    train_region: tuple[float, ...] | None = None
    eval_region: tuple[float, ...] | None = None
    patch_size: int = 64
    n_patches: int = 48
    n_validation_patches: int = 8
    coarse_supervision: bool = False
    activation: str = "linear"
    preset: str = "small"
    widths: tuple[int, ...] | None = None
    optimizer: str = "adam"
    momentum: float = 0.9
    augment: bool = True
    bn_momentum: float = 0.9
    ridge_alpha: float = 1.0
    halo: int | None = None
    epochs: int = 20
    loss: str = "huber"
    target_standardize: str = "auto"
    viirs_correction: str = "additive"

    def checks(self) -> list[tuple[bool, str, str]]:
        """Return the rows of :meth:`validate` for this recipe's own fields."""
        ratio = self.viirs_resolution / self.resolution
        side = 32 if self.difficulty == "hard" else 16
        regions = (self.train_region, self.eval_region)
        return [
            (self.activation in ("sigmoid", "linear"), "activation", "'sigmoid' or 'linear'"),
            (self.loss in _LOSSES, "loss", f"one of {_LOSSES}"),
            (self.target_standardize in _TARGET_STANDARDIZE, "target_standardize",
             f"one of {_TARGET_STANDARDIZE}"),
            (self.target_standardize != "per_region" or (self.activation == "linear"
             and not self.coarse_supervision), "target_standardize",
             "'global' with activation='sigmoid' or coarse_supervision=True"),
            (self.target_resampling in _RESAMPLINGS, "target_resampling", f"one of {_RESAMPLINGS}"),
            (self.viirs_correction in _CORRECTIONS, "viirs_correction", f"one of {_CORRECTIONS}"),
            (self.optimizer in _OPTIMIZERS, "optimizer", f"one of {_OPTIMIZERS}"),
            (_positive(self.viirs_resolution), "viirs_resolution", "a positive number"),
            (_positive(self.radiance_norm), "radiance_norm", "a positive number"),
            (abs(ratio - round(ratio)) <= 1e-6 and round(ratio) >= 1, "viirs_resolution",
             f"a whole multiple of resolution ({self.resolution}) so that the grids line up"),
            (self.patch_size >= 1, "patch_size", ">= 1"),
            (self.n_patches >= 1, "n_patches", ">= 1"),
            (self.n_validation_patches >= 0, "n_validation_patches", ">= 0"),
            (self.ridge_alpha >= 0, "ridge_alpha", ">= 0"),
            (0 <= self.bn_momentum < 1, "bn_momentum", "in [0, 1)"),
            (self.source != "synthetic" or (self.size % side == 0
             and self.size >= 3 * self.patch_size // 2), "size",
             f"a multiple of {side} and at least 3 * patch_size / 2 ({3 * self.patch_size // 2})"),
            (_low_high(self.sr_valid_range), "sr_valid_range", "(low, high) with low < high"),
            (_low_high(self.thermal_range), "thermal_range", "(low, high) with low < high"),
            (_box(self.train_region), "train_region", "(left, bottom, right, top), left < right"),
            (_box(self.eval_region), "eval_region", "(left, bottom, right, top), left < right"),
            ((self.train_region is None) == (self.eval_region is None), "train_region",
             "given with eval_region (both train_region and eval_region, or neither)"),
            (None in regions or not boxes_overlap(*regions), "eval_region",
             f"a box that does not overlap train_region {self.train_region}"),
            (len(self.optical_bands) >= 1, "optical_bands", "at least one band"),
            (all(0 <= b < 64 for b in self.qa_bits), "qa_bits", "bit positions 0..63"),
            (_is_date(self.viirs_start), "viirs_start", "a date"),
            (_is_date(self.viirs_end), "viirs_end", "a date"),
            (self.source != "ee" or None not in (self.bounds, self.crs), "bounds",
             "set, with crs, for source='ee' (see real_sources())"),
        ]  # fmt: skip

    @classmethod
    def real_sources(cls, **overrides: Any) -> Self:
        """Return the configuration of the published workflow (:func:`real_sources`).

        ``overrides`` replace any field (``out_dir=...``).
        """
        return cls.from_dict({**REAL_SOURCES, **overrides})

    @property
    def factor(self) -> int:
        """VIIRS pixel size in Landsat pixels (16)."""
        return round(self.viirs_resolution / self.resolution)


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _low_high(pair: tuple[float, ...]) -> bool:
    return len(pair) == 2 and pair[0] < pair[1]


def _box(box: tuple[float, ...] | None) -> bool:
    return box is None or (len(box) == 4 and box[0] < box[2] and box[1] < box[3])


def _is_date(value: str) -> bool:
    try:
        pd.Timestamp(value)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# run


def run(config: Config) -> recipe.RecipeResult:
    """Run the night-lights recipe and write its outputs to ``config.out_dir``.

    This function computes: it persists the 30 m features and target once (in memory, or on the
    workers of a ``distributed`` client; ``persist=False`` leaves them lazy), cuts patches, fits
    the U-Net and both baselines, predicts over the region, scores the evaluation region and
    writes every output.

    Returns a :class:`~xfusion.recipes._base.RecipeResult`:
    ``metrics``: on the evaluation region, the U-Net's ``rmse``, ``r2``, ``mae`` and the
    Ridge baseline's ``baseline_rmse``, ``baseline_r2``, ``baseline_mae`` against
    ``reference`` (``"truth"``: the scene's 30 m radiance, else ``"viirs"``: the VIIRS value
    of every 30 m pixel), their ratio ``rmse_ratio``, ``rmse_radiance`` (nW/cm²/sr), the
    same against VIIRS at its own resolution (``coarse_rmse``, ``coarse_r2``,
    ``baseline_coarse_rmse``, ``baseline_coarse_r2``: predictions averaged over VIIRS
    pixels), ``viirs_rmse``, ``viirs_r2`` (VIIRS on the 30 m grid itself against the
    truth, synthetic scenes), the final training loss, patch and pixel counts, and the
    ``baselines`` block (Ridge, gradient boosting and, against a truth, VIIRS resampled to
    30 m, ``viirs_resampled``, scored on the same pixels; the best by RMSE) with
    ``beats_baseline``. ``cubes``: ``features`` ``(band, y, x)``, ``viirs``
    (normalised, its own grid), ``target`` (VIIRS on the 30 m grid), ``prediction``,
    ``baseline`` (the Ridge), ``baseline_hgb`` (the gradient boosting), ``difference``
    (prediction − reference) and, for synthetic scenes, ``truth``. ``figures``: PNG
    paths. ``files``: the Zarr store, the COG, ``metrics.json``, the models
    (``model_unet``, ``model_ridge``) and the config.

    Examples
    --------
    >>> import tempfile
    >>> config = Config(out_dir=tempfile.mkdtemp(), size=128, n_patches=8, epochs=1)
    >>> result = run(config)  # doctest: +SKIP
    >>> sorted(result.figures)  # doctest: +SKIP
    ['baseline_panels', 'loss', 'panels', 'quicklook']
    """
    if not isinstance(config, Config):
        raise ConfigError(f"run expects a nightlights Config; got {type(config).__name__}")
    out = recipe.prepare_out_dir(config.out_dir, config=config)
    log.info("nightlights: opening %s sources", config.source)
    sources, truth = _open_sources(config, out)
    features, viirs, target = _preprocess(config, sources)
    grid, coarse = geobox_of(features), geobox_of(viirs)  # carried from here on
    factor = recipe.coarsening_factor(features, viirs) if config.coarse_supervision else None
    train_box, eval_box = _regions(config, grid, coarse)
    if config.persist:
        features, viirs, target, truth = dask.persist(features, viirs, target, truth)
    areas = _areas(config, sources.get(_REGION), features, train_box, eval_box)
    log.info("nightlights: cutting patches, fitting the U-Net and the baselines")
    train, val = _patches(config, features, target, train_box, areas)
    unet = _fit_unet(config, train, val, factor, _train_statistics(areas, target, train_box))
    ridge, hgb = _fit_baselines(config, train)
    maps = {"prediction": unet, "baseline": ridge, "baseline_hgb": hgb}
    (maps,) = dask.persist(
        {k: _predict(config, features, m, areas=areas, target=target) for k, m in maps.items()}
    )
    raw = None
    if config.viirs_correction == "additive":
        raw = maps["prediction"]
        (maps["prediction"],) = dask.persist(_correct(config, raw, target, coarse))
    reference = truth if truth is not None else target
    metrics, scores = _metrics(
        config, unet, train, maps, reference, viirs, coarse, eval_box, target
    )
    if raw is not None:
        held = [window(a, eval_box).isel(band=0).data for a in (raw, reference)]
        raw_scores = _scores(*dask.compute(*held), "unet_raw_")  # xf: computes the scores
        metrics.update({k: v for k, v in raw_scores.items() if not k.endswith("n_pixels")})
    baselines = recipe.baseline_block({"rmse": metrics["rmse"]}, scores, metric="rmse")
    if raw is not None:
        # the same comparison for the map before the correction (the default run's map)
        uncorrected = {"rmse": metrics["unet_raw_rmse"]}
        block = recipe.baseline_block(uncorrected, scores, metric="rmse")["baselines"]
        baselines["baselines"]["unet_uncorrected"] = block
    cubes = {"features": features, "viirs": viirs, "target": target, **maps}
    cubes["difference"] = (maps["prediction"] - reference).rename("difference")
    if truth is not None:
        cubes["truth"] = truth
    log.info("nightlights: writing outputs to %s", out)
    return recipe.write_results(
        config,
        out,
        cubes,
        metrics,
        baselines=baselines,
        cog=("radiance", maps["prediction"].rio.write_nodata(float("nan"), encoded=False)),
        models={"unet": unet, "ridge": ridge},
        figures=lambda: _figures(config, out, cubes, reference, eval_box, unet),
    )


# --- sources ----------------------------------------------------------------------------------


def _landsat_assets(config: Config) -> list[str]:
    return [*config.optical_bands, *config.thermal_bands, config.qa_band]


def _open_sources(config: Config, out: Path) -> tuple[dict[str, xr.DataArray], xr.DataArray | None]:
    """Open ``landsat`` (digital numbers) and ``viirs`` lazily; the truth for synthetic scenes."""
    from xfusion.io.stac import open_stac

    if config.source == "ee":
        return _open_ee_sources(config), None
    if config.source == "stac":
        return _open_stac_sources(config, config.landsat_collection, config.viirs_collection), None
    wanted = {
        "landsat": _landsat_assets(config),
        "viirs": [config.viirs_band],
        "truth_radiance": [_TARGET],
    }
    if config.difficulty == "hard":
        wanted["region"] = ["city"]  # the city of every pixel: the regions of standardisation
    _, catalog = recipe.write_synthetic("nightlights", config, out, wanted)
    paths = [catalog / key / "collection.json" for key in wanted]
    sources = _open_stac_sources(config, *paths[:2])
    # the truth's and the regions' COGs share the Landsat grid: read on their own grid, they
    # line up with it
    radiance = open_stac(paths[2])
    if len(paths) > 3:
        sources[_REGION] = open_stac(paths[3]).isel(time=0, band=0, drop=True).rename(_REGION)
    return sources, (radiance.isel(time=0, drop=True) / config.radiance_norm).rename("truth")


def _region_grids(config: Config) -> tuple[Any, Any]:
    """Return the 30 m grid and the VIIRS grid over ``config.bounds`` (or Nones), lined up."""
    if config.bounds is None:
        return None, None
    coarse = config.grid(config.viirs_resolution)
    return make_grid(tuple(coarse.boundingbox), coarse.crs, config.resolution), coarse


def _open_stac_sources(config: Config, landsat: Any, viirs: Any) -> dict[str, xr.DataArray]:
    from xfusion.io.stac import open_stac

    fine, coarse = _region_grids(config)
    return {
        "landsat": open_stac(
            landsat, grid=fine, assets=_landsat_assets(config), scale_offset=False
        ),
        "viirs": open_stac(viirs, grid=coarse, assets=[config.viirs_band]),
    }


def _ee_end(date: str) -> str:
    """Earth Engine's end date is excluded; the config's is included."""
    return (pd.Timestamp(date) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")


def _open_ee_sources(config: Config) -> dict[str, xr.DataArray]:
    from xfusion.io.ee import open_ee

    fine, coarse = _region_grids(config)
    return {
        "landsat": open_ee(
            config.landsat_collection,
            grid=fine,
            start=config.start,
            end=_ee_end(config.end),
            bands=_landsat_assets(config),
        ),
        "viirs": open_ee(
            config.viirs_collection,
            grid=coarse,
            start=config.viirs_start,
            end=_ee_end(config.viirs_end),
            bands=[config.viirs_band],
        ),
    }


# --- preprocessing ------------------------------------------------------------------------------


def _landsat_features(config: Config, landsat: xr.DataArray) -> xr.DataArray:
    """Cloud-masked median composite: reflectance (optical) and rescaled temperature (thermal)."""
    optical, thermal = list(config.optical_bands), list(config.thermal_bands)
    masked = landsat.xf.mask_bits(config.qa_band, list(config.qa_bits))
    lo, hi = config.sr_valid_range
    masked = masked.xf.mask_range(lo, hi, inclusive=False, bands=optical)
    parts = [masked.sel(band=optical).xf.scale(config.sr_scale, config.sr_offset)]
    if thermal:
        t_lo, t_hi = config.thermal_range
        kelvin = masked.sel(band=thermal).xf.scale(config.st_scale, config.st_offset)
        parts.append((kelvin.clip(t_lo, t_hi) - t_lo) / (t_hi - t_lo))
    stacked = xr.concat(parts, dim="band") if len(parts) > 1 else parts[0]
    composite = stacked.xf.composite("median", start=config.start, end=config.end)
    return composite.astype("float32").rename("features")


def _preprocess(
    config: Config, sources: dict[str, xr.DataArray]
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Return the 30 m features, the normalised VIIRS composite and VIIRS on the 30 m grid."""
    recipe.require_bands(sources["landsat"], _landsat_assets(config), "Landsat cube")
    recipe.require_bands(sources["viirs"], [config.viirs_band], "VIIRS cube")
    features = _landsat_features(config, sources["landsat"])
    viirs = sources["viirs"].sel(band=[config.viirs_band])
    viirs = viirs.xf.composite("median", start=config.viirs_start, end=config.viirs_end)
    viirs = (viirs / config.radiance_norm).astype("float32").rename("viirs")
    target = viirs.xf.resample(features, config.target_resampling).rename("target")
    return features, viirs, target


def _regions(config: Config, grid: Any, coarse: Any) -> tuple[tuple[float, ...], ...]:
    """Training and evaluation boxes in the grid's CRS (default: split on a VIIRS pixel edge)."""
    if config.train_region is not None and config.eval_region is not None:
        return tuple(config.train_region), tuple(config.eval_region)
    return split_box(grid.boundingbox, coarse.resolution.x, config.holdout_fraction)


# --- training -----------------------------------------------------------------------------------


def _target_mode(config: Config, city: xr.DataArray | None) -> str:
    """``config.target_standardize`` with ``"auto"`` resolved (see :class:`Config`)."""
    if config.target_standardize != "auto":
        return config.target_standardize
    linear = config.activation == "linear" and not config.coarse_supervision
    return "per_region" if city is not None and linear else "global"


def _areas(
    config: Config,
    city: xr.DataArray | None,
    features: xr.DataArray,
    train_box: tuple[float, ...],
    eval_box: tuple[float, ...],
) -> xr.DataArray | None:
    """Region label of every pixel for ``target_standardize="per_region"`` (None otherwise).

    Three labels per city (the hard synthetic scene's ``region`` cube; elsewhere the whole
    grid is one city): ``3 * city + part``, ``part`` 1 inside the training box, 2 inside the
    evaluation box, 0 elsewhere. The U-Net learns each training label's target statistics
    from its training patches; when predicting, every label's target mean and standard
    deviation are those of the target (VIIRS on the 30 m grid, the product observed
    everywhere) over that label's pixels: the evaluation region is de-standardised with its own
    VIIRS statistics, never with the 30 m truth. Lazy.
    """
    if _target_mode(config, city) != "per_region":
        return None
    x, y = features.x, features.y

    def inside(box: tuple[float, ...]) -> xr.DataArray:
        left, bottom, right, top = box
        return (x > left) & (x < right) & (y > bottom) & (y < top)

    part = xr.where(inside(eval_box), 2.0, xr.where(inside(train_box), 1.0, 0.0))
    part = part.transpose("y", "x").astype("float32")
    if city is None:
        return part.rename(_REGION)
    if city.shape != part.shape:
        raise ConfigError(
            f"the region cube is {city.shape} px; expected the Landsat grid's {part.shape}"
        )
    city = xr.DataArray(city.data, dims=("y", "x"), coords=part.coords)
    return (3.0 * city.astype("float32") + part).rename(_REGION)


def _patches(
    config: Config,
    features: xr.DataArray,
    target: xr.DataArray,
    train_box: tuple[float, ...],
    areas: xr.DataArray | None = None,
) -> tuple[xr.Dataset, xr.Dataset | None]:
    """Training and validation patches (another draw, ``seed + 1``), both from ``train_box``.

    The validation patches choose the U-Net's best epoch, so they never come from the
    evaluation region, which stays unseen until scoring. With ``areas`` (per-region target
    standardisation) each patch Dataset also holds their labels, a ``region`` variable
    ``(sample, y, x)``, which is not an input.
    """
    parts = [features, target.assign_coords(band=[_TARGET])]
    if areas is not None:
        # a band like the target's (same band coordinates), split off again below
        labels = areas.data[None].astype(target.dtype)
        parts.insert(1, target.assign_coords(band=[_REGION]).copy(data=labels))
    stack = xr.concat(parts, dim="band")
    draws = [(config.n_patches, config.seed), (config.n_validation_patches, config.seed + 1)]
    train, val = (
        stack.xf.patches(_TARGET, size=config.patch_size, n=n, seed=seed, regions=[train_box])
        if n
        else None
        for n, seed in draws
    )
    if areas is not None:
        train, val = (_split_region(ds) if ds is not None else None for ds in (train, val))
    return train, val


def _split_region(patches: xr.Dataset) -> xr.Dataset:
    """Move the ``region`` band of the inputs into a ``region`` variable ``(sample, y, x)``."""
    region = patches["inputs"].sel(band=_REGION, drop=True)
    return patches.drop_sel(band=_REGION).assign(region=region)


def _train_statistics(
    areas: xr.DataArray | None, target: xr.DataArray, train_box: tuple[float, ...]
) -> dict[str, Any] | None:
    """Target mean and std of every training area (whole areas, not only the patches); computes.

    The same statistics the prediction takes from VIIRS over each area, so the training
    patches are standardised the way the map is de-standardised.
    """
    if areas is None:
        return None
    from xfusion.models.estimators import target_region_statistics

    inside = window(areas, train_box)
    return target_region_statistics(window(target, train_box), inside)


def _fit_unet(
    config: Config,
    train: xr.Dataset,
    val: xr.Dataset | None,
    factor: Any,
    statistics: dict[str, Any] | None = None,
) -> Any:
    from xfusion.models import UNetRegressor

    model = UNetRegressor(
        loss=config.loss,
        target_standardize="global" if statistics is None else "per_region",
        coarse_factor=factor,
        **config.pick(
            "activation",
            "preset",
            "widths",
            "optimizer",
            "momentum",
            "augment",
            "bn_momentum",
            "halo",
        ),
        **config.training_options(),
    )
    return model.fit(train, validation_data=val, target_statistics=statistics)


def _fit_baselines(config: Config, train: xr.Dataset) -> tuple[Any, Any]:
    """Fit the pixel Ridge and gradient boosting on every valid pixel of the patches."""
    from xfusion.models import Ridge
    from xfusion.models.baselines import fit_baselines

    rows, y = patch_pixels(train)
    ridge = Ridge(alpha=config.ridge_alpha).fit(rows, y)
    hgb = fit_baselines("regression", rows, y, seed=config.seed)["hgb"]
    return ridge, hgb


def _predict(
    config: Config,
    features: xr.DataArray,
    model: Any,
    *,
    areas: xr.DataArray | None = None,
    target: xr.DataArray | None = None,
) -> xr.DataArray:
    """Prediction over the whole grid, blockwise (with a halo for the U-Net); lazy.

    A U-Net with ``target_standardize="per_region"`` takes each area's target scale from
    ``target`` over that area (``areas``, see :func:`_areas`): those statistics are computed
    first, the map stays lazy.
    """
    cube = features.chunk({"band": -1, "y": config.chunks, "x": config.chunks})
    per_region = getattr(model, "target_standardize", "global") == "per_region"
    if per_region:
        if areas is None or target is None:
            raise ConfigError(
                "a U-Net with target_standardize='per_region' predicts with the areas' labels "
                "and the target (VIIRS on the grid) that scales them"
            )
        pred = model.predict(
            cube, regions=areas, target_reference=target.isel(band=0), halo=config.halo
        )
    elif hasattr(model, "inference_state"):
        pred = cube.xf.predict(model, halo=config.halo)
    else:
        pred = cube.xf.predict(model)
    return pred.assign_coords(band=[_TARGET]).astype("float32")


def _correct(config: Config, pred: xr.DataArray, target: xr.DataArray, coarse: Any) -> xr.DataArray:
    """``pred`` made consistent with VIIRS (``viirs_correction="additive"``); lazy.

    ``pred + resample(viirs − average(pred))``: the map's average over every VIIRS pixel
    resampled back onto the 30 m grid the way the target is (``target_resampling``) is swapped
    for VIIRS's own (``target``), so the result is VIIRS on the 30 m grid plus the U-Net's
    detail within the VIIRS pixels.
    """
    back = pred.xf.resample(coarse, "average").xf.resample(pred, config.target_resampling)
    data = pred.data + target.data.astype(pred.dtype) - back.data.astype(pred.dtype)
    return pred.copy(data=data).rename(pred.name)


# --- scores -----------------------------------------------------------------------------------


def _scores(pred: Any, truth: Any, prefix: str = "") -> dict[str, float]:
    scores = score_predictions(pred, truth, task="regression")
    named = {f"{prefix}{key}": scores[key] for key in ("rmse", "mae", "r2")}
    return {**named, f"{prefix}n_pixels": scores["n"]}


def _metrics(
    config: Config,
    unet: Any,
    train: xr.Dataset,
    maps: dict[str, xr.DataArray],
    reference: xr.DataArray,
    viirs: xr.DataArray,
    coarse: Any,
    eval_box: tuple[float, ...],
    target: xr.DataArray,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Return the metrics and the baselines' scores on the same evaluation pixels (computes)."""
    pred, ridge, hgb = (maps[k] for k in ("prediction", "baseline", "baseline_hgb"))
    coarse_maps = [m.xf.resample(coarse, "average") for m in (pred, ridge)]
    cubes = [pred, ridge, hgb, reference, *coarse_maps, viirs, target]
    arrays = [window(a, eval_box).isel(band=0).data for a in cubes]
    computed = dask.compute(*arrays)  # xf: computes the scores
    p, r, h, ref, c_pred, c_ridge, c_viirs, t = computed
    metrics: dict[str, Any] = {
        "reference": "truth" if reference.name == "truth" else "viirs",
        **_scores(p, ref),
        **_scores(r, ref, "baseline_"),
    }
    metrics["rmse_ratio"] = metrics["rmse"] / metrics["baseline_rmse"]
    metrics["rmse_radiance"] = metrics["rmse"] * config.radiance_norm
    metrics["baseline_rmse_radiance"] = metrics["baseline_rmse"] * config.radiance_norm
    metrics.update(_scores(c_pred, c_viirs, "coarse_"))
    metrics.update(_scores(c_ridge, c_viirs, "baseline_coarse_"))
    if metrics["reference"] == "truth":
        # VIIRS on the 30 m grid itself (the training target), scored like the models: what
        # the coarse product says at 30 m without any model
        metrics.update(_scores(t, ref, "viirs_"))
    metrics["train_loss"] = float(unet.history_["loss"][-1])
    if "val_loss" in unet.history_:
        metrics["val_loss"] = float(unet.history_["val_loss"][-1])
    metrics["n_patches"] = int(train.sizes["sample"])
    metrics["epochs"] = int(config.epochs)
    hgb_scores = score_predictions(h, ref, task="regression")
    scores = {
        "ridge": {k: metrics[f"baseline_{k}"] for k in ("rmse", "mae", "r2")},
        "hgb": {k: hgb_scores[k] for k in ("rmse", "mae", "r2")},
    }
    if metrics["reference"] == "truth":
        # VIIRS resampled onto the 30 m grid, no model: observed wherever the U-Net predicts,
        # the cheapest honest baseline of a super-resolution model (against VIIRS as reference
        # it would be the reference itself, so it is a baseline only against a truth)
        scores["viirs_resampled"] = {k: metrics[f"viirs_{k}"] for k in ("rmse", "mae", "r2")}
    return metrics, scores


# --- figures ------------------------------------------------------------------------------------


def _figures(
    config: Config,
    out: Path,
    cubes: dict[str, xr.DataArray],
    reference: xr.DataArray,
    eval_box: tuple[float, ...],
    unet: Any,
) -> dict[str, Path]:
    """Truth/prediction/difference panels (U-Net and Ridge), loss curves, a quicklook."""
    import matplotlib.pyplot as plt

    from xfusion.viz import plot_loss, plot_panels, quicklook

    name = "truth" if "truth" in cubes else "VIIRS"
    held = window(reference, eval_box)
    figures = {}
    for key, stem, title in (
        ("prediction", "panels", "U-Net"),
        ("baseline", "baseline_panels", "Ridge (pixelwise)"),
    ):
        figures[stem] = out / f"{stem}.png"
        fig = plot_panels(
            held,
            window(cubes[key], eval_box),
            titles=(f"{name} (evaluation region)", title, f"{title} − {name}"),
            units=f"radiance / {config.radiance_norm:g}",
            path=figures[stem],
        )
        plt.close(fig)
    figures["loss"] = out / "loss.png"
    plt.close(plot_loss(unet.history_, path=figures["loss"]))
    features = cubes["features"]
    rgb = [b for b in ("SR_B4", "SR_B3", "SR_B2") if b in features.band.values]
    panels = {"Landsat composite": features.sel(band=rgb)} if len(rgb) == 3 else {}
    panels["VIIRS / norm"] = cubes["viirs"]
    panels["U-Net radiance / norm"] = cubes["prediction"]
    figures["quicklook"] = quicklook(panels, out / "quicklook.png")
    return figures
