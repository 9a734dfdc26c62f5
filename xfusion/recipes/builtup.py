"""Built-up area mapping from Sentinel-2 and VIIRS night lights, labelled by GHSL settlements.

The recipe generalises a published Earth Engine workflow over Bagmati (Nepal): Sentinel-2
reflectances (QA60 cloud and cirrus bits masked, ÷10000, July–December median) and VIIRS
monthly night lights (July–December median, standardised with the mean of a reference year and
the standard deviation of another) are fused on one 1 km grid; the GHSL settlement model
(``smod_code``) of the training year is binarised (classes ≥ 2 are built-up) as labels; a
random forest is trained on pixels sampled with a seed and applied lazily, pixel by pixel, to
the fused cube of every year; a change map compares the last year with the training year.

The steps of :func:`run`:

1. prepare ``out_dir``;
2. open the sources: the synthetic scene written as a local STAC catalog and read back with
   :func:`xfusion.open_stac` (``source="synthetic"``), STAC catalogs (``"stac"``), or Earth
   Engine collections through :func:`xfusion.open_ee` (``"ee"``);
3. preprocess lazily: mask, scale and composite each year, resample onto the 1 km grid,
   standardise the night lights, stack the sources into one fused cube ``(time, band, y, x)``;
4. sample labelled training points and a separate held-out sample (different seed, training
   pixels removed), with a class-balance summary;
5. fit the classifier and a night-light threshold baseline (this computes);
6. predict a built-up map per year lazily with ``cube.xf.predict(model)`` and the change map;
7. score the held-out points (and, for synthetic scenes, every year's map against the truth);
8. write ``outputs.zarr``, ``builtup.tif`` (one band per year), PNG figures, an HTML split map,
   ``metrics.json`` and the model directory.

Scikit-learn forests cannot be stored without pickle, which is not a storage format (loading
can execute code), so the model directory holds what makes the model reproducible instead: the
training table (``training_points.parquet``) and a JSON sidecar with the classifier's class,
parameters and band order. :func:`load_classifier` refits it, deterministically, from those.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import dask
import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import ConfigError, EmptySelectionError, InputError, ModelError
from xfusion.grids import geobox_of
from xfusion.grids import grid as make_grid
from xfusion.preprocess.fuse import fuse
from xfusion.preprocess.mask import CLASS_PRESETS, QA_PRESETS
from xfusion.recipes._base import (
    RecipeConfig,
    RecipeResult,
    prepare_out_dir,
    write_cog,
    write_json,
    write_outputs,
)

__all__ = ["Config", "load_classifier", "run", "save_classifier"]

log = logging.getLogger(__name__)

_SOURCES = ("synthetic", "stac", "ee")
_CLASSIFIER = "sklearn.ensemble.RandomForestClassifier"
_TABLE = "training_points.parquet"
_SIDECAR = "classifier.json"
_FORMAT_VERSION = 1

#: The real datasets of the published workflow (Earth Engine ids, bands, dates, region).
REAL_SOURCES: dict[str, Any] = {
    "source": "ee",
    "region": (84.75, 27.3, 86.1, 28.4),
    "region_crs": "EPSG:4326",
    "crs": "EPSG:32645",
    "resolution": 1000.0,
    "s2_resolution": 100.0,
    "viirs_resolution": 500.0,
    "s2_collection": "COPERNICUS/S2",
    "s2_bands": ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A"),
    "s2_qa": "QA60",
    "s2_qa_preset": "QA60",
    "s2_scale": 1e-4,
    "s2_max_cloud": 20.0,
    "viirs_collection": "NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG",
    "viirs_band": "avg_rad",
    "ghsl_collection": "JRC/GHSL/P2016/SMOD_POP_GLOBE_V1",
    "ghsl_band": "smod_code",
    "train_year": 2015,
    "inference_years": (2016, 2017, 2018, 2019),
    "n_train": 6000,
    "n_test": 3000,
}


@dataclasses.dataclass
class Config(RecipeConfig):
    """Configuration of the built-up recipe; the defaults run offline on a small synthetic scene.

    Load one from TOML with ``Config.from_toml(path)`` (top-level keys, or one ``[builtup]``
    table); :meth:`real_sources` gives the configuration of the published Earth Engine workflow
    (Sentinel-2 ``COPERNICUS/S2``, VIIRS ``NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG`` and GHSL
    ``JRC/GHSL/P2016/SMOD_POP_GLOBE_V1`` over Bagmati, Nepal).

    Parameters
    ----------
    out_dir : str
        Where outputs are written (created if missing).
    seed : int
        Seed of the synthetic scene, of the training sample (the held-out sample uses
        ``seed + 1``) and of the random forest.
    source : {"synthetic", "stac", "ee"}
        ``"synthetic"``: :func:`xfusion.datasets.synthetic_scene` written as a local STAC catalog
        in ``out_dir/stac`` and opened with :func:`xfusion.open_stac`. ``"stac"``: the
        ``*_collection`` fields are paths or URLs of STAC catalogs, collections, item collections
        or items. ``"ee"``: they are Earth Engine collection ids, opened with
        :func:`xfusion.open_ee` (initialise Earth Engine first).
    resume : bool
        Continue the ``outputs.zarr.partial`` of an interrupted run with the same
        configuration rather than starting over (see :mod:`xfusion.recipes._base`).
    size : int
        Synthetic scene only: pixels (100 m) along each side of the scene; at least 100, so the
        1 km grid has at least 10×10 pixels.
    region : (left, bottom, right, top), optional
        Area to map, in ``region_crs``. Required for ``"ee"``; by default (``None``) the extent of
        the label source (the synthetic or STAC GHSL layer) on its own grid.
    region_crs : str
        CRS of ``region`` (default longitude/latitude, ``"EPSG:4326"``).
    crs : str, optional
        CRS of the output grid; default the label source's CRS (required for ``"ee"``).
        Bagmati: ``"EPSG:32645"`` (UTM 45N).
    resolution : float
        Pixel size of the fused grid in ``crs`` units (1000 m, GHSL's native resolution).
    s2_resolution, viirs_resolution : float
        Pixel size at which Sentinel-2 and VIIRS are read before compositing, where a ``region``
        is given (``"ee"``, or ``"stac"`` with a region); otherwise the sources' native grids.
    s2_collection, viirs_collection, ghsl_collection : str
        The three sources: STAC paths or URLs (``"stac"``) or Earth Engine ids (``"ee"``);
        ignored for synthetic scenes (whose catalog has collections ``s2``, ``viirs`` and
        ``ghsl``).
    s2_bands : tuple of str
        Sentinel-2 bands used as features. Synthetic: B2, B3, B4, B8, B11, B12; the workflow
        uses B2–B8A.
    s2_qa : str
        Sentinel-2 quality band (``"QA60"``; ``"SCL"`` for L2A STAC items).
    s2_qa_preset : str
        Mask preset: a bit preset of :data:`xfusion.preprocess.mask.QA_PRESETS` (``"QA60"``:
        bits 10 opaque and 11 cirrus clouds) applied with ``mask_bits``, or a class preset of
        :data:`~xfusion.preprocess.mask.CLASS_PRESETS` (``"SCL"``) applied with
        ``mask_classes``.
    s2_scale : float
        Factor turning Sentinel-2 values into reflectance (1e-4, i.e. ÷10000; use 1.0 for STAC
        items whose ``raster:bands`` scale is applied on reading).
    s2_max_cloud : float, optional
        Earth Engine only: keep images with ``CLOUDY_PIXEL_PERCENTAGE`` below this (20).
    viirs_band : str
        Night-light radiance band (``"avg_rad"``).
    ghsl_band : str
        Settlement-model band (``"smod_code"``).
    builtup_min_class : int
        Settlement classes at or above this are built-up (2: low- and high-density clusters).
    season : (int, int)
        First and last month of each year's composite (July to December: Sentinel-2 L1C starts
        in July 2015, and every year is compared over the same months).
    train_year : int
        Year of the labels and of the training features (2015).
    inference_years : tuple of int
        Years mapped with the trained classifier (2016–2019). The training year is mapped too.
    viirs_mean_year, viirs_std_year : int
        Night lights of every year are standardised as ``(v - mean) / std`` with the mean of the
        ``viirs_mean_year`` composite (2015) and the standard deviation of the ``viirs_std_year``
        composite (2019), so all years share one scale.
    n_train : int
        Training points drawn (uniformly, ``seed``) from the valid labelled pixels.
    n_test : int
        Held-out points drawn with ``seed + 1``; training pixels are removed from them.
    stratify : bool
        Draw ``n_train`` points per class instead of uniformly.
    n_estimators : int
        Trees of the random forest.
    max_depth : int, optional
        Depth limit of the trees (default unlimited).
    figures : bool
        Write the PNG figures and the HTML split map (``False`` for batch runs).

    Examples
    --------
    >>> config = Config.from_dict({"out_dir": "out", "n_estimators": 20})
    >>> config.source, config.train_year, config.inference_years
    ('synthetic', 2015, (2016, 2017, 2018, 2019))
    >>> Config.real_sources(out_dir="bagmati").ghsl_collection
    'JRC/GHSL/P2016/SMOD_POP_GLOBE_V1'
    """

    out_dir: str = "xfusion-out/builtup"
    SOURCE_KEYS: ClassVar = {
        "ee": ("s2_collection", "viirs_collection", "ghsl_collection", "region", "crs"),
        "stac": ("s2_collection", "viirs_collection", "ghsl_collection"),
    }
    size: int = 240
    region: tuple[float, ...] | None = None
    region_crs: str = "EPSG:4326"
    crs: str | None = None
    resolution: float = 1000.0
    s2_resolution: float = 100.0
    viirs_resolution: float = 500.0
    s2_collection: str = "s2"
    viirs_collection: str = "viirs"
    ghsl_collection: str = "ghsl"
    s2_bands: tuple[str, ...] = ("B2", "B3", "B4", "B8", "B11", "B12")
    s2_qa: str = "QA60"
    s2_qa_preset: str = "QA60"
    s2_scale: float = 1e-4
    s2_max_cloud: float | None = 20.0
    viirs_band: str = "avg_rad"
    ghsl_band: str = "smod_code"
    builtup_min_class: int = 2
    season: tuple[int, ...] = (7, 12)
    train_year: int = 2015
    inference_years: tuple[int, ...] = (2016, 2017, 2018, 2019)
    viirs_mean_year: int = 2015
    viirs_std_year: int = 2019
    n_train: int = 300
    n_test: int = 10_000
    stratify: bool = False
    n_estimators: int = 60
    max_depth: int | None = None
    figures: bool = True

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise ConfigError(f"source must be one of {list(_SOURCES)}; got {self.source!r}")
        if self.source == "synthetic" and self.size < 100:
            raise ConfigError(f"size must be at least 100 pixels (10 km at 100 m); got {self.size}")
        for name in ("resolution", "s2_resolution", "viirs_resolution", "s2_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number; got {value!r}")
        for name in ("n_train", "n_test", "n_estimators"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.max_depth is not None and self.max_depth < 1:
            raise ConfigError(f"max_depth must be at least 1 or None; got {self.max_depth}")
        if len(self.season) != 2 or not 1 <= self.season[0] <= self.season[1] <= 12:
            raise ConfigError(
                f"season must be (first_month, last_month) with 1 <= first <= last <= 12; "
                f"got {self.season!r}"
            )
        if not self.inference_years:
            raise ConfigError("inference_years must name at least one year; got ()")
        if self.region is not None and (
            len(self.region) != 4
            or not (self.region[0] < self.region[2] and self.region[1] < self.region[3])
        ):
            raise ConfigError(
                f"region must be (left, bottom, right, top) with left < right and bottom < top; "
                f"got {self.region!r}"
            )
        if self.s2_qa_preset not in QA_PRESETS and self.s2_qa_preset not in CLASS_PRESETS:
            raise ConfigError(
                f"s2_qa_preset {self.s2_qa_preset!r} is not a mask preset; expected one of "
                f"{sorted(QA_PRESETS)} (bits) or {sorted(CLASS_PRESETS)} (classes)"
            )
        if not self.s2_bands:
            raise ConfigError("s2_bands must name at least one band; got ()")
        if self.source == "ee" and (self.region is None or self.crs is None):
            raise ConfigError(
                "source='ee' needs a region and a crs, e.g. region=(84.75, 27.3, 86.1, 28.4), "
                "crs='EPSG:32645' (see Config.real_sources())"
            )

    @classmethod
    def real_sources(cls, **overrides: Any) -> Self:
        """Return the configuration of the published workflow (Earth Engine, Bagmati, 2015–2019).

        Sentinel-2 L1C (``COPERNICUS/S2``, bands B2–B8A, ``CLOUDY_PIXEL_PERCENTAGE`` < 20, QA60
        bits 10/11, ÷10000), VIIRS monthly night lights (``avg_rad`` of
        ``NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG``) and GHSL SMOD (``smod_code`` of
        ``JRC/GHSL/P2016/SMOD_POP_GLOBE_V1``), July–December composites, 1 km grid in UTM 45N.
        ``overrides`` replace any field (``out_dir=...``).
        """
        return cls.from_dict({**REAL_SOURCES, **overrides})

    # The years whose composites are needed, and each year's composite window.
    def years(self) -> list[int]:
        """Return the mapped years: the training year, then the inference years (no repeats)."""
        return list(dict.fromkeys([self.train_year, *self.inference_years]))

    def window(self, year: int) -> tuple[str, str]:
        """First and last day of ``year``'s composite window (``season`` months, inclusive)."""
        first, last = self.season
        end = pd.Timestamp(year, last, 1) + pd.offsets.MonthEnd(0)
        return f"{year}-{first:02d}-01", end.strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------------------------
