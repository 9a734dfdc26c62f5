"""Night-light radiance at Landsat resolution from daytime Landsat 8 bands with a U-Net.

The recipe generalises a published workflow (Nairobi and Abuja evaluation regions): a
cloud-masked median composite of Landsat 8 surface reflectance and temperature
(:class:`~xfusion.recipes._config.SurfaceFields`) is paired with the median of VIIRS monthly
night lights (``avg_rad`` ÷ 60) resampled onto the 30 m grid; a regression U-Net is trained
on patches of a training region (MSE in the workflow, Huber and Adam by default here), applied
blockwise with a halo over the whole region, corrected with VIIRS (``viirs_correction``) and
scored on a separate evaluation region (:mod:`xfusion.models.superresolution`). Where the
scene names its cities (the hard synthetic scene), the target is standardised per city and
area, so a held-out city is mapped at the scale of its own VIIRS.

Metrics (:mod:`xfusion.models.scoring`): RMSE, MAE and R² on the evaluation region against
the 30 m radiance truth (synthetic scenes) or else VIIRS on the 30 m grid, and against VIIRS
at its own resolution (``coarse_*``). Baselines on the same pixels (``baselines``,
``beats_baseline``: RMSE at least 10 % lower than the best): a pixelwise Ridge and gradient
boosting on the U-Net's training pixels and features and, against a truth, VIIRS resampled to
30 m (``viirs_resampled``) and the Ridge and boosting corrected with VIIRS like the U-Net
(``ridge_corrected``, ``hgb_corrected``): cheap maps a super-resolution model must beat.

Steps of :func:`run`: open the sources lazily (the synthetic scene as a local STAC catalog,
STAC or Earth Engine) → preprocess (QA bits, valid range, scaling, composites, VIIRS on the
30 m grid) → cut patches, fit the U-Net, Ridge and boosting (computes) → predict lazily and
correct → score → write ``outputs.zarr``, ``radiance.tif``, ``model/unet``, ``model/ridge``,
``config.toml``, the figures and ``metrics.json`` (:func:`~xfusion.recipes._base.write_results`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Self

import dask
import pandas as pd
import xarray as xr

import xfusion as xf
from xfusion.errors import ConfigError
from xfusion.grids import geobox_of
from xfusion.models import superresolution as sr
from xfusion.models.scoring import flat_scores, plot_windows, score_windows
from xfusion.preprocess.holdout import boxes_overlap, patch_pixels, split_box
from xfusion.recipes import _base as recipe

__all__ = ["REAL_SOURCES", "Config", "real_sources", "run"]

_TARGET = "avg_rad"
_CHOICES = {
    "activation": ("sigmoid", "linear"),
    "loss": ("masked_mse", "huber"),
    "target_standardize": ("auto", "global", "per_region"),
    "target_resampling": ("nearest", "bilinear", "cubic"),
    "viirs_correction": ("none", "additive"),
}

#: The real datasets of the published workflow (Earth Engine ids, bands, dates, region).
REAL_SOURCES: dict[str, Any] = {
    "source": "ee", "bounds": (36.60, -1.45, 37.10, -1.10),  # Nairobi and its surroundings
    "bounds_crs": "EPSG:4326", "crs": "EPSG:32737", "resolution": 30.0,
    "viirs_resolution": 480.0, "landsat_collection": "LANDSAT/LC08/C02/T1_L2",
    "viirs_collection": "NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG", "start": "2020-01-01",
    "end": "2022-12-31", "viirs_start": "2020-01-01", "viirs_end": "2022-12-31",
    "target_resampling": "nearest", "patch_size": 256, "n_patches": 4800,
    "n_validation_patches": 200, "preset": "seed", "optimizer": "sgd", "learning_rate": 0.01,
    "batch_size": 48, "epochs": 10, "chunks": 512, "viirs_correction": "none",
}  # fmt: skip


def real_sources() -> dict[str, dict[str, Any]]:
    """Config fields that run the published workflow on real data, by source.

    ``"ee"``: Landsat 8 C2 L2 (``LANDSAT/LC08/C02/T1_L2``) and VIIRS ``avg_rad`` of
    ``NOAA/VIIRS/DNB/MONTHLY_V1/VCMSLCFG`` ÷ 60, 2020–2022, over Nairobi; 256-px patches, the
    workflow's U-Net (``preset="seed"``), SGD, batch 48 (:data:`REAL_SOURCES`).

    Examples
    --------
    >>> Config(out_dir="nairobi", **real_sources()["ee"]).landsat_collection
    'LANDSAT/LC08/C02/T1_L2'
    """
    return {"ee": dict(REAL_SOURCES)}


@dataclasses.dataclass
class Config(recipe.UNetFields, recipe.SurfaceFields, recipe.ModelRecipeConfig):
    """Configuration of the night-lights recipe; the defaults run offline on a synthetic scene.

    :meth:`real_sources` gives the published workflow on Earth Engine. For STAC, set
    ``source="stac"``, ``bounds``, the two collections and, for Planetary Computer's
    ``landsat-c2-l2``, its asset names (``red``, ``lwir11``, ``qa_pixel`` …) in
    ``optical_bands``/``thermal_bands``/``qa_band``. The shared field groups (Landsat bands,
    U-Net, training, area) are documented in :mod:`xfusion.recipes._config`.

    Parameters
    ----------
    size : int
        Synthetic scene only: side in 30 m pixels, a multiple of 16 (a VIIRS pixel; 32 for
        ``difficulty="hard"``), at least ``3 * patch_size / 2``; 384 puts several towns in both
        regions (smaller scenes vary more from seed to seed).
    bounds, crs : optional
        Area to map (``bounds_crs``) and the 30 m grid's CRS, required for ``"ee"`` (Nairobi:
        ``"EPSG:32737"``); ``"stac"`` defaults to the Landsat items' grid.
    viirs_resolution : float
        Pixel size VIIRS is read at where ``bounds`` are given: a whole multiple of
        ``resolution`` (480 m = 16 × 30 m, close to VIIRS's 15 arc-seconds).
    landsat_collection, viirs_collection : str
        STAC paths or URLs (``"stac"``) or Earth Engine ids (``"ee"``); unused offline.
    start, end, viirs_start, viirs_end : str
        Dates of the Landsat and of the VIIRS median composites, both ends included.
    viirs_band : str
        Night-light radiance band (``avg_rad``, nW/cm²/sr).
    radiance_norm : float
        VIIRS radiance is divided by this (60, the workflow's): the units of predictions and
        RMSE (``rmse_radiance`` is in nW/cm²/sr).
    target_resampling : {"nearest", "bilinear", "cubic"}
        VIIRS onto the 30 m grid as the target: ``"nearest"`` (Earth Engine's sampling in the
        workflow) or ``"bilinear"`` (default: no block edges to learn, about a fifth lower
        held-out RMSE on the synthetic scene).
    train_region, eval_region : (left, bottom, right, top), optional
        Non-overlapping boxes (grid CRS) of training and evaluation pixels; default the east
        ``holdout_fraction`` evaluates, split on a VIIRS pixel edge.
    coarse_supervision : bool
        Compare the prediction averaged over VIIRS pixels with VIIRS (a downscaling loss)
        instead of every 30 m pixel with its VIIRS value (the workflow's).
    activation : {"linear", "sigmoid"}
        U-Net output: linear (standardised target) or the workflow's sigmoid over the training
        targets' range.
    loss : {"huber", "masked_mse"}
        Huber on the standardised target (bright centres do not dominate) or the workflow's MSE.
    target_standardize : {"auto", "per_region", "global"}
        ``"per_region"``: the target is standardised per area (each city, from the hard
        scene's ``region`` cube, split into training, evaluation and other parts), every area's
        map scaled back with VIIRS's mean and std over it, so a held-out city is lit at its own
        VIIRS's scale, never its truth's. ``"global"``: one mean and std (the workflow's).
        ``"auto"``: ``"per_region"`` where the scene names its cities (on one city it confuses
        what an area holds with how brightly it is lit: standard scene, seed 2, R² −3.0).
    viirs_correction : {"additive", "none"}
        ``"additive"``: the U-Net's average over every VIIRS pixel is swapped for VIIRS's
        (:func:`~xfusion.models.superresolution.coarse_correction`); ``unet_raw_*`` and
        ``baselines.unet_uncorrected`` keep the map before it. Seeds 0–4, held-out RMSE: hard
        0.090 ± 0.053 (uncorrected 0.136 ± 0.094, best baseline 0.096 ± 0.055), standard
        0.043 ± 0.009 (0.067 ± 0.020, 0.047 ± 0.008); the best baselines are mostly the Ridge
        and boosting corrected the same way. ``"none"``: the workflow's map.
    ridge_alpha : float
        Regularisation of the pixelwise Ridge baseline.
    chunks : int
        Side of the Dask blocks of the prediction (each read with a halo).

    Examples
    --------
    >>> Config.from_dict({"out_dir": "out", "epochs": 5}).optimizer
    'adam'
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
    epochs: int = 20
    landsat_collection: str = "landsat"
    viirs_collection: str = "viirs"
    viirs_band: str = "avg_rad"
    viirs_resolution: float = 480.0
    viirs_start: str = "2021-01-01"
    viirs_end: str = "2021-12-31"
    radiance_norm: float = 60.0
    target_resampling: str = "bilinear"
    train_region: tuple[float, ...] | None = None
    eval_region: tuple[float, ...] | None = None
    coarse_supervision: bool = False
    activation: str = "linear"
    loss: str = "huber"
    target_standardize: str = "auto"
    viirs_correction: str = "additive"
    ridge_alpha: float = 1.0

    def checks(self) -> list[tuple[bool, str, str]]:
        """Return the rows of :meth:`validate` for this recipe's own fields."""
        ratio, side = (
            self.viirs_resolution / self.resolution,
            32 if self.difficulty == "hard" else 16,
        )
        regions = (self.train_region, self.eval_region)
        return [
            *(row for key, choice in _CHOICES.items() for row in recipe.one_of(self, key, choice)),
            (self.target_standardize != "per_region" or (self.activation == "linear"
             and not self.coarse_supervision), "target_standardize",
             "'global' with activation='sigmoid' or coarse_supervision=True"),
            (self.viirs_resolution > 0, "viirs_resolution", "a positive number"),
            (self.radiance_norm > 0, "radiance_norm", "a positive number"),
            (abs(ratio - round(ratio)) <= 1e-6 and round(ratio) >= 1, "viirs_resolution",
             f"a whole multiple of resolution ({self.resolution}) so that the grids line up"),
            *recipe.at_least(self, 0, "ridge_alpha"),
            (self.source != "synthetic" or (self.size % side == 0
             and self.size >= 3 * self.patch_size // 2), "size",
             f"a multiple of {side} and at least 3 * patch_size / 2 ({3 * self.patch_size // 2})"),
            *((_box(box), name, "(left, bottom, right, top), left < right")
              for name, box in zip(("train_region", "eval_region"), regions, strict=True)),
            ((self.train_region is None) == (self.eval_region is None), "train_region",
             "given with eval_region (both train_region and eval_region, or neither)"),
            (None in regions or not boxes_overlap(*regions), "eval_region",
             f"a box that does not overlap train_region {self.train_region}"),
            *((_is_date(getattr(self, k)), k, "a date") for k in ("viirs_start", "viirs_end")),
            (self.source != "ee" or None not in (self.bounds, self.crs), "bounds",
             "set, with crs, for source='ee' (see real_sources())"),
        ]  # fmt: skip

    @classmethod
    def real_sources(cls, **overrides: Any) -> Self:
        """Return the published workflow's configuration; ``overrides`` replace any field."""
        return cls.from_dict({**REAL_SOURCES, **overrides})

    @property
    def factor(self) -> int:
        """VIIRS pixel size in Landsat pixels (16)."""
        return round(self.viirs_resolution / self.resolution)

    def target_mode(self, cities: bool) -> str:
        """``target_standardize`` with ``"auto"`` resolved for a scene that names its cities."""
        if self.target_standardize != "auto":
            return self.target_standardize
        linear = self.activation == "linear" and not self.coarse_supervision
        return "per_region" if cities and linear else "global"


def _box(box: tuple[float, ...] | None) -> bool:
    return box is None or (len(box) == 4 and box[0] < box[2] and box[1] < box[3])


def _is_date(value: str) -> bool:
    try:
        pd.Timestamp(value)
    except ValueError:
        return False
    return True


def run(config: Config) -> recipe.RecipeResult:
    """Run the night-lights recipe (computes: fits, predicts, scores and writes ``out_dir``).

    ``metrics`` on the evaluation region against ``reference`` (``"truth"``, else VIIRS on the
    grid): the U-Net's ``rmse``, ``mae``, ``r2``, the Ridge's ``baseline_*``, ``rmse_radiance``
    (nW/cm²/sr), ``coarse_*`` (averaged over VIIRS pixels, against VIIRS), ``viirs_*``,
    ``unet_raw_*``, the losses and the ``baselines`` block. ``cubes``: ``features``, ``viirs``,
    ``target``, ``prediction``, ``baseline``, ``baseline_hgb``, ``difference``, ``truth``.

    Examples
    --------
    >>> run(Config(out_dir="out", size=128, n_patches=8, epochs=1)).figures  # doctest: +SKIP
    """
    if not isinstance(config, Config):
        raise ConfigError(f"run expects a nightlights Config; got {type(config).__name__}")
    out = recipe.prepare_out_dir(config.out_dir, config=config)
    sources, truth = _open_sources(config, out)
    features, viirs, target = _preprocess(config, sources)
    coarse = geobox_of(viirs)  # carried from here on
    factor = recipe.coarsening_factor(features, viirs) if config.coarse_supervision else None
    if config.train_region is not None:
        train_box, eval_box = tuple(config.train_region), tuple(config.eval_region)
    else:
        box = geobox_of(features).boundingbox
        train_box, eval_box = split_box(box, coarse.resolution.x, config.holdout_fraction)
    if config.persist:
        features, viirs, target, truth = dask.persist(features, viirs, target, truth)
    cities = sources.get(sr.REGION)
    per_region = config.target_mode(cities is not None) == "per_region"
    areas = sr.area_labels(features, train_box, eval_box, cities) if per_region else None
    train, val = sr.training_patches(
        features, target, train_box, size=config.patch_size, labels=areas, target_band=_TARGET,
        **config.pick("n_patches", "n_validation_patches", "seed"),
    )  # fmt: skip
    from xfusion.models import Ridge, UNetRegressor
    from xfusion.models.baselines import fit_baselines

    statistics = sr.area_statistics(areas, target, train_box) if per_region else None
    unet = UNetRegressor(
        loss=config.loss,
        target_standardize="per_region" if per_region else "global",
        coarse_factor=factor,
        activation=config.activation,
        **config.unet_options(),
        **config.training_options(),
    ).fit(train, validation_data=val, target_statistics=statistics)
    rows, y = patch_pixels(train)  # the baselines learn from the U-Net's training pixels
    ridge = Ridge(alpha=config.ridge_alpha).fit(rows, y)
    hgb = fit_baselines("regression", rows, y, seed=config.seed)["hgb"]
    models = {"prediction": unet, "baseline": ridge, "baseline_hgb": hgb}
    options = {"chunks": config.chunks, "halo": config.halo, "band": _TARGET}
    maps = {
        k: sr.predict_map(m, features, labels=areas, reference=target, **options)
        for k, m in models.items()
    }
    (maps,) = dask.persist(maps)
    raw = maps["prediction"]
    if config.viirs_correction == "additive":
        (maps["prediction"],) = dask.persist(
            sr.coarse_correction(raw, target, coarse, config.target_resampling)
        )
    reference = truth if truth is not None else target
    # the cheap baselines corrected with VIIRS the same way: the U-Net must beat them too
    corrected = {
        f"{name}_corrected": sr.coarse_correction(
            maps[key], target, coarse, config.target_resampling
        )
        for name, key in (("ridge", "baseline"), ("hgb", "baseline_hgb"))
    }
    metrics, baselines = _metrics(
        config, unet, train, maps, raw, corrected, reference, viirs, target, eval_box
    )
    cubes = {"features": features, "viirs": viirs, "target": target, **maps}
    cubes["difference"] = (maps["prediction"] - reference).rename("difference")
    if truth is not None:
        cubes["truth"] = truth
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


def _open_sources(config: Config, out: Path) -> tuple[dict[str, xr.DataArray], xr.DataArray | None]:
    """Open ``landsat`` (digital numbers) and ``viirs`` lazily; a synthetic scene's truth too."""
    bands = {"landsat": config.landsat_assets(), "viirs": [config.viirs_band]}
    paths = {"landsat": config.landsat_collection, "viirs": config.viirs_collection}
    if config.source == "synthetic":
        wanted = {**bands, "truth_radiance": [_TARGET]}
        if config.difficulty == "hard":
            wanted[sr.REGION] = ["city"]  # the city of every pixel: the areas of standardisation
        _, catalog = recipe.write_synthetic("nightlights", config, out, wanted)
        paths = {key: catalog / key / "collection.json" for key in wanted}
    grids: dict[str, Any] = dict.fromkeys(bands)
    if config.bounds is not None:  # the 30 m grid lined up with the VIIRS grid
        coarse = config.grid(config.viirs_resolution)
        grids = {"landsat": xf.grid(tuple(coarse.boundingbox), coarse.crs, config.resolution)}
        grids["viirs"] = coarse
    if config.source == "ee":  # Earth Engine's end date is excluded, the config's included
        dates = {
            "landsat": (config.start, config.end),
            "viirs": (config.viirs_start, config.viirs_end),
        }
        end = {
            k: (pd.Timestamp(e) + pd.Timedelta(days=1)).strftime("%Y-%m-%d")
            for k, (_, e) in dates.items()
        }
        sources = {
            k: xf.open_ee(paths[k], grid=grids[k], start=dates[k][0], end=end[k], bands=b)
            for k, b in bands.items()
        }
        return sources, None
    sources = {
        "landsat": xf.open_stac(
            paths["landsat"], grid=grids["landsat"], assets=bands["landsat"], scale_offset=False
        ),
        "viirs": xf.open_stac(paths["viirs"], grid=grids["viirs"], assets=bands["viirs"]),
    }
    if sr.REGION in paths:
        sources[sr.REGION] = (
            xf.open_stac(paths[sr.REGION]).isel(time=0, band=0, drop=True).rename(sr.REGION)
        )
    if config.source != "synthetic":
        return sources, None
    # the truth's and the cities' COGs share the Landsat grid: read on their own, they line up
    truth = xf.open_stac(paths["truth_radiance"]).isel(time=0, drop=True) / config.radiance_norm
    return sources, truth.rename("truth")


def _preprocess(
    config: Config, sources: dict[str, xr.DataArray]
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Return the 30 m features, the normalised VIIRS composite and VIIRS on the 30 m grid."""
    recipe.require_bands(sources["landsat"], config.landsat_assets(), "Landsat cube")
    recipe.require_bands(sources["viirs"], [config.viirs_band], "VIIRS cube")
    landsat = config.landsat_features(sources["landsat"])
    composite = landsat.xf.composite("median", start=config.start, end=config.end)
    features = composite.astype("float32").rename("features")
    viirs = sources["viirs"].sel(band=[config.viirs_band])
    viirs = viirs.xf.composite("median", start=config.viirs_start, end=config.viirs_end)
    viirs = (viirs / config.radiance_norm).astype("float32").rename("viirs")
    return features, viirs, viirs.xf.resample(features, config.target_resampling).rename("target")


def _metrics(
    config: Config, unet: Any, train: xr.Dataset, maps: dict[str, xr.DataArray], raw: xr.DataArray,
    corrected: dict[str, xr.DataArray], reference: xr.DataArray, viirs: xr.DataArray,
    target: xr.DataArray, eval_box: tuple[float, ...],
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Return the metrics and the baselines block, every map on the same pixels (computes)."""
    on_truth = reference.name == "truth"
    fine = {"": maps["prediction"], "baseline_": maps["baseline"], "hgb_": maps["baseline_hgb"]}
    if on_truth:  # VIIRS on the 30 m grid, no model: what the coarse product says at 30 m
        fine["viirs_"] = target
        fine |= {f"{name}_": m for name, m in corrected.items()}
    if raw is not maps["prediction"]:
        fine["unet_raw_"] = raw
    pairs = {key: (m, reference) for key, m in fine.items()}
    for key in ("", "baseline_"):
        pairs[f"{key}coarse_"] = (fine[key].xf.resample(viirs, "average"), viirs)
    scores = {k: flat_scores(v, k) for k, v in score_windows(pairs, eval_box).items()}
    metrics: dict[str, Any] = {"reference": "truth" if on_truth else "viirs"}
    metrics |= scores[""] | scores["baseline_"]
    metrics["rmse_ratio"] = metrics["rmse"] / metrics["baseline_rmse"]
    metrics["rmse_radiance"] = metrics["rmse"] * config.radiance_norm
    metrics["baseline_rmse_radiance"] = metrics["baseline_rmse"] * config.radiance_norm
    metrics |= scores["coarse_"] | scores["baseline_coarse_"] | scores.get("viirs_", {})
    metrics["train_loss"] = float(unet.history_["loss"][-1])
    if "val_loss" in unet.history_:
        metrics["val_loss"] = float(unet.history_["val_loss"][-1])
    metrics |= {"n_patches": int(train.sizes["sample"]), "epochs": int(config.epochs)}
    # the baselines; against a truth also VIIRS resampled and the VIIRS-corrected Ridge and
    # boosting (against VIIRS as reference they would be (nearly) the reference itself)
    names = {"ridge": "baseline_", "hgb": "hgb_", "viirs_resampled": "viirs_"}
    names |= {name: f"{name}_" for name in corrected}
    rows = {
        n: {k: scores[p][p + k] for k in ("rmse", "mae", "r2")}
        for n, p in names.items()
        if p in scores
    }
    block = recipe.baseline_block({"rmse": metrics["rmse"]}, rows, metric="rmse")
    if "unet_raw_" in scores:  # the same comparison for the map before the correction
        metrics |= {k: v for k, v in scores["unet_raw_"].items() if not k.endswith("n_pixels")}
        uncorrected = recipe.baseline_block({"rmse": metrics["unet_raw_rmse"]}, rows, metric="rmse")
        block["baselines"]["unet_uncorrected"] = uncorrected["baselines"]
    return metrics, block


def _figures(config: Config, out: Path, cubes: dict, reference: Any, box: Any, unet: Any) -> dict:
    """Truth/prediction/difference panels (U-Net and Ridge), loss curves, a quicklook."""
    import matplotlib.pyplot as plt

    from xfusion.viz import plot_loss, quicklook

    maps = {"panels": ("U-Net", cubes["prediction"])}
    maps["baseline_panels"] = ("Ridge (pixelwise)", cubes["baseline"])
    name, units = "truth" if "truth" in cubes else "VIIRS", f"radiance / {config.radiance_norm:g}"
    figures = plot_windows(reference, maps, box, out, reference_title=name, units=units)
    figures["loss"] = out / "loss.png"
    plt.close(plot_loss(unet.history_, path=figures["loss"]))
    features = cubes["features"]
    rgb = [b for b in ("SR_B4", "SR_B3", "SR_B2") if b in features.band.values]
    panels = {"Landsat composite": features.sel(band=rgb)} if len(rgb) == 3 else {}
    panels |= {"VIIRS / norm": cubes["viirs"], "U-Net radiance / norm": cubes["prediction"]}
    figures["quicklook"] = quicklook(panels, out / "quicklook.png")
    return figures
