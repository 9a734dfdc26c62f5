"""Night-light radiance at Landsat resolution from daytime Landsat 8 bands with a U-Net.

The recipe generalises a published workflow (Nairobi and Abuja evaluation regions): a
cloud-masked median composite of Landsat 8 surface reflectance (seven optical bands) and surface
temperature (thermal bands clamped to 273.15–373.15 K and rescaled to 0–1) is paired with the
median of VIIRS monthly night lights (``avg_rad`` ÷ 60) resampled onto the 30 m grid; a
regression U-Net is trained on patches cut from training regions (MSE loss, SGD in the workflow,
Adam by default here because it converges in fewer CPU epochs), then applied blockwise over the
whole region with a halo around every block, and scored on separate evaluation regions. A
pixelwise :class:`~xfusion.models.Ridge` fitted on the same training pixels is the baseline.

The steps of :func:`run`:

1. prepare ``out_dir``;
2. open the sources lazily: the synthetic scene written as a local STAC catalog and read back
   with :func:`xfusion.open_stac` (``source="synthetic"``), STAC catalogs (``"stac"``), or Earth
   Engine collections through :func:`xfusion.open_ee` (``"ee"``);
3. preprocess lazily: QA_PIXEL cloud/shadow bits, the optical valid range, Collection-2 scaling,
   thermal clamp and rescale, median composites, VIIRS normalisation and resampling to 30 m;
4. cut training patches from the training region (and validation patches from the evaluation
   region, for the loss curves only) and fit the U-Net and the Ridge baseline (this computes);
5. predict radiance over the whole region lazily with ``cube.xf.predict(model)``;
6. score both models on the evaluation region: against the 30 m radiance truth where the
   scene has one (synthetic), and against VIIRS itself at its own resolution;
7. write ``outputs.zarr``, ``radiance.tif``, PNG figures, ``metrics.json``, the U-Net
   (``model/``) and the baseline (``baseline_model/``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import dask
import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import ConfigError, GridError, InputError
from xfusion.grids import geobox_of
from xfusion.grids import grid as make_grid
from xfusion.recipes._base import (
    RecipeConfig,
    RecipeResult,
    prepare_out_dir,
    show_progress,
    write_cog,
    write_json,
    write_outputs,
)

__all__ = ["REAL_SOURCES", "Config", "run"]

log = logging.getLogger(__name__)

_SOURCES = ("synthetic", "stac", "ee")
_OPTIMIZERS = ("sgd", "adam", "adamw")
_TARGET = "avg_rad"

#: The real datasets of the published workflow (Earth Engine ids, bands, dates, region).
REAL_SOURCES: dict[str, Any] = {
    "source": "ee",
    # Nairobi and its surroundings (an evaluation region of the workflow).
    "region": (36.60, -1.45, 37.10, -1.10),
    "region_crs": "EPSG:4326",
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
    "n_val_patches": 200,
    "preset": "seed",
    "optimizer": "sgd",
    "learning_rate": 0.01,
    "batch_size": 48,
    "epochs": 10,
    "chunk": 512,
}


@dataclasses.dataclass
class Config(RecipeConfig):
    """Configuration of the night-lights recipe; the defaults run offline on a synthetic scene.

    Load one from TOML with ``Config.from_toml(path)`` (top-level keys, or one
    ``[nightlights]`` table); :meth:`real_sources` gives the configuration of the published
    workflow on Earth Engine: Landsat 8 Collection-2 Level-2 (``LANDSAT/LC08/C02/T1_L2``) and
    VIIRS stray-light corrected monthly night lights (``avg_rad`` of
    ``NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG``), 2020–2022, over Nairobi. For STAC, set
    ``source="stac"``, ``landsat_collection`` to a Landsat C2 L2 collection or item collection
    (e.g. Planetary Computer's ``landsat-c2-l2``, whose assets are named ``red``, ``nir08``,
    ``lwir11``, ``qa_pixel`` …: list them in ``optical_bands``/``thermal_bands``/``qa_band``),
    ``viirs_collection`` to a VIIRS monthly collection, and a ``region``.

    Parameters
    ----------
    out_dir : str
        Where outputs are written (created if missing).
    seed : int
        Seed of the synthetic scene, of the patch draw (validation patches use ``seed + 1``) and
        of the U-Net's initialisation, shuffling and augmentation.
    source : {"synthetic", "stac", "ee"}
        ``"synthetic"``: :func:`xfusion.datasets.synthetic_scene` written as a local STAC catalog
        in ``out_dir/stac`` and opened with :func:`xfusion.open_stac`. ``"stac"``: the
        ``*_collection`` fields are paths or URLs of STAC catalogs, collections or items.
        ``"ee"``: they are Earth Engine collection ids, opened with :func:`xfusion.open_ee`
        (initialise Earth Engine first).
    resume : bool
        Continue the ``outputs.zarr.partial`` of an interrupted run with the same
        configuration rather than starting over (see :mod:`xfusion.recipes._base`).
    size : int
        Synthetic scene only: pixels (30 m) along each side, a multiple of 16 (the VIIRS pixel
        is 16 Landsat pixels) and at least ``3 * patch_size / 2``. The default, 384 px
        (11.5 km), puts several towns in both the training and the evaluation region; on
        smaller scenes the evaluation strip may hold a single small town, and scores vary more
        from seed to seed.
    region : (left, bottom, right, top), optional
        Area to map, in ``region_crs``. Required for ``"ee"``; for ``"stac"`` it defaults to the
        Landsat items' own grid, for ``"synthetic"`` it is the scene.
    region_crs : str
        CRS of ``region`` (default longitude/latitude).
    crs : str, optional
        CRS of the 30 m grid where a ``region`` is given (required for ``"ee"``). Nairobi:
        ``"EPSG:32737"`` (UTM 37S).
    resolution : float
        Pixel size of the Landsat grid in ``crs`` units (30 m).
    viirs_resolution : float
        Pixel size at which VIIRS is read where a ``region`` is given: a multiple of
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
        not overlap). Default: the west ``train_fraction`` of the grid trains, the rest
        evaluates, split on a VIIRS pixel edge.
    train_fraction : float
        Share of the grid's width used for training when the regions are not given.
    patch_size : int
        Side of the training patches in pixels (a multiple of ``2 ** depth`` of the U-Net; the
        workflow used 256).
    n_patches : int
        Training patches drawn from the training region.
    n_val_patches : int
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
        Mini-batch size (the workflow: 48) and passes over the training patches.
    augment : bool
        Random flips and quarter turns of the training patches.
    bn_momentum : float
        Momentum of the BatchNorm running statistics used at prediction time. They start from
        mean 0 and variance 1 and must forget those within the run: ``bn_momentum ** steps``
        should be small (0.9 over the default run's 30 steps leaves 4 %; use less for shorter
        runs, 0.99 for long ones).
    ridge_alpha : float
        Regularisation of the pixelwise Ridge baseline.
    chunk : int
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
        "ee": ("landsat_collection", "viirs_collection", "region", "crs"),
        "stac": ("landsat_collection", "viirs_collection"),
    }
    size: int = 384
    region: tuple[float, ...] | None = None
    region_crs: str = "EPSG:4326"
    crs: str | None = None
    resolution: float = 30.0
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
    start: str = "2021-01-01"
    end: str = "2021-12-31"
    viirs_start: str = "2021-01-01"
    viirs_end: str = "2021-12-31"
    viirs_band: str = "avg_rad"
    radiance_norm: float = 60.0
    target_resampling: str = "bilinear"
    train_region: tuple[float, ...] | None = None
    eval_region: tuple[float, ...] | None = None
    train_fraction: float = 2 / 3
    patch_size: int = 64
    n_patches: int = 48
    n_val_patches: int = 8
    coarse_supervision: bool = False
    activation: str = "linear"
    preset: str = "small"
    widths: tuple[int, ...] | None = None
    optimizer: str = "adam"
    learning_rate: float = 0.003
    momentum: float = 0.9
    batch_size: int = 16
    epochs: int = 10
    augment: bool = True
    bn_momentum: float = 0.9
    ridge_alpha: float = 1.0
    chunk: int = 128
    halo: int | None = None

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise ConfigError(f"source must be one of {list(_SOURCES)}; got {self.source!r}")
        if self.activation not in ("sigmoid", "linear"):
            raise ConfigError(f"activation must be 'sigmoid' or 'linear'; got {self.activation!r}")
        if self.target_resampling not in ("nearest", "bilinear", "cubic"):
            raise ConfigError(
                "target_resampling must be 'nearest', 'bilinear' or 'cubic'; "
                f"got {self.target_resampling!r}"
            )
        if self.optimizer not in _OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {list(_OPTIMIZERS)}; got {self.optimizer!r}"
            )
        for name in ("resolution", "viirs_resolution", "radiance_norm", "learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number; got {value!r}")
        for name in ("patch_size", "n_patches", "batch_size", "epochs", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.n_val_patches < 0:
            raise ConfigError(f"n_val_patches must be >= 0; got {self.n_val_patches}")
        if self.ridge_alpha < 0:
            raise ConfigError(f"ridge_alpha must be >= 0; got {self.ridge_alpha}")
        if not 0 <= self.bn_momentum < 1:
            raise ConfigError(f"bn_momentum must be in [0, 1); got {self.bn_momentum}")
        if not 0 < self.train_fraction < 1:
            raise ConfigError(f"train_fraction must be between 0 and 1; got {self.train_fraction}")
        ratio = self.viirs_resolution / self.resolution
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            raise ConfigError(
                f"viirs_resolution ({self.viirs_resolution}) must be a whole multiple of "
                f"resolution ({self.resolution}) so that the two grids line up"
            )
        if self.source == "synthetic" and (self.size % 16 or self.size < 3 * self.patch_size // 2):
            raise ConfigError(
                f"size must be a multiple of 16 and at least 3 * patch_size / 2 "
                f"({3 * self.patch_size // 2}); got {self.size}"
            )
        for name in ("sr_valid_range", "thermal_range"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not lo_hi[0] < lo_hi[1]:
                raise ConfigError(f"{name} must be (low, high) with low < high; got {lo_hi!r}")
        for name in ("region", "train_region", "eval_region"):
            box = getattr(self, name)
            if box is not None and (len(box) != 4 or not (box[0] < box[2] and box[1] < box[3])):
                raise ConfigError(
                    f"{name} must be (left, bottom, right, top) with left < right and "
                    f"bottom < top; got {box!r}"
                )
        if (self.train_region is None) != (self.eval_region is None):
            raise ConfigError("give both train_region and eval_region, or neither")
        if not self.optical_bands:
            raise ConfigError("optical_bands must name at least one band; got ()")
        if any(not 0 <= b < 64 for b in self.qa_bits):
            raise ConfigError(f"qa_bits must be bit positions 0..63; got {self.qa_bits!r}")
        for name in ("start", "end", "viirs_start", "viirs_end"):
            try:
                pd.Timestamp(getattr(self, name))
            except ValueError as err:
                raise ConfigError(f"{name} must be a date; got {getattr(self, name)!r}") from err
        if self.source == "ee" and (self.region is None or self.crs is None):
            raise ConfigError(
                "source='ee' needs a region and a crs, e.g. region=(36.6, -1.45, 37.1, -1.1), "
                "crs='EPSG:32737' (see Config.real_sources())"
            )

    @classmethod
    def real_sources(cls, **overrides: Any) -> Self:
        """Return the configuration of the published workflow (Earth Engine, Nairobi, 2020–2022).

        Landsat 8 C2 L2 (``LANDSAT/LC08/C02/T1_L2``: ``SR_B1``–``SR_B7``, ``ST_B10``,
        ``QA_PIXEL``), VIIRS ``avg_rad`` of ``NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG`` ÷ 60,
        256-px patches, the workflow's U-Net (``preset="seed"``), SGD, batch 48. ``overrides``
        replace any field (``out_dir=...``).
        """
        return cls.from_dict({**REAL_SOURCES, **overrides})

    @property
    def factor(self) -> int:
        """VIIRS pixel size in Landsat pixels (16)."""
        return round(self.viirs_resolution / self.resolution)


# ---------------------------------------------------------------------------------------------
# run


def run(config: Config) -> RecipeResult:
    """Run the night-lights recipe and write its outputs to ``config.out_dir``.

    This function computes: it persists the 30 m features and target once (in memory, or on the
    workers of a ``distributed`` client), cuts patches, fits both models, predicts over the
    region, scores the evaluation region and writes every output.

    Parameters
    ----------
    config : Config
        The configuration (see :class:`Config`); the defaults run offline on a synthetic scene.

    Returns
    -------
    RecipeResult
        ``metrics``: on the evaluation region, the U-Net's ``rmse``, ``r2``, ``mae`` and the
        Ridge baseline's ``baseline_rmse``, ``baseline_r2``, ``baseline_mae`` against
        ``reference`` (``"truth"``: the scene's 30 m radiance, else ``"viirs"``: the VIIRS value
        of every 30 m pixel), their ratio ``rmse_ratio``, ``rmse_radiance`` (nW/cm²/sr), the
        same against VIIRS at its own resolution (``coarse_rmse``, ``coarse_r2``,
        ``baseline_coarse_rmse``, ``baseline_coarse_r2``: predictions averaged over VIIRS
        pixels), the final training loss and patch and pixel counts. ``cubes``: ``features``
        ``(band, y, x)``, ``viirs`` (normalised, its own grid), ``target`` (VIIRS on the 30 m
        grid), ``prediction``, ``baseline``, ``difference`` (prediction − reference) and, for
        synthetic scenes, ``truth``. ``figures``: PNG paths. ``files``: the Zarr store, the COG,
        ``metrics.json``, the two model directories and the config.

    Examples
    --------
    >>> import tempfile
    >>> config = Config(out_dir=tempfile.mkdtemp(), size=128, n_patches=8, epochs=1)
    >>> result = run(config)  # doctest: +SKIP
    >>> sorted(result.figures)  # doctest: +SKIP
    ['baseline_panels', 'loss', 'panels', 'quicklook']
    """
    if not isinstance(config, Config):
        raise InputError(f"run expects a nightlights Config; got {type(config).__name__}")
    out = prepare_out_dir(config.out_dir, config=config)
    log.info("nightlights: opening %s sources", config.source)
    sources, truth = _open_sources(config, out)
    features, viirs, target = _preprocess(config, sources)
    grid = geobox_of(features)
    train_box, eval_box = _regions(config, grid, geobox_of(viirs))
    features, viirs, target, truth = dask.persist(features, viirs, target, truth)
    log.info("nightlights: cutting patches and fitting the U-Net and the Ridge baseline")
    train, val = _patches(config, features, target, train_box)
    model = _fit_unet(config, train, val)
    baseline = _fit_ridge(config, train)
    prediction = _predict(config, features, model)
    ridge_map = _predict(config, features, baseline)
    prediction, ridge_map = dask.persist(prediction, ridge_map)
    reference = truth if truth is not None else target
    metrics = _metrics(
        config, model, train, prediction, ridge_map, reference, viirs, eval_box, truth is not None
    )
    cubes = {
        "features": features,
        "viirs": viirs,
        "target": target,
        "prediction": prediction,
        "baseline": ridge_map,
        "difference": (prediction - reference).rename("difference"),
    }
    if truth is not None:
        cubes["truth"] = truth
    log.info("nightlights: writing outputs to %s", out)
    files = _write_outputs(config, out, cubes, model, baseline, metrics)
    figures = _figures(config, out, cubes, reference, eval_box, model)
    return RecipeResult("nightlights", metrics, cubes, figures, out, files)


# --- sources ----------------------------------------------------------------------------------


def _landsat_assets(config: Config) -> list[str]:
    return [*config.optical_bands, *config.thermal_bands, config.qa_band]


def _open_sources(config: Config, out: Path) -> tuple[dict[str, xr.DataArray], xr.DataArray | None]:
    """Open ``landsat`` (digital numbers) and ``viirs`` lazily; the truth for synthetic scenes."""
    if config.source == "ee":
        return _open_ee_sources(config), None
    paths: dict[str, Any] = {
        "landsat": config.landsat_collection,
        "viirs": config.viirs_collection,
    }
    truth_path = None
    if config.source == "synthetic":
        from xfusion.datasets import synthetic_scene, write_stac

        scene = synthetic_scene("nightlights", seed=config.seed, size=config.size)
        written = {k: scene[k] for k in ("landsat", "viirs", "truth_radiance")}
        catalog = write_stac(written, out / "stac", encodings=scene.encodings).parent
        paths = {k: catalog / k / "collection.json" for k in ("landsat", "viirs")}
        truth_path = catalog / "truth_radiance" / "collection.json"
    sources = _open_stac_sources(config, paths)
    truth = None
    if truth_path is not None:
        from xfusion.io.stac import open_stac

        radiance = open_stac(truth_path, grid=geobox_of(sources["landsat"]))
        truth = (radiance.isel(time=0, drop=True) / config.radiance_norm).rename("truth")
    return sources, truth


def _region_grids(config: Config) -> tuple[Any, Any]:
    """Return the VIIRS grid over ``config.region`` and the 30 m grid with its bounds (or Nones)."""
    if config.region is None:
        return None, None
    from odc.geo.geom import BoundingBox

    crs = config.crs or config.region_crs
    bbox = BoundingBox(*config.region, crs=config.region_crs).to_crs(crs)
    coarse = make_grid(tuple(bbox), crs, config.viirs_resolution)
    fine = make_grid(tuple(coarse.boundingbox), crs, config.resolution)
    return fine, coarse


def _open_stac_sources(config: Config, paths: Mapping[str, Any]) -> dict[str, xr.DataArray]:
    from xfusion.io.stac import open_stac

    fine, coarse = _region_grids(config)
    landsat = open_stac(
        paths["landsat"], grid=fine, assets=_landsat_assets(config), scale_offset=False
    )
    viirs = open_stac(paths["viirs"], grid=coarse, assets=[config.viirs_band])
    return {"landsat": landsat, "viirs": viirs}


def _ee_end(date: str) -> str:
    """Earth Engine's end date is excluded; the config's is included."""
    return (pd.Timestamp(date) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")


def _open_ee_sources(config: Config) -> dict[str, xr.DataArray]:
    from xfusion.io.ee import open_ee

    fine, coarse = _region_grids(config)
    landsat = open_ee(
        config.landsat_collection,
        grid=fine,
        start=config.start,
        end=_ee_end(config.end),
        bands=_landsat_assets(config),
    )
    viirs = open_ee(
        config.viirs_collection,
        grid=coarse,
        start=config.viirs_start,
        end=_ee_end(config.viirs_end),
        bands=[config.viirs_band],
    )
    return {"landsat": landsat, "viirs": viirs}


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
    config: Config, sources: Mapping[str, xr.DataArray]
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Return the 30 m features, the normalised VIIRS composite and VIIRS on the 30 m grid."""
    features = _landsat_features(config, sources["landsat"])
    grid, coarse = geobox_of(features), geobox_of(sources["viirs"])
    factor = coarse.resolution.x / grid.resolution.x
    if config.coarse_supervision and abs(factor - round(factor)) > 1e-6:
        raise GridError(
            f"coarse supervision needs VIIRS pixels that are whole multiples of the Landsat "
            f"pixels; got {abs(coarse.resolution.x)} and {abs(grid.resolution.x)}"
        )
    viirs = sources["viirs"].sel(band=[config.viirs_band])
    viirs = viirs.xf.composite("median", start=config.viirs_start, end=config.viirs_end)
    viirs = (viirs / config.radiance_norm).astype("float32").rename("viirs")
    target = viirs.xf.resample(grid, config.target_resampling).rename("target")
    return features, viirs, target


def _regions(config: Config, grid: Any, coarse: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Training and evaluation boxes in the grid's CRS (default: a west/east split)."""
    if config.train_region is not None and config.eval_region is not None:
        train, held = tuple(config.train_region), tuple(config.eval_region)
        overlap = min(train[2], held[2]) > max(train[0], held[0]) and min(train[3], held[3]) > max(
            train[1], held[1]
        )
        if overlap:
            raise ConfigError(f"train_region {train} and eval_region {held} overlap")
        return train, held
    left, bottom, right, top = grid.boundingbox
    step = abs(coarse.resolution.x)
    cells = max(round((right - left) / step), 2)
    split = left + min(max(round(config.train_fraction * cells), 1), cells - 1) * step
    return (left, bottom, split, top), (split, bottom, right, top)


# --- training -----------------------------------------------------------------------------------


def _patches(
    config: Config,
    features: xr.DataArray,
    target: xr.DataArray,
    train_box: tuple[float, ...],
) -> tuple[xr.Dataset, xr.Dataset | None]:
    """Training patches, and validation patches, both from ``train_box``.

    The validation patches (another draw, ``seed + 1``) choose the U-Net's best epoch, so they
    never come from the evaluation region, which stays unseen until scoring.
    """
    stack = xr.concat([features, target.assign_coords(band=[_TARGET])], dim="band")
    train = stack.xf.patches(
        _TARGET, size=config.patch_size, n=config.n_patches, seed=config.seed, regions=[train_box]
    )
    val = None
    if config.n_val_patches:
        val = stack.xf.patches(
            _TARGET,
            size=config.patch_size,
            n=config.n_val_patches,
            seed=config.seed + 1,
            regions=[train_box],
        )
    return train, val


def _fit_unet(config: Config, train: xr.Dataset, val: xr.Dataset | None) -> Any:
    from xfusion.models import UNetRegressor

    model = UNetRegressor(
        loss="masked_mse",
        activation=config.activation,
        coarse_factor=config.factor if config.coarse_supervision else None,
        preset=config.preset,
        widths=config.widths,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        batch_size=config.batch_size,
        epochs=config.epochs,
        augment=config.augment,
        bn_momentum=config.bn_momentum,
        halo=config.halo,
        seed=config.seed,
        progress=show_progress(),
    )
    return model.fit(train, validation_data=val)


def _pixel_rows(train: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every valid pixel of the training patches as rows ``(pixels, bands)`` and targets."""
    inputs = train["inputs"].transpose("sample", "y", "x", "band").data
    x = np.reshape(inputs, (-1, train.sizes["band"]))
    y = np.reshape(train["target"].isel(target_band=0).data, (-1,))
    keep = np.isfinite(x).all(axis=1) & np.isfinite(y)
    return x[keep], y[keep]


def _fit_ridge(config: Config, train: xr.Dataset) -> Any:
    """Fit the pixelwise baseline on the same training pixels as the U-Net."""
    from xfusion.models import Ridge

    x, y = _pixel_rows(train)
    bands = [str(b) for b in train.band.values]
    rows = pd.DataFrame(x, columns=bands)
    return Ridge(alpha=config.ridge_alpha).fit(rows, y)


def _predict(config: Config, features: xr.DataArray, model: Any) -> xr.DataArray:
    """Lazy prediction over the whole grid, blockwise (with a halo for the U-Net)."""
    cube = features.chunk({"band": -1, "y": config.chunk, "x": config.chunk})
    if hasattr(model, "inference_state"):
        pred = cube.xf.predict(model, halo=config.halo)
    else:
        pred = cube.xf.predict(model)
    return pred.assign_coords(band=[_TARGET]).astype("float32")


# --- scores -----------------------------------------------------------------------------------


def _window(da: xr.DataArray, box: tuple[float, ...]) -> xr.DataArray:
    """Pixels of ``da`` whose centres lie inside ``box``."""
    left, bottom, right, top = box
    x, y = da.x, da.y
    return da.isel(
        x=np.flatnonzero((x.values > left) & (x.values < right)),
        y=np.flatnonzero((y.values > bottom) & (y.values < top)),
    )


def _scores(pred: np.ndarray, truth: np.ndarray, prefix: str = "") -> dict[str, float]:
    ok = np.isfinite(pred) & np.isfinite(truth)
    p, t = pred[ok].astype(np.float64), truth[ok].astype(np.float64)
    if p.size == 0:
        raise InputError("the evaluation region holds no pixel where prediction and truth exist")
    err = p - t
    total = np.sum((t - t.mean()) ** 2)
    return {
        f"{prefix}rmse": float(np.sqrt(np.mean(err**2))),
        f"{prefix}mae": float(np.mean(np.abs(err))),
        f"{prefix}r2": float(1.0 - np.sum(err**2) / total) if total > 0 else float("nan"),
        f"{prefix}n_pixels": int(p.size),
    }


def _metrics(
    config: Config,
    model: Any,
    train: xr.Dataset,
    prediction: xr.DataArray,
    ridge_map: xr.DataArray,
    reference: xr.DataArray,
    viirs: xr.DataArray,
    eval_box: tuple[float, ...],
    has_truth: bool,
) -> dict[str, Any]:
    coarse = geobox_of(viirs)
    coarse_pred = prediction.xf.resample(coarse, "average")
    coarse_ridge = ridge_map.xf.resample(coarse, "average")
    arrays = [
        _window(a, eval_box).isel(band=0).data
        for a in (prediction, ridge_map, reference, coarse_pred, coarse_ridge, viirs)
    ]
    pred, ridge, ref, c_pred, c_ridge, c_viirs = dask.compute(*arrays)  # xf: computes the scores
    metrics: dict[str, Any] = {
        "reference": "truth" if has_truth else "viirs",
        **_scores(pred, ref),
        **_scores(ridge, ref, "baseline_"),
    }
    metrics["rmse_ratio"] = metrics["rmse"] / metrics["baseline_rmse"]
    metrics["rmse_radiance"] = metrics["rmse"] * config.radiance_norm
    metrics["baseline_rmse_radiance"] = metrics["baseline_rmse"] * config.radiance_norm
    metrics.update(_scores(c_pred, c_viirs, "coarse_"))
    metrics.update(_scores(c_ridge, c_viirs, "baseline_coarse_"))
    history = model.history_
    metrics["train_loss"] = float(history["loss"][-1])
    if "val_loss" in history:
        metrics["val_loss"] = float(history["val_loss"][-1])
    metrics["n_patches"] = int(train.sizes["sample"])
    metrics["epochs"] = int(config.epochs)
    return metrics


# --- outputs ------------------------------------------------------------------------------------


def _write_outputs(
    config: Config,
    out: Path,
    cubes: Mapping[str, xr.DataArray],
    model: Any,
    baseline: Any,
    metrics: Mapping[str, Any],
) -> dict[str, Path]:
    radiance = cubes["prediction"].rio.write_nodata(np.nan, encoded=False)
    files = {
        "zarr": write_outputs(cubes, out, config),
        "cog": write_cog(radiance, out / "radiance.tif"),
        "metrics": write_json(dict(metrics), out / "metrics.json"),
        "config": config.to_toml(out / "config.toml"),
        "model": Path(model.save(out / "model")),
        # msgpack: NetCDF weights cannot be written under a distributed client (xarray asks
        # the scheduler for a lock named after the in-memory file)
        "baseline_model": Path(baseline.save(out / "baseline_model", fmt="msgpack")),
    }
    return files


def _figures(
    config: Config,
    out: Path,
    cubes: Mapping[str, xr.DataArray],
    reference: xr.DataArray,
    eval_box: tuple[float, ...],
    model: Any,
) -> dict[str, Path]:
    """Truth/prediction/difference panels (U-Net and baseline), loss curves, a quicklook."""
    import matplotlib.pyplot as plt

    from xfusion._viz_panels import plot_loss, plot_panels
    from xfusion.viz import quicklook

    name = "truth" if "truth" in cubes else "VIIRS"
    held = _window(reference, eval_box)
    figures = {}
    for key, title in (("prediction", "U-Net"), ("baseline", "Ridge (pixelwise)")):
        path = out / ("panels.png" if key == "prediction" else "baseline_panels.png")
        fig = plot_panels(
            held,
            _window(cubes[key], eval_box),
            titles=(f"{name} (evaluation region)", title, f"{title} − {name}"),
            units=f"radiance / {config.radiance_norm:g}",
            path=path,
        )
        plt.close(fig)
        figures["panels" if key == "prediction" else "baseline_panels"] = path
    fig = plot_loss(model.history_, path=out / "loss.png")
    plt.close(fig)
    figures["loss"] = out / "loss.png"
    features = cubes["features"]
    rgb = [b for b in ("SR_B4", "SR_B3", "SR_B2") if b in features.band.values]
    panels = {}
    if len(rgb) == 3:
        panels["Landsat composite"] = features.sel(band=rgb)
    panels["VIIRS / norm"] = cubes["viirs"]
    panels["U-Net radiance / norm"] = cubes["prediction"]
    figures["quicklook"] = quicklook(panels, out / "quicklook.png")
    return figures
