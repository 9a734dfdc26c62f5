"""Surface-water segmentation from SAR, optical and terrain layers with a U-Net.

The recipe follows the SAR + optical surface-water workflow: L-band SAR backscatter (HH, HV), a
cloud-free optical composite (Red, NIR, SWIR1, SWIR2) and terrain (DEM and HAND, the height above
the nearest drainage) are stacked into one eight-band cube on one grid; water labels (USGS DSWE
in the workflow) mark water, land, and *no data* — clouds, cloud shadows and partial surface
water — which the loss ignores, so no-data pixels never become "land". Training chips are cut from
the western part of the scene (:func:`xfusion.patches`, chips with too much no data discarded),
two segmentation U-Nets are trained — a **SAR-only** model (SAR and terrain) and a **SAR +
optical** model (all eight bands) — and both are applied to the whole scene. Missing input
pixels (cloud cores of the optical, SAR gaps) are filled with the chips' band means and flagged
by a ``sar_valid`` / ``optical_valid`` band (:mod:`xfusion.models.modality`), so the U-Nets map
water everywhere; the SAR + optical model also trains on every chip once without SAR and once
without the optical (modality dropout), so it learns to read water from each sensor and does not
follow the SAR where it is dark over land (wet soil, radar shadow). The workflow cuts a
scene into 512×512 chips, predicts each and stitches the chips back together;
:func:`xfusion.predict` is the seamless version of that chip-and-stitch step: every block is read
with a halo of context, predicted, and the halo trimmed, so chip borders leave no seams. IoU, F1,
precision and recall of both maps are measured on the held-out eastern strip of the scene against
the labels, ignoring their no data.

Cheap baselines are scored on the same held-out pixels: an Otsu threshold on each SAR band
(:class:`~xfusion.models.baselines.ThresholdClassifier`: water is dark) and gradient boosting on
the eight bands, both fitted on the labelled pixels of the training chips. ``metrics.json`` says
whether the SAR + optical U-Net beats the best of them by 0.05 IoU (``beats_baseline``).

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
import pandas as pd
import xarray as xr

import xfusion.accessor  # noqa: F401  (registers ``.xf``)
from xfusion.errors import ConfigError, EmptySelectionError, InputError
from xfusion.grids import geobox_of
from xfusion.models.modality import band_means
from xfusion.models.segmentation import segmentation_scores
from xfusion.preprocess.labels import binary_labels
from xfusion.recipes import _base as recipe

__all__ = ["MODELS", "Config", "real_sources", "run", "segmentation_scores"]

log = logging.getLogger(__name__)

_CALIBRATIONS = ("db", "palsar_dn")
_OPTIMIZERS = ("sgd", "adam", "adamw")
_LAYERS = ("sar", "optical", "terrain", "labels")
#: The two models: SAR and terrain only, and SAR + optical + terrain.
MODELS = ("sar_only", "fusion")


@dataclasses.dataclass
class Config(recipe.ModelRecipeConfig):
    """Configuration of the SAR + optical surface-water recipe.

    The defaults run offline in about a minute of CPU time on a 128×128 synthetic scene
    (:func:`xfusion.datasets.synthetic_scene` ``("water")``: SAR in dB with 4-look speckle, a
    cloud-free optical composite, DEM, HAND and water labels with no data; ``difficulty="hard"``
    adds SAR-dark land and clouds over the optical) written as a local STAC catalog, with 32×32
    chips and a small U-Net. The layer fields (``sar_source`` … ``label_source_band``) name the
    workflow's real data, read only when ``source`` is ``"ee"`` or ``"stac"`` over ``bounds`` in
    ``crs`` at ``resolution``, images from ``start`` to ``end`` (SAR and optical reduced to their
    median, the labels' first image); :func:`real_sources` gives complete sets. Through
    :meth:`from_dict` (TOML, the command line), ``source="stac"`` needs the layer sources and
    their band names given, and ``source="ee"`` switches the keys not given to the Earth Engine
    assets' meaning: ``sar_calibration="palsar_dn"``, labels water ``(3,)`` and land ``(1,)``
    (JRC yearly water classes). The fields every recipe shares are documented in
    :mod:`xfusion.recipes._config`.

    Parameters
    ----------
    chunks : int
        Spatial chunk size (pixels) of the opened layers; also the block size of the
        chip-and-stitch prediction.
    holdout_fraction : float
        Fraction of the scene's columns, on its eastern side, kept out of training; metrics are
        measured there.
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
        ``"db"``: the SAR bands are backscatter in dB already (the synthetic scene's);
        ``"palsar_dn"``: JAXA PALSAR mosaic digital numbers, converted with
        γ⁰ = 10·log10(DN²) − 83 dB (DN 0 is no data).
    chip_size : int
        Side of the square training chips in pixels (the workflow uses 512); a multiple of
        ``2 ** len(widths)``.
    n_chips : int
        Number of training chips drawn from the training region.
    chip_stride : int, optional
        Chip origins on multiples of this; ``chip_size`` gives the workflow's non-overlapping
        grid of chips. By default chips may start at any pixel.
    max_nodata : float
        Largest fraction of no-data pixels (labels or inputs) in a chip; the workflow discards
        scenes with more than 50 % no data.
    widths : tuple of int
        Encoder widths of the U-Net (depth = its length); ``(32, 64, 128, 256, 512)`` is the
        workflow-sized network.
    optimizer : {"adam", "sgd", "adamw"}
        Optimiser of both models.
    dice_weight : float
        Weight of the soft Dice loss added to the binary cross-entropy.
    augment : bool
        Random flips and quarter turns of the training chips.
    threshold : float
        Water where the predicted water probability exceeds this.
    modality_dropout : bool
        Train the SAR + optical U-Net also on copies of every chip with the SAR, and with the
        optical, missing (:func:`xfusion.models.modality.modality_dropout`), so it learns each
        sensor's view of water and does not follow one where it misleads (SAR-dark wet soil and
        radar shadow; cloud shadow and cloud cores in the optical). Default on.
    n_members : int
        Ensemble size of each U-Net (members seeded ``seed``, ``seed + 1``, …; their mean
        probability is mapped); training time grows in proportion. Three members by default:
        one U-Net trained on a few dozen chips depends on its seed (on the hard scene, seeds
        0–4, the SAR + optical IoU is 0.62 ± 0.22 with one member, 0.68 ± 0.22 with three).
    halo : int, optional
        Context (pixels) read around every block when predicting; default the model's.
    sar_source, optical_source, terrain_source, label_source : str
        Real sources of the four layers: Earth Engine asset ids (``source="ee"``), or STAC
        ItemCollection / Collection / Catalog JSON files (``source="stac"``). The defaults are the
        Earth Engine assets: ALOS PALSAR yearly mosaics, the Landsat composites of Global Forest
        Change, MERIT Hydro (elevation and HAND) and the JRC Global Surface Water yearly history.
    sar_source_bands, optical_source_bands, terrain_source_bands : tuple of str
        Band (EE) or asset (STAC) names of each layer, in the order of ``sar_bands``,
        ``optical_bands`` and ``terrain_bands``.
    label_source_band : str
        Band or asset of the labels.
    ee_images : tuple of str
        Layers (``"sar"``, ``"optical"``, ``"terrain"``, ``"labels"``) whose Earth Engine asset is
        a single ``ee.Image`` rather than an ``ee.ImageCollection``.
    """

    out_dir: str = "xfusion-out/water"
    SOURCE_KEYS: ClassVar = {
        "stac": ("sar_source", "optical_source", "optical_source_bands", "terrain_source",
                 "terrain_source_bands", "label_source", "label_source_band"),
    }  # fmt: skip
    SOURCE_DEFAULTS: ClassVar = {
        "ee": {"sar_calibration": "palsar_dn", "label_water_values": (3.0,),
               "label_land_values": (1.0,)},
    }  # fmt: skip
    MIN_SIZE: ClassVar = 32
    size: int = 128
    bounds: tuple[float, ...] = (640000.0, 3318560.0, 701440.0, 3380000.0)
    crs: str = "EPSG:32615"
    start: str = "2010-01-01"
    end: str = "2011-01-01"
    chunks: int = 64
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 0.01
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
    widths: tuple[int, ...] = (8, 16)
    optimizer: str = "adam"
    dice_weight: float = 0.0
    augment: bool = True
    threshold: float = 0.5
    modality_dropout: bool = True
    n_members: int = 3
    halo: int | None = None
    sar_source: str = "JAXA/ALOS/PALSAR/YEARLY/SAR"
    sar_source_bands: tuple[str, ...] = ("HH", "HV")
    optical_source: str = "UMD/hansen/global_forest_change_2023_v1_11"
    optical_source_bands: tuple[str, ...] = ("last_b30", "last_b40", "last_b50", "last_b70")
    terrain_source: str = "MERIT/Hydro/v1_0_1"
    terrain_source_bands: tuple[str, ...] = ("elv", "hnd")
    label_source: str = "JRC/GSW1_4/YearlyHistory"
    label_source_band: str = "waterClass"
    ee_images: tuple[str, ...] = ("optical", "terrain")

    @property
    def bands(self) -> tuple[str, ...]:
        """Every band of the stacked cube (the SAR + optical model's inputs), in order."""
        return (*self.sar_bands, *self.optical_bands, *self.terrain_bands)

    def checks(self) -> list[tuple[bool, str, str]]:
        """Return the rows of :meth:`validate` for this recipe's own fields."""
        multiple, bands = 2 ** len(self.widths), self.bands
        real = self.source != "synthetic"
        rows = [
            (self.sar_calibration in _CALIBRATIONS, "sar_calibration", f"one of {_CALIBRATIONS}"),
            (real or self.sar_calibration == "db", "sar_calibration",
             "'db' on the synthetic scene (its SAR is in dB)"),
            (self.optimizer in _OPTIMIZERS, "optimizer", f"one of {_OPTIMIZERS}"),
            (self.chunks >= 16, "chunks", ">= 16"),
            (len(self.widths) >= 1 and min(self.widths) >= 1, "widths", "positive ints"),
            (self.chip_size >= multiple and self.chip_size % multiple == 0, "chip_size",
             f"a positive multiple of {multiple} (2 ** len(widths))"),
            (self.n_chips >= 1, "n_chips", ">= 1"),
            (self.chip_stride is None or self.chip_stride >= 1, "chip_stride", ">= 1 or unset"),
            (0.0 <= self.max_nodata < 1.0, "max_nodata", "in [0, 1)"),
            (self.dice_weight >= 0, "dice_weight", ">= 0"),
            (self.n_members >= 1, "n_members", ">= 1"),
            (0.0 < self.threshold < 1.0, "threshold", "strictly between 0 and 1"),
            (self.halo is None or self.halo >= 0, "halo", ">= 0 or unset"),
            (len(self.sar_bands) >= 1, "sar_bands", "at least one band"),
            (len(set(bands)) == len(bands), "sar_bands",
             f"band names that are unique across the layers; got {bands}"),
            (len(self.sar_only_bands) >= 1 and set(self.sar_only_bands) <= set(bands),
             "sar_only_bands", f"a subset of the stacked bands {bands}"),
            (bool(self.label_water_values) and bool(self.label_land_values),
             "label_water_values", "non-empty, like label_land_values"),
            (not set(self.label_water_values) & set(self.label_land_values),
             "label_land_values", "disjoint from label_water_values"),
            (set(self.ee_images) <= set(_LAYERS), "ee_images", f"a subset of {_LAYERS}"),
            (not real or self.bounds is not None, "bounds", f"set for source={self.source!r}"),
        ]  # fmt: skip
        for layer in ("sar", "optical", "terrain"):
            names, field = getattr(self, f"{layer}_bands"), f"{layer}_source_bands"
            expected = f"{len(names)} source bands, one per {layer}_bands {names}"
            rows.append((len(getattr(self, field)) == len(names), field, expected))
        for field in _source_fields():
            rows.append((not real or bool(getattr(self, field)), field,
                         f"an asset id or a file for source={self.source!r}"))  # fmt: skip
        return rows


def _source_fields() -> tuple[str, ...]:
    return ("sar_source", "optical_source", "terrain_source", "label_source")


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


def run(config: Config) -> recipe.RecipeResult:
    """Run the SAR + optical surface-water recipe.

    Steps: open the SAR, optical, terrain and label layers on one grid → stack the eight bands
    and turn the labels into water / land / no data → cut training chips west of the held-out
    strip (computes) → train the SAR-only and the SAR + optical U-Nets (inputs filled, validity
    bands, the SAR + optical one with modality dropout) and the baselines on the chips
    (computes) → predict every map lazily over the whole scene (chip-and-stitch with a
    halo) → IoU, F1, precision and recall on the held-out strip → write ``outputs.zarr``,
    ``water.tif`` (the SAR + optical water map as a COG), PNG figures, ``metrics.json`` and
    ``model/``.

    Computes: trains the models, scores them and writes ``config.out_dir``. Returns a
    :class:`~xfusion.recipes._base.RecipeResult`:
    ``metrics`` (per model ``<model>_iou``, ``_f1``, ``_precision``, ``_recall``,
    ``_accuracy`` on held-out labelled pixels; ``iou``/``f1`` of the SAR + optical model and
    ``baseline_iou``/``baseline_f1`` of the SAR-only one; on synthetic scenes also
    ``<model>_iou_all``, every held-out pixel against the cover truth; ``baselines`` and
    ``beats_baseline``: the SAR + optical model against Otsu thresholds and gradient
    boosting by IoU), ``cubes`` (``inputs``, ``unet_inputs`` (the U-Nets' inputs:
    ``inputs`` with NaN filled and the ``sar_valid`` and ``optical_valid`` bands),
    ``labels``, ``probability`` and ``water`` with one band per model, ``baseline_water``
    with one band per baseline, ``holdout``, and ``truth_water`` on synthetic scenes) and
    the written paths.

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
    out = recipe.prepare_out_dir(config.out_dir, config=config)
    layers, truth = _open_layers(config, out)
    cube = _stack(layers, config)
    labels = _labels(layers["labels"], config)
    if config.persist and cube.chunks is not None:
        # xf: computes the sources once into (distributed) memory, read by every later step
        cube, labels = dask.persist(cube, labels)
    holdout = _holdout_mask(cube, config)
    chips = _chips(cube, labels, holdout, config)
    fill = band_means(chips["inputs"])
    models = {
        name: _fit(chips, bands, fill, config, dropout=name == "fusion")
        for name, bands in _model_bands(config).items()
    }
    baselines = _fit_baselines(chips, config)
    unet_inputs = _unet_inputs(cube, fill, config).rename("unet_inputs")
    probability = _predict(unet_inputs, models, config.halo).rename("probability")
    probability.attrs = {"units": "probability of water"}
    water = xr.where(probability.notnull(), probability > config.threshold, np.nan)
    water = water.astype(np.float32).rename("water")
    water.attrs = {"classes": "1 water, 0 land, NaN no data", "threshold": config.threshold}
    cubes = {
        "inputs": cube.rename("inputs"),
        "unet_inputs": unet_inputs,
        "labels": labels.rename("labels"),
        "probability": probability,
        "water": water,
        "holdout": holdout.astype(np.float32).rename("holdout"),
    }
    if truth is not None:
        cubes["truth_water"] = truth
    cubes["baseline_water"] = _predict(cube, baselines, None).rename("baseline_water")
    cubes["baseline_water"].attrs = {"classes": "1 water, 0 land, NaN no data"}
    log.info("water: predicting %d×%d px with every model", cube.sizes["y"], cube.sizes["x"])
    (cubes,) = dask.compute(cubes)  # xf: computes every output cube once
    metrics, block = _metrics(cubes, chips, models, baselines, config)
    return recipe.write_results(
        config,
        out,
        cubes,
        metrics,
        baselines=block,
        cog=("water", cubes["water"].sel(band="fusion", drop=True).rename("water")),
        models=models,
        figures=lambda: _figures(out, cubes, {**metrics, **block}, models),
        chunks=config.chunks,
    )


# --- steps ---


def _open_layers(config: Config, out: Path) -> tuple[dict[str, xr.DataArray], Any]:
    """Open the four layers lazily on one grid, bands renamed to the config's, and the truth.

    The truth (synthetic scenes only) is ``(y, x)``: 1 where water covers at least half of the
    pixel, 0 elsewhere, everywhere (under the labels' clouds and on partial water too).
    """
    names = dict(zip(_LAYERS, (config.sar_bands, config.optical_bands, config.terrain_bands,
                               ("label",)), strict=True))  # fmt: skip
    truth = None
    if config.source == "synthetic":
        keys = dict(zip(_LAYERS, ("sar", "optical", "terrain", "truth_water"), strict=True))
        bands = {**names, "labels": ("water",)}
        scene, catalog = recipe.write_synthetic(
            "water", config, out, {keys[k]: bands[k] for k in keys}
        )
        grid = geobox_of(scene["sar"])
        sources = {k: catalog / keys[k] / "collection.json" for k in _LAYERS}
        cover = scene["truth_cover"].sel(band="water", drop=True)
        truth = recipe.plain_coords((cover >= 0.5).astype(np.float32).rename("truth_water"))
        truth.attrs = {"classes": "1 water (cover fraction >= 0.5), 0 land"}
    else:
        grid = config.grid()
        sources = {k: getattr(config, f) for k, f in zip(_LAYERS, _source_fields(), strict=True)}
        bands = dict(zip(_LAYERS, (config.sar_source_bands, config.optical_source_bands,
                                   config.terrain_source_bands, (config.label_source_band,)),
                         strict=True))  # fmt: skip
    opener = _open_ee_layer if config.source == "ee" else _open_stac_layer
    layers = {
        k: _single_image(opener(k, sources[k], bands[k], names[k], grid, config), k, sources[k])
        for k in _LAYERS
    }
    if config.sar_calibration == "palsar_dn":
        sar = layers["sar"]  # digital numbers to γ⁰ in dB: 10·log10(DN²) − 83 (DN 0: no data)
        layers["sar"] = (10.0 * np.log10(sar.where(sar > 0) ** 2) - 83.0).astype(np.float32)
        layers["sar"].attrs = {"units": "dB"}
    return layers, truth


def _open_stac_layer(layer, items, assets, names, grid, config: Config) -> xr.DataArray:
    import xfusion as xf

    assets = dict(zip(assets, names, strict=True))
    cube = xf.open_stac(str(items), grid=grid, assets=assets, chunks=config.spatial_chunks())
    cube = cube.sel(band=list(names))
    return cube if config.source == "synthetic" else config.select_dates(cube)


def _open_ee_layer(layer, asset, bands, names, grid, config: Config) -> xr.DataArray:
    import ee

    import xfusion as xf

    chunks = config.spatial_chunks()
    if layer in config.ee_images:
        cube = xf.open_ee(ee.Image(asset), grid=grid, bands=list(bands), chunks=chunks)
    else:
        dates = {"start": config.start, "end": config.end, "chunks": {"time": 1, **chunks}}
        cube = xf.open_ee(asset, grid=grid, bands=list(bands), **dates)
    return cube.assign_coords(band=list(names))


def _single_image(cube: xr.DataArray, layer: str, where: Any) -> xr.DataArray:
    """``(band, y, x)``: the only image, the median of a series, or the labels' first image."""
    if "time" in cube.dims:
        if cube.sizes["time"] == 0:
            raise EmptySelectionError(f"no image of {str(where)!r} in the date range")
        # a categorical layer is never averaged: the labels keep their first image
        if cube.sizes["time"] == 1 or layer == "labels":
            cube = cube.isel(time=0)
        else:
            cube = cube.xf.composite("median")
    return recipe.plain_coords(cube)


def _stack(layers: dict[str, xr.DataArray], config: Config) -> xr.DataArray:
    """Stack the eight-band cube ``(band, y, x)`` float32: SAR, optical, terrain."""
    parts = [layers[k] for k in ("sar", "optical", "terrain")]
    cube = xr.concat(parts, dim="band", coords="minimal", compat="override", join="override")
    cube = cube.astype(np.float32)
    if cube.chunks is not None:
        cube = cube.chunk({"band": -1, **config.spatial_chunks()})
    cube.attrs = {"bands": "SAR backscatter (dB), optical reflectance, DEM and HAND (m)"}
    return cube


def _labels(raw: xr.DataArray, config: Config) -> xr.DataArray:
    """Lazy ``(y, x)`` labels: 1 water, 0 land, NaN no data (every other value)."""
    codes = raw.isel(band=0, drop=True)
    labels = binary_labels(codes, config.label_water_values, config.label_land_values)
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
    return xr.DataArray(mask, dims=("y", "x"), coords={"y": cube.y, "x": cube.x}, name="holdout")


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


def _groups(config: Config, bands: list[str] | None = None) -> dict[str, list[str]]:
    """Return the sensor groups (SAR, optical) among ``bands`` (default: every band)."""
    bands = list(config.bands) if bands is None else bands
    groups = {"sar": [b for b in config.sar_bands if b in bands],
              "optical": [b for b in config.optical_bands if b in bands]}  # fmt: skip
    return {name: members for name, members in groups.items() if members}


def _unet_inputs(cube: xr.DataArray, fill: dict[str, float], config: Config) -> xr.DataArray:
    """Lazy U-Net inputs: NaN filled with the chips' band means, ``sar_valid``, ``optical_valid``.

    The U-Nets predict everywhere: under the optical's cloud cores the SAR + optical model sees
    ``optical_valid`` 0 and classifies from SAR and terrain, as it learnt on the chips' copies
    without the optical.
    """
    from xfusion.models.modality import fill_with_validity

    return fill_with_validity(cube, _groups(config), fill)


def _fit(
    chips: xr.Dataset, bands: list[str], fill: dict[str, float], config: Config, dropout: bool
) -> Any:
    """Train one segmentation U-Net on the chips' ``bands`` and validity bands (computes).

    With ``dropout`` (the SAR + optical model, ``config.modality_dropout``) also on the chips'
    copies without each sensor group.
    """
    from xfusion.models import UNetSegmenter
    from xfusion.models.modality import fill_with_validity, modality_dropout, validity_band

    groups = _groups(config, bands)
    bands = bands + [validity_band(g) for g in groups]
    if dropout and config.modality_dropout and len(groups) > 1:
        chips = modality_dropout(chips, groups, fill)
    else:
        chips = chips.drop_vars(["inputs", "band"]).assign(
            inputs=fill_with_validity(chips["inputs"], groups, fill)
        )
    log.info("water: training a U-Net on %s (%d chips)", bands, chips.sizes["sample"])
    model = UNetSegmenter(
        **config.pick("widths", "optimizer", "dice_weight", "augment", "n_members", "halo"),
        **config.training_options(),
    )
    return model.fit(chips["inputs"].sel(band=bands), chips["target"])


def _fit_baselines(chips: xr.Dataset, config: Config) -> dict[str, Any]:
    """Otsu on each SAR band and gradient boosting on every band, on the chips' labelled pixels.

    The same pixels the U-Nets are trained on (computes: fits the baselines).
    """
    from xfusion.models.baselines import ThresholdClassifier, fit_baselines

    bands = recipe.band_names(chips["inputs"])
    pixels = chips["inputs"].transpose("sample", "y", "x", "band").values.reshape(-1, len(bands))
    target = chips["target"].values.reshape(-1)  # xf: computes nothing (patches are in memory)
    labelled = np.isfinite(target)
    table, target = pd.DataFrame(pixels[labelled], columns=bands), target[labelled]
    fitted = {f"otsu_{b}": ThresholdClassifier(b).fit(table[[b]], target) for b in config.sar_bands}
    fitted["hgb"] = fit_baselines("segmentation", table, target, seed=config.seed)["hgb"]
    return fitted


def _predict(cube: xr.DataArray, models: dict[str, Any], halo: int | None) -> xr.DataArray:
    """Lazy ``(band, y, x)``, one band per model: water probability (U-Net) or class (pixel)."""
    maps = []
    for name, model in models.items():
        bands = getattr(model, "bands_", None)
        bands = list(model.feature_names_in_ if bands is None else bands)
        kwargs = {"halo": halo} if hasattr(model, "bands_") else {}
        proba = cube.sel(band=bands).xf.predict(model, **kwargs)
        maps.append(proba.isel(band=0, drop=True).expand_dims(band=[name]))
    return xr.concat(maps, dim="band")


# --- metrics ---


def _metrics(
    cubes: dict[str, xr.DataArray],
    chips: xr.Dataset,
    models: dict[str, Any],
    baselines: dict[str, Any],
    config: Config,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the metrics and the baselines block, every map scored on held-out labels."""
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
        metrics.update({f"{name}_{key}": value for key, value in scores.items()})
        metrics[f"{name}_final_loss"] = float(model.history_["loss"][-1])
        if "truth_water" in cubes:
            # every held-out pixel, no data of the labels included, against the cover truth
            truth = np.where(held, cubes["truth_water"].values, np.nan)
            metrics[f"{name}_iou_all"] = segmentation_scores(water, truth)["iou"]
    for key in ("iou", "f1"):
        metrics[key] = metrics[f"fusion_{key}"]
        metrics[f"baseline_{key}"] = metrics[f"sar_only_{key}"]
    metrics["iou_gain"] = metrics["iou"] - metrics["baseline_iou"]
    # the model and the baselines on exactly the same pixels: where every map has a value
    maps = {"fusion": cubes["water"].sel(band="fusion").values}
    maps.update({str(b): cubes["baseline_water"].sel(band=b).values
                 for b in cubes["baseline_water"].band.values})  # fmt: skip
    common = np.where(np.isfinite(np.stack(list(maps.values()))).all(axis=0), reference, np.nan)
    scores = {name: segmentation_scores(m, common) for name, m in maps.items()}
    block = recipe.baseline_block(scores.pop("fusion"), scores, metric="iou")
    block["baselines"]["thresholds"] = {
        name: {"threshold": model.threshold_, "water_above": model.above_}
        for name, model in baselines.items()
        if hasattr(model, "threshold_")
    }
    return metrics, block


# --- figures ---


def _figures(out: Path, cubes: dict, metrics: dict, models: dict[str, Any]) -> dict[str, Path]:
    """PNG panels (inputs, labels, both maps, the best baseline, errors), training curves."""
    from matplotlib.colors import ListedColormap

    from xfusion.viz import plot_loss, plot_map_row, rgb_array

    inputs, labels = cubes["inputs"], cubes["labels"].values
    bands = recipe.band_names(inputs)
    classes = {"cmap": ListedColormap(["#d9c89e", "#2166ac"]), "vmin": 0, "vmax": 1}
    panels: list[tuple[str, Any, dict]] = [
        (f"SAR {bands[0]} (dB)", inputs.sel(band=bands[0]).values, {"cmap": "gray"}),
    ]
    if {"SWIR1", "NIR", "Red"} <= set(bands):
        panels.append(("optical SWIR1/NIR/Red", rgb_array(inputs, ["SWIR1", "NIR", "Red"]), {}))
    panels.append(("labels (blank: no data)", labels, classes))
    for name, title in zip(MODELS, ("SAR-only", "SAR + optical"), strict=True):
        iou = metrics[f"{name}_iou"]
        panels.append((f"{title}: IoU {iou:.3f}", cubes["water"].sel(band=name).values, classes))
    best = metrics["baselines"].get("baseline")  # none where the IoUs are undefined
    if best is not None:
        iou, best_map = metrics["baselines"]["baseline_iou"], cubes["baseline_water"].sel(band=best)
        panels.append((f"baseline {best}: IoU {iou:.3f}", best_map.values, classes))
    fusion = cubes["water"].sel(band="fusion").values
    ok = np.isfinite(labels) & np.isfinite(fusion)
    # grey correct, red false water, blue missed water
    errors = np.where(ok, np.where(fusion == labels, 0.0, np.where(fusion == 1, 1.0, 2.0)), np.nan)
    errors_cmap = ListedColormap(["#bdbdbd", "#d7301f", "#2c7bb6"])
    panels.append(("errors: grey ok, red false, blue missed", errors,
                   {"cmap": errors_cmap, "vmin": 0, "vmax": 2}))  # fmt: skip
    held = cubes["holdout"].values.astype(bool)
    paths = {"panels": out / "water_panels.png", "loss": out / "training_loss.png"}
    plot_map_row(
        panels,
        title="surface water; held-out strip east of the dashed line",
        marker_x=int(np.argmax(held.any(axis=0))),
        path=paths["panels"],
    )
    history = {f"{name} loss": models[name].history_["loss"] for name in MODELS}
    plot_loss(history, monitor="fusion loss", path=paths["loss"], dpi=90)
    return paths