# run


def run(config: Config) -> RecipeResult:
    """Run the built-up recipe and write its outputs to ``config.out_dir``.

    This function computes: it samples the fused cube, fits the classifier, scores it and writes
    every output. The 1 km cubes are persisted once (in memory, or on the workers of a
    ``distributed`` client), so the sources are read once.

    Parameters
    ----------
    config : Config
        The configuration (see :class:`Config`); the defaults run offline on a synthetic scene.

    Returns
    -------
    RecipeResult
        ``metrics``: held-out ``accuracy``, ``f1``, ``precision``, ``recall`` and
        ``baseline_*`` (night-light threshold), ``class_balance_train``/``class_balance_test``,
        ``builtup_fraction`` per year and, for synthetic scenes, ``truth_f1``/``truth_accuracy``
        per year. ``cubes``: ``fused`` ``(time, band, y, x)``, ``labels``, ``builtup``
        ``(time, band, y, x)`` and ``change`` (1 gained, −1 lost, 0 unchanged between the
        training year and the last year). ``figures``: PNG paths. ``files``: the Zarr store, the
        COG, the split map, ``metrics.json``, the model directory and the config.

    Examples
    --------
    >>> import tempfile
    >>> config = Config(out_dir=tempfile.mkdtemp(), size=100, n_estimators=10,
    ...                 inference_years=(2019,))
    >>> result = run(config)  # doctest: +SKIP
    >>> result.metrics["f1"] > 0.5  # doctest: +SKIP
    True
    """
    if not isinstance(config, Config):
        raise InputError(f"run expects a builtup Config; got {type(config).__name__}")
    out = prepare_out_dir(config.out_dir, config=config)
    log.info("builtup: opening %s sources", config.source)
    sources, truth = _open_sources(config, out)
    grid = _target_grid(config, sources["ghsl"])
    fused = _fused_cube(config, sources, grid)
    labels = _labels(config, sources["ghsl"], grid)
    fused, labels = dask.persist(fused, labels)
    log.info("builtup: sampling training and held-out points")
    train, test = _samples(config, fused, labels)
    bands = [str(b) for b in fused.band.values]
    model = _fit_classifier(config, train, bands)
    baseline = _fit_baseline(train, f"viirs:{config.viirs_band}")
    builtup = _predict_maps(fused, model)
    change = _change_map(builtup, config)
    metrics = _metrics(config, model, baseline, train, test, builtup, truth, bands)
    cubes = {"fused": fused, "labels": labels, "builtup": builtup, "change": change}
    log.info("builtup: writing outputs to %s", out)
    files = _write_outputs(config, out, cubes, model, train, metrics)
    figures = {}
    if config.figures:
        figures = _figures(config, out, cubes)
        files["split_map"] = _split_map(config, out, builtup)
    return RecipeResult("builtup", metrics, cubes, figures, out, files)


