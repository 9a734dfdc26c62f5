"""Random forests stored without pickle: the training table (Parquet) and a JSON sidecar.

Scikit-learn forests cannot be stored without pickle, which is not a storage format (loading can
execute code). A forest with a fixed ``random_state`` is deterministic, so what makes it
reproducible is stored instead: the training table (``training_points.parquet``) and a JSON
sidecar (``classifier.json``) with the classifier's class, parameters and band order, the
table's SHA-256 and package versions. :func:`load_classifier` refits the same forest from them.
:class:`RefittableForest` pairs a fitted forest with its table, so a recipe's writer saves it
like any model (``model.save(path)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xfusion.errors import InputError, ModelError

__all__ = ["RefittableForest", "load_classifier", "save_classifier"]

_CLASSIFIER = "sklearn.ensemble.RandomForestClassifier"
_TABLE = "training_points.parquet"
_SIDECAR = "classifier.json"
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RefittableForest:
    """A fitted random forest with the table it was fitted on, saved by :func:`save_classifier`.

    Parameters
    ----------
    model : sklearn.ensemble.RandomForestClassifier
        The fitted forest (integer ``random_state``, fitted on named feature columns).
    table : pandas.DataFrame
        The training table: the feature columns and ``label`` (other columns are kept).
    extra : mapping, optional
        JSON-able entries for the sidecar (e.g. metrics).

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> table = pd.DataFrame({"v": [0.0, 1.0, 2.0, 3.0], "label": [0, 0, 1, 1]})
    >>> forest = RandomForestClassifier(n_estimators=3, random_state=1)
    >>> saved = RefittableForest(forest.fit(table[["v"]], table["label"]), table)
    >>> RefittableForest.load(saved.save(tempfile.mkdtemp() + "/forest")).n_estimators
    3
    """

    model: Any
    table: pd.DataFrame
    extra: Mapping[str, Any] | None = None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the directory ``path`` (:func:`save_classifier`) and return it."""
        return save_classifier(self.model, self.table, path, extra=self.extra)

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Any:
        """Refit the forest saved in ``path`` (:func:`load_classifier`)."""
        return load_classifier(path)


def save_classifier(
    model: Any,
    table: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save a random forest as its training table plus a JSON sidecar (no pickle).

    The directory holds ``training_points.parquet`` (the points, features and ``label``) and
    ``classifier.json`` (class, parameters, band order, the table's SHA-256, package versions and
    ``extra``). :func:`load_classifier` refits the same forest from them: scikit-learn forests
    with a fixed ``random_state`` are deterministic, so the refitted model predicts exactly as
    the original.

    Parameters
    ----------
    model : sklearn.ensemble.RandomForestClassifier
        The fitted forest (with an integer ``random_state``).
    table : pandas.DataFrame
        The training table: one column per feature band (``model.feature_names_in_``) and a
        ``label`` column; other columns (``x``, ``y``) are kept.
    path : path-like
        Directory to write (replaced if it holds a saved classifier).
    extra : mapping, optional
        JSON-able entries for the sidecar (e.g. metrics).

    Returns
    -------
    pathlib.Path
        The directory written.

    Examples
    --------
    >>> import tempfile, numpy as np, pandas as pd
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> table = pd.DataFrame({"a": np.arange(20.0), "label": np.arange(20) >= 10})
    >>> model = RandomForestClassifier(n_estimators=5, random_state=0)
    >>> model = model.fit(table[["a"]], table["label"])
    >>> path = save_classifier(model, table, tempfile.mkdtemp() + "/model")
    >>> sorted(p.name for p in path.iterdir())
    ['classifier.json', 'training_points.parquet']
    >>> again = load_classifier(path)
    >>> bool((again.predict_proba(table[["a"]]) == model.predict_proba(table[["a"]])).all())
    True
    """
    from sklearn.ensemble import RandomForestClassifier

    if type(model) is not RandomForestClassifier:
        raise ModelError(f"save_classifier saves a {_CLASSIFIER}; got {type(model).__name__}")
    bands = [str(b) for b in getattr(model, "feature_names_in_", [])]
    if not bands:
        raise ModelError("the classifier was not fitted on a table with named feature columns")
    missing = [c for c in [*bands, "label"] if c not in table.columns]
    if missing:
        raise InputError(f"table lacks columns {missing}; it has {list(table.columns)}")
    params = model.get_params()
    if not isinstance(params.get("random_state"), int):
        raise ModelError("the classifier needs an integer random_state to be refitted exactly")
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    table_path = target / _TABLE
    tmp = target / f".{_TABLE}.partial"
    table.reset_index(drop=True).to_parquet(tmp, index=False)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, table_path)
    sidecar = {
        "format_version": _FORMAT_VERSION,
        "class": _CLASSIFIER,
        "params": params,
        "bands": bands,
        "label": "label",
        "classes": [_plain(c) for c in model.classes_],
        "table": _TABLE,
        "table_sha256": digest,
        "versions": _versions(),
        **dict(extra or {}),
    }
    _write_json(sidecar, target / _SIDECAR)
    return target


def load_classifier(path: str | os.PathLike[str]) -> Any:
    """Rebuild a classifier saved by :func:`save_classifier` by refitting it on its table.

    Loading never unpickles: the class must be the random forest, its parameters are checked
    against the class's own, and the table must match its checksum.

    Parameters
    ----------
    path : path-like
        Directory written by :func:`save_classifier`.

    Returns
    -------
    sklearn.ensemble.RandomForestClassifier
        Fitted, with the saved band order as ``feature_names_in_``.

    Examples
    --------
    See :func:`save_classifier`.
    """
    from sklearn.ensemble import RandomForestClassifier

    folder = Path(path)
    sidecar_path, table_path = folder / _SIDECAR, folder / _TABLE
    if not sidecar_path.is_file() or not table_path.is_file():
        raise ModelError(
            f"{folder} is not a saved classifier; expected {_SIDECAR} and {_TABLE} in it"
        )
    try:
        meta = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{sidecar_path} is not valid JSON: {err}") from err
    if meta.get("format_version") != _FORMAT_VERSION or meta.get("class") != _CLASSIFIER:
        raise ModelError(
            f"{sidecar_path} holds format {meta.get('format_version')!r} of class "
            f"{meta.get('class')!r}; expected format {_FORMAT_VERSION} of {_CLASSIFIER}"
        )
    data = table_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("table_sha256"):
        raise ModelError(f"{table_path} does not match the checksum in {_SIDECAR}")
    params = dict(meta.get("params", {}))
    unknown = sorted(set(params) - set(RandomForestClassifier().get_params()))
    if unknown:
        raise ModelError(f"{sidecar_path} has unknown classifier parameters {unknown}")
    table = pd.read_parquet(table_path)
    bands = list(meta["bands"])
    label = table[meta.get("label", "label")]
    classes = meta.get("classes")
    if classes is not None:
        label = label.astype(np.asarray(classes).dtype)
    return RandomForestClassifier(**params).fit(table[bands], label)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("xfusion", "scikit-learn", "numpy", "pandas"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _write_json(data: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
