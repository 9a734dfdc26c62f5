"""Recipe configurations: shared field groups, one dialect of names, one ``validate``.

A recipe's ``Config`` is a dataclass composed of the groups it needs, on top of
:class:`RecipeConfig` (``out_dir``, ``seed``, ``source``, ``resume``, ``size``, ``figures``):

====================  =========================================  ===============================
group                 fields                                     helpers
====================  =========================================  ===============================
:class:`AreaFields`   ``bounds``, ``bounds_crs``, ``crs``,       :meth:`AreaFields.grid`
                      ``resolution``
:class:`DateFields`   ``start``, ``end``                         :meth:`DateFields.select_dates`
:class:`ChunkFields`  ``chunks``, ``persist``                    :meth:`ChunkFields.spatial_chunks`
:class:`TrainingFields` ``holdout_fraction``, ``epochs``,
                      ``batch_size``, ``learning_rate``
:class:`ReflectanceFields` ``bands``, ``qa_band``,           :meth:`ReflectanceFields.reflectance`
                      ``scale_factor``, ``scale_offset``
:class:`SeasonFields` ``season``, ``train_year``,               :meth:`SeasonFields.years`,
                      ``inference_years``                        :meth:`SeasonFields.window`
:class:`SurfaceFields` ``optical_bands``, ``thermal_bands``,     ``landsat_features()``
                      ``qa_band``, ``qa_bits``, ``sr_*``, ``st_*``,
                      ``thermal_range`` (Landsat C2 L2)
:class:`UNetFields`   ``patch_size``, ``n_patches``,             :meth:`UNetFields.unet_options`
                      ``n_validation_patches``, ``preset``,
                      ``widths``, ``optimizer`` … ``halo``
====================  =========================================  ===============================

A recipe lists the groups before :class:`RecipeConfig` and gives a field a new default by
declaring it again (it keeps its place in the field order)::

    @dataclasses.dataclass
    class Config(TrainingFields, ChunkFields, AreaFields, RecipeConfig):
        out_dir: str = "xfusion-out/mine"
        chunks: int = 64              # the group's field, another default
        alpha: float = 1.0            # the recipe's own field

        def checks(self):
            return [(self.alpha > 0, "alpha", "> 0")]

Every group documents its fields in a numpydoc ``Parameters`` section (read by
:func:`config_keys` and ``xfusion run RECIPE --help``) and contributes rows to :meth:`validate`
through a ``checks`` method, a list of ``(ok, field, expected)``. :meth:`RecipeConfig.validate`
runs every group's rows, then the recipe's, once, when the config is built; a failing row is a
:class:`~xfusion.errors.ConfigError` naming the field, what was expected and the value.

One dialect
    The names are the ones of the public API (``xf.grid(bounds, crs, resolution)``,
    ``open_*(..., chunks=...)``, ``patches(size=..., n=...)``): ``bounds``, ``chunks``,
    ``holdout_fraction``, ``n_validation_patches``. The older names ``region``,
    ``region_crs``, ``chunk``, ``n_val_patches`` and ``train_fraction`` (``1 -
    holdout_fraction``) are still read by :meth:`RecipeConfig.from_dict` (TOML files, the
    command line) with a :class:`DeprecationWarning` (:data:`RENAMED_KEYS`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import types
import typing
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from xfusion._json import jsonable as plain_json
from xfusion.errors import ConfigError

__all__ = [
    "RENAMED_KEYS",
    "SOURCES",
    "AreaFields",
    "ChunkFields",
    "DateFields",
    "ModelRecipeConfig",
    "RecipeConfig",
    "ReflectanceFields",
    "SeasonFields",
    "SurfaceFields",
    "TrainingFields",
    "UNetFields",
    "at_least",
    "config_keys",
    "one_of",
    "positive",
    "read_toml",
]

#: The data sources every recipe reads.
SOURCES = ("synthetic", "stac", "ee")
DIFFICULTIES = ("standard", "hard")

#: Old config key → (its name now, conversion of the value or ``None``); read with a warning.
RENAMED_KEYS: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "region": ("bounds", None),
    "region_crs": ("bounds_crs", None),
    "chunk": ("chunks", None),
    "n_val_patches": ("n_validation_patches", None),
    "train_fraction": ("holdout_fraction", lambda fraction: 1.0 - fraction),
}

#: A row of :meth:`RecipeConfig.validate`: (condition, field name, what was expected).
Check = tuple[bool, str, str]


@dataclasses.dataclass
class RecipeConfig:
    """Fields common to every recipe's configuration.

    Parameters
    ----------
    out_dir : str
        Where outputs are written (created if missing).
    seed : int
        Seed for the synthetic scene, sampling and model initialisation.
    source : str
        ``"synthetic"`` (the offline default: the synthetic scene written as a local STAC
        catalog and read back through :func:`xfusion.open_stac`), ``"stac"`` or ``"ee"``.
    resume : bool
        Continue the ``outputs.zarr`` of an interrupted run with the same configuration
        instead of starting over (see :mod:`xfusion.recipes._base`).
    size : int
        Side of the synthetic scene in pixels of its finest grid (``source="synthetic"`` only).
    difficulty : {"standard", "hard"}
        Which synthetic scene (``source="synthetic"`` only): ``"hard"`` is the version that
        fails the way real data fails (partial coverage, brightness shifts between regions,
        ambiguous SAR, clouds over optical; :func:`xfusion.datasets.synthetic_scene`).
    figures : bool
        Draw the PNG figures (``False`` for batch runs).
    """

    out_dir: str = "xfusion-out"
    seed: int = 0
    source: str = "synthetic"
    resume: bool = False
    size: int = 256
    difficulty: str = "standard"
    figures: bool = True

    #: Per source, the keys that name its data (collection ids, files, asset names) and whose
    #: defaults are meant for another source: :meth:`from_dict` refuses that source unless they
    #: are given, and names them.
    SOURCE_KEYS: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: Per source, defaults that differ from the synthetic scene's (units, label values); used by
    #: :meth:`from_dict` for the keys that are not given.
    SOURCE_DEFAULTS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: The smallest synthetic scene the recipe runs on.
    MIN_SIZE: ClassVar[int] = 16

    def __post_init__(self) -> None:
        self.validate()

    def checks(self) -> list[Check]:
        """Return this class's rows of :meth:`validate` (a recipe overrides it for its fields)."""
        return [
            (self.source in SOURCES, "source", f"one of {SOURCES}"),
            (self.size >= self.MIN_SIZE, "size", f">= {self.MIN_SIZE}"),
            (self.difficulty in DIFFICULTIES, "difficulty", f"one of {DIFFICULTIES}"),
        ]

    def pick(self, *names: str) -> dict[str, Any]:
        """Return ``{name: value}`` of the fields ``names``: keywords for a library call.

        Library functions name their parameters like the config fields they take, so a recipe
        passes them on by name: ``mt.training_weights(stack, **config.pick("beta", "seed"))``.

        Examples
        --------
        >>> RecipeConfig(seed=3).pick("seed", "size")
        {'seed': 3, 'size': 256}
        """
        unknown = [name for name in names if name not in {f.name for f in dataclasses.fields(self)}]
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no field(s) {unknown}")
        return {name: getattr(self, name) for name in names}

    def validate(self) -> None:
        """Check every field once: the rows of each field group, then the recipe's own.

        Raises
        ------
        ConfigError
            For the first failing row, naming the field, what was expected and the value.
        """
        for klass in reversed(type(self).__mro__):
            rows = vars(klass).get("checks")
            if rows is None:
                continue
            for ok, name, expected in rows(self):
                if not ok:
                    raise ConfigError(
                        f"config field {name!r} must be {expected}; got {getattr(self, name)!r}"
                    )

    @classmethod
    def recipe_name(cls) -> str:
        """Return the name of the recipe this config belongs to (its module's name)."""
        return cls.__module__.rsplit(".", 1)[-1]

    def fingerprint(self) -> dict[str, Any]:
        """Return what identifies the outputs of a run: recipe, xfusion version, config values.

        ``out_dir`` and ``resume`` are left out: they say where and how to write, not what.
        """
        from importlib import metadata

        try:
            version = metadata.version("xfusion")
        except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
            version = "unknown"
        values = {k: v for k, v in self.to_dict().items() if k not in ("out_dir", "resume")}
        return {"recipe": self.recipe_name(), "xfusion": version, "config": plain_json(values)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build a config from the keys given, the others keeping their defaults.

        Unknown keys and values of the wrong type are refused with a
        :class:`~xfusion.errors.ConfigError` naming the key, the value and the type expected.
        Old key names (:data:`RENAMED_KEYS`) are read as their new names with a
        :class:`DeprecationWarning`. With ``source`` other than ``"synthetic"``, keys that are
        not given take that source's defaults (:attr:`SOURCE_DEFAULTS`, e.g. Earth Engine's
        label values), and the keys that name the data (:attr:`SOURCE_KEYS`) must be given:
        otherwise the error names all of them at once, before anything is read.

        Examples
        --------
        >>> from xfusion.recipes import water
        >>> water.Config.from_dict({"source": "ee"}).sar_calibration  # the PALSAR DN default
        'palsar_dn'
        >>> water.Config.from_dict({"source": "stac"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        xfusion.errors.ConfigError: source='stac' needs ['sar_source', 'optical_source', ...
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = _renamed(values, fields)
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {unknown} for {cls.__module__}.{cls.__name__}; "
                f"valid keys are {sorted(fields)}"
            )
        hints = typing.get_type_hints(cls)
        checked = {key: _coerce(key, value, hints[key]) for key, value in values.items()}
        source = checked.get("source", fields["source"].default)
        for key, value in cls.SOURCE_DEFAULTS.get(source, {}).items():
            checked.setdefault(key, value)
        missing = [key for key in cls.SOURCE_KEYS.get(source, ()) if key not in checked]
        if missing:
            held = ", ".join(f"{key}={fields[key].default!r}" for key in missing)
            raise ConfigError(
                f"source={source!r} needs {missing} set for it (they name the data it reads); "
                f"not given, they keep defaults that are not for {source!r}: {held}; set them "
                "in the --config file or with --set KEY=VALUE (the recipe's real_sources() "
                "gives a complete example)"
            )
        return cls(**checked)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Self:
        """Load a config from a TOML file (top-level keys, or a ``[recipe]`` table)."""
        return cls.from_dict(read_toml(path))

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-able values."""
        return dataclasses.asdict(self)

    def to_toml(self, path: str | os.PathLike[str]) -> Path:
        """Write the config as a ``[<recipe>]`` TOML table (``None`` fields are left out).

        The file loads back with :meth:`from_toml`.
        """
        lines = [f"[{self.recipe_name()}]"]
        for key, value in self.to_dict().items():
            if value is not None:
                lines.append(f"{key} = {toml_value(value)}")
        final = Path(path)
        tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, final)
        return final


# ----------------------------------------------------------------------------------------------
# field groups
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AreaFields:
    """Where a real source is read: the region and the grid.

    Parameters
    ----------
    bounds : (left, bottom, right, top), optional
        Region to read, in ``bounds_crs`` (real sources; synthetic scenes have their own).
    bounds_crs : str, optional
        CRS of ``bounds`` (default: ``crs``).
    crs : str, optional
        CRS of the output grid.
    resolution : float
        Pixel size of the output grid in ``crs`` units.
    """

    bounds: tuple[float, ...] | None = None
    bounds_crs: str | None = None
    crs: str | None = None
    resolution: float = 30.0

    def checks(self) -> list[Check]:
        box = self.bounds
        return [
            (
                box is None or (len(box) == 4 and box[0] < box[2] and box[1] < box[3]),
                "bounds",
                "(left, bottom, right, top) with left < right and bottom < top",
            ),
            (math.isfinite(self.resolution) and self.resolution > 0, "resolution", "> 0"),
        ]

    def grid(self, resolution: float | None = None) -> Any:
        """Return the grid of ``bounds`` in ``crs`` at ``resolution`` (default the field's).

        A :class:`odc.geo.geobox.GeoBox` (:func:`xfusion.grid`); ``bounds`` given in another
        ``bounds_crs`` are transformed to ``crs`` first (``crs`` unset: ``bounds_crs``).
        """
        from xfusion.grids import grid

        crs = self.crs or self.bounds_crs
        if self.bounds is None or crs is None:
            raise ConfigError(
                f"a grid needs bounds and crs; got bounds={self.bounds!r}, crs={self.crs!r}"
            )
        bounds = self.bounds
        if self.bounds_crs is not None and self.bounds_crs != crs:
            from odc.geo.geom import BoundingBox

            bounds = tuple(BoundingBox(*bounds, crs=self.bounds_crs).to_crs(crs))
        return grid(bounds, crs, resolution or self.resolution)

    def grid_or_extent(self, cube: Any) -> Any:
        """Return :meth:`grid` when ``bounds`` is set, else ``cube``'s extent at ``resolution``.

        The extent is taken in ``crs`` (transformed there) or, with ``crs`` unset, in the
        cube's own CRS: a recipe whose region defaults to a source's footprint.
        """
        from xfusion.grids import geobox_of, grid

        if self.bounds is not None:
            return self.grid()
        gbox = geobox_of(cube)
        crs = self.crs or gbox.crs
        bbox = gbox.boundingbox.to_crs(crs) if self.crs else gbox.boundingbox
        return grid(tuple(bbox), crs, self.resolution)


@dataclasses.dataclass
class DateFields:
    """When a real source is read.

    Parameters
    ----------
    start, end : str, optional
        Date range of the series (``start <= time < end``).
    """

    start: str | None = None
    end: str | None = None

    def checks(self) -> list[Check]:
        return [(_is_date(self.start), "start", "a date"), (_is_date(self.end), "end", "a date")]

    def select_dates(self, cube: Any, *, also: str | None = None) -> Any:
        """Return the images of ``cube`` with ``start <= time < end`` (and the day ``also``).

        A selection on the time coordinate only: nothing is computed.
        """
        times = cube.time.to_index()
        keep = np.ones(len(times), bool)
        if self.start is not None:
            keep &= times >= np.datetime64(self.start)
        if self.end is not None:
            keep &= times < np.datetime64(self.end)
        if also is not None:
            keep |= times.normalize() == np.datetime64(also)
        return cube.isel(time=np.flatnonzero(keep))


@dataclasses.dataclass
class ChunkFields:
    """How the cubes are held while a recipe runs.

    Parameters
    ----------
    chunks : int
        Spatial chunk size (pixels) of the opened cubes; also the chunk size of
        ``outputs.zarr`` for cubes held in memory.
    persist : bool
        Keep the prepared cubes in (distributed) memory once computed, so the sources are read
        once rather than by every step.
    """

    chunks: int = 256
    persist: bool = True

    def checks(self) -> list[Check]:
        return [(self.chunks >= 1, "chunks", ">= 1")]

    def spatial_chunks(self) -> dict[str, int]:
        """Return ``{"y": chunks, "x": chunks}`` (the ``chunks`` argument of ``xf.open_*``)."""
        return {"y": self.chunks, "x": self.chunks}


@dataclasses.dataclass
class TrainingFields:
    """How a model is trained and evaluated.

    Parameters
    ----------
    holdout_fraction : float
        Fraction of the scene kept out of training; metrics are measured there.
    epochs, batch_size : int
        Training length and mini-batch size.
    learning_rate : float
        Initial learning rate.
    """

    holdout_fraction: float = 0.25
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3

    def checks(self) -> list[Check]:
        return [
            (0.0 < self.holdout_fraction < 1.0, "holdout_fraction", "strictly between 0 and 1"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.learning_rate > 0, "learning_rate", "> 0"),
        ]

    def training_options(self) -> dict[str, Any]:
        """Return the training keywords of a model from this group and the config's ``seed``.

        ``learning_rate``, ``batch_size``, ``epochs``, ``seed`` and ``progress`` (a bar inside
        :func:`xfusion.recipes._outputs.progress`): a recipe passes them on as they are, e.g.
        ``UNetRegressor(loss="masked_mse", **config.training_options())``.
        """
        from xfusion.recipes._outputs import show_progress

        return {
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "seed": getattr(self, "seed", 0),
            "progress": show_progress(),
        }


@dataclasses.dataclass
class ReflectanceFields:
    """Which bands of an optical product are read, and how they become reflectance.

    Parameters
    ----------
    bands : tuple of str
        Reflectance bands read, in this order (default Landsat 8 B1…B7).
    qa_band : str
        The product's quality band (Landsat Collection-2 ``QA_PIXEL``).
    scale_factor, scale_offset : float
        ``value * factor + offset`` on the reflectance bands: 1 and 0 for top-of-atmosphere
        reflectance, ``2.75e-5`` and ``-0.2`` for Collection-2 Level-2 digital numbers.
    """

    bands: tuple[str, ...] = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
    qa_band: str = "QA_PIXEL"
    scale_factor: float = 1.0
    scale_offset: float = 0.0

    def checks(self) -> list[Check]:
        return [(len(self.bands) >= 1, "bands", "at least one band")]

    def reflectance(self, cube: Any) -> Any:
        """Return ``bands`` of ``cube`` scaled to reflectance (lazy; the quality band is checked).

        A :class:`~xfusion.errors.BandError` names what is missing when ``cube`` lacks a band
        or ``qa_band``.
        """
        from xfusion.validate import require_bands

        require_bands(cube, [*self.bands, self.qa_band], "opened cube")
        refl = cube.sel(band=list(self.bands))
        if (self.scale_factor, self.scale_offset) != (1.0, 0.0):
            refl = refl.xf.scale(self.scale_factor, self.scale_offset)
        return refl


@dataclasses.dataclass
class SurfaceFields:
    """Landsat Collection-2 Level-2 surface reflectance and temperature bands, made features.

    Read by :meth:`landsat_features` (:func:`xfusion.preprocess.landsat.collection2_features`).

    Parameters
    ----------
    optical_bands : tuple of str
        Surface-reflectance bands (Collection-2 ``SR_B1`` … ``SR_B7``).
    thermal_bands : tuple of str
        Surface-temperature bands (``ST_B10``; Collection 1 also had B11; may be empty).
    qa_band : str
        The quality band (``QA_PIXEL``).
    qa_bits : tuple of int
        ``QA_PIXEL`` bits whose pixels are masked: 0 fill (real scenes have fill pixels with
        reflectance > 0 along their edges), 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow
        (Collection 1's cloud and shadow bits are bits 3 and 4 of Collection 2).
    sr_valid_range : (float, float)
        Valid optical digital numbers, both ends excluded; a pixel is dropped where any optical
        band is outside (7273–43636: reflectance 0–1 in Collection 2, like ``0 < SR < 10000``
        on Collection 1).
    sr_scale, sr_offset : float
        Reflectance = DN × ``sr_scale`` + ``sr_offset`` (Collection 2: 2.75e-5, −0.2).
    st_scale, st_offset : float
        Temperature (K) = DN × ``st_scale`` + ``st_offset`` (Collection 2: 0.00341802, 149).
    thermal_range : (float, float)
        Temperatures are clamped to this range (273.15–373.15 K) and rescaled to 0–1 over it.
    """

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

    def checks(self) -> list[Check]:
        def low_high(pair: tuple[float, ...]) -> bool:
            return len(pair) == 2 and pair[0] < pair[1]

        return [
            (low_high(self.sr_valid_range), "sr_valid_range", "(low, high) with low < high"),
            (low_high(self.thermal_range), "thermal_range", "(low, high) with low < high"),
            (len(self.optical_bands) >= 1, "optical_bands", "at least one band"),
            (all(0 <= b < 64 for b in self.qa_bits), "qa_bits", "bit positions 0..63"),
        ]

    def landsat_assets(self) -> list[str]:
        """Return the bands read from the Landsat source: optical, thermal, then ``qa_band``."""
        return [*self.optical_bands, *self.thermal_bands, self.qa_band]

    def landsat_features(self, cube: Any) -> Any:
        """Masked reflectance and rescaled temperature of ``cube``'s digital numbers (lazy)."""
        from xfusion.preprocess.landsat import collection2_features

        names = [f.name for f in dataclasses.fields(SurfaceFields)]
        return collection2_features(cube, **{name: getattr(self, name) for name in names})


@dataclasses.dataclass
class UNetFields:
    """How a U-Net is built and trained on patches (beside :class:`TrainingFields`).

    Parameters
    ----------
    patch_size : int
        Side of the training patches in pixels (a multiple of ``2 ** depth`` of the U-Net).
    n_patches : int
        Training patches drawn from the training region.
    n_validation_patches : int
        Validation patches (another draw from the training region, ``seed + 1``): their loss is
        drawn beside the training loss and picks the U-Net's best epoch (0: the training loss
        picks it). The evaluation region is never seen before scoring.
    preset : {"small", "seed"}
        U-Net architecture (``"seed"`` is the published workflows' 32-64-128-256-512 network).
    widths : tuple of int, optional
        Encoder widths overriding ``preset``.
    optimizer : {"sgd", "adam", "adamw"}
        The published workflows used SGD; Adam converges in fewer epochs on a CPU.
    momentum : float
        SGD momentum.
    augment : bool
        Random flips and quarter turns of the training patches.
    bn_momentum : float
        Momentum of the BatchNorm running statistics used at prediction time. They start from
        mean 0 and variance 1 and must forget those within the run: ``bn_momentum ** steps``
        should be small (0.9 over 30 steps leaves 4 %; use less for shorter runs, 0.99 for long
        ones).
    halo : int, optional
        Context read around every block when predicting (default the model's, 64 px for depth
        3; the workflows' "kernel buffer").
    """

    patch_size: int = 64
    n_patches: int = 48
    n_validation_patches: int = 8
    preset: str = "small"
    widths: tuple[int, ...] | None = None
    optimizer: str = "adam"
    momentum: float = 0.9
    augment: bool = True
    bn_momentum: float = 0.9
    halo: int | None = None

    def checks(self) -> list[Check]:
        optimizers = ("sgd", "adam", "adamw")
        return [
            (self.optimizer in optimizers, "optimizer", f"one of {optimizers}"),
            (self.patch_size >= 1, "patch_size", ">= 1"),
            (self.n_patches >= 1, "n_patches", ">= 1"),
            (self.n_validation_patches >= 0, "n_validation_patches", ">= 0"),
            (0 <= self.bn_momentum < 1, "bn_momentum", "in [0, 1)"),
        ]

    def unet_options(self) -> dict[str, Any]:
        """Return the U-Net keywords of this group: ``preset`` … ``halo`` (not the patch draw)."""
        names = ("preset", "widths", "optimizer", "momentum", "augment", "bn_momentum", "halo")
        return {name: getattr(self, name) for name in names}


@dataclasses.dataclass
class SeasonFields:
    """Which years are mapped, each from a composite of the same months.

    Parameters
    ----------
    season : (int, int)
        First and last month of each year's composite (inclusive).
    train_year : int
        Year of the labels and of the training features.
    inference_years : tuple of int
        Years mapped with the trained model (the training year is mapped too).
    """

    season: tuple[int, ...] = (1, 12)
    train_year: int = 2020
    inference_years: tuple[int, ...] = ()

    def checks(self) -> list[Check]:
        season = self.season
        return [
            (len(season) == 2 and 1 <= season[0] <= season[-1] <= 12, "season",
             "(first_month, last_month) with 1 <= first <= last <= 12"),
        ]  # fmt: skip

    def years(self) -> list[int]:
        """Return the mapped years: the training year, then the inference years (no repeats)."""
        return list(dict.fromkeys([self.train_year, *self.inference_years]))

    def window(self, year: int) -> tuple[str, str]:
        """First and last day of ``year``'s composite window (``season`` months, inclusive)."""
        from xfusion.preprocess.seasonal import season_window

        return season_window(year, self.season)


@dataclasses.dataclass
class ModelRecipeConfig(TrainingFields, ChunkFields, DateFields, AreaFields, RecipeConfig):
    """Every field group at once: a recipe that trains a model on a region's series.

    ``class Config(ModelRecipeConfig)`` has the fields (in the same order), the checks and the
    helpers of ``class Config(TrainingFields, ChunkFields, DateFields, AreaFields,
    RecipeConfig)``; it only saves listing the groups.
    """


def at_least(config: Any, low: float, *names: str) -> list[Check]:
    """Rows of :meth:`RecipeConfig.validate`: each field of ``names`` is ``>= low``.

    Examples
    --------
    >>> at_least(RecipeConfig(seed=3), 0, "seed", "size")
    [(True, 'seed', '>= 0'), (True, 'size', '>= 0')]
    """
    return [(getattr(config, name) >= low, name, f">= {low}") for name in names]


def positive(config: Any, *names: str) -> list[Check]:
    """Rows of :meth:`RecipeConfig.validate`: each field of ``names`` is finite and ``> 0``.

    Examples
    --------
    >>> positive(AreaFields(resolution=30.0), "resolution")
    [(True, 'resolution', '> 0')]
    """
    values = {name: getattr(config, name) for name in names}
    return [(math.isfinite(v) and v > 0, name, "> 0") for name, v in values.items()]


def one_of(config: Any, name: str, options: tuple[Any, ...]) -> list[Check]:
    """Return the row of :meth:`RecipeConfig.validate`: field ``name`` is one of ``options``."""
    return [(getattr(config, name) in options, name, f"one of {options}")]


def _is_date(value: str | None) -> bool:
    if value is None:
        return True
    try:
        np.datetime64(value)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# TOML, key documentation, types
# ----------------------------------------------------------------------------------------------


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the keys of a config file (top-level keys, or the one ``[recipe]`` table)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err
    if len(data) == 1 and isinstance(next(iter(data.values())), dict):
        data = next(iter(data.values()))
    return data


def config_keys(config_class: type[RecipeConfig]) -> list[tuple[str, str, Any, str]]:
    """Return ``(name, type, default, one-line doc)`` for every key of a recipe's config.

    The type is said in words (``"integer"``, ``"list of strings"``), the doc is the first
    sentence of the key's entry in the numpydoc ``Parameters`` section of the class, or else of
    the field group that declares it.

    Examples
    --------
    >>> from xfusion.recipes import cloudmask
    >>> name, kind, default, doc = config_keys(cloudmask.Config)[1]
    >>> name, kind, default
    ('seed', 'integer', 0)
    """
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        docs.update(_parameter_docs(vars(klass).get("__doc__")))
    hints = typing.get_type_hints(config_class)
    return [
        (f.name, _describe_type(hints[f.name]), f.default, docs.get(f.name, ""))
        for f in dataclasses.fields(config_class)
    ]


def _renamed(values: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with old key names read as their new names (warned once each)."""
    out = dict(values)
    for old, (new, convert) in RENAMED_KEYS.items():
        if old not in out or old in fields or new not in fields:
            continue
        if new in out:
            raise ConfigError(f"config keys {old!r} and {new!r} are the same setting; give {new!r}")
        warnings.warn(
            f"config key {old!r} is now {new!r}"
            + (" (1 - train_fraction)" if old == "train_fraction" else "")
            + "; the old name will be removed",
            DeprecationWarning,
            stacklevel=3,
        )
        value = out.pop(old)
        out[new] = convert(value) if convert is not None and value is not None else value
    return out


def _parameter_docs(doc: str | None) -> dict[str, str]:
    """First sentence of every entry of a numpydoc ``Parameters`` section, by parameter name."""
    lines = (doc or "").expandtabs().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Parameters") + 2
    except StopIteration:
        return {}
    entries: dict[str, list[str]] = {}
    names: list[str] = []
    base = None
    for line in lines[start:]:
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            continue
        if base is None:
            base = indent
        if indent < base or (indent == base and set(line.strip()) == {"-"}):
            break
        if indent == base:
            if " : " not in line and not line.rstrip().endswith(":"):
                break  # the next section's title
            names = [n.strip() for n in line.split(" : ")[0].split(",")]
            for name in names:
                entries[name] = []
        else:
            for name in names:
                entries[name].append(line.strip())
    out = {}
    for name, words in entries.items():
        text = " ".join(words)
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)  # :func:`x` -> x
        text = re.sub(r"``([^`]+)``", r"\1", text)
        end = text.find(". ")
        out[name] = text if end < 0 else text[: end + 1]
    return out


_TYPE_WORDS = {int: "integer", float: "number", str: "string", bool: "boolean"}
_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def _describe_type(hint: Any) -> str:
    """Return the type of a config key in words (``int`` → ``"integer"``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        words = " or ".join(_describe_type(o) for o in options)
        return f"{words} (optional)" if len(options) < len(typing.get_args(hint)) else words
    if origin is tuple:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"list of {_PLURALS.get(args[0], 'values')}" if args else "list"
    return _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def _expected(hint: Any) -> str:
    """Return what a key expects, for messages: ``"an integer"``, ``"a list of strings"``."""
    words = _describe_type(hint).replace(" (optional)", "")
    return ("an " if words[0] in "aeiou" else "a ") + words


def toml_value(value: Any) -> str:
    """Return ``value`` written as TOML (booleans, numbers, strings and lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    converted = _convert(value, hint)
    if converted is _BAD:
        kind = type(value).__name__
        article = "an" if kind[0] in "aeiou" else "a"
        raise ConfigError(
            f"config key {key!r} must be {_expected(hint)} (got {value!r}, {article} {kind})"
        )
    return converted


_BAD = object()


def _convert(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` (ints as floats, lists as tuples), or ``_BAD``."""
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if base is tuple and isinstance(value, list | tuple):
            items = [a for a in typing.get_args(option) if a is not Ellipsis]
            if not items:
                return tuple(value)
            converted = tuple(_convert(v, items[0]) for v in value)
            if all(v is not _BAD for v in converted):
                return converted
            continue
        if (
            isinstance(base, type)
            and isinstance(value, base)
            and not (base is int and isinstance(value, bool))
        ):
            return value
    return _BAD
