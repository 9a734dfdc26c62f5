"""Saving and loading models without pickle.

A saved model is a directory::

    model/
      manifest.json     format version and the SHA-256 of every other file of the model
      model.json        the sidecar: format version, class, constructor parameters, band order,
                        normalisation, training-data description, metrics, history, package
                        versions, weights file name and its SHA-256
      weights.msgpack   network state (Flax msgpack of a nested dict of arrays), or
      weights.nc        array state of a linear model (an xarray Dataset written with h5netcdf)

Every file a model is rebuilt from is covered by the manifest and checked, from its raw bytes,
before anything is decoded: an edit of any kind (band names, normalisation, architecture,
metadata, weights) makes loading fail with a :class:`~xfusion.errors.ModelError` naming the
file. Loading never imports a class named by the file: the ``class`` entry must be in
:data:`MODEL_CLASSES`, an allow-list. The sidecar is checked against a closed schema
(:func:`validate_sidecar`: required and optional entries with their types, no unknown entries).
Writing is atomic: files go to a temporary directory beside the target, which is renamed into
place only when complete.

Format versions: 2 (this one) added the manifest. Version 1 folders (no manifest: their
sidecar is not covered by any checksum) are refused with a message naming the version; fit and
save the model again with this xfusion.
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

from xfusion._json import jsonable
from xfusion.errors import InputError, ModelError
from xfusion.models.base import SaveableModel

__all__ = [
    "FORMAT_VERSION",
    "MODEL_CLASSES",
    "READ_VERSIONS",
    "load_model",
    "read_model",
    "validate_sidecar",
    "write_model",
]

#: Version of the on-disk layout; files with a different version are refused.
#: 2: ``manifest.json`` with the SHA-256 of the sidecar and the weights (1 had none).
#: 3: a U-Net's input and target normalisation only under ``normalisation`` (2 also repeated
#: it in ``config``); version 2 folders still load.
FORMAT_VERSION = 3

#: The versions :func:`load_model` reads.
READ_VERSIONS: tuple[int, ...] = (2, 3)

#: The classes :func:`load_model` may instantiate, by import path.
MODEL_CLASSES: frozenset[str] = frozenset(
    {
        "xfusion.models.estimators.UNetRegressor",
        "xfusion.models.estimators.UNetSegmenter",
        "xfusion.models.ridge.Ridge",
        "xfusion.models.ridge.KernelRidge",
        "xfusion.models.kmeans.KMeans",
    }
)

_SIDECAR = "model.json"
_MANIFEST = "manifest.json"
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
    """Convert numpy scalars/arrays and tuples into JSON types; refuse anything else."""
    try:
        return jsonable(value, strict=True)
    except TypeError as err:
        raise ModelError(f"cannot store {err} in the JSON sidecar") from err


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
    model: SaveableModel,
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
    model : SaveableModel
        A :class:`~xfusion.models.base.SaveableModel` whose class is in :data:`MODEL_CLASSES`;
        its ``get_params()`` (scikit-learn style) are stored, and its ``bands_`` /
        ``output_bands_`` when present.
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
    text = json.dumps(meta, indent=2, allow_nan=True).encode()
    manifest = _manifest({_SIDECAR: text, _WEIGHTS[fmt]: weights})
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        (tmp / _WEIGHTS[fmt]).write_bytes(weights)
        (tmp / _SIDECAR).write_bytes(text)
        (tmp / _MANIFEST).write_bytes(manifest)
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


def _manifest(files: Mapping[str, bytes]) -> bytes:
    """``manifest.json``: the format version and the SHA-256 of each file's bytes."""
    entry = {
        "format_version": FORMAT_VERSION,
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    return json.dumps(entry, indent=2).encode()


def _version_error(root: Path, version: int, saved_with: Any) -> ModelError:
    newer = "a newer" if version > FORMAT_VERSION else "an older"
    why = (
        " (version 1 has no manifest: its sidecar is not covered by a checksum, so it cannot "
        "be verified; fit and save the model again)"
        if version == 1
        else ""
    )
    return ModelError(
        f"{root} was written in format version {version} by {newer} xfusion "
        f"({saved_with or '?'}); this xfusion reads versions {list(READ_VERSIONS)}{why}"
    )


def _read_manifest(root: Path) -> tuple[dict[str, str], int]:
    """Parse and check ``manifest.json``; return its ``{file name: SHA-256}`` and version."""
    path = root / _MANIFEST
    if not path.is_file():
        # A folder without a manifest is an older format (or a damaged one): say which.
        try:
            old = json.loads((root / _SIDECAR).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = None
        version = old.get("format_version") if isinstance(old, dict) else None
        if _has_kind(version, int) and version not in READ_VERSIONS:
            versions = old.get("versions")
            raise _version_error(
                root, version, versions.get("xfusion") if isinstance(versions, dict) else None
            )
        raise ModelError(
            f"{path} not found: the files of the model at {root} cannot be verified; "
            "save the model again"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path} is not valid JSON: {err}") from err
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if _has_kind(version, int) and version not in READ_VERSIONS:
        raise _version_error(root, version, None)
    digests = manifest.get("sha256") if isinstance(manifest, dict) else None
    known = {_SIDECAR, *_WEIGHTS.values()}
    if (
        not _has_kind(version, int)
        or set(manifest) != {"format_version", "sha256"}
        or not isinstance(digests, dict)
        or not digests
        or not all(isinstance(d, str) and _SHA256.fullmatch(d) for d in digests.values())
    ):
        raise ModelError(
            f"{path} is not a model manifest: expected {{'format_version': int, 'sha256': "
            f"{{file name: 64 hex digits}}}}; got {manifest!r:.200}"
        )
    unknown = sorted(str(name) for name in digests if name not in known)
    if unknown:
        raise ModelError(
            f"{path} lists unknown files {unknown}; a model folder holds {sorted(known)}"
        )
    if _SIDECAR not in digests:
        raise ModelError(f"{path} does not cover {_SIDECAR}; the sidecar cannot be verified")
    return digests, version


def _verified_bytes(root: Path, name: str, digests: Mapping[str, str]) -> bytes:
    path = root / name
    if name not in digests:
        raise ModelError(f"{root / _MANIFEST} does not cover {name}; it cannot be verified")
    try:
        data = path.read_bytes()
    except OSError as err:
        what = "weights file" if name != _SIDECAR else "sidecar"
        raise ModelError(f"{what} {path} cannot be read: {err}") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != digests[name]:
        raise ModelError(
            f"{path} is corrupt or was modified: SHA-256 {digest} differs from the recorded "
            f"{digests[name]} in {_MANIFEST}"
        )
    return data


def read_model(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a saved model's sidecar and weights, verifying manifest, checksums, schema, version.

    In order: ``model.json`` exists; ``manifest.json`` parses and has this format version; the
    raw bytes of the sidecar and of the weights file match their SHA-256 in the manifest
    (nothing is decoded before this); the sidecar parses as JSON, has the same version, passes
    :func:`validate_sidecar`, names an allow-listed class and a known weights layout, and its
    own ``weights_sha256`` agrees; only then are the weights bytes decoded.

    Returns
    -------
    meta : dict
        The parsed ``model.json``.
    state : dict
        Nested dict of numpy arrays.

    Raises
    ------
    ModelError
        Missing directory or file, a file whose bytes differ from the manifest (the message
        names the file), unparsable or incomplete sidecar or manifest, unknown class, another
        format version (version 1, without a manifest, included).
    """
    root = Path(path)
    sidecar = root / _SIDECAR
    if not sidecar.is_file():
        raise ModelError(f"no saved model at {root}: {_SIDECAR} not found")
    digests, manifest_version = _read_manifest(root)
    raw = _verified_bytes(root, _SIDECAR, digests)
    weights_names = [name for name in digests if name != _SIDECAR]
    if len(weights_names) != 1:
        raise ModelError(
            f"{root / _MANIFEST} lists {weights_names} besides {_SIDECAR}; expected one of "
            f"{sorted(_WEIGHTS.values())}"
        )
    data = _verified_bytes(root, weights_names[0], digests)
    try:
        meta = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{sidecar} is not valid JSON: {err}") from err
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if _has_kind(version, int) and version != manifest_version:
        raise ModelError(
            f"{sidecar} says format version {version} but {_MANIFEST} says {manifest_version}"
        )
    validate_sidecar(meta, source=sidecar)
    if meta["class"] not in MODEL_CLASSES:
        raise ModelError(f"{root} names class {meta['class']!r}; loadable: {sorted(MODEL_CLASSES)}")
    fmt, name = meta["weights_format"], meta["weights"]
    if _WEIGHTS.get(fmt) != name or name != weights_names[0]:
        raise ModelError(f"{sidecar}: weights {name!r} in format {fmt!r} is not a known layout")
    if hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
        raise ModelError(
            f"weights file {root / name} is corrupt or was modified: its SHA-256 differs from "
            f"the recorded {meta['weights_sha256']} in {_SIDECAR}"
        )
    try:
        state = _decode(data, fmt)
    except Exception as err:  # the decoders raise many unrelated types on bad bytes
        raise ModelError(f"weights file {root / name} cannot be decoded: {err}") from err
    return meta, state


def load_model(path: str | os.PathLike) -> SaveableModel:
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
