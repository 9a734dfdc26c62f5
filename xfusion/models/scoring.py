"""Scores of several maps on the same held-out pixels, computed together.

A workflow compares a model with its baselines on the pixels of an evaluation box, at the fine
resolution and averaged onto a coarse grid. :func:`score_windows` computes every
``(prediction, reference)`` pair's window in one Dask compute and scores them with
:func:`xfusion.models.baselines.score_predictions`; :func:`flat_scores` writes a score dict as
the flat, prefixed keys of a ``metrics.json``; :func:`plot_windows` draws each map beside the
reference on the same window.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import xarray as xr

from xfusion.errors import InputError
from xfusion.models.baselines import score_predictions
from xfusion.preprocess.holdout import window

__all__ = ["flat_scores", "plot_windows", "score_windows"]


def score_windows(
    pairs: Mapping[str, tuple[xr.DataArray, xr.DataArray]],
    box: Sequence[float] | None = None,
    *,
    task: str = "regression",
) -> dict[str, dict[str, float]]:
    """Score every ``(prediction, reference)`` pair on its pixels inside ``box``; computes.

    Parameters
    ----------
    pairs : mapping of str to (DataArray, DataArray)
        ``(band, y, x)`` prediction and reference on the same grid (their first band is
        scored); pairs on different grids (fine and coarse) may be mixed.
    box : (left, bottom, right, top), optional
        Only pixels whose centres lie strictly inside are scored (:func:`~xfusion.preprocess.
        holdout.window`); default every pixel.
    task : {"regression", "segmentation", "classification"}
        Which scores (:func:`~xfusion.models.baselines.score_predictions`).

    Returns
    -------
    dict
        ``{name: scores}`` (regression: ``n``, ``rmse``, ``mae``, ``r2``), over the pixels where
        both are finite.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> coords = {"band": ["a"], "y": [0.5], "x": [0.5, 1.5, 2.5]}
    >>> truth = xr.DataArray([[[1.0, 2.0, 3.0]]], dims=("band", "y", "x"), coords=coords)
    >>> scores = score_windows({"model": (truth + 1, truth)}, (1, 0, 3, 1))
    >>> scores["model"]["rmse"], scores["model"]["n"]
    (1.0, 2)
    """
    for name, pair in pairs.items():
        if len(pair) != 2 or any("band" not in a.dims for a in pair):
            raise InputError(f"pair {name!r} must be (prediction, reference) cubes with a band")
    arrays = [
        (window(a, box) if box is not None else a).isel(band=0).data
        for pair in pairs.values()
        for a in pair
    ]
    computed = dask.compute(*arrays)  # xf: computes the scores
    return {
        name: score_predictions(computed[2 * i], computed[2 * i + 1], task=task)
        for i, name in enumerate(pairs)
    }


def flat_scores(scores: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Regression scores as ``metrics.json`` keys: ``{prefix}rmse`` … ``{prefix}n_pixels``.

    Examples
    --------
    >>> flat_scores({"n": 4, "rmse": 0.5, "mae": 0.25, "r2": 0.9}, "baseline_")
    {'baseline_rmse': 0.5, 'baseline_mae': 0.25, 'baseline_r2': 0.9, 'baseline_n_pixels': 4}
    """
    named = {f"{prefix}{key}": scores[key] for key in ("rmse", "mae", "r2")}
    return {**named, f"{prefix}n_pixels": scores["n"]}


def plot_windows(
    reference: xr.DataArray,
    maps: Mapping[str, tuple[str, xr.DataArray]],
    box: Sequence[float],
    out: str | os.PathLike[str],
    *,
    reference_title: str = "reference",
    units: str | None = None,
) -> dict[str, Path]:
    """Draw every map beside the reference and their difference on ``box``; computes.

    Parameters
    ----------
    reference : xarray.DataArray
        ``(band, y, x)`` reference (one band).
    maps : mapping of str to (str, DataArray)
        ``{file stem: (title, map)}``: one figure ``out/<stem>.png`` per map
        (:func:`xfusion.viz.plot_panels`: reference, map, map − reference).
    box : (left, bottom, right, top)
        The window drawn (:func:`~xfusion.preprocess.holdout.window`).
    out : path
        Folder of the PNG files.
    reference_title, units : str
        The reference's panel title ("``<reference_title>`` (evaluation region)") and the
        colour bar's label.

    Returns
    -------
    dict
        ``{stem: path}`` of the written figures.
    """
    import matplotlib.pyplot as plt

    from xfusion.viz import plot_panels

    held, paths = window(reference, box), {}
    for stem, (title, cube) in maps.items():
        paths[stem] = Path(out) / f"{stem}.png"
        titles = (f"{reference_title} (evaluation region)", title, f"{title} − {reference_title}")
        fig = plot_panels(held, window(cube, box), titles=titles, units=units, path=paths[stem])
        plt.close(fig)
    return paths