# --- sources ----------------------------------------------------------------------------------


def _open_sources(config: Config, out: Path) -> tuple[dict[str, xr.DataArray], xr.DataArray | None]:
    """Open ``s2``, ``viirs`` and ``ghsl`` lazily; the truth too for synthetic scenes."""
    if config.source == "ee":
        return _open_ee_sources(config), None
    paths = {
        "s2": config.s2_collection,
        "viirs": config.viirs_collection,
        "ghsl": config.ghsl_collection,
    }
    truth_path = None
    if config.source == "synthetic":
        from xfusion.datasets import synthetic_scene, write_stac

        scene = synthetic_scene("builtup", seed=config.seed, size=config.size)
        written = {k: scene[k] for k in ("s2", "viirs", "ghsl", "truth_builtup")}
        catalog = write_stac(written, out / "stac", encodings=scene.encodings).parent
        paths = {k: catalog / k / "collection.json" for k in ("s2", "viirs", "ghsl")}
        truth_path = catalog / "truth_builtup" / "collection.json"
    sources = _open_stac_sources(config, paths)
    truth = None
    if truth_path is not None:
        from xfusion.io.stac import open_stac

        truth = open_stac(truth_path)
    return sources, truth


def _region_grid(config: Config, resolution: float) -> Any:
    """Return the grid covering ``config.region`` in ``config.crs`` (None without a region)."""
    if config.region is None:
        return None
    from odc.geo.geom import BoundingBox

    crs = config.crs or config.region_crs
    bbox = BoundingBox(*config.region, crs=config.region_crs).to_crs(crs)
    return make_grid(tuple(bbox), crs, resolution)


