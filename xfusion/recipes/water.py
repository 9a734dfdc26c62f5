"""Surface-water segmentation from SAR, optical and terrain layers with a U-Net.

The recipe follows the SAR + optical surface-water workflow: L-band SAR backscatter (HH, HV), a
cloud-free optical composite (Red, NIR, SWIR1, SWIR2) and terrain (DEM and HAND, the height above
the nearest drainage) are stacked into one cube on one grid (:mod:`xfusion.preprocess.layers`) with
two bands the DEM gives under the SAR's viewing geometry (local incidence angle and the
radar shadow mask, :func:`~xfusion.preprocess.layers.radar_geometry`: radar shadow is as dark as
water, so a model must know where it is); water labels (USGS DSWE in the workflow) mark water, land
and *no data* (clouds, cloud shadows, partial surface water), which the loss ignores, so no-data
pixels never become "land". Training chips are cut west of a held-out eastern strip
(:func:`xfusion.patches`, chips with too much no data discarded); a **SAR-only** U-Net (SAR, terrain
and geometry) and a **SAR + optical** U-Net (all bands) are trained. Missing inputs (optical cloud
cores, SAR gaps) are filled with the chips' band means and flagged by ``sar_valid`` /
``optical_valid`` bands, and the SAR + optical model also trains on every chip once without SAR and
once without the optical (modality dropout, :mod:`xfusion.models.modality`), so it reads water from
each sensor and does not follow the SAR where it is dark over land. The workflow's chip-and-stitch
prediction is :func:`xfusion.predict`: every block read with a halo of context, so chip borders
leave no seams.

Metrics: IoU, F1, precision and recall of both maps on the held-out strip against the labels,
no data left out. Baselines on the same pixels (:mod:`xfusion.models.class_maps`): an Otsu
threshold on each SAR band (water is dark) and gradient boosting on all the bands, fitted on
the chips' labelled pixels; ``beats_baseline`` says whether the SAR + optical U-Net beats the
best of them by 0.05 IoU. Run it with ``run(Config())`` (offline, a synthetic scene written as a
local STAC catalog) or ``xfusion run water --config water.toml``.
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
from xfusion.errors import ConfigError, EmptySelectionError
from xfusion.grids import geobox_of
from xfusion.models import class_maps, modality
from xfusion.models.segmentation import segmentation_scores
from xfusion.preprocess import layers as lyr
from xfusion.preprocess.labels import binary_labels
from xfusion.recipes import _base as recipe

__all__ = ["MODELS", "Config", "real_sources", "run", "segmentation_scores"]

log = logging.getLogger(__name__)

_CALIBRATIONS = ("db", "palsar_dn")
_LOOKS = ("east", "west")
_GEOMETRY = ("local_incidence", "radar_shadow")
_OPTIMIZERS = ("sgd", "adam", "adamw")
_LAYERS = ("sar", "optical", "terrain", "labels")
_SOURCES = ("sar_source", "optical_source", "terrain_source", "label_source")
#: The two models: SAR and terrain only, and SAR + optical + terrain.
MODELS = ("sar_only", "fusion")


@dataclasses.dataclass
class Config(recipe.ModelRecipeConfig):
    """Configuration of the SAR + optical surface-water recipe.

    The defaults run offline in about a minute of CPU time on a 128×128 synthetic scene
    (``difficulty="hard"`` adds SAR-dark land and clouds over the optical) with 32×32 chips and
    a small U-Net. The layer fields (``sar_source`` … ``label_source_band``) name the real data
    read with ``source="ee"`` or ``"stac"`` (SAR and optical reduced to their median, the
    labels' first image; :func:`real_sources`); with ``source="ee"``, :meth:`from_dict` turns
    ``sar_calibration`` and the label values to the Earth Engine assets' (``SOURCE_DEFAULTS``).
    Shared fields: :mod:`xfusion.recipes._config`.

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
        Bands of the SAR-only model (SAR and the terrain that comes with the SAR download in the
        workflow); the SAR + optical model uses every band.
    label_water_values, label_land_values : tuple of float
        Label values meaning water and land; every other value (and NaN) is no data, ignored in
        training and evaluation. DSWE: water ``(1, 2)`` (high and moderate confidence), land
        ``(0,)``; partial surface water (3, 4), cloud (9) and fill (255) are no data.
    sar_calibration : {"db", "palsar_dn"}
        ``"db"``: the SAR bands are backscatter in dB (the synthetic scene's); ``"palsar_dn"``:
        JAXA PALSAR mosaic digital numbers, converted with γ⁰ = 10·log10(DN²) − 83 dB (DN 0 is
        no data).
    chip_size : int
        Side of the square training chips in pixels (the workflow uses 512); a multiple of
        ``2 ** len(widths)``.
    n_chips : int
        Number of training chips drawn from the training region.
    chip_stride : int, optional
        Chip origins on multiples of this (``chip_size``: the workflow's non-overlapping grid);
        by default chips may start at any pixel.
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
    radar_geometry : bool
        Add two bands computed from the DEM with the SAR's viewing geometry
        (:func:`xfusion.preprocess.layers.radar_geometry`): ``local_incidence`` (degrees) and
        ``radar_shadow`` (1 where terrain nearer the sensor hides the ground; layover shows as a
        local incidence of 0 or below). Radar shadow is as dark as calm water, so without it a model
        that saw little steep terrain in training calls shadow water. By default they act through
        ``mask_radar_shadow`` and are not model inputs (``exclude_bands``). Default on.
    sar_look : {"east", "west"}
        Direction the SAR looks (range increasing eastwards: a right-looking sensor on an
        ascending pass, like the PALSAR mosaics).
    sar_incidence : float
        The SAR's incidence angle on flat ground, degrees (PALSAR fine beam: about 35).
    mask_radar_shadow : bool
        With ``radar_geometry``: the SAR bands are missing (NaN, so ``sar_valid`` is 0) in
        radar shadow and layover, where the radar records no backscatter of the ground (the
        noise floor, or slopes folded onto each other), as SAR processors flag them; the models
        then read water there from the optical and the terrain, as they do in any SAR gap, and
        the baselines get the same gaps.
    dem_band : str
        The terrain band holding the elevation that ``radar_geometry`` reads.
    exclude_bands : tuple of str
        Bands of the cube that no model (U-Nets and pixel baselines alike) reads; they stay in
        the ``inputs`` output. By default the DEM's absolute elevation (it differs from region
        to region, and a network extrapolates it where the terrain is higher than in training;
        HAND carries what elevation says about water) and the geometry bands (with
        ``mask_radar_shadow`` their information is the SAR's validity; a shadow band that is
        all 0 in a flat training area teaches a network nothing about shadow).
    modality_dropout : bool
        Train the SAR + optical U-Net also on copies of every chip with the SAR, and with the
        optical, missing (:func:`xfusion.models.modality.modality_dropout`), so it learns each
        sensor's view of water and does not follow one where it misleads (SAR-dark wet soil,
        radar shadow; cloud shadow and cloud cores in the optical). Default on.
    n_members : int
        Ensemble size of each U-Net (members seeded ``seed``, ``seed + 1``, …; their mean
        probability is mapped); training time grows in proportion. Three by default: one U-Net
        trained on a few dozen chips depends on its seed (hard scene, seeds 0–4, measured before
        ``mask_radar_shadow``: SAR + optical IoU 0.62 ± 0.22 with one member, 0.68 ± 0.22 with
        three; with it and three members 0.72 ± 0.21).
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
    # the workflow's region and year (read by real sources; the group fields keep their place)
    size: int = 128
    bounds: tuple[float, ...] = (640000.0, 3318560.0, 701440.0, 3380000.0)
    crs: str = "EPSG:32615"
    start: str = "2010-01-01"
    end: str = "2011-01-01"
    sar_bands: tuple[str, ...] = ("HH", "HV")
    optical_bands: tuple[str, ...] = ("Red", "NIR", "SWIR1", "SWIR2")
    terrain_bands: tuple[str, ...] = ("DEM", "HAND")
    sar_only_bands: tuple[str, ...] = ("HH", "HV", "DEM", "HAND")
    label_water_values: tuple[float, ...] = (1.0,)
    label_land_values: tuple[float, ...] = (0.0,)
    sar_calibration: str = "db"
    # chips and training (chunks, epochs, batch_size and learning_rate: the training groups')
    chunks: int = 64
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 0.01
    chip_size: int = 32
    n_chips: int = 48
    chip_stride: int | None = None
    max_nodata: float = 0.5
    widths: tuple[int, ...] = (8, 16)
    optimizer: str = "adam"
    dice_weight: float = 0.0
    augment: bool = True
    threshold: float = 0.5
    radar_geometry: bool = True
    sar_look: str = "east"
    sar_incidence: float = 35.0
    mask_radar_shadow: bool = True
    dem_band: str = "DEM"
    exclude_bands: tuple[str, ...] = ("DEM", "local_incidence", "radar_shadow")
    modality_dropout: bool = True
    n_members: int = 3
    halo: int | None = None
    # the real layers: Earth Engine assets by default (see real_sources)
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
    def geometry_bands(self) -> tuple[str, ...]:
        """The DEM-derived SAR geometry bands (none without ``radar_geometry``)."""
        return _GEOMETRY if self.radar_geometry else ()

    @property
    def bands(self) -> tuple[str, ...]:
        """Every band of the stacked cube (the SAR + optical model's inputs), in order."""
        return (*self.sar_bands, *self.optical_bands, *self.terrain_bands, *self.geometry_bands)

    def checks(self) -> list[tuple[bool, str, str]]:
        """Return the rows of :meth:`validate` for this recipe's own fields."""
        multiple, bands, real = 2 ** len(self.widths), self.bands, self.source != "synthetic"
        rows = [
            *recipe.one_of(self, "sar_calibration", _CALIBRATIONS),
            (real or self.sar_calibration == "db", "sar_calibration",
             "'db' on the synthetic scene (its SAR is in dB)"),
            *recipe.one_of(self, "optimizer", _OPTIMIZERS),
            *recipe.at_least(self, 16, "chunks"),
            (len(self.widths) >= 1 and min(self.widths) >= 1, "widths", "positive ints"),
            (self.chip_size >= multiple and self.chip_size % multiple == 0, "chip_size",
             f"a positive multiple of {multiple} (2 ** len(widths))"),
            *recipe.at_least(self, 1, "n_chips"),
            (self.chip_stride is None or self.chip_stride >= 1, "chip_stride", ">= 1 or unset"),
            (0.0 <= self.max_nodata < 1.0, "max_nodata", "in [0, 1)"),
            *recipe.at_least(self, 0, "dice_weight"),
            *recipe.at_least(self, 1, "n_members"),
            (0.0 < self.threshold < 1.0, "threshold", "strictly between 0 and 1"),
            *recipe.one_of(self, "sar_look", _LOOKS),
            (0.0 < self.sar_incidence < 90.0, "sar_incidence", "in (0, 90) degrees"),
            (set(self.exclude_bands) <= {*bands, *_GEOMETRY}
             and bool(set(self.sar_bands) - set(self.exclude_bands)), "exclude_bands",
             f"names among the stacked bands {bands}, not every SAR band"),
            (not self.radar_geometry or self.dem_band in self.terrain_bands, "dem_band",
             f"one of terrain_bands {self.terrain_bands} (radar_geometry reads it)"),
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
        for field in _SOURCES:
            rows.append((not real or bool(getattr(self, field)), field,
                         f"an asset id or a file for source={self.source!r}"))  # fmt: skip
        return rows


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
    >>> Config(out_dir="out", **fields).bands[-4:]
    ('DEM', 'HAND', 'local_incidence', 'radar_shadow')
    """
    common = {k: getattr(Config, k) for k in ("bounds", "crs", "resolution", "start", "end")}
    common |= {"chunks": 512, "chip_size": 512, "chip_stride": 512, "n_chips": 12,
               "widths": (32, 64, 128, 256, 512), "epochs": 30, "batch_size": 4,
               "learning_rate": 0.001}  # fmt: skip
    # Earth Engine: the Config's layer fields (its last ones) and the SOURCE_DEFAULTS of "ee"
    names = [f.name for f in dataclasses.fields(Config)]
    ee = {k: getattr(Config, k) for k in names[names.index("sar_source") :]}
    ee |= Config.SOURCE_DEFAULTS["ee"]
    stac = {
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
    }
    return {"ee": {"source": "ee", **ee, **common}, "stac": {"source": "stac", **stac, **common}}


def run(config: Config) -> recipe.RecipeResult:
    """Run the SAR + optical surface-water recipe (computes: trains, scores and writes).

    Open the four layers on one grid, stack the bands and the DEM's radar geometry → labels as water
    / land / no data → chips west of the held-out strip → the SAR-only and SAR + optical U-Nets
    (inputs filled, validity bands, modality dropout) and the pixel baselines on the chips → every
    map predicted lazily (chip-and-stitch with a halo) → held-out scores → ``outputs.zarr``,
    ``water.tif`` (the SAR + optical map), figures, ``metrics.json`` and ``model/``.

    ``metrics``: per model ``<model>_iou``, ``_f1``, ``_precision``, ``_recall``, ``_accuracy``
    on held-out labelled pixels (and ``_iou_all`` against the cover truth on synthetic scenes);
    ``iou``/``f1`` of the SAR + optical model, ``baseline_iou``/``baseline_f1`` of the SAR-only
    one; ``baselines`` and ``beats_baseline`` against Otsu and gradient boosting by IoU.
    ``cubes``: ``inputs``, ``unet_inputs`` (filled, with ``sar_valid`` and ``optical_valid``),
    ``labels``, ``probability`` and ``water`` (a band per model), ``baseline_water`` (a band per
    baseline), ``holdout``, and ``truth_water`` on synthetic scenes.

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
    stacked = [layers[k] for k in _LAYERS[:3]]
    if config.radar_geometry:
        dem = layers["terrain"].sel(band=[config.dem_band])
        geometry = lyr.radar_geometry(dem, look=config.sar_look, incidence=config.sar_incidence)
        geometry = geometry.assign_coords(band=list(config.geometry_bands))
        stacked.append(geometry)
        if config.mask_radar_shadow:
            incidence, shadow = (geometry.isel(band=i, drop=True) for i in (0, 1))
            stacked[0] = stacked[0].where(~((shadow == 1) | (incidence <= 0)))
    cube = lyr.stack_layers(stacked, config.spatial_chunks())
    cube.attrs = {"bands": "SAR backscatter (dB), optical reflectance, DEM and HAND (m), "
                  "local incidence (degrees) and radar shadow (1) from the DEM"}  # fmt: skip
    labels = _labels(layers["labels"], config)
    if config.persist and cube.chunks is not None:
        # xf: computes the sources once into (distributed) memory, read by every later step
        cube, labels = dask.persist(cube, labels)
    holdout = lyr.holdout_strip(cube, config.holdout_fraction, min_train=config.chip_size)
    chips = _chips(cube, labels, holdout, config)
    fill = modality.band_means(chips["inputs"])
    groups = {"sar": list(config.sar_bands), "optical": list(config.optical_bands)}
    read = [b for b in config.bands if b not in config.exclude_bands]  # what the models read
    sar_only = [b for b in read if b in (*config.sar_only_bands, *config.geometry_bands)]
    groups = {k: kept for k, v in groups.items() if (kept := [b for b in v if b in read])}
    models = {
        name: _fit(chips, bands, groups, fill, config, name == "fusion")
        for name, bands in zip(MODELS, (sar_only, read), strict=True)
    }
    threshold_bands = [b for b in config.sar_bands if b in read]
    baselines = class_maps.fit_pixel_baselines(
        chips.sel(band=read), threshold_bands, seed=config.seed
    )
    unet_inputs = modality.fill_with_validity(cube, groups, fill).rename("unet_inputs")
    probability = class_maps.predict_maps(unet_inputs, models, halo=config.halo)
    probability.attrs = {"units": "probability of water"}
    water = class_maps.threshold_map(probability, config.threshold)
    water.attrs["classes"] = "1 water, 0 land, NaN no data"
    cubes = {
        "inputs": cube.rename("inputs"),
        "unet_inputs": unet_inputs,
        "labels": labels,
        "probability": probability.rename("probability"),
        "water": water.rename("water"),
        "holdout": holdout.astype(np.float32),
        **({"truth_water": truth} if truth is not None else {}),
        "baseline_water": class_maps.predict_maps(cube, baselines).rename("baseline_water"),
    }
    cubes["baseline_water"].attrs = {"classes": "1 water, 0 land, NaN no data"}
    log.info("water: predicting %d×%d px with every model", cube.sizes["y"], cube.sizes["x"])
    (cubes,) = dask.compute(cubes)  # xf: computes every output cube once
    metrics, block = _metrics(cubes, chips, models, baselines, config)
    outputs = {
        "cog": ("water", cubes["water"].sel(band="fusion", drop=True)),
        "models": models,
        "figures": lambda: _figures(out, cubes, {**metrics, **block}, models),
        "chunks": config.chunks,
    }
    return recipe.write_results(config, out, cubes, metrics, baselines=block, **outputs)


def _open_layers(config: Config, out: Path) -> tuple[dict[str, xr.DataArray], Any]:
    """Open the four layers ``(band, y, x)`` on one grid, bands renamed, and the truth.

    The truth (synthetic scenes) is 1 where water covers at least half of the pixel, else 0.
    """
    names = dict(zip(_LAYERS, (config.sar_bands, config.optical_bands, config.terrain_bands,
                               ("label",)), strict=True))  # fmt: skip
    options = {"source": "stac", "chunks": config.spatial_chunks()}
    truth = None
    if config.source == "synthetic":
        keys = dict(zip(_LAYERS, ("sar", "optical", "terrain", "truth_water"), strict=True))
        bands = {**names, "labels": ("water",)}
        written = {keys[k]: bands[k] for k in _LAYERS}
        scene, catalog = recipe.write_synthetic("water", config, out, written)
        options["grid"] = geobox_of(scene["sar"])
        sources = {k: catalog / keys[k] / "collection.json" for k in _LAYERS}
        cover = scene["truth_cover"].sel(band="water", drop=True)
        truth = recipe.plain_coords((cover >= 0.5).astype(np.float32).rename("truth_water"))
        truth.attrs = {"classes": "1 water (cover fraction >= 0.5), 0 land"}
    else:
        options |= {"grid": config.grid(), **config.pick("source", "start", "end")}
        sources = {k: getattr(config, f) for k, f in zip(_LAYERS, _SOURCES, strict=True)}
        bands = dict(zip(_LAYERS, (config.sar_source_bands, config.optical_source_bands,
                                   config.terrain_source_bands, (config.label_source_band,)),
                         strict=True))  # fmt: skip
    layers = {
        k: recipe.plain_coords(lyr.open_layer(
            sources[k], bands[k], names[k], image=k in config.ee_images,
            categorical=k == "labels", **options))
        for k in _LAYERS
    }  # fmt: skip
    if config.sar_calibration == "palsar_dn":
        layers["sar"] = lyr.palsar_db(layers["sar"])
    return layers, truth


def _labels(raw: xr.DataArray, config: Config) -> xr.DataArray:
    """Lazy ``(y, x)`` labels: 1 water, 0 land, NaN no data (every other value)."""
    codes = raw.isel(band=0, drop=True)
    labels = binary_labels(codes, config.label_water_values, config.label_land_values)
    labels.attrs = {"classes": "1 water, 0 land, NaN no data (ignored)"}
    return labels.rename("labels")


def _chips(cube: xr.DataArray, labels: xr.DataArray, holdout: Any, config: Config) -> xr.Dataset:
    """Training chips west of the held-out strip, with water and land labels (computes)."""
    log.info("water: cutting %d chips of %d px", config.n_chips, config.chip_size)
    chips = cube.xf.patches(
        labels, size=config.chip_size, n=config.n_chips, seed=config.seed, regions=~holdout,
        max_nodata=config.max_nodata, stride=config.chip_stride,
    )  # fmt: skip
    target = chips["target"].values  # xf: computes nothing (patches are in memory)
    if not (target == 1).any() or not (target == 0).any():
        raise EmptySelectionError(
            f"the {chips.sizes['sample']} training chips need both water and land labels; "
            f"they hold {int((target == 1).sum())} water and {int((target == 0).sum())} land px"
        )
    return chips


def _fit(
    chips: xr.Dataset, bands: list[str], groups: dict, fill: dict, config: Config, dropout: bool
) -> Any:
    """One segmentation U-Net on the chips' ``bands`` and validity bands (computes).

    With ``dropout`` (and ``config.modality_dropout``) also on the copies without each sensor.
    """
    from xfusion.models import UNetSegmenter

    groups = modality.sensor_groups(groups, bands)
    dropout = dropout and config.modality_dropout
    chips = modality.training_patches(chips, groups, fill, dropout=dropout)
    bands = bands + [modality.validity_band(g) for g in groups]
    log.info("water: training a U-Net on %s (%d chips)", bands, chips.sizes["sample"])
    model = UNetSegmenter(
        **config.pick("widths", "optimizer", "dice_weight", "augment", "n_members", "halo"),
        **config.training_options(),
    )
    return model.fit(chips["inputs"].sel(band=bands), chips["target"])


def _metrics(
    cubes: dict, chips: xr.Dataset, models: dict, baselines: dict, config: Config
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the metrics and the baselines block, every map scored on the held-out labels."""
    labels = cubes["labels"].values  # xf: computes nothing (already computed)
    held = cubes["holdout"].values.astype(bool)
    reference, target = np.where(held, labels, np.nan), chips["target"].values
    metrics: dict[str, Any] = {
        "n_chips": int(chips.sizes["sample"]),
        "chip_size": config.chip_size,
        "chip_water_fraction": float(np.nanmean(target)),
        "chip_nodata_fraction": float(np.mean(np.isnan(target))),
        "label_nodata_fraction": float(np.mean(np.isnan(labels))),
        "heldout_labelled": int(np.isfinite(reference).sum()),
        "heldout_water_fraction": float(np.nanmean(reference)),
    }
    scores = class_maps.score_maps(cubes["water"], reference)
    if "truth_water" in cubes:  # every held-out pixel, labels' no data too, against the truth
        truth = class_maps.score_maps(
            cubes["water"], np.where(held, cubes["truth_water"].values, np.nan)
        )
    for name, model in models.items():
        metrics.update({f"{name}_{k}": v for k, v in scores[name].items() if k != "n"})
        metrics[f"{name}_final_loss"] = float(model.history_["loss"][-1])
        if "truth_water" in cubes:
            metrics[f"{name}_iou_all"] = truth[name]["iou"]
    for key in ("iou", "f1"):
        metrics[key] = metrics[f"fusion_{key}"]
        metrics[f"baseline_{key}"] = metrics[f"sar_only_{key}"]
    metrics["iou_gain"] = metrics["iou"] - metrics["baseline_iou"]
    # the model and the baselines on exactly the same pixels: where every map has a value
    maps = xr.concat([cubes["water"].sel(band=["fusion"]), cubes["baseline_water"]], "band")
    scores = class_maps.score_maps(maps, reference, common=True)
    block = recipe.baseline_block(scores.pop("fusion"), scores, metric="iou")
    block["baselines"]["thresholds"] = {
        name: {"threshold": model.threshold_, "water_above": model.above_}
        for name, model in baselines.items()
        if hasattr(model, "threshold_")
    }
    return metrics, block


def _figures(out: Path, cubes: dict, metrics: dict, models: dict[str, Any]) -> dict[str, Path]:
    """PNG panels (inputs, labels, both maps, the best baseline, errors), training curves."""
    from xfusion.viz import plot_loss, rgb_array

    inputs, water, bands = cubes["inputs"], cubes["water"], recipe.band_names(cubes["inputs"])
    shown = [(f"SAR {bands[0]} (dB)", inputs.sel(band=bands[0]).values, {"cmap": "gray"})]
    if {"SWIR1", "NIR", "Red"} <= set(bands):
        shown.append(("optical SWIR1/NIR/Red", rgb_array(inputs, ["SWIR1", "NIR", "Red"]), {}))
    maps = [(f"{title}: IoU {metrics[f'{name}_iou']:.3f}", water.sel(band=name).values)
            for name, title in zip(MODELS, ("SAR-only", "SAR + optical"), strict=True)]  # fmt: skip
    best = metrics["baselines"].get("baseline")  # none where the IoUs are undefined
    if best is not None:
        iou, best_map = metrics["baselines"]["baseline_iou"], cubes["baseline_water"].sel(band=best)
        maps.append((f"baseline {best}: IoU {iou:.3f}", best_map.values))
    paths = {"panels": out / "water_panels.png", "loss": out / "training_loss.png"}
    class_maps.plot_class_maps(
        maps, cubes["labels"].values, inputs=shown, errors_of=water.sel(band="fusion").values,
        holdout=cubes["holdout"].values, path=paths["panels"],
        title="surface water; held-out strip east of the dashed line",
    )  # fmt: skip
    history = {f"{name} loss": models[name].history_["loss"] for name in MODELS}
    plot_loss(history, monitor="fusion loss", path=paths["loss"], dpi=90)
    return paths
