"""What every recipe shares: TOML-loadable configs, the result object, resumable output writing.

A recipe is a module with a ``Config`` dataclass (subclass of :class:`RecipeConfig`) and a
``run(config) -> RecipeResult`` function. Outputs go to ``config.out_dir``:

- ``outputs.zarr``: every output cube in one Zarr store (see :func:`write_zarr`);
- ``<main>.tif``: the main map as a Cloud-Optimised GeoTIFF with its CRS;
- ``*.png`` figures, ``metrics.json`` and the saved model directory.

The output directory
    ``out_dir`` is created if missing and marked as an xfusion output with a small
    ``.xfusion-output.json`` file. An existing directory is used only if it is empty or holds
    that marker (an earlier xfusion output, whose files are overwritten); a directory holding
    other files is refused with :class:`~xfusion.errors.ConfigError` and nothing is written into
    it. Symbolic links inside ``out_dir`` that resolve outside it are refused too, so outputs
    never land outside ``out_dir``.

Interrupted runs and ``resume``
    ``outputs.zarr`` is written into ``outputs.zarr.partial`` next to it: first the metadata,
    then the data one chunk-aligned slab (region) at a time, each finished region recorded in
    ``outputs.zarr.partial/.xfusion-progress.json``. Only when every region is written does the
    store get an ``xfusion_complete`` root attribute and its consolidated metadata, and is
    renamed to ``outputs.zarr``: a store under the final name is always complete, a partial
    store never carries the attribute (:func:`store_is_complete`). ``metrics.json`` and the
    figures are written after the store. With ``resume=True`` (``xfusion run ... --resume``),
    a partial store left by an interrupted run with the same configuration (every field but
    ``out_dir`` and ``resume``), the same xfusion version and the same output shapes, chunks
    and dtypes is continued — its finished regions are not written again — and the result is
    bit-identical to an uninterrupted run (models are retrained with the same seed, which gives
    identical weights on the CPU). A partial store from a different configuration raises
    :class:`~xfusion.errors.ConfigError` saying what differs, before any work; without
    ``resume`` it is discarded and the run starts afresh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tomllib
import types
import typing
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import xarray as xr

from xfusion._files import claim_output_dir
from xfusion.errors import ConfigError
from xfusion.io.zarr import (
    COMPLETE_ATTR,
    PROGRESS_FILE,
    _jsonable,
    check_resumable,
    store_is_complete,
    write_zarr,
)

__all__ = [
    "COMPLETE_ATTR",
    "PROGRESS_FILE",
    "RecipeConfig",
    "RecipeResult",
    "prepare_out_dir",
    "store_is_complete",
    "write_cog",
    "write_json",
    "write_outputs",
    "write_zarr",
]

log = logging.getLogger(__name__)


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
    """

    out_dir: str = "xfusion-out"
    seed: int = 0
    source: str = "synthetic"
    resume: bool = False

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
        return {"recipe": self.recipe_name(), "xfusion": version, "config": _jsonable(values)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build a config, rejecting unknown keys and values of the wrong type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {unknown} for {cls.__module__}.{cls.__name__}; "
                f"valid keys are {sorted(fields)}"
            )
        hints = typing.get_type_hints(cls)
        checked = {}
        for key, value in values.items():
            checked[key] = _coerce(key, value, hints[key])
        return cls(**checked)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Self:
        """Load a config from a TOML file (top-level keys, or a ``[recipe]`` table)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err
        if len(data) == 1 and isinstance(next(iter(data.values())), dict):
            data = next(iter(data.values()))
        return cls.from_dict(data)

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
                lines.append(f"{key} = {_toml_value(value)}")
        path = Path(path)
        path.write_text("\n".join(lines) + "\n")
        return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if base is tuple and isinstance(value, list):
            return tuple(value)
        if (
            isinstance(base, type)
            and isinstance(value, base)
            and not (base is int and isinstance(value, bool))
        ):
            return value
    raise ConfigError(f"config key {key!r} must be {hint}; got {value!r} ({type(value).__name__})")


@dataclasses.dataclass
class RecipeResult:
    """What a recipe run returns: metrics, output cubes, and the paths it wrote."""

    recipe: str
    metrics: dict[str, Any]
    cubes: dict[str, xr.DataArray]
    figures: dict[str, Path]
    out_dir: Path
    files: dict[str, Path] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """Return a small plain-text table of the metrics."""
        width = max((len(k) for k in self.metrics), default=0)
        lines = [f"{self.recipe} — outputs in {self.out_dir}"]
        for key, value in self.metrics.items():
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"  {key:<{width}}  {text}")
        return "\n".join(lines)


def prepare_out_dir(out_dir: str | os.PathLike[str], *, config: RecipeConfig | None = None) -> Path:
    """Create or reuse ``out_dir`` as the recipe's output directory.

    The directory is refused (:class:`~xfusion.errors.ConfigError`, nothing written) when it
    exists, is not empty and is not an xfusion output, or holds a symbolic link leading outside
    it; it is a :class:`~xfusion.errors.SourceError` when it cannot be written. With ``config``
    and ``config.resume``, a partial ``outputs.zarr`` left by a run with a different
    configuration raises :class:`~xfusion.errors.ConfigError` here, before any work is done.

    Examples
    --------
    >>> import tempfile
    >>> out = prepare_out_dir(tempfile.mkdtemp())
    >>> [p.name for p in out.iterdir()]
    ['.xfusion-output.json']
    """
    owner = config.recipe_name() if config is not None else "recipe"
    out = claim_output_dir(
        out_dir, owner=owner, message="output directory {path} is not writable: {reason}"
    )
    if config is not None and config.resume:
        check_resumable(out / "outputs.zarr", config.fingerprint())
    return out


def write_outputs(
    cubes: Mapping[str, xr.DataArray],
    out_dir: Path,
    config: RecipeConfig,
    *,
    chunks: int | None = None,
) -> Path:
    """Write a recipe's output cubes to ``out_dir/outputs.zarr`` with :func:`write_zarr`.

    Resumes when ``config.resume`` is set; the store is identified by ``config.fingerprint()``.
    ``chunks``: the store's chunk size along ``y`` and ``x`` for cubes held in memory.
    """
    return write_zarr(
        dict(cubes),
        Path(out_dir) / "outputs.zarr",
        resume=config.resume,
        fingerprint=config.fingerprint(),
        chunks=None if chunks is None else {"y": chunks, "x": chunks},
    )


def write_cog(cube: xr.DataArray, path: str | os.PathLike[str]) -> Path:
    """Write a ``(band, y, x)`` or ``(y, x)`` cube as a Cloud-Optimised GeoTIFF, atomically."""
    final = Path(path)
    tmp = final.with_name(f".{final.stem}.partial-{uuid.uuid4().hex}{final.suffix}")
    try:
        cube.rio.to_raster(tmp, driver="COG", compress="DEFLATE")
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def write_json(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write JSON atomically."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, final)
    return final
