"""Built-up area mapping from Sentinel-2 and VIIRS night lights, labelled by GHSL settlements.

The recipe generalises a published Earth Engine workflow over Bagmati (Nepal): Sentinel-2
reflectances (QA60 cloud and cirrus bits masked, ÷10000, July–December median) and VIIRS
monthly night lights (July–December median, standardised with the mean of a reference year and
the standard deviation of another) are fused on one 1 km grid; the GHSL settlement model
(``smod_code``) of the training year, classes ≥ 2, labels built-up; a random forest is trained
on points sampled with a seed and applied lazily to the fused cube of every year; a change map
compares the last year with the training year.

Metrics: accuracy, F1, precision and recall on held-out points (and of the maps against the
truth on synthetic scenes), the built-up share per year; baselines on the same points, by F1:
the night-light threshold with the best training F1, Otsu's threshold and gradient boosting
(:mod:`xfusion.models.classification`). The forest is saved without pickle as its training
table and a JSON sidecar (:mod:`xfusion.models.forest`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

import dask
import xarray as xr

import xfusion as xf
from xfusion.errors import ConfigError
from xfusion.models import classification
from xfusion.models.binary import best_f1_threshold
from xfusion.models.forest import RefittableForest, load_classifier, save_classifier
from xfusion.preprocess import seasonal
from xfusion.preprocess.labels import threshold_labels
from xfusion.preprocess.mask import CLASS_PRESETS, QA_PRESETS
from xfusion.preprocess.points import train_test_points
from xfusion.recipes import _base as recipe

__all__ = ["Config", "load_classifier", "run", "save_classifier"]

#: The real datasets of the published workflow (Earth Engine ids, bands, dates, region).
REAL_SOURCES: dict[str, Any] = {
    "source": "ee",
    "bounds": (84.75, 27.3, 86.1, 28.4),
    "bounds_crs": "EPSG:4326",
    "crs": "EPSG:32645",
    "s2_collection": "COPERNICUS/S2",
    "s2_bands": ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A"),
    "viirs_collection": "NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG",
    "ghsl_collection": "JRC/GHSL/P2016/SMOD_POP_GLOBE_V1",
    "n_train": 6000,
    "n_test": 3000,
}


@dataclasses.dataclass
class Config(recipe.SeasonFields, recipe.AreaFields, recipe.RecipeConfig):
    """Configuration of the built-up recipe; the defaults run offline on a synthetic scene.

    :meth:`real_sources` gives the published Earth Engine workflow. The shared fields are
    documented in :mod:`xfusion.recipes._config` (``season``, ``train_year`` and
    ``inference_years``: :class:`~xfusion.recipes._config.SeasonFields`); ``seed`` also seeds
    the training sample (held-out points: ``seed + 1``) and the forest.

    Parameters
    ----------
    size : int
        Synthetic scene only: pixels (100 m) along each side; at least 100 (10×10 km).
    bounds, bounds_crs : (left, bottom, right, top), str
        Area to map, and its CRS (default longitude/latitude); required for ``"ee"``, else the
        label source's extent.
    crs, resolution : str, float
        CRS and pixel size of the fused grid: default the label source's CRS (Bagmati:
        ``"EPSG:32645"``) and 1000 m, GHSL's native resolution.
    s2_resolution, viirs_resolution : float
        Pixel size at which Sentinel-2 and VIIRS are read where ``bounds`` are given.
    s2_collection, viirs_collection, ghsl_collection : str
        The three sources: STAC paths or URLs (``"stac"``) or Earth Engine ids (``"ee"``).
    s2_bands : tuple of str
        Sentinel-2 feature bands (synthetic: B2, B3, B4, B8, B11, B12; the workflow: B2–B8A).
    s2_qa, s2_qa_preset : str
        Sentinel-2 quality band (``"QA60"``; ``"SCL"`` for L2A STAC items) and its mask preset,
        bits of :data:`~xfusion.preprocess.mask.QA_PRESETS` or classes of ``CLASS_PRESETS``.
    s2_scale : float
        Factor turning Sentinel-2 values into reflectance (1e-4; 1.0 where STAC scales).
    s2_max_cloud : float, optional
        Earth Engine only: keep images with ``CLOUDY_PIXEL_PERCENTAGE`` below this.
    viirs_band, ghsl_band : str
        Night-light radiance band (``"avg_rad"``) and settlement-model band (``"smod_code"``).
    builtup_min_class : int
        Settlement classes at or above this are built-up (2: low- and high-density clusters).
    viirs_mean_year, viirs_std_year : int
        Night lights are standardised with the mean of one year's composite and the standard
        deviation of another's, so all years share one scale.
    n_train, n_test : int
        Training points (``seed``) and held-out points (``seed + 1``, training pixels removed)
        drawn from the valid labelled pixels.
    stratify : bool
        Draw ``n_train`` points per class instead of uniformly.
    n_estimators : int
        Trees of the random forest.
    max_depth : int, optional
        Depth limit of the trees (default unlimited).

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
        "ee": ("s2_collection", "viirs_collection", "ghsl_collection", "bounds", "crs"),
        "stac": ("s2_collection", "viirs_collection", "ghsl_collection"),
    }
    MIN_SIZE: ClassVar = 100
    size: int = 240
    bounds_crs: str | None = "EPSG:4326"
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

    def checks(self) -> list[tuple[bool, str, str]]:
        """Return the rows of :meth:`validate` for this recipe's own fields."""
        presets = (*QA_PRESETS, *CLASS_PRESETS)
        ee = self.source == "ee"
        return [
            *recipe.positive(self, "s2_resolution", "viirs_resolution", "s2_scale"),
            *recipe.at_least(self, 1, "n_train", "n_test", "n_estimators"),
            (self.max_depth is None or self.max_depth >= 1, "max_depth", ">= 1 or None"),
            (len(self.inference_years) >= 1, "inference_years", "at least one year"),
            (self.s2_qa_preset in presets, "s2_qa_preset", f"a mask preset, one of {presets}"),
            (len(self.s2_bands) >= 1, "s2_bands", "at least one band"),
            (not ee or self.bounds is not None, "bounds", "set for source='ee' (real_sources())"),
            (not ee or self.crs is not None, "crs", "set for source='ee' (e.g. 'EPSG:32645')"),
        ]  # fmt: skip

    @classmethod
    def real_sources(cls, **overrides: Any) -> Self:
        """Return the published workflow's configuration (Earth Engine, Bagmati, 2015–2019).

        Sentinel-2 L1C bands B2–B8A (``CLOUDY_PIXEL_PERCENTAGE`` < 20, QA60 bits 10/11,
        ÷10000), VIIRS ``avg_rad`` and GHSL ``smod_code``, July–December composites on a 1 km
        grid in UTM 45N; ``overrides`` replace any field (``out_dir=...``).
        """
        return cls.from_dict({**REAL_SOURCES, **overrides})