def _open_stac_sources(config: Config, paths: Mapping[str, Any]) -> dict[str, xr.DataArray]:
    from xfusion.io.stac import open_stac

    s2_grid = _region_grid(config, config.s2_resolution)
    viirs_grid = _region_grid(config, config.viirs_resolution)
    ghsl_grid = _region_grid(config, config.resolution)
    return {
        "s2": open_stac(paths["s2"], grid=s2_grid, assets=[*config.s2_bands, config.s2_qa]),
        "viirs": open_stac(paths["viirs"], grid=viirs_grid, assets=[config.viirs_band]),
        "ghsl": open_stac(paths["ghsl"], grid=ghsl_grid, assets=[config.ghsl_band]),
    }


def _open_ee_sources(config: Config) -> dict[str, xr.DataArray]:
    from xfusion.io.ee import open_ee

    years = [*config.years(), config.viirs_mean_year, config.viirs_std_year]
    start, end = f"{min(years)}-01-01", f"{max(years) + 1}-01-01"
    filters = None
    if config.s2_max_cloud is not None:
        filters = {"CLOUDY_PIXEL_PERCENTAGE": ("lt", config.s2_max_cloud)}
    label_start, label_end = f"{config.train_year}-01-01", f"{config.train_year + 1}-01-01"
    return {
        "s2": open_ee(
            config.s2_collection,
            grid=_region_grid(config, config.s2_resolution),
            start=start,
            end=end,
            bands=[*config.s2_bands, config.s2_qa],
            filters=filters,
        ),
        "viirs": open_ee(
            config.viirs_collection,
            grid=_region_grid(config, config.viirs_resolution),
            start=start,
            end=end,
            bands=[config.viirs_band],
        ),
        "ghsl": open_ee(
            config.ghsl_collection,
            grid=_region_grid(config, config.resolution),
            start=label_start,
            end=label_end,
            bands=[config.ghsl_band],
        ),
    }


