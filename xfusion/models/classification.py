"""Two-class maps from point tables: a random forest, its baselines and its held-out scores.

The pieces of a point-sampled classification workflow (built-up areas from fused Sentinel-2 and
night lights): :func:`fit_forest` fits a scikit-learn random forest on a training table (columns
named like the cube's bands, so :func:`xfusion.predict` applies it lazily to the cube);
:func:`heldout_scores` scores it and a one-band threshold on held-out points;
:func:`baseline_scores` scores it beside the threshold, Otsu's threshold and gradient boosting on
the same points; :func:`map_scores` scores the predicted maps against a truth map per time step.
Everything here computes (fitting, scoring).
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import EmptySelectionError
from xfusion.models.binary import binary_scores

__all__ = ["baseline_scores", "check_two_classes", "fit_forest", "heldout_scores", "map_scores"]


def check_two_classes(train: pd.DataFrame, what: str = "built-up") -> None:
    """Raise :class:`~xfusion.errors.EmptySelectionError` unless ``train`` holds labels 0 and 1."""
    classes = {float(c) for c in train["label"].unique()}
    if classes != {0.0, 1.0}:
        raise EmptySelectionError(
            f"the training sample holds labels {sorted(classes)}; both {what} (1) and not "
            f"{what} (0) are needed: enlarge the region or n_train"
        )


def fit_forest(
    train: pd.DataFrame,
    bands: list[str],
    *,
    n_estimators: int,
    max_depth: int | None = None,
    seed: int = 0,
) -> Any:
    """Fit a random forest on the ``bands`` columns of ``train`` to its ``label`` (computes).

    One thread (``n_jobs=1``) and ``random_state=seed``, so a seed gives the same trees.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"a": [0.0, 1.0, 0.1, 0.9], "label": [0.0, 1.0, 0.0, 1.0]})
    >>> fit_forest(table, ["a"], n_estimators=5).predict(table[["a"]]).tolist()
    [0, 1, 0, 1]
    """
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(
        n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=1
    )
    return forest.fit(train[bands], train["label"].astype(int))


def heldout_scores(
    model: Any, train: pd.DataFrame, test: pd.DataFrame, *, index_band: str, threshold: float
) -> dict[str, Any]:
    """Score ``model`` and the threshold ``index_band >= threshold`` on the held-out points.

    Returns
    -------
    dict
        ``accuracy``, ``f1``, ``precision``, ``recall`` of the model, the same of the threshold
        (``baseline_*``), ``baseline_threshold``, ``n_train``, ``n_test`` and the class
        balance of both tables (:func:`xfusion.preprocess.sample.class_balance`).
    """
    from xfusion.preprocess.sample import class_balance

    labels, bands = test["label"].to_numpy(), list(model.feature_names_in_)
    return {
        **binary_scores(labels, model.predict(test[bands])),
        **binary_scores(labels, test[index_band] >= threshold, "baseline_"),
        "baseline_threshold": threshold,
        "n_train": len(train),
        "n_test": len(test),
        "class_balance_train": class_balance(train),
        "class_balance_test": class_balance(test),
    }


def baseline_scores(
    model: Any,
    train: pd.DataFrame,
    test: pd.DataFrame,
    *,
    index_band: str,
    threshold: float,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Scores of ``model`` and of its baselines on the same held-out points and features.

    Baselines: ``night_lights``, the threshold ``index_band >= threshold`` (e.g. the one with
    the best training F1); ``otsu``, Otsu's threshold of ``index_band``; ``hgb``, gradient
    boosting on every band (both fitted on ``train`` with ``seed``,
    :func:`xfusion.models.baselines.fit_baselines`).

    Returns
    -------
    (dict, dict)
        The model's scores and, per baseline, its scores: the arguments of ``baseline_block``.
    """
    from xfusion.models.baselines import fit_baselines

    bands = list(model.feature_names_in_)
    fitted = fit_baselines(
        "classification", train[bands], train["label"], seed=seed, index_band=index_band
    )
    labels = test["label"].to_numpy()
    scores = {"night_lights": binary_scores(labels, test[index_band] >= threshold)}
    scores |= {name: binary_scores(labels, m.predict(test[bands])) for name, m in fitted.items()}
    return binary_scores(labels, model.predict(test[bands])), scores


def map_scores(maps: xr.DataArray, truth: xr.DataArray | None = None) -> dict[str, Any]:
    """Share of class 1 per map of ``maps`` ``(time, y, x)``, and scores against ``truth``.

    This function computes (once: the maps, the truth and the shares together).

    Parameters
    ----------
    maps : xarray.DataArray
        Two-class maps (1, 0, NaN for no data), one per time step.
    truth : xarray.DataArray, optional
        The true maps on the same grid and time steps.

    Returns
    -------
    dict
        ``share`` (a float per time step) and, with ``truth``, ``accuracy`` and ``f1`` (a float
        per time step, on the pixels where both are finite).
    """
    fractions = maps.mean(("y", "x"))
    if truth is None:
        (shares,) = dask.compute(fractions.data)  # xf: computes the share per time step
        return {"share": [float(s) for s in shares]}
    predicted, true, shares = dask.compute(  # xf: computes the maps to score them
        maps.data, truth.data, fractions.data
    )
    out: dict[str, Any] = {"share": [float(s) for s in shares], "accuracy": [], "f1": []}
    for step in range(len(shares)):
        valid = np.isfinite(predicted[step]) & np.isfinite(true[step])
        scores = binary_scores(true[step][valid], predicted[step][valid])
        out["accuracy"].append(scores["accuracy"])
        out["f1"].append(scores["f1"])
    return out