def run(config: Config) -> recipe.RecipeResult:
    """Run the built-up recipe and write its outputs to ``config.out_dir`` (computes).

    Open the sources → yearly composites fused lazily on the 1 km grid, persisted (the sources
    are read once) → training and held-out points → forest and baselines → a map per year,
    lazily → scores (:mod:`xfusion.models.classification`) → ``write_results``:
    ``outputs.zarr`` (``fused``, ``labels``, ``builtup`` ``(time, band, y, x)``, ``change``: 1
    gained, −1 lost), ``builtup.tif`` (a band per year), ``model/forest``, ``config.toml``,
    ``metrics.json``, figures and ``split_map``.
    """
    if not isinstance(config, Config):
        raise ConfigError(f"run needs a builtup Config; got {type(config).__name__}")
    out = recipe.prepare_out_dir(config.out_dir, config=config)
    sources, truth = _open_sources(config, out)
    grid = config.grid_or_extent(sources["ghsl"])
    fused, labels = dask.persist(
        _fused_cube(config, sources, grid), _labels(config, sources["ghsl"], grid)
    )
    years, index_band = config.years(), f"viirs:{config.viirs_band}"
    features = fused.isel(time=years.index(config.train_year), drop=True)
    points = config.pick("n_train", "n_test", "seed", "stratify")
    train, test = train_test_points(features.drop_vars("source", errors="ignore"), labels, **points)
    classification.check_two_classes(train)
    bands = recipe.band_names(fused)
    forest_fields = config.pick("n_estimators", "max_depth", "seed")
    forest = classification.fit_forest(train, bands, **forest_fields)
    threshold = best_f1_threshold(train[index_band], train["label"])
    builtup = classification.class_map(fused, forest, "builtup")
    change = classification.change_map(builtup, first=years.index(config.train_year))
    scored = {"index_band": index_band, "threshold": threshold}
    metrics = classification.heldout_scores(forest, train, test, **scored)
    truth = None if truth is None else seasonal.select_years(truth.isel(band=0, drop=True), years)
    maps = classification.map_scores(builtup.isel(band=0), truth)
    metrics |= classification.yearly_metrics(maps, years, "builtup")
    cubes = dict(fused=fused, labels=labels, builtup=builtup, change=change)
    cubes = {k: v.drop_vars("source", errors="ignore") for k, v in cubes.items()}
    saved = train[["x", "y", *bands, "label"]]
    extra = {"metrics": {k: v for k, v in metrics.items() if isinstance(v, float)}}
    compared = classification.baseline_scores(forest, train, test, **scored, seed=config.seed)
    block = recipe.baseline_block(*compared, metric="f1")
    outputs = {
        "cog": ("builtup", recipe.bands_by_year(builtup)),
        "models": {"forest": RefittableForest(forest, saved, extra)},
        "figures": lambda: _figures(config, out, cubes),
    }
    result = recipe.write_results(config, out, cubes, metrics, baselines=block, **outputs)
    if config.figures:
        result.files["split_map"] = _split_map(config, out, builtup)
    return result


