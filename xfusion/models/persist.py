"""Saving and loading models without pickle.

A saved model is a directory::

    model/
      model.json        the sidecar: format version, class, constructor parameters, band order,
                        normalisation, training-data description, metrics, history, package
                        versions, weights file name and its SHA-256
      weights.msgpack   network state (Flax msgpack of a nested dict of arrays), or
      weights.nc        array state of a linear model (an xarray Dataset written with h5netcdf)

Loading never imports a class named by the file: the ``class`` entry must be in
:data:`MODEL_CLASSES`, an allow-list. The sidecar is checked against a closed schema
(:func:`validate_sidecar`: required and optional entries with their types, no unknown entries)
and the weights bytes against their SHA-256 before any weight is deserialised. Writing is
atomic: files go to a temporary directory beside the target, which is renamed into place only
when complete.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import io
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from xfusion.errors import InputError, ModelError

__all__ = [
    "FORMAT_VERSION",
    "MODEL_CLASSES",
    "load_model",
    "read_model",
    "validate_sidecar",
    "write_model",
]

#: Version of the on-disk layout; files with a different version are refused.
FORMAT_VERSION = 1

#: The classes :func:`load_model` may instantiate, by import path.
MODEL_CLASSES: frozenset[str] = frozenset(
    {
        "xfusion.models.estimators.UNetRegressor",
        "xfusion.models.estimators.UNetSegmenter",
        "xfusion.models.ridge.Ridge",
        "xfusion.models.ridge.KernelRidge",
    }
)

_SIDECAR = "model.json"
_WEIGHTS = {"msgpack": "weights.msgpack", "netcdf": "weights.nc"}
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "class": str,
    "params": dict,
    "bands": list,
    "output_bands": list,
    "normalisation": dict,
    "training": dict,
    "metrics": dict,
    "history": dict,
    "versions": dict,
    "weights": str,
    "weights_format": str,
    "weights_sha256": str,
}
#: Entries a sidecar may hold besides the required ones (written by some model classes).
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "created": str,
    "config": dict,
    "tile_multiple": int,
    "default_halo": int,
    "bands_": (list, type(None)),
    "output_bands_": list,
    "n_features_in_": int,
    "y_1d": bool,
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _has_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true/false are Python bools, which are ints too: only a bool entry accepts them
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def validate_sidecar(meta: Any, *, source: str | os.PathLike = _SIDECAR) -> None:
    """Check a parsed sidecar against the schema of this format version; raise if it fails.

    The schema is closed: every required entry present with its JSON type, optional entries
    typed, no other top-level entries, ``bands``/``output_bands`` lists of strings,
    ``versions`` strings, ``weights_sha256`` 64 lowercase hex digits. The format version, class
    and weights layout are checked by :func:`read_model`. Nothing is read from disk here.

    Parameters
    ----------
    meta : object
        The parsed ``model.json``.
    source : str or path-like
        Named in the error message (the sidecar's path).

    Raises
    ------
    ModelError
        Listing every problem found, e.g. ``lacks 'weights_sha256' (str)``.

    Examples
    --------
    >>> validate_sidecar({"format_version": 1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xfusion.errors.ModelError: model.json fails the sidecar schema: lacks 'class' (str); ...
    """
    if not isinstance(meta, dict):
        raise ModelError(f"{source} must hold a JSON object; got {type(meta).__name__}")
    problems = []
    for key, kind in _REQUIRED.items():
        if key not in meta:
            problems.append(f"lacks {key!r} ({_kind_name(kind)})")
        elif not _has_kind(meta[key], kind):
            problems.append(
                f"{key!r} is {type(meta[key]).__name__} {meta[key]!r:.60}; "
                f"expected {_kind_name(kind)}"
            )
    for key, kind in _OPTIONAL.items():
        if key in meta and not _has_kind(meta[key], kind):
            problems.append(
                f"{key!r} is {type(meta[key]).__name__} {meta[key]!r:.60}; "
                f"expected {_kind_name(kind)}"
            )
    unknown = sorted(str(k) for k in meta if k not in _REQUIRED and k not in _OPTIONAL)
    if unknown:
        problems.append(f"unknown entries {unknown} (known: {sorted([*_REQUIRED, *_OPTIONAL])})")
    for key in ("bands", "output_bands"):
        value = meta.get(key)
        if isinstance(value, list) and not all(isinstance(b, str) for b in value):
            problems.append(f"{key!r} must be a list of strings; got {value!r:.80}")
    versions = meta.get("versions")
    if isinstance(versions, dict) and not all(isinstance(v, str) for v in versions.values()):
        problems.append(f"'versions' must map package names to strings; got {versions!r:.80}")
    digest = meta.get("weights_sha256")
    if isinstance(digest, str) and not _SHA256.fullmatch(digest):
        problems.append(f"'weights_sha256' {digest!r:.80} is not 64 lowercase hex digits")
    if problems:
        raise ModelError(f"{source} fails the sidecar schema: {'; '.join(problems)}")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("xfusion", "numpy", "xarray", "jax", "flax", "optax", "scikit-learn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _class_path(model: Any) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples into JSON types (recursively)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    raise ModelError(f"cannot store {type(value).__name__} {value!r} in the JSON sidecar")


def _flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in state.items():
        if "/" in str(key):
            raise ModelError(f"state keys may not contain '/'; got {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def _encode(state: Mapping[str, Any], fmt: str) -> bytes:
    flat = _flatten(state)
    if fmt == "msgpack":
        from flax import serialization

        return serialization.msgpack_serialize(_unflatten(flat))
    import xarray as xr

    # HDF5 reserves "/" for groups: nested names are stored with "." instead
    if any("." in name for name in flat):
        raise ModelError(f"netcdf state keys may not contain '.'; got {sorted(flat)}")
    ds = xr.Dataset(
        {
            name.replace("/", "."): xr.Variable(
                [f"{name.replace('/', '.')}_dim_{i}" for i in range(arr.ndim)], arr
            )
            for name, arr in flat.items()
        }
    )
    # In memory and eager: with a distributed client active, xarray would otherwise pick the
    # client's write lock, which cannot guard an in-memory buffer.
    import dask

    with dask.config.set(scheduler="synchronous"):
        return ds.to_netcdf(engine="h5netcdf")


def _decode(data: bytes, fmt: str) -> dict[str, Any]:
    if fmt == "msgpack":
        from flax import serialization

        state = serialization.msgpack_restore(data)
        return _unflatten({k: np.asarray(v) for k, v in _flatten(state).items()})
    import xarray as xr

    with xr.open_dataset(io.BytesIO(data), engine="h5netcdf") as ds:
        return _unflatten(
            {str(name).replace(".", "/"): np.asarray(ds[name].values) for name in ds.data_vars}
        )


def write_model(
    path: str | os.PathLike,
    model: Any,
    *,
    state: Mapping[str, Any],
    fmt: str = "msgpack",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` to the directory ``path`` (atomically; an existing saved model is replaced).

    Parameters
    ----------
    path : path-like
        Target directory. It must not exist, or hold a saved model (which is replaced).
    model : estimator
        Its class must be in :data:`MODEL_CLASSES`; its ``get_params()`` (scikit-learn style)
        are stored, and its ``bands_`` / ``output_bands_`` when present.
    state : dict
        Nested dict (string keys without ``/``) of numpy arrays: the weights.
    fmt : {"msgpack", "netcdf"}
        Flax msgpack (networks) or NetCDF via h5netcdf (array models).
    extra : dict, optional
        JSON-able entries for the sidecar, e.g. ``normalisation``, ``training``, ``metrics``,
        ``history``, ``config``.

    Returns
    -------
    pathlib.Path
        The saved directory.
    """
    if fmt not in _WEIGHTS:
        raise InputError(f"fmt must be one of {list(_WEIGHTS)}; got {fmt!r}")
    cls = _class_path(model)
    if cls not in MODEL_CLASSES:
        raise ModelError(
            f"class {cls} cannot be saved; saveable classes are {sorted(MODEL_CLASSES)}"
        )
    target = Path(path)
    if target.exists() and not (target.is_dir() and (target / _SIDECAR).is_file()):
        raise ModelError(f"{target} exists and is not a saved model; choose a new path")
    weights = _encode(state, fmt)
    extra = dict(extra or {})
    params = model.get_params() if hasattr(model, "get_params") else {}
    meta = {
        "format_version": FORMAT_VERSION,
        "class": cls,
        "params": params,
        "bands": list(getattr(model, "bands_", ()) or ()),
        "output_bands": list(getattr(model, "output_bands_", ()) or ()),
        "normalisation": extra.pop("normalisation", {}),
        "training": extra.pop("training", {}),
        "metrics": extra.pop("metrics", {}),
        "history": extra.pop("history", {}),
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "weights": _WEIGHTS[fmt],
        "weights_format": fmt,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        **extra,
    }
    meta = _jsonable(meta)
    validate_sidecar(meta, source=f"the sidecar for {target}")
    text = json.dumps(meta, indent=2, allow_nan=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        (tmp / _WEIGHTS[fmt]).write_bytes(weights)
        (tmp / _SIDECAR).write_text(text)
        if target.exists():
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_model(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a saved model's sidecar and weights, verifying schema, version and checksum.

    In order: the sidecar parses as JSON, its format version is this one, it passes
    :func:`validate_sidecar`, its class is allow-listed and its weights layout known; then the
    weights file is read once, its SHA-256 compared with the recorded one, and only then are
    those same bytes decoded.

    Returns
    -------
    meta : dict
        The parsed ``model.json``.
    state : dict
        Nested dict of numpy arrays.

    Raises
    ------
    ModelError
        Missing directory or file, unparsable or incomplete sidecar, unknown class, another
        format version, or weights whose SHA-256 differs from the recorded one.
    """
    root = Path(path)
    sidecar = root / _SIDECAR
    if not sidecar.is_file():
        raise ModelError(f"no saved model at {root}: {_SIDECAR} not found")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{sidecar} is not valid JSON: {err}") from err
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if _has_kind(version, int) and version != FORMAT_VERSION:
        # before the schema: another version may have other entries
        versions = meta.get("versions")
        saved_with = versions.get("xfusion", "?") if isinstance(versions, dict) else "?"
        newer = "a newer" if version > FORMAT_VERSION else "an older"
        raise ModelError(
            f"{root} was written in format version {version} by {newer} xfusion "
            f"({saved_with}); this xfusion reads version {FORMAT_VERSION}"
        )
    validate_sidecar(meta, source=sidecar)
    if meta["class"] not in MODEL_CLASSES:
        raise ModelError(f"{root} names class {meta['class']!r}; loadable: {sorted(MODEL_CLASSES)}")
    fmt, name = meta["weights_format"], meta["weights"]
    if _WEIGHTS.get(fmt) != name:
        raise ModelError(f"{sidecar}: weights {name!r} in format {fmt!r} is not a known layout")
    try:
        data = (root / name).read_bytes()
    except OSError as err:
        raise ModelError(f"weights file {root / name} cannot be read: {err}") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["weights_sha256"]:
        raise ModelError(
            f"weights file {root / name} is corrupt or was modified: SHA-256 {digest} "
            f"differs from the recorded {meta['weights_sha256']}"
        )
    try:
        state = _decode(data, fmt)
    except Exception as err:  # the decoders raise many unrelated types on bad bytes
        raise ModelError(f"weights file {root / name} cannot be decoded: {err}") from err
    return meta, state


def load_model(path: str | os.PathLike) -> Any:
    """Load a model saved with ``model.save(path)``.

    The class is looked up in the allow-list :data:`MODEL_CLASSES` and rebuilt with its
    ``_from_saved(meta, state)``; see :func:`read_model` for the checks.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from xfusion.models import UNetRegressor
    >>> X = np.random.default_rng(0).normal(size=(8, 2, 8, 8)).astype("float32")
    >>> model = UNetRegressor(widths=(4,), epochs=2, progress=False).fit(X, X[:, :1] * 2)
    >>> path = model.save(os.path.join(tempfile.mkdtemp(), "unet"))
    >>> loaded = load_model(path)
    >>> np.array_equal(loaded.predict(X), model.predict(X))
    True
    """
    meta, state = read_model(path)
    module_name, _, name = meta["class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name, None)
    if cls is None or not hasattr(cls, "_from_saved"):
        raise ModelError(f"class {meta['class']} is not available in this xfusion version")
    try:
        return cls._from_saved(meta, state)
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"{path}: cannot rebuild {meta['class']}: {err}") from err
