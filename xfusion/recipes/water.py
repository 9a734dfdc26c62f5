"""Surface-water segmentation from SAR, optical and terrain layers with a U-Net.

The recipe follows the SAR + optical surface-water workflow: L-band SAR backscatter (HH, HV), a
cloud-free optical composite (Red, NIR, SWIR1, SWIR2) and terrain (DEM and HAND, the height above
the nearest drainage) are stacked into one eight-band cube on one grid; water labels (USGS DSWE
in the workflow) mark water, land, and *no data* — clouds, cloud shadows and partial surface
water — which the loss ignores, so no-data pixels never become "land". Training chips are cut from
the western part of the scene (:func:`xfusion.patches`, chips with too much no data discarded),
two segmentation U-Nets are trained — a **SAR-only** model (SAR and terrain) and a **SAR +
optical** model (all eight bands) — and both are applied to the whole scene. The workflow cuts a
scene into 512×512 chips, predicts each and stitches the chips back together;
:func:`xfusion.predict` is the seamless version of that chip-and-stitch step: every block is read
with a halo of context, predicted, and the halo trimmed, so chip borders leave no seams. IoU, F1,
precision and recall of both maps are measured on the held-out eastern strip of the scene against
the labels, ignoring their no data.

Run it with ``run(Config())`` (offline, on a synthetic scene written as a local STAC catalog) or
``xfusion run water --config water.toml``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

import dask
import numpy as np
import xarray as xr

import xfusion.accessor  # noqa: F401  (registers ``.xf``)
from xfusion.errors import BandError, ConfigError, EmptySelectionError, InputError
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

__all__ = ["MODELS", "Config", "real_sources", "run", "segmentation_scores"]

log = logging.getLogger(__name__)

_SOURCES = ("synthetic", "stac", "ee")
_CALIBRATIONS = ("db", "palsar_dn")
_OPTIMIZERS = ("sgd", "adam", "adamw")
_LAYERS = ("sar", "optical", "terrain", "labels")
#: The two models: SAR and terrain only, and SAR + optical + terrain.
MODELS = ("sar_only", "fusion")


@dataclasses.dataclass
class Config(RecipeConfig):
    """Configuration of the SAR + optical surface-water recipe.

    The defaults run offline in well under a minute on a 128×128 synthetic scene
    (:func:`xfusion.datasets.synthetic_scene` ``("water")``: SAR in dB with 4-look speckle, a
    cloud-free optical composite, DEM, HAND and water labels with no data) written as a local STAC
    catalog, with 32×32 chips and a small U-Net. The layer fields (``sar_source`` … ``end``)
    name the workflow's real data; they are read only when ``source`` is ``"ee"`` or ``"stac"``
    (their defaults are the Earth Engine assets; :func:`real_sources` gives complete sets).
    Through :meth:`from_dict` (TOML, the command line), ``source="stac"`` needs the layer
    sources and their band names given, and ``source="ee"`` switches the keys not given to the
    Earth Engine assets' meaning: ``sar_calibration="palsar_dn"``, labels water ``(3,)`` and
    land ``(1,)`` (JRC yearly water classes).

    Parameters
    ----------
    out_dir : str
        Output folder.
    seed : int
        Seed of the synthetic scene, the chip draw and the network initialisation.
    source : {"synthetic", "stac", "ee"}
        Where the layers come from.
    resume : bool
        Continue the ``outputs.zarr.partial`` of an interrupted run with the same
        configuration rather than starting over (see :mod:`xfusion.recipes._base`).
    size : int
        Side of the synthetic scene in pixels (``source="synthetic"`` only).
    chunks : int
        Spatial chunk size (pixels) of the opened layers; also the block size of the
        chip-and-stitch prediction.
    sar_bands, optical_bands, terrain_bands : tuple of str
        Band names of the stacked cube, in this order (the workflow's HH, HV, Red, NIR, SWIR1,
        SWIR2, DEM, HAND). Source bands are renamed to these.
    sar_only_bands : tuple of str
        Bands of the SAR-only model (the SAR bands and the terrain that comes with the SAR
        download in the workflow); the SAR + optical model uses every band.
    label_water_values, label_land_values : tuple of float
        Label values meaning water and land; every other value (and NaN) is no data, ignored in
        training and evaluation. DSWE: water ``(1, 2)`` (high and moderate confidence), land
        ``(0,)``; its partial surface water (3, 4), cloud (9) and fill (255) are no data.
    sar_calibration : {"db", "palsar_dn"}
        ``"db"``: the SAR bands are backscatter in dB already; ``"palsar_dn"``: JAXA PALSAR
        mosaic digital numbers, converted with γ⁰ = 10·log10(DN²) − 83 dB (DN 0 is no data).
    chip_size : int
        Side of the square training chips in pixels (the workflow uses 512); a multiple of
        ``2 ** len(widths)``.
    n_chips : int
        Number of training chips drawn from the training region.
    chip_stride : int, optional
        Chip origins on multiples of this; ``chip_size`` gives the workflow's non-overlapping
        grid of chips. By default chips may start at any pixel (more distinct chips from a small
        scene).
    max_nodata : float
        Largest fraction of no-data pixels (labels or inputs) in a chip; the workflow discards
        scenes with more than 50 % no data.
    holdout_fraction : float
        Fraction of the scene's columns, on its eastern side, kept out of training; metrics are
        measured there.
    widths : tuple of int
        Encoder widths of the U-Net (depth = its length); ``(32, 64, 128, 256, 512)`` is the
        workflow-sized network.
    epochs, batch_size : int
        Training epochs and chips per step.
    optimizer : {"adam", "sgd", "adamw"}
        Optimiser of both models.
    learning_rate : float
        Learning rate of the optimiser.
    dice_weight : float
        Weight of the soft Dice loss added to the binary cross-entropy.
    augment : bool
        Random flips and quarter turns of the training chips.
    threshold : float
        Water where the predicted water probability exceeds this.
    halo : int, optional
        Context (pixels) read around every block when predicting; default the model's.
    persist : bool
        Keep the stacked cube and the labels in (distributed) memory once read, so the sources
        are read once rather than by the chip cutting and again by each model's prediction.
    sar_source, optical_source, terrain_source, label_source : str
        Real sources of the four layers: Earth Engine asset ids (``source="ee"``), or STAC
        ItemCollection / Collection / Catalog JSON files (``source="stac"``). The defaults are the
        Earth Engine assets: ALOS PALSAR yearly mosaics (``JAXA/ALOS/PALSAR/YEARLY/SAR``), the
        Landsat composites of Global Forest Change (``UMD/hansen/global_forest_change_2023_v1_11``,
        the workflow's optical source), MERIT Hydro (elevation and HAND) and the JRC Global
        Surface Water yearly history as labels (DSWE itself is not on Earth Engine).
    sar_source_bands, optical_source_bands, terrain_source_bands : tuple of str
        Band (EE) or asset (STAC) names of each layer, in the order of ``sar_bands``,
        ``optical_bands`` and ``terrain_bands``.
    label_source_band : str
        Band or asset of the labels.
    ee_images : tuple of str
        Layers (``"sar"``, ``"optical"``, ``"terrain"``, ``"labels"``) whose Earth Engine asset is
        a single ``ee.Image`` rather than an ``ee.ImageCollection``.
    bounds : tuple of float
        ``(left, bottom, right, top)`` of the region in ``crs`` (real sources).
    crs : str
        CRS of the grid (real sources).
    resolution : float
        Pixel size in ``crs`` units (real sources).
    start, end : str
        Date range (``start <= time < end``) of the image collections (real sources). SAR and
        optical collections are reduced to their median; the labels take the first image.
    """

    out_dir: str = "xfusion-out/water"
    SOURCE_KEYS: ClassVar = {
        "stac": (
            "sar_source",
            "optical_source",
            "optical_source_bands",
            "terrain_source",
            "terrain_source_bands",
            "label_source",
            "label_source_band",
        ),
    }
    SOURCE_DEFAULTS: ClassVar = {
        "ee": {
            "sar_calibration": "palsar_dn",
            "label_water_values": (3.0,),
            "label_land_values": (1.0,),
        },
    }
    size: int = 128
    chunks: int = 64
    sar_bands: tuple[str, ...] = ("HH", "HV")
    optical_bands: tuple[str, ...] = ("Red", "NIR", "SWIR1", "SWIR2")
    terrain_bands: tuple[str, ...] = ("DEM", "HAND")
    sar_only_bands: tuple[str, ...] = ("HH", "HV", "DEM", "HAND")
    label_water_values: tuple[float, ...] = (1.0,)
    label_land_values: tuple[float, ...] = (0.0,)
    sar_calibration: str = "db"
    chip_size: int = 32
    n_chips: int = 48
    chip_stride: int | None = None
    max_nodata: float = 0.5
    holdout_fraction: float = 0.25
    widths: tuple[int, ...] = (8, 16)
    epochs: int = 20
    batch_size: int = 8
    optimizer: str = "adam"
    learning_rate: float = 0.01
    dice_weight: float = 0.0
    augment: bool = True
    threshold: float = 0.5
    halo: int | None = None
    persist: bool = True
    sar_source: str = "JAXA/ALOS/PALSAR/YEARLY/SAR"
    sar_source_bands: tuple[str, ...] = ("HH", "HV")
    optical_source: str = "UMD/hansen/global_forest_change_2023_v1_11"
    optical_source_bands: tuple[str, ...] = ("last_b30", "last_b40", "last_b50", "last_b70")
    terrain_source: str = "MERIT/Hydro/v1_0_1"
    terrain_source_bands: tuple[str, ...] = ("elv", "hnd")
    label_source: str = "JRC/GSW1_4/YearlyHistory"
    label_source_band: str = "waterClass"
    ee_images: tuple[str, ...] = ("optical", "terrain")
    bounds: tuple[float, ...] = (640000.0, 3318560.0, 701440.0, 3380000.0)
    crs: str = "EPSG:32615"
    resolution: float = 30.0
    start: str = "2010-01-01"
    end: str = "2011-01-01"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def bands(self) -> tuple[str, ...]:
        """Every band of the stacked cube (the SAR + optical model's inputs), in order."""
        return (*self.sar_bands, *self.optical_bands, *self.terrain_bands)

    def validate(self) -> None:
        """Check value ranges; raise :class:`~xfusion.errors.ConfigError` naming the field."""
        multiple = 2 ** len(self.widths)
        checks = [
            (self.source in _SOURCES, "source", f"one of {_SOURCES}"),
            (self.sar_calibration in _CALIBRATIONS, "sar_calibration", f"one of {_CALIBRATIONS}"),
            (self.optimizer in _OPTIMIZERS, "optimizer", f"one of {_OPTIMIZERS}"),
            (self.size >= 32, "size", ">= 32"),
            (self.chunks >= 16, "chunks", ">= 16"),
            (len(self.widths) >= 1 and min(self.widths) >= 1, "widths", "positive ints"),
            (
                self.chip_size >= multiple and self.chip_size % multiple == 0,
                "chip_size",
                f"a positive multiple of {multiple} (2 ** len(widths))",
            ),
            (self.n_chips >= 1, "n_chips", ">= 1"),
            (self.chip_stride is None or self.chip_stride >= 1, "chip_stride", ">= 1 or unset"),
            (0.0 <= self.max_nodata < 1.0, "max_nodata", "in [0, 1)"),
            (0.0 < self.holdout_fraction < 1.0, "holdout_fraction", "strictly between 0 and 1"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.learning_rate > 0, "learning_rate", "> 0"),
            (self.dice_weight >= 0, "dice_weight", ">= 0"),
            (0.0 < self.threshold < 1.0, "threshold", "strictly between 0 and 1"),
            (self.halo is None or self.halo >= 0, "halo", ">= 0 or unset"),
            (len(self.sar_bands) >= 1, "sar_bands", "at least one band"),
            (
                len(set(self.bands)) == len(self.bands),
                "sar_bands",
                f"band names that are unique across the layers; got {self.bands}",
            ),
            (
                len(self.sar_only_bands) >= 1 and set(self.sar_only_bands) <= set(self.bands),
                "sar_only_bands",
                f"a subset of the stacked bands {self.bands}",
            ),
            (
                bool(self.label_water_values) and bool(self.label_land_values),
                "label_water_values",
                "non-empty, like label_land_values",
            ),
            (
                not set(self.label_water_values) & set(self.label_land_values),
                "label_land_values",
                "disjoint from label_water_values",
            ),
            (set(self.ee_images) <= set(_LAYERS), "ee_images", f"a subset of {_LAYERS}"),
            (len(self.bounds) == 4, "bounds", "(left, bottom, right, top)"),
            (self.resolution > 0, "resolution", "> 0"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(
                    f"config field {name!r} must be {expected}; got {getattr(self, name)!r}"
                )
        for layer in ("sar", "optical", "terrain"):
            names = getattr(self, f"{layer}_bands")
            source = getattr(self, f"{layer}_source_bands")
            if len(source) != len(names):
                raise ConfigError(
                    f"{layer}_source_bands must name {len(names)} source bands (one per "
                    f"{layer}_bands {names}); got {source}"
                )
        if self.source in ("ee", "stac"):
            empty = [f"{k}_source" for k in _LAYERS if not getattr(self, _source_field(k))]
            if empty:
                raise ConfigError(f"source={self.source!r} needs {empty} (asset ids or files)")


def _source_field(layer: str) -> str:
    return "label_source" if layer == "labels" else f"{layer}_source"


def real_sources() -> dict[str, dict[str, Any]]:
    """Config fields that run the workflow on real data, by source.

    The region is 2048×2048 pixels of 30 m on the lower Mississippi / Atchafalaya floodplain
    (UTM 15N), in 2010, the ALOS-1 PALSAR era, cut into the workflow's 512×512 chips with the
    workflow-sized U-Net.

    ``"ee"``: ALOS PALSAR yearly HH/HV mosaics (``JAXA/ALOS/PALSAR/YEARLY/SAR``, digital
    numbers), the Landsat last-year composites of Global Forest Change (``last_b30``/``b40``/
    ``b50``/``b70`` = Red, NIR, SWIR1, SWIR2), MERIT Hydro elevation and HAND, and the JRC Global
    Surface Water yearly water class as labels (3 permanent water, 1 land; 2 seasonal water is
    no data, like DSWE's partial water). ``"stac"``: saved STAC searches (ItemCollection files)
    of Planetary Computer's ``alos-palsar-mosaic`` (assets ``HH``, ``HV``), cloud-free
    ``landsat-c2-l2`` items (``red``, ``nir08``, ``swir16``, ``swir22``; median composite), a
    local catalog of DEM and HAND COGs (assets ``DEM``, ``HAND``; e.g. Copernicus DEM and a HAND
    raster, written with :func:`xfusion.datasets.write_stac`) and the USGS Landsat C2 Level-3
    DSWE items (``landsat-c2l3-dswe``, interpreted layer ``intr``) as labels.

    Examples
    --------
    >>> fields = real_sources()["ee"]
    >>> fields["sar_source"], fields["chip_size"]
    ('JAXA/ALOS/PALSAR/YEARLY/SAR', 512)
    >>> Config(out_dir="out", **fields).bands
    ('HH', 'HV', 'Red', 'NIR', 'SWIR1', 'SWIR2', 'DEM', 'HAND')
    """
    common = {
        "bounds": (640000.0, 3318560.0, 701440.0, 3380000.0),
        "crs": "EPSG:32615",
        "resolution": 30.0,
        "start": "2010-01-01",
        "end": "2011-01-01",
        "chunks": 512,
        "chip_size": 512,
        "chip_stride": 512,
        "n_chips": 12,
        "widths": (32, 64, 128, 256, 512),
        "epochs": 30,
        "batch_size": 4,
        "learning_rate": 0.001,
    }
    return {
        "ee": {
            "source": "ee",
            "sar_source": "JAXA/ALOS/PALSAR/YEARLY/SAR",
            "sar_source_bands": ("HH", "HV"),
            "sar_calibration": "palsar_dn",
            "optical_source": "UMD/hansen/global_forest_change_2023_v1_11",
            "optical_source_bands": ("last_b30", "last_b40", "last_b50", "last_b70"),
            "terrain_source": "MERIT/Hydro/v1_0_1",
            "terrain_source_bands": ("elv", "hnd"),
            "label_source": "JRC/GSW1_4/YearlyHistory",
            "label_source_band": "waterClass",
            "label_water_values": (3.0,),
            "label_land_values": (1.0,),
            "ee_images": ("optical", "terrain"),
            **common,
        },
        "stac": {
            "source": "stac",
            "sar_source": "alos-palsar-mosaic-2010.json",
            "sar_source_bands": ("HH", "HV"),
            "sar_calibration": "palsar_dn",
            "optical_source": "landsat-c2-l2-2010-clear.json",
            "optical_source_bands": ("red", "nir08", "swir16", "swir22"),
            "terrain_source": "terrain/catalog.json",
            "terrain_source_bands": ("DEM", "HAND"),
            "label_source": "landsat-c2l3-dswe-2010.json",
            "label_source_band": "intr",
            "label_water_values": (1.0, 2.0),
            "label_land_values": (0.0,),
            **common,
        },
    }


# ----------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------


def run(config: Config) -> RecipeResult:
    """Run the SAR + optical surface-water recipe.

    Steps: open the SAR, optical, terrain and label layers → stack the eight bands and turn the
    labels into water / land / no data → cut training chips west of the held-out strip (computes)
    → train the SAR-only and the SAR + optical U-Nets (computes) → predict both lazily over the
    whole scene (chip-and-stitch with a halo) → IoU, F1, precision and recall on the held-out
    strip → write ``outputs.zarr``, ``water.tif`` (the SAR + optical water map as a COG), PNG
    figures, ``metrics.json`` and ``model/``.

    This function computes: it trains models, evaluates metrics and writes files.

    Parameters
    ----------
    config : Config
        The configuration (the defaults run offline on a synthetic scene).

    Returns
    -------
    RecipeResult
        ``metrics`` (per model ``<model>_iou``, ``_f1``, ``_precision``, ``_recall``,
        ``_accuracy`` on held-out labelled pixels; ``iou``/``f1`` of the SAR + optical model and
        ``baseline_iou``/``baseline_f1`` of the SAR-only one; on synthetic scenes also
        ``<model>_iou_all``, every held-out pixel against the cover truth), ``cubes``
        (``inputs``, ``labels``, ``probability`` and ``water`` with one band per model,
        ``holdout``, and ``truth_water`` on synthetic scenes) and the written paths.

    Examples
    --------
    >>> config = Config(out_dir="water-out", chip_size=32, epochs=20)
    >>> config.bands[:3], config.sar_only_bands
    (('HH', 'HV', 'Red'), ('HH', 'HV', 'DEM', 'HAND'))
    >>> result = run(config)  # doctest: +SKIP
    >>> result.metrics["iou"] >= result.metrics["baseline_iou"]  # doctest: +SKIP
    True
    """
    if not isinstance(config, Config):
        raise ConfigError(f"run needs a water Config; got {type(config).__name__}")
    config.validate()
    out = prepare_out_dir(config.out_dir, config=config)
    layers, truth = _open_sources(config, out)
    cube = _stack(layers, config)
    labels = _labels(layers["labels"], config)
    if config.persist and cube.chunks is not None:
        # xf: computes the sources once into (distributed) memory, read by every later step
        cube, labels = dask.persist(cube, labels)
    holdout = _holdout_mask(cube, config)
    chips = _chips(cube, labels, holdout, config)
    models = {name: _fit(chips, bands, config) for name, bands in _model_bands(config).items()}
    probability = _predict(cube, models, config)
    water = xr.where(probability.notnull(), probability > config.threshold, np.nan)
    water = water.astype(np.float32).rename("water")
    water.attrs = {"classes": "1 water, 0 land, NaN no data", "threshold": config.threshold}
    cubes = {
        "inputs": cube.rename("inputs"),
        "labels": labels.rename("labels"),
        "probability": probability,
        "water": water,
        "holdout": holdout.astype(np.float32).rename("holdout"),
    }
    if truth is not None:
        cubes["truth_water"] = truth
    log.info("water: predicting %d×%d px with both models", cube.sizes["y"], cube.sizes["x"])
    (computed,) = dask.compute(cubes)  # xf: computes every output cube once
    metrics = _metrics(computed, chips, models, config)
    return _write_outputs(out, config, computed, metrics, models)


# ----------------------------------------------------------------------------------------------
# steps
# ----------------------------------------------------------------------------------------------


def _open_sources(config: Config, out: Path) -> tuple[dict[str, xr.DataArray], xr.DataArray | None]:
    """Open the four layers lazily, bands renamed to the config's names, and the truth if known.

    The truth (synthetic scenes only) is ``(y, x)``: 1 where water covers at least half of the
    pixel, 0 elsewhere, everywhere (under the labels' clouds and on partial water too).
    """
    names = {
        "sar": list(config.sar_bands),
        "optical": list(config.optical_bands),
        "terrain": list(config.terrain_bands),
        "labels": ["label"],
    }
    if config.source == "synthetic":
        from xfusion.datasets import synthetic_scene, write_stac

        scene = synthetic_scene("water", seed=config.seed, size=config.size)
        keys = {"sar": "sar", "optical": "optical", "terrain": "terrain", "labels": "truth_water"}
        for layer in ("sar", "optical", "terrain"):
            have = [str(b) for b in scene[keys[layer]].band.values]
            _check_bands(names[layer], have, f"synthetic scene's {layer!r} layer")
        catalog = write_stac({k: scene[v] for k, v in keys.items()}, out / "stac")
        grid = geobox_of(scene["sar"])
        sources = {k: catalog.parent / k / "collection.json" for k in _LAYERS}
        assets = {k: names[k] for k in ("sar", "optical", "terrain")}
        assets["labels"] = ["water"]
        layers = {
            k: _open_stac_layer(sources[k], assets[k], names[k], grid, config, how=_how(k))
            for k in _LAYERS
        }
        fraction = scene["truth_cover"].sel(band="water", drop=True)
        truth = (fraction >= 0.5).astype(np.float32).rename("truth_water")
        truth.attrs = {"classes": "1 water (cover fraction >= 0.5), 0 land"}
        return layers, _plain(truth)
    grid = make_grid(config.bounds, config.crs, config.resolution)
    source_bands = {
        "sar": list(config.sar_source_bands),
        "optical": list(config.optical_source_bands),
        "terrain": list(config.terrain_source_bands),
        "labels": [config.label_source_band],
    }
    opener = _open_stac_layer if config.source == "stac" else _open_ee_layer
    layers = {
        k: opener(getattr(config, _source_field(k)), source_bands[k], names[k], grid, config,
                  how=_how(k))
        for k in _LAYERS
    }  # fmt: skip
    if config.sar_calibration == "palsar_dn":
        layers["sar"] = _palsar_db(layers["sar"])
    return layers, None


def _how(layer: str) -> str:
    # A categorical layer is never averaged: the labels keep their first image.
    return "first" if layer == "labels" else "median"


def _open_stac_layer(
    items: Any, assets: list[str], names: list[str], grid: Any, config: Config, *, how: str
) -> xr.DataArray:
    import xfusion as xf

    chunks = {"y": config.chunks, "x": config.chunks}
    cube = xf.open_stac(
        str(items), grid=grid, assets=dict(zip(assets, names, strict=True)), chunks=chunks
    )
    if config.source != "synthetic":
        times = cube.time.to_index()
        keep = (times >= np.datetime64(config.start)) & (times < np.datetime64(config.end))
        cube = cube.isel(time=np.flatnonzero(keep))
    return _single_image(cube.sel(band=names), how, str(items))


def _open_ee_layer(
    asset: str, bands: list[str], names: list[str], grid: Any, config: Config, *, how: str
) -> xr.DataArray:
    import ee

    from xfusion.io.ee import open_ee

    layer = next(k for k in _LAYERS if getattr(config, _source_field(k)) == asset)
    chunks = {"y": config.chunks, "x": config.chunks}
    if layer in config.ee_images:
        cube = open_ee(ee.Image(asset), grid=grid, bands=bands, chunks=chunks)
    else:
        cube = open_ee(
            asset,
            grid=grid,
            start=config.start,
            end=config.end,
            bands=bands,
            chunks={"time": 1, **chunks},
        )
    cube = cube.assign_coords(band=names)
    return _single_image(cube, how, asset)


def _single_image(cube: xr.DataArray, how: str, where: str) -> xr.DataArray:
    """``(band, y, x)``: the only image, the first one, or the median of the series."""
    if "time" in cube.dims:
        if cube.sizes["time"] == 0:
            raise EmptySelectionError(f"no image of {where!r} in the date range")
        if cube.sizes["time"] == 1 or how == "first":
            cube = cube.isel(time=0)
        else:
            cube = cube.xf.composite("median")
    return _plain(cube)


def _palsar_db(sar: xr.DataArray) -> xr.DataArray:
    """PALSAR mosaic digital numbers to γ⁰ in dB: 10·log10(DN²) − 83 (DN 0: no data)."""
    db = 10.0 * np.log10(sar.where(sar > 0) ** 2) - 83.0
    return db.astype(np.float32).assign_attrs(units="dB")


def _check_bands(wanted: list[str], have: list[str], where: str) -> None:
    missing = [b for b in wanted if b not in have]
    if missing:
        raise BandError(f"band(s) {missing} not in the {where}; bands are {have}")


def _plain(da: xr.DataArray) -> xr.DataArray:
    """Keep only grid and band coordinates (concatenation-, Zarr- and COG-friendly)."""
    keep = {"band", "y", "x", "spatial_ref"}
    return da.drop_vars([c for c in da.coords if c not in keep])


def _stack(layers: dict[str, xr.DataArray], config: Config) -> xr.DataArray:
    """Stack the eight-band cube ``(band, y, x)`` float32: SAR, optical, terrain."""
    parts = [layers[k] for k in ("sar", "optical", "terrain")]
    cube = xr.concat(parts, dim="band", coords="minimal", compat="override", join="override")
    cube = cube.astype(np.float32)
    if cube.chunks is not None:
        cube = cube.chunk({"band": -1, "y": config.chunks, "x": config.chunks})
    cube.attrs = {"bands": "SAR backscatter (dB), optical reflectance, DEM and HAND (m)"}
    return cube


def _label_values(
    block: np.ndarray, water: tuple[float, ...], land: tuple[float, ...]
) -> np.ndarray:
    out = np.full(block.shape, np.nan, dtype=np.float32)
    out[np.isin(block, np.asarray(land, dtype=block.dtype))] = 0.0
    out[np.isin(block, np.asarray(water, dtype=block.dtype))] = 1.0
    return out


def _labels(raw: xr.DataArray, config: Config) -> xr.DataArray:
    """Lazy ``(y, x)`` labels: 1 water, 0 land, NaN no data (every other value)."""
    labels = xr.apply_ufunc(
        _label_values,
        raw.isel(band=0, drop=True),
        kwargs={"water": config.label_water_values, "land": config.label_land_values},
        dask="parallelized",
        output_dtypes=[np.float32],
    )
    labels.attrs = {"classes": "1 water, 0 land, NaN no data (ignored)"}
    return labels.rename("labels")


def _holdout_mask(cube: xr.DataArray, config: Config) -> xr.DataArray:
    """Boolean ``(y, x)``: the eastern ``holdout_fraction`` of the columns (numpy; small)."""
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    first = nx - max(1, round(config.holdout_fraction * nx))
    if first < config.chip_size:
        raise InputError(
            f"the training region is {first} px wide west of the held-out strip; chips of "
            f"{config.chip_size} px need at least that: lower holdout_fraction or chip_size"
        )
    mask = np.zeros((ny, nx), dtype=bool)
    mask[:, first:] = True
    out = xr.DataArray(mask, dims=("y", "x"), coords={"y": cube.y, "x": cube.x}, name="holdout")
    return out


def _chips(
    cube: xr.DataArray, labels: xr.DataArray, holdout: xr.DataArray, config: Config
) -> xr.Dataset:
    """Training chips west of the held-out strip (computes the chips)."""
    log.info("water: cutting %d chips of %d px", config.n_chips, config.chip_size)
    chips = cube.xf.patches(
        labels,
        size=config.chip_size,
        n=config.n_chips,
        seed=config.seed,
        regions=~holdout,
        max_nodata=config.max_nodata,
        stride=config.chip_stride,
    )
    target = chips["target"].values  # xf: computes nothing (patches are in memory)
    if not (target == 1).any() or not (target == 0).any():
        raise EmptySelectionError(
            f"the {chips.sizes['sample']} training chips need both water and land labels; "
            f"they hold {int((target == 1).sum())} water and {int((target == 0).sum())} land px"
        )
    return chips


def _model_bands(config: Config) -> dict[str, list[str]]:
    return {"sar_only": list(config.sar_only_bands), "fusion": list(config.bands)}


def _fit(chips: xr.Dataset, bands: list[str], config: Config) -> Any:
    """Train one segmentation U-Net on the chips' ``bands`` (computes)."""
    from xfusion.models import UNetSegmenter

    log.info("water: training a U-Net on %s", bands)
    model = UNetSegmenter(
        widths=config.widths,
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        dice_weight=config.dice_weight,
        augment=config.augment,
        halo=config.halo,
        seed=config.seed,
        progress=show_progress(),
    )
    return model.fit(chips["inputs"].sel(band=bands), chips["target"])


def _predict(cube: xr.DataArray, models: dict[str, Any], config: Config) -> xr.DataArray:
    """Lazy water probability ``(band, y, x)``, one band per model (chip-and-stitch, seamless)."""
    maps = []
    for name, model in models.items():
        proba = cube.sel(band=list(model.bands_)).xf.predict(model, halo=config.halo)
        maps.append(proba.isel(band=0, drop=True).expand_dims(band=[name]))
    out = xr.concat(maps, dim="band")
    out.attrs = {"units": "probability of water"}
    return out.rename("probability")


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------


def segmentation_scores(prediction: Any, reference: Any) -> dict[str, float]:
    """IoU, F1, precision, recall and accuracy of a binary water map against labels.

    Pixels where either is NaN (no data) are left out; values are 1 (water) and 0 (land).

    Parameters
    ----------
    prediction, reference : array-like
        Maps of the same shape with values 1, 0 or NaN.

    Returns
    -------
    dict
        ``iou`` and ``f1`` of the water class (1 when neither map has water), ``precision``,
        ``recall``, ``accuracy`` and ``n`` (the pixels compared).

    Examples
    --------
    >>> import numpy as np
    >>> pred = np.array([1, 1, 0, 0, np.nan]); ref = np.array([1, 0, 0, np.nan, 1])
    >>> {k: round(v, 3) for k, v in segmentation_scores(pred, ref).items()}
    {'iou': 0.5, 'f1': 0.667, 'precision': 0.5, 'recall': 1.0, 'accuracy': 0.667, 'n': 3}
    """
    p = np.asarray(prediction, dtype=np.float64).ravel()
    r = np.asarray(reference, dtype=np.float64).ravel()
    if p.shape != r.shape:
        raise InputError(f"prediction has {p.size} pixels but the reference has {r.size}")
    ok = np.isfinite(p) & np.isfinite(r)
    if not ok.any():
        raise EmptySelectionError("no pixel where both the prediction and the reference are valid")
    p, r = p[ok] == 1, r[ok] == 1
    tp, fp, fn = float(np.sum(p & r)), float(np.sum(p & ~r)), float(np.sum(~p & r))
    union = tp + fp + fn
    return {
        "iou": tp / union if union else 1.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if union else 1.0,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "accuracy": float(np.mean(p == r)),
        "n": int(ok.sum()),
    }


def _metrics(
    cubes: dict[str, xr.DataArray], chips: xr.Dataset, models: dict[str, Any], config: Config
) -> dict[str, Any]:
    labels = cubes["labels"].values  # xf: computes nothing (already computed)
    held = cubes["holdout"].values.astype(bool)
    reference = np.where(held, labels, np.nan)
    target = chips["target"].values
    metrics: dict[str, Any] = {
        "n_chips": int(chips.sizes["sample"]),
        "chip_size": config.chip_size,
        "chip_water_fraction": float(np.nanmean(target)),
        "chip_nodata_fraction": float(np.mean(np.isnan(target))),
        "label_nodata_fraction": float(np.mean(np.isnan(labels))),
        "heldout_labelled": int(np.isfinite(reference).sum()),
        "heldout_water_fraction": float(np.nanmean(reference)),
    }
    for name, model in models.items():
        water = cubes["water"].sel(band=name).values
        scores = segmentation_scores(water, reference)
        scores.pop("n")
        for key, value in scores.items():
            metrics[f"{name}_{key}"] = value
        metrics[f"{name}_final_loss"] = float(model.history_["loss"][-1])
        if "truth_water" in cubes:
            # every held-out pixel, no data of the labels included, against the cover truth
            truth = np.where(held, cubes["truth_water"].values, np.nan)
            metrics[f"{name}_iou_all"] = segmentation_scores(water, truth)["iou"]
    for key in ("iou", "f1"):
        metrics[key] = metrics[f"fusion_{key}"]
        metrics[f"baseline_{key}"] = metrics[f"sar_only_{key}"]
    metrics["iou_gain"] = metrics["iou"] - metrics["baseline_iou"]
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
) -> RecipeResult:
    files: dict[str, Path] = {}
    files["zarr"] = write_outputs(cubes, out, config, chunks=config.chunks)
    main = cubes["water"].sel(band="fusion", drop=True).rename("water")
    files["cog"] = write_cog(main, out / "water.tif")
    model_dir = out / "model"
    model_dir.mkdir(exist_ok=True)
    for name, model in models.items():
        files[f"model_{name}"] = model.save(model_dir / name)
    files["config"] = config.to_toml(out / "config.toml")
    figures = _figures(out, cubes, metrics, models, config)
    files["metrics"] = write_json(metrics, out / "metrics.json")
    return RecipeResult(
        recipe="water", metrics=metrics, cubes=cubes, figures=figures, out_dir=out, files=files
    )


def _stretch(arr: np.ndarray) -> np.ndarray:
    values = arr[np.isfinite(arr)]
    if not values.size:
        return np.zeros_like(arr)
    lo, hi = np.percentile(values, [2, 98])
    return np.nan_to_num(np.clip((arr - lo) / ((hi - lo) or 1.0), 0, 1))


def _figures(
    out: Path, cubes: dict, metrics: dict, models: dict[str, Any], config: Config
) -> dict[str, Path]:
    """PNG panels (inputs, labels, both maps, errors) and the training curves."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from xfusion._viz_panels import plot_loss

    inputs = cubes["inputs"]
    bands = [str(b) for b in inputs.band.values]
    labels = cubes["labels"].values
    held = cubes["holdout"].values.astype(bool)
    first_held = int(np.argmax(held.any(axis=0)))
    water_cmap = ListedColormap(["#d9c89e", "#2166ac"])
    panels: list[tuple[str, Any, dict]] = [
        (f"SAR {bands[0]} (dB)", inputs.sel(band=bands[0]).values, {"cmap": "gray"}),
    ]
    false_colour = [b for b in ("SWIR1", "NIR", "Red") if b in bands]
    if len(false_colour) == 3:
        rgb = np.stack([_stretch(inputs.sel(band=b).values) for b in false_colour], axis=-1)
        panels.append(("optical SWIR1/NIR/Red", rgb, {}))
    panels.append(("labels (blank: no data)", labels, {"cmap": water_cmap, "vmin": 0, "vmax": 1}))
    for name in MODELS:
        title = "SAR-only" if name == "sar_only" else "SAR + optical"
        panels.append(
            (
                f"{title}: IoU {metrics[f'{name}_iou']:.3f}",
                cubes["water"].sel(band=name).values,
                {"cmap": water_cmap, "vmin": 0, "vmax": 1},
            )
        )
    fusion = cubes["water"].sel(band="fusion").values
    errors = np.full(labels.shape, np.nan)
    ok = np.isfinite(labels) & np.isfinite(fusion)
    errors[ok & (fusion == labels)] = 0  # correct
    errors[ok & (fusion == 1) & (labels == 0)] = 1  # false water
    errors[ok & (fusion == 0) & (labels == 1)] = 2  # missed water
    panels.append(
        (
            "errors: grey ok, red false, blue missed",
            errors,
            {"cmap": ListedColormap(["#bdbdbd", "#d7301f", "#2c7bb6"]), "vmin": 0, "vmax": 2},
        )
    )
    fig = Figure(figsize=(3.0 * len(panels), 3.4), dpi=90, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, data, kwargs) in zip(axes, panels, strict=True):
        ax.imshow(data, interpolation="nearest", **kwargs)
        ax.axvline(first_held - 0.5, color="#ff7f00", lw=1.0, ls="--")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.suptitle("surface water; held-out strip east of the dashed line", fontsize=10)
    paths = {"panels": out / "water_panels.png"}
    fig.savefig(paths["panels"])

    history = {f"{name} loss": models[name].history_["loss"] for name in MODELS}
    paths["loss"] = out / "training_loss.png"
    plot_loss(history, monitor="fusion loss", path=paths["loss"], dpi=90)
    return paths