def _open_sources(config: Config, out: Any) -> tuple[dict[str, xr.DataArray], Any]:
    """Open ``s2``, ``viirs`` and ``ghsl`` lazily (and the truth of synthetic scenes).

    Each is read on the grid of ``bounds`` at its own resolution, or without ``bounds`` on its
    own grid; Earth Engine reads every year the recipe uses (labels: the training year only).
    """
    bands = {"s2": [*config.s2_bands, config.s2_qa], "viirs": [config.viirs_band]}
    bands["ghsl"], truth = [config.ghsl_band], None
    collections = {key: getattr(config, f"{key}_collection") for key in bands}
    if config.source == "synthetic":
        wanted = {**bands, "truth_builtup": ["builtup"]}
        _, catalog = recipe.write_synthetic("builtup", config, out, wanted)
        collections = {key: catalog / key / "collection.json" for key in bands}
        truth = xf.open_stac(catalog / "truth_builtup" / "collection.json")
    resolutions = {"s2": config.s2_resolution, "viirs": config.viirs_resolution}
    resolutions["ghsl"] = config.resolution
    grid = (lambda r: None) if config.bounds is None else config.grid
    reads = {key: (collections[key], bands[key], grid(resolutions[key])) for key in bands}
    years = [*config.years(), config.viirs_mean_year, config.viirs_std_year]
    dates = dict.fromkeys(bands, (f"{min(years)}-01-01", f"{max(years) + 1}-01-01"))
    dates["ghsl"] = (f"{config.train_year}-01-01", f"{config.train_year + 1}-01-01")
    cloud = config.s2_max_cloud
    filters = {"s2": None if cloud is None else {"CLOUDY_PIXEL_PERCENTAGE": ("lt", cloud)}}
    return recipe.open_collections(config.source, reads, dates=dates, filters=filters), truth


def _fused_cube(config: Config, sources: dict[str, xr.DataArray], grid: Any) -> xr.DataArray:
    """Stack S2 and standardised VIIRS composites per year on ``grid``: (time, band, y, x)."""
    s2, qa, preset = sources["s2"], config.s2_qa, config.s2_qa_preset
    masked = s2.xf.mask_bits(qa, preset) if preset in QA_PRESETS else s2.xf.mask_classes(qa, preset)
    inputs = {"s2": masked.xf.scale(config.s2_scale), "viirs": sources["viirs"]}
    references = {"viirs": (config.viirs_mean_year, config.viirs_std_year)}
    names = {"s2": "Sentinel-2", "viirs": "VIIRS"}
    fused = seasonal.fused_years(inputs, config.years(), config.season, grid, names=names,
                                 reference_years=references)  # fmt: skip
    return fused.rename("fused")


def _labels(config: Config, ghsl: xr.DataArray, grid: Any) -> xr.DataArray:
    """Label built-up (1) / not (0) on ``grid`` from the training year's SMOD; NaN = no data."""
    if "time" in ghsl.dims:
        window = seasonal.season_window(config.train_year, (1, 12))
        ghsl = seasonal.window_composite(ghsl, window, "the settlement layer")
    smod = ghsl.sel(band=[config.ghsl_band]).xf.resample(grid, "mode")
    labels = threshold_labels(smod, config.builtup_min_class)
    return labels.isel(band=0, drop=True).rename("builtup_label")


_BUILTUP = {0: ("not built-up", "#d9d9d9"), 1: ("built-up", "#d7301f")}


def _figures(config: Config, out: Any, cubes: dict[str, xr.DataArray]) -> dict[str, Any]:
    """PNG figures: the training year's inputs, one built-up map per year and the change map."""
    years, train_year = config.years(), config.train_year
    features = cubes["fused"].isel(time=years.index(train_year), drop=True)
    rgb = [f"s2:{b}" for b in ("B4", "B3", "B2")]
    panels = {}
    if all(b in features.band.values for b in rgb):
        panels[f"Sentinel-2 {train_year}"] = features.sel(band=rgb)
    lights = features.sel(band=[f"viirs:{config.viirs_band}"])
    panels[f"VIIRS {train_year} (standardised)"] = lights
    label = cubes["labels"].expand_dims(band=["label"])
    panels[f"labels: SMOD >= {config.builtup_min_class}"] = label
    figures = {"inputs": xf.viz.quicklook(panels, out / "inputs.png")}
    drawn = classification.plot_yearly_maps(
        cubes["builtup"], cubes["change"], years, out, name="builtup", classes=_BUILTUP
    )
    return figures | drawn


def _split_map(config: Config, out: Any, builtup: xr.DataArray) -> Any:
    """Write an offline HTML map comparing the training year's map with the last year's."""
    years, first = config.years(), builtup.isel(time=config.years().index(config.train_year))
    m = xf.viz.split_map(first, builtup.isel(time=-1), left_name=str(config.train_year),
                         right_name=str(years[-1]), vmin=0, vmax=1, cmap="Reds")  # fmt: skip
    return xf.viz.save_html(m, out / "split_map.html")
