"""What every recipe shares: TOML-loadable configs, the result object, atomic output writing.

A recipe is a module with a ``Config`` dataclass (subclass of :class:`RecipeConfig`) and a
``run(config) -> RecipeResult`` function. Outputs go to ``config.out_dir``:

- ``outputs.zarr``: every output cube in one Zarr store, written to a temporary sibling and
  renamed into place only once complete, so an interrupted run never leaves a store that looks
  finished;
- ``<main>.tif``: the main map as a Cloud-Optimised GeoTIFF with its CRS;
- ``*.png`` figures, ``metrics.json`` and the saved model directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tomllib
import types
import typing
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import xarray as xr

from xfusion._files import writable_dir
from xfusion.errors import ConfigError

__all__ = ["RecipeConfig", "RecipeResult", "write_cog", "write_json", "write_zarr"]


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
    """

    out_dir: str = "xfusion-out"
    seed: int = 0
    source: str = "synthetic"

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
        except tomllib.TOMLDecodeError as err:
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
        lines = [f"[{type(self).__module__.rsplit('.', 1)[-1]}]"]
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


def prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` and check it is writable (a clear :class:`SourceError` otherwise)."""
    return writable_dir(out_dir, "output directory {path} is not writable: {reason}")


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def write_zarr(cubes: Mapping[str, xr.DataArray], path: str | os.PathLike[str]) -> Path:
    """Write ``cubes`` as one Zarr store, atomically (temporary sibling, then rename).

    Cubes on different grids are written as separate groups named after the cube.
    """
    final = Path(path)
    tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
    try:
        for name, cube in cubes.items():
            ds = cube.rename(name).to_dataset()
            for var in ds.variables.values():
                var.encoding.clear()
            ds.to_zarr(
                tmp, group=name, mode="a" if tmp.exists() else "w", zarr_format=2, consolidated=True
            )
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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
