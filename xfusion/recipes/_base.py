"""What every recipe shares: TOML-loadable configs, the result object, resumable output writing.

A recipe is a module with a ``Config`` dataclass (subclass of :class:`RecipeConfig`) and a
``run(config) -> RecipeResult`` function. Outputs go to ``config.out_dir``:

- ``outputs.zarr``: every output cube in one Zarr store (see :func:`write_zarr`);
- ``<main>.tif``: the main map as a Cloud-Optimised GeoTIFF with its CRS;
- ``*.png`` figures, ``metrics.json`` and the saved model directory;
- ``config.toml``: the run's configuration, which loads back with :meth:`RecipeConfig.from_toml`
  (``xfusion run RECIPE --config OUT/config.toml``).

Switching ``source``
    A config built with :meth:`RecipeConfig.from_dict` (TOML files and the command line go
    through it) and a ``source`` other than ``"synthetic"`` takes that source's defaults
    (``SOURCE_DEFAULTS``) for the keys not given, and is refused, naming them all, when a key
    that names the data (``SOURCE_KEYS``: collection ids, files, asset names, region) is not
    given.

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

import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import re
import sys
import tomllib
import types
import typing
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

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
    "config_keys",
    "prepare_out_dir",
    "progress",
    "show_progress",
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

    #: Per source, the keys that name its data (collection ids, files, asset names) and whose
    #: defaults are meant for another source: :meth:`from_dict` refuses that source unless they
    #: are given, and names them.
    SOURCE_KEYS: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: Per source, defaults that differ from the synthetic scene's (units, label values); used by
    #: :meth:`from_dict` for the keys that are not given.
    SOURCE_DEFAULTS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

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
        """Build a config from the keys given, the others keeping their defaults.

        Unknown keys and values of the wrong type are refused with a
        :class:`~xfusion.errors.ConfigError` naming the key, the value and the type expected.
        With ``source`` other than ``"synthetic"``, keys that are not given take that source's
        defaults (:attr:`SOURCE_DEFAULTS`, e.g. Earth Engine's label values), and the keys that
        name the data (:attr:`SOURCE_KEYS`) must be given: otherwise the error names all of them
        at once, before anything is read.

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
                lines.append(f"{key} = {_toml_value(value)}")
        final = Path(path)
        tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, final)
        return final


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
    sentence of the key's entry in the numpydoc ``Parameters`` section of the class (or of
    :class:`RecipeConfig` for the common keys).

    Examples
    --------
    >>> from xfusion.recipes import cloudmask
    >>> name, kind, default, doc = config_keys(cloudmask.Config)[1]
    >>> name, kind, default
    ('seed', 'integer', 0)
    """
    docs = {**_parameter_docs(RecipeConfig.__doc__), **_parameter_docs(config_class.__doc__)}
    hints = typing.get_type_hints(config_class)
    return [
        (f.name, _describe_type(hints[f.name]), f.default, docs.get(f.name, ""))
        for f in dataclasses.fields(config_class)
    ]


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


_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("xfusion_progress", default=False)


def show_progress() -> bool:
    """Return whether recipes show progress bars now (inside :func:`progress`)."""
    return _PROGRESS.get()


@contextlib.contextmanager
def progress(enabled: bool = True, *, minimum: float = 1.0) -> Iterator[None]:
    """Show the progress of recipe runs on stderr while inside this context.

    Training epochs get a tqdm bar, and every Dask computation on the local schedulers that
    takes longer than ``minimum`` seconds a Dask progress bar (a distributed cluster has its
    dashboard instead). Outside this context recipes run silently; ``xfusion run`` and
    ``xfusion demo`` enter it unless given ``--quiet``.

    Examples
    --------
    >>> show_progress()
    False
    >>> with progress():
    ...     show_progress()
    True
    """
    token = _PROGRESS.set(bool(enabled))
    try:
        if enabled:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=minimum, out=sys.stderr):
                yield
        else:
            yield
    finally:
        _PROGRESS.reset(token)


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
