"""Two-class maps from point tables: a random forest, its baselines and its held-out scores.

The pieces of a point-sampled classification workflow (built-up areas from fused Sentinel-2 and
night lights): :func:`fit_forest` fits a scikit-learn random forest on a training table (columns
named like the cube's bands, so :func:`xfusion.predict` applies it lazily to the cube);
:func:`heldout_scores` scores it and a one-band threshold on held-out points;
:func:`baseline_scores` scores it beside the threshold, Otsu's threshold and gradient boosting on
the same points; :func:`class_map` applies the forest to a cube lazily; :func:`map_scores`
scores the predicted maps against a truth map per time step; :func:`change_map` and
:func:`plot_yearly_maps` compare and draw the maps of several years. Fitting, scoring and
drawing compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import EmptySelectionError
from xfusion.models.binary import binary_scores

__all__ = [
    "CHANGE_CLASSES",
    "baseline_scores",
    "change_map",
    "check_two_classes",
    "class_map",
    "fit_forest",
    "heldout_scores",
    "map_scores",
    "plot_yearly_maps",
    "yearly_metrics",
]

#: Codes, names and colours of a change map (:func:`change_map`).
CHANGE_CLASSES = {-1: ("lost", "#2166ac"), 0: ("unchanged", "#f0f0f0"), 1: ("gained", "#b2182b")}


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


def yearly_metrics(scores: dict[str, Any], years: Sequence[int], name: str) -> dict[str, float]:
    """:func:`map_scores`' per-step lists as metric entries, one per year of ``years``.

    ``truth_accuracy_<year>`` and ``truth_f1_<year>`` (when scored against a truth), then
    ``<name>_fraction_<year>``, the share of class 1.

    Examples
    --------
    >>> yearly_metrics({"share": [0.1, 0.2], "accuracy": [0.9, 0.8], "f1": [0.7, 0.6]},
    ...                [2015, 2016], "builtup")  # doctest: +NORMALIZE_WHITESPACE
    {'truth_accuracy_2015': 0.9, 'truth_f1_2015': 0.7, 'truth_accuracy_2016': 0.8,
     'truth_f1_2016': 0.6, 'builtup_fraction_2015': 0.1, 'builtup_fraction_2016': 0.2}
    """
    metrics = {}
    for i, year in enumerate(years if "f1" in scores else []):
        metrics[f"truth_accuracy_{year}"] = scores["accuracy"][i]
        metrics[f"truth_f1_{year}"] = scores["f1"][i]
    shares = zip(years, scores["share"], strict=True)
    return metrics | {f"{name}_fraction_{year}": share for year, share in shares}


def class_map(cube: xr.DataArray, model: Any, name: str) -> xr.DataArray:
    """Lazy class map of ``model`` over ``cube``: ``(…, band=[name], y, x)`` named ``name``.

    ``model`` is applied per pixel by :func:`xfusion.predict` (``cube``'s bands are the columns
    it was fitted on); the ``source`` coordinate of a fused cube is dropped first. Nothing is
    computed.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> table = pd.DataFrame({"a": [0.0, 1.0, 0.1, 0.9], "label": [0.0, 1.0, 0.0, 1.0]})
    >>> forest = fit_forest(table, ["a"], n_estimators=5)
    >>> cube = xr.DataArray(np.array([[[0.0, 1.0]]]), dims=("band", "y", "x"),
    ...                     coords={"band": ["a"]})
    >>> class_map(cube, forest, "builtup").sel(band="builtup").values.tolist()
    [[0.0, 1.0]]
    """
    maps = cube.drop_vars("source", errors="ignore").xf.predict(model)
    return maps.assign_coords(band=[name]).rename(name)


def change_map(maps: xr.DataArray, first: int = 0, last: int = -1) -> xr.DataArray:
    """Return time step ``last`` − time step ``first`` of two-class ``maps``: 1 gained, −1 lost.

    ``(time, band, y, x)`` maps give ``(band=["change"], y, x)`` named ``change``; NaN where
    either map is NaN. Lazy.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> maps = xr.DataArray(np.array([[[[0.0, 1.0, 1.0]]], [[[1.0, 1.0, 0.0]]]]),
    ...                     dims=("time", "band", "y", "x"))
    >>> change_map(maps).values.tolist()
    [[[1.0, 0.0, -1.0]]]
    """
    change = maps.isel(time=last, drop=True) - maps.isel(time=first, drop=True)
    return change.assign_coords(band=["change"]).rename("change")


def plot_yearly_maps(
    maps: xr.DataArray,
    change: xr.DataArray,
    years: Sequence[int],
    out: Path,
    *,
    name: str,
    classes: dict[int, tuple[str, str]],
    first_year: int | None = None,
) -> dict[str, Path]:
    """Draw one PNG per year of ``maps`` and one of ``change``; return their paths (computes).

    ``maps`` is ``(time, band, y, x)`` with a time step per year of ``years``; the files are
    ``out/<name>_<year>.png`` (titled ``<class 1 name> <year>``, drawn with ``classes``: code →
    (name, colour)) and ``out/change.png`` (:data:`CHANGE_CLASSES`, titled from ``first_year``,
    by default the first year, to the last).
    """
    import matplotlib.pyplot as plt

    from xfusion.viz import plot_classes

    what = classes[1][0]
    drawn = [(f"{name}_{y}", maps.isel(time=i), f"{what} {y}", classes)
             for i, y in enumerate(years)]  # fmt: skip
    first = years[0] if first_year is None else first_year
    drawn.append(("change", change, f"change {first}–{years[-1]}", CHANGE_CLASSES))
    paths = {}
    for key, cube, title, codes in drawn:
        paths[key] = Path(out) / f"{key}.png"
        plt.close(plot_classes(cube, codes, title=title, path=paths[key]))
    return paths
