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
import hashlib
import json
import logging
import os
import shutil
import tomllib
import types
import typing
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
import xarray as xr

from xfusion._files import claim_output_dir
from xfusion.errors import ConfigError

__all__ = [
    "RecipeConfig",
    "RecipeResult",
    "prepare_out_dir",
    "store_is_complete",
    "write_cog",
    "write_json",
    "write_zarr",
]

log = logging.getLogger(__name__)

#: Inside a partial Zarr store: the regions written so far (JSON).
PROGRESS_FILE = ".xfusion-progress.json"
#: Attribute of the root group of a finished Zarr store, set once every region is written.
COMPLETE_ATTR = "xfusion_complete"
_STORE_FORMAT = 1


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
        partial = _partial_path(out / "outputs.zarr")
        progress = _read_progress(partial)
        if progress is not None:
            reason = _config_difference(progress.get("fingerprint"), config.fingerprint())
            if reason:
                raise ConfigError(_cannot_resume(partial, reason))
    return out


def _jsonable(value: Any) -> Any:
    """Plain JSON values (tuples as lists, numpy scalars as Python numbers)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def store_is_complete(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` is a Zarr store that :func:`write_zarr` finished.

    A store being written (``outputs.zarr.partial``), or one left by an interrupted run, is
    never complete.

    Examples
    --------
    >>> store_is_complete("no-such-store.zarr")
    False
    """
    return _completed_digest(Path(path)) is not None


def write_zarr(
    cubes: Mapping[str, xr.DataArray],
    path: str | os.PathLike[str],
    *,
    resume: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    chunks: Mapping[str, int] | None = None,
) -> Path:
    """Write ``cubes`` as one Zarr store, one group per cube; resumable, and complete or absent.

    The store is written into ``<path>.partial``: the metadata of every cube first, then the
    data one region at a time (a slab of whole chunks along ``y``, or along the first dimension
    of a cube without ``y``), each finished region recorded in the partial store's
    ``.xfusion-progress.json``. When all regions are written the root group gets an
    ``xfusion_complete`` attribute, the metadata is consolidated and the store is renamed to
    ``path`` (replacing an older store there), so ``path`` only ever holds a complete store.
    If writing fails or is killed, the partial store stays behind.

    This function computes: it computes the cubes, one region at a time.

    Parameters
    ----------
    cubes : mapping of str to xarray.DataArray
        The cubes, by group name.
    path : path-like
        The store to write (``.zarr``).
    resume : bool
        Continue a partial store left by an interrupted call with the same ``fingerprint`` and
        the same cubes' names, dimensions, shapes, chunks, dtypes, coordinates and attributes:
        its finished regions are not written again. A partial store that does not match raises
        :class:`~xfusion.errors.ConfigError` saying why. Without ``resume`` a partial store is
        discarded. With ``resume``, a complete store at ``path`` that matches is kept as is.
    fingerprint : mapping, optional
        JSON-able values identifying what produced the cubes (a recipe passes
        :meth:`RecipeConfig.fingerprint`).
    chunks : mapping of str to int, optional
        Chunk sizes of the store along the named dimensions, for cubes held in memory; cubes
        backed by Dask keep their chunks unless given here. Default: in-memory cubes are one
        chunk.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile, numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.arange(12.0).reshape(4, 3), dims=("y", "x"))
    >>> store = write_zarr({"a": cube}, tempfile.mkdtemp() + "/out.zarr", chunks={"y": 2})
    >>> store_is_complete(store)
    True
    >>> xr.open_zarr(store, group="a")["a"].values.tolist()[1]
    [3.0, 4.0, 5.0]
    """
    final = Path(path)
    partial = _partial_path(final)
    datasets = {name: _zarr_dataset(name, cube, chunks) for name, cube in cubes.items()}
    identity = {
        "format": _STORE_FORMAT,
        "fingerprint": _jsonable(dict(fingerprint or {})),
        "schema": _schema(datasets),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    regions = _zarr_regions(datasets)
    if resume and _completed_digest(final) == digest:
        log.info("%s is already complete for this configuration", final)
        return final
    if resume and _completed_digest(partial) == digest:  # stopped just before the rename
        _replace_dir(partial, final)
        return final
    done: set[str] = set()
    progress = _read_progress(partial)
    if partial.exists() and resume and progress is not None:
        if progress.get("digest") != digest:
            raise ConfigError(_cannot_resume(partial, _difference(progress, identity)))
        done = set(progress.get("regions", [])) & {r[0] for r in regions}
        log.info("resuming %s: %d of %d regions already written", final, len(done), len(regions))
    else:
        if partial.exists():
            log.info("discarding the partial store %s", partial)
            shutil.rmtree(partial)
        for i, (name, ds) in enumerate(datasets.items()):
            # metadata and coordinates only: the data variable is lazy and not computed here
            ds.to_zarr(
                partial,
                group=name,
                mode="w" if i == 0 else "a",
                compute=False,
                zarr_format=2,
                consolidated=False,
            )
    record = {**identity, "digest": digest, "n_regions": len(regions)}
    _write_progress(partial, {**record, "regions": [r[0] for r in regions if r[0] in done]})
    for key, name, dim, where in regions:
        if key in done:
            continue
        data = datasets[name][name]
        piece = data.isel({dim: where}) if dim is not None else data
        piece = piece.drop_vars(list(piece.coords)).to_dataset(name=name)
        piece.to_zarr(
            partial,
            group=name,
            mode="r+",
            region={dim: where} if dim is not None else None,
            zarr_format=2,
            consolidated=False,
        )
        done.add(key)
        _write_progress(partial, {**record, "regions": [r[0] for r in regions if r[0] in done]})
    _finish_store(partial, final, digest, len(regions))
    return final


def _zarr_dataset(name: str, cube: xr.DataArray, chunks: Mapping[str, int] | None) -> xr.Dataset:
    """One cube as a Dataset ready for Zarr: lazy data in regular chunks, coordinates loaded."""
    ds = cube.rename(name).to_dataset()
    for var in ds.variables.values():
        var.encoding.clear()
    lazy = [k for k, v in ds.coords.items() if v.chunks is not None]
    if lazy:
        ds = ds.assign_coords({k: ds[k].compute() for k in lazy})  # xf: computes coordinates
    data = ds[name]
    wanted = {d: int(s) for d, s in (chunks or {}).items() if d in data.dims}
    if data.chunks is None or wanted:
        data = data.chunk(wanted)
    irregular = {
        dim: max(sizes)
        for dim, sizes in zip(data.dims, data.chunks or (), strict=True)
        if len(sizes) > 1 and (len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0])
    }
    if irregular:  # Zarr needs equal chunks (the last may be smaller)
        data = data.chunk(irregular)
    ds[name] = data
    return ds