def _target_grid(config: Config, ghsl: xr.DataArray) -> Any:
    """Return the fused grid: the region's, or the label source's extent at ``resolution``."""
    if config.region is not None:
        return _region_grid(config, config.resolution)
    gbox = geobox_of(ghsl)
    crs = config.crs or gbox.crs
    bbox = gbox.boundingbox.to_crs(crs) if config.crs else gbox.boundingbox
    return make_grid(tuple(bbox), crs, config.resolution)


# --- preprocessing ------------------------------------------------------------------------------


def _s2_reflectance(config: Config, s2: xr.DataArray) -> xr.DataArray:
    """Cloud-masked Sentinel-2 reflectance (the quality band dropped)."""
    if config.s2_qa_preset in QA_PRESETS:
        masked = s2.xf.mask_bits(config.s2_qa, config.s2_qa_preset)
    else:
        masked = s2.xf.mask_classes(config.s2_qa, config.s2_qa_preset)
    return masked.xf.scale(config.s2_scale)


def _season(config: Config, cube: xr.DataArray, year: int, what: str) -> xr.DataArray:
    """Return the median composite of ``year``'s season (a clear error if it has no image)."""
    start, end = config.window(year)
    try:
        return cube.xf.composite("median", start=start, end=end)
    except EmptySelectionError as err:
        raise EmptySelectionError(
            f"{what} has no image for {year} ({start} to {end}): {err}"
        ) from err


def _fused_cube(config: Config, sources: Mapping[str, xr.DataArray], grid: Any) -> xr.DataArray:
    """Stack S2 and standardised VIIRS composites per year on ``grid``: (time, band, y, x)."""
    reflectance = _s2_reflectance(config, sources["s2"])
    viirs = sources["viirs"]

    def lights(year: int) -> xr.DataArray:
        return _season(config, viirs, year, "VIIRS").xf.resample(grid, "average")

    mean_ref, std_ref = lights(config.viirs_mean_year), lights(config.viirs_std_year)
    layers = []
    for year in config.years():
        s2_year = _season(config, reflectance, year, "Sentinel-2")
        viirs_year = lights(year).xf.standardize(mean=mean_ref, std=std_ref)
        layers.append(fuse({"s2": s2_year, "viirs": viirs_year}, grid=grid, resampling="average"))
    times = pd.DatetimeIndex([pd.Timestamp(y, config.season[0], 1) for y in config.years()])
    fused = xr.concat(layers, dim=pd.Index(times.as_unit("ns"), name="time"))
    return fused.transpose("time", "band", "y", "x").rename("fused")


def _labels(config: Config, ghsl: xr.DataArray, grid: Any) -> xr.DataArray:
    """Label built-up (1) / not (0) on ``grid`` from the training year's SMOD; NaN = no data."""
    start, end = f"{config.train_year}-01-01", f"{config.train_year}-12-31"
    if "time" in ghsl.dims:
        try:
            ghsl = ghsl.xf.composite("median", start=start, end=end)
        except EmptySelectionError as err:
            raise EmptySelectionError(
                f"the settlement layer has no image in {config.train_year}: {err}"
            ) from err
    smod = ghsl.sel(band=[config.ghsl_band]).xf.resample(grid, "mode")
    labels = (smod >= config.builtup_min_class).astype("float32").where(smod.notnull())
    return labels.isel(band=0, drop=True).rename("builtup_label")