def _digest_array(values: np.ndarray) -> str:
    if values.dtype == object:
        raw = json.dumps(values.tolist(), default=str).encode()
    else:
        raw = np.ascontiguousarray(values).tobytes()
    head = f"{values.dtype.str}{values.shape}".encode()
    return hashlib.sha256(head + raw).hexdigest()[:16]


def _schema(datasets: Mapping[str, xr.Dataset]) -> dict[str, Any]:
    """Names, dimensions, shapes, chunks, dtypes, attributes and coordinate digests."""
    schema = {}
    for name, ds in datasets.items():
        data = ds[name]
        schema[name] = _jsonable(
            {
                "dims": list(data.dims),
                "shape": list(data.shape),
                "chunks": [int(c[0]) for c in data.chunks or ()],
                "dtype": data.dtype.str,
                "attrs": dict(data.attrs),
                "coords": {
                    str(k): [_digest_array(v.values), dict(v.attrs)] for k, v in ds.coords.items()
                },
            }
        )
    return schema


def _zarr_regions(
    datasets: Mapping[str, xr.Dataset],
) -> list[tuple[str, str, str | None, slice]]:
    """``(key, cube, dim, slice)`` of every region: one chunk row along ``y`` (or dim 0)."""
    regions = []
    for name, ds in datasets.items():
        data = ds[name]
        if not data.dims:
            regions.append((f"{name}", name, None, slice(None)))
            continue
        dim = "y" if "y" in data.dims else data.dims[0]
        start = 0
        for size in data.chunks[data.get_axis_num(dim)]:
            stop = start + int(size)
            regions.append((f"{name}/{dim}={start}:{stop}", name, dim, slice(start, stop)))
            start = stop
    return regions


def _read_progress(partial: Path) -> dict[str, Any] | None:
    try:
        progress = json.loads((partial / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) else None


def _write_progress(partial: Path, progress: Mapping[str, Any]) -> None:
    tmp = partial / f"{PROGRESS_FILE}.tmp"
    tmp.write_text(json.dumps(progress, sort_keys=True))
    os.replace(tmp, partial / PROGRESS_FILE)


def _completed_digest(store: Path) -> str | None:
    try:
        attrs = json.loads((store / ".zattrs").read_text())
        return attrs[COMPLETE_ATTR]["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finish_store(partial: Path, final: Path, digest: str, n_regions: int) -> None:
    import zarr

    root = zarr.open_group(str(partial), mode="r+", zarr_format=2)
    root.attrs.update(
        {COMPLETE_ATTR: {"digest": digest, "format": _STORE_FORMAT, "regions": n_regions}}
    )
    (partial / PROGRESS_FILE).unlink()
    zarr.consolidate_metadata(str(partial), zarr_format=2)
    _replace_dir(partial, final)


def _cannot_resume(partial: Path, reason: str) -> str:
    return (
        f"cannot resume {str(partial)!r}: it was written by a different run ({reason}); run "
        "with the same configuration, or without resume to discard it and start over"
    )


def _config_difference(before: Any, now: Mapping[str, Any]) -> str:
    """Say what differs between two :meth:`RecipeConfig.fingerprint` values ('' if nothing)."""
    before = before if isinstance(before, dict) else {}
    now = _jsonable(dict(now))
    for key in ("recipe", "xfusion"):
        if before.get(key) != now.get(key):
            return f"{key} was {before.get(key)!r}, now {now.get(key)!r}"
    old, new = before.get("config") or {}, now.get("config") or {}
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if changed:
        return "; ".join(
            f"config field {k!r} was {old.get(k, '<unset>')!r}, now {new.get(k, '<unset>')!r}"
            for k in changed
        )
    if before != now:
        return "its fingerprint differs"
    return ""


def _difference(progress: Mapping[str, Any], identity: Mapping[str, Any]) -> str:
    """Why a partial store does not match what is being written."""
    reason = _config_difference(progress.get("fingerprint"), identity["fingerprint"])
    if reason:
        return reason
    old, new = progress.get("schema") or {}, identity["schema"]
    if sorted(old) != sorted(new):
        return f"outputs were {sorted(old)}, now {sorted(new)}"
    for name in sorted(new):
        for key in ("dims", "shape", "chunks", "dtype", "attrs", "coords"):
            if old[name].get(key) != new[name].get(key):
                return f"output {name!r} {key} was {old[name].get(key)}, now {new[name].get(key)}"
    return f"store format {progress.get('format')!r}, expected {_STORE_FORMAT}"


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