# --- training ---------------------------------------------------------------------------------


def _samples(
    config: Config, fused: xr.DataArray, labels: xr.DataArray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training points (``seed``) and held-out points (``seed + 1``, training pixels removed)."""
    features = fused.sel(time=fused.time[config.years().index(config.train_year)]).drop_vars(
        ["time", "source"], errors="ignore"
    )
    train = features.xf.sample(labels, config.n_train, seed=config.seed, stratify=config.stratify)
    test = features.xf.sample(labels, config.n_test, seed=config.seed + 1)
    seen = pd.MultiIndex.from_frame(train[["x", "y"]])
    test = test[~pd.MultiIndex.from_frame(test[["x", "y"]]).isin(seen)].reset_index(drop=True)
    classes = set(train["label"].unique())
    if classes != {0.0, 1.0}:
        raise EmptySelectionError(
            f"the training sample holds labels {sorted(classes)}; both built-up (1) and not "
            "built-up (0) are needed: enlarge the region or n_train"
        )
    if len(test) == 0:
        raise EmptySelectionError(
            "no held-out point is left once the training pixels are removed; lower n_train"
        )
    return train, test


def _classifier(config: Config) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=config.n_estimators,
        max_depth=config.max_depth,
        random_state=config.seed,
        n_jobs=1,
    )


def _fit_classifier(config: Config, train: pd.DataFrame, bands: list[str]) -> Any:
    """Fit the random forest on the training table (features named like the cube's bands)."""
    model = _classifier(config)
    return model.fit(train[bands], train["label"].astype(int))


def _fit_baseline(train: pd.DataFrame, band: str) -> float:
    """Return the night-light threshold with the best F1 on the training points."""
    from sklearn.metrics import f1_score

    values = train[band].to_numpy()
    truth = train["label"].to_numpy().astype(int)
    candidates = np.unique(values)
    scores = [f1_score(truth, values >= t, zero_division=0.0) for t in candidates]
    return float(candidates[int(np.argmax(scores))])


# --- prediction and scores ---------------------------------------------------------------------


def _predict_maps(fused: xr.DataArray, model: Any) -> xr.DataArray:
    """Lazy built-up map of every year: (time, band=["builtup"], y, x), 1 built-up, 0 not."""
    cube = fused.drop_vars("source", errors="ignore")
    maps = cube.xf.predict(model)
    return maps.assign_coords(band=["builtup"]).rename("builtup")


def _change_map(builtup: xr.DataArray, config: Config) -> xr.DataArray:
    """Last year's map minus the training year's: 1 gained, -1 lost, 0 unchanged."""
    first = builtup.isel(time=config.years().index(config.train_year), drop=True)
    last = builtup.isel(time=-1, drop=True)
    return (last - first).assign_coords(band=["change"]).rename("change")


def _scores(truth: np.ndarray, pred: np.ndarray, prefix: str = "") -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    truth, pred = truth.astype(int), pred.astype(int)
    return {
        f"{prefix}accuracy": float(accuracy_score(truth, pred)),
        f"{prefix}f1": float(f1_score(truth, pred, zero_division=0.0)),
        f"{prefix}precision": float(precision_score(truth, pred, zero_division=0.0)),
        f"{prefix}recall": float(recall_score(truth, pred, zero_division=0.0)),
    }


def _metrics(
    config: Config,
    model: Any,
    threshold: float,
    train: pd.DataFrame,
    test: pd.DataFrame,
    builtup: xr.DataArray,
    truth: xr.DataArray | None,
    bands: list[str],
) -> dict[str, Any]:
    from xfusion.preprocess.sample import class_balance

    truth_test = test["label"].to_numpy()
    metrics: dict[str, Any] = {
        **_scores(truth_test, model.predict(test[bands])),
        **_scores(truth_test, test[f"viirs:{config.viirs_band}"] >= threshold, "baseline_"),
        "baseline_threshold": threshold,
        "n_train": len(train),
        "n_test": len(test),
        "class_balance_train": class_balance(train),
        "class_balance_test": class_balance(test),
    }
    years = config.years()
    fractions = builtup.isel(band=0).mean(("y", "x"))
    if truth is not None:
        truth_years = pd.DatetimeIndex(truth.time.values).year
        truth = truth.isel(band=0, drop=True).isel(time=[list(truth_years).index(y) for y in years])
        maps, truth_np, fractions_np = dask.compute(  # xf: computes the maps to score them
            builtup.isel(band=0).data, truth.data, fractions.data
        )
        for i, year in enumerate(years):
            valid = np.isfinite(maps[i]) & np.isfinite(truth_np[i])
            scores = _scores(truth_np[i][valid], maps[i][valid])
            metrics[f"truth_accuracy_{year}"] = scores["accuracy"]
            metrics[f"truth_f1_{year}"] = scores["f1"]
    else:
        (fractions_np,) = dask.compute(fractions.data)  # xf: computes the built-up share per year
    for year, fraction in zip(years, fractions_np, strict=True):
        metrics[f"builtup_fraction_{year}"] = float(fraction)
    return metrics


# --- outputs ------------------------------------------------------------------------------------


def _write_outputs(
    config: Config,
    out: Path,
    cubes: Mapping[str, xr.DataArray],
    model: Any,
    train: pd.DataFrame,
    metrics: Mapping[str, Any],
) -> dict[str, Path]:
    zarr_cubes = {k: v.drop_vars("source", errors="ignore") for k, v in cubes.items()}
    years = [str(pd.Timestamp(t).year) for t in cubes["builtup"].time.values]
    per_year = cubes["builtup"].isel(band=0, drop=True).rename(time="band")
    per_year = per_year.assign_coords(band=years).transpose("band", "y", "x")
    per_year = per_year.rio.write_nodata(np.nan, encoded=False)
    files = {
        "zarr": write_outputs(zarr_cubes, out, config),
        "cog": write_cog(per_year, out / "builtup.tif"),
        "metrics": write_json(dict(metrics), out / "metrics.json"),
        "config": config.to_toml(out / "config.toml"),
    }
    bands = [str(b) for b in cubes["fused"].band.values]
    files["model"] = save_classifier(
        model,
        train[["x", "y", *bands, "label"]],
        out / "model",
        extra={"metrics": {k: v for k, v in metrics.items() if isinstance(v, float)}},
    )
    return files


def _figures(config: Config, out: Path, cubes: Mapping[str, xr.DataArray]) -> dict[str, Path]:
    """PNG figures: the training year's inputs, one built-up map per year and the change map."""
    import matplotlib.pyplot as plt

    from xfusion._viz_panels import plot_classes
    from xfusion.viz import quicklook

    fused, builtup = cubes["fused"], cubes["builtup"]
    train_index = config.years().index(config.train_year)
    features = fused.isel(time=train_index, drop=True).drop_vars("source", errors="ignore")
    rgb = [f"s2:{b}" for b in ("B4", "B3", "B2")]
    panels = {}
    if all(b in features.band.values for b in rgb):
        panels[f"Sentinel-2 {config.train_year}"] = features.sel(band=rgb)
    panels[f"VIIRS {config.train_year} (standardised)"] = features.sel(
        band=[f"viirs:{config.viirs_band}"]
    )
    panels[f"labels: SMOD >= {config.builtup_min_class}"] = cubes["labels"].expand_dims(
        band=["label"]
    )
    figures = {"inputs": quicklook(panels, out / "inputs.png")}
    classes = {0: ("not built-up", "#d9d9d9"), 1: ("built-up", "#d7301f")}
    for i, year in enumerate(config.years()):
        path = out / f"builtup_{year}.png"
        fig = plot_classes(builtup.isel(time=i), classes, title=f"built-up {year}", path=path)
        plt.close(fig)
        figures[f"builtup_{year}"] = path
    change_classes = {
        -1: ("lost", "#2166ac"),
        0: ("unchanged", "#f0f0f0"),
        1: ("gained", "#b2182b"),
    }
    last = config.years()[-1]
    path = out / "change.png"
    fig = plot_classes(
        cubes["change"], change_classes, title=f"change {config.train_year}–{last}", path=path
    )
    plt.close(fig)
    figures["change"] = path
    return figures


def _split_map(config: Config, out: Path, builtup: xr.DataArray) -> Path:
    """Write an offline HTML map comparing the training year's map with the last year's."""
    from xfusion._viz_maps import save_html, split_map

    years = config.years()
    m = split_map(
        builtup.isel(time=years.index(config.train_year)),
        builtup.isel(time=-1),
        left_name=str(config.train_year),
        right_name=str(years[-1]),
        vmin=0,
        vmax=1,
        cmap="Reds",
    )
    return save_html(m, out / "split_map.html")


# --- the model, reproducible without pickle ----------------------------------------------------


def save_classifier(
    model: Any,
    table: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save a random forest as its training table plus a JSON sidecar (no pickle).

    The directory holds ``training_points.parquet`` (the points, features and ``label``) and
    ``classifier.json`` (class, parameters, band order, the table's SHA-256, package versions and
    ``extra``). :func:`load_classifier` refits the same forest from them: scikit-learn forests
    with a fixed ``random_state`` are deterministic, so the refitted model predicts exactly as
    the original.

    Parameters
    ----------
    model : sklearn.ensemble.RandomForestClassifier
        The fitted forest (with an integer ``random_state``).
    table : pandas.DataFrame
        The training table: one column per feature band (``model.feature_names_in_``) and a
        ``label`` column; other columns (``x``, ``y``) are kept.
    path : path-like
        Directory to write (replaced if it holds a saved classifier).
    extra : mapping, optional
        JSON-able entries for the sidecar (e.g. metrics).

    Returns
    -------
    pathlib.Path
        The directory.

    Examples
    --------
    >>> import tempfile, numpy as np, pandas as pd
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> table = pd.DataFrame({"a": np.arange(20.0), "label": np.arange(20) >= 10})
    >>> model = RandomForestClassifier(n_estimators=5, random_state=0)
    >>> model = model.fit(table[["a"]], table["label"])
    >>> path = save_classifier(model, table, tempfile.mkdtemp() + "/model")
    >>> sorted(p.name for p in path.iterdir())
    ['classifier.json', 'training_points.parquet']
    >>> again = load_classifier(path)
    >>> bool((again.predict_proba(table[["a"]]) == model.predict_proba(table[["a"]])).all())
    True
    """
    from sklearn.ensemble import RandomForestClassifier

    if type(model) is not RandomForestClassifier:
        raise ModelError(f"save_classifier saves a {_CLASSIFIER}; got {type(model).__name__}")
    bands = [str(b) for b in getattr(model, "feature_names_in_", [])]
    if not bands:
        raise ModelError("the classifier was not fitted on a table with named feature columns")
    missing = [c for c in [*bands, "label"] if c not in table.columns]
    if missing:
        raise InputError(f"table lacks columns {missing}; it has {list(table.columns)}")
    params = model.get_params()
    if not isinstance(params.get("random_state"), int):
        raise ModelError("the classifier needs an integer random_state to be refitted exactly")
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    table_path = target / _TABLE
    tmp = target / f".{_TABLE}.partial"
    table.reset_index(drop=True).to_parquet(tmp, index=False)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, table_path)
    sidecar = {
        "format_version": _FORMAT_VERSION,
        "class": _CLASSIFIER,
        "params": params,
        "bands": bands,
        "label": "label",
        "classes": [_plain(c) for c in model.classes_],
        "table": _TABLE,
        "table_sha256": digest,
        "versions": _versions(),
        **dict(extra or {}),
    }
    write_json(sidecar, target / _SIDECAR)
    return target


def load_classifier(path: str | os.PathLike[str]) -> Any:
    """Rebuild a classifier saved by :func:`save_classifier` by refitting it on its table.

    Loading never unpickles: the class must be the random forest, its parameters are checked
    against the class's own, and the table must match its checksum.

    Parameters
    ----------
    path : path-like
        Directory written by :func:`save_classifier`.

    Returns
    -------
    sklearn.ensemble.RandomForestClassifier
        Fitted, with the saved band order as ``feature_names_in_``.

    Examples
    --------
    See :func:`save_classifier`.
    """
    from sklearn.ensemble import RandomForestClassifier

    folder = Path(path)
    sidecar_path, table_path = folder / _SIDECAR, folder / _TABLE
    if not sidecar_path.is_file() or not table_path.is_file():
        raise ModelError(
            f"{folder} is not a saved classifier; expected {_SIDECAR} and {_TABLE} in it"
        )
    try:
        meta = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{sidecar_path} is not valid JSON: {err}") from err
    if meta.get("format_version") != _FORMAT_VERSION or meta.get("class") != _CLASSIFIER:
        raise ModelError(
            f"{sidecar_path} holds format {meta.get('format_version')!r} of class "
            f"{meta.get('class')!r}; expected format {_FORMAT_VERSION} of {_CLASSIFIER}"
        )
    data = table_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("table_sha256"):
        raise ModelError(f"{table_path} does not match the checksum in {_SIDECAR}")
    params = dict(meta.get("params", {}))
    unknown = sorted(set(params) - set(RandomForestClassifier().get_params()))
    if unknown:
        raise ModelError(f"{sidecar_path} has unknown classifier parameters {unknown}")
    table = pd.read_parquet(table_path)
    bands = list(meta["bands"])
    label = table[meta.get("label", "label")]
    classes = meta.get("classes")
    if classes is not None:
        label = label.astype(np.asarray(classes).dtype)
    return RandomForestClassifier(**params).fit(table[bands], label)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("xfusion", "scikit-learn", "numpy", "pandas"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out
