"""Training points and held-out points that share no pixel, drawn from one labelled cube.

:func:`train_test_points` draws the training table with ``seed`` and the held-out table with
``seed + 1`` (:func:`xfusion.preprocess.sample.sample`), then removes from the held-out table
every pixel the training table holds, so a pixel classifier is scored on points it never saw.
It computes, as :func:`~xfusion.preprocess.sample.sample` does.
"""

from __future__ import annotations

import pandas as pd
import xarray as xr

from xfusion.errors import EmptySelectionError
from xfusion.preprocess.sample import sample

__all__ = ["train_test_points"]


def train_test_points(
    features: xr.DataArray,
    labels: xr.DataArray,
    n_train: int,
    n_test: int,
    *,
    seed: int = 0,
    stratify: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return training points (``seed``) and held-out points (``seed + 1``) on other pixels.

    Parameters
    ----------
    features : xarray.DataArray
        ``(band, y, x)`` cube whose bands become the tables' columns.
    labels : xarray.DataArray
        ``(y, x)`` labels on the same grid (NaN: no label, never drawn).
    n_train, n_test : int
        Points drawn for each table (uniformly; ``stratify`` draws ``n_train`` per class for
        the training table). Held-out points on training pixels are removed afterwards, so
        the held-out table may hold fewer than ``n_test``.
    seed : int
        Seed of the training draw; the held-out draw uses ``seed + 1``.
    stratify : bool
        Stratify the training draw by class.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        The training and held-out tables (columns ``x``, ``y``, the bands and ``label``).

    Raises
    ------
    EmptySelectionError
        No held-out point is left once the training pixels are removed.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.arange(32.0).reshape(2, 4, 4), dims=("band", "y", "x"),
    ...                     coords={"band": ["a", "b"], "y": np.arange(4.0), "x": np.arange(4.0)})
    >>> labels = (cube.sel(band="a", drop=True) > 7).astype("float32")
    >>> train, test = train_test_points(cube, labels, 6, 10, seed=0)
    >>> len(train), set(zip(train.x, train.y)) & set(zip(test.x, test.y))
    (6, set())
    """
    train = sample(features, labels, n_train, seed=seed, stratify=stratify)
    test = sample(features, labels, n_test, seed=seed + 1)
    seen = pd.MultiIndex.from_frame(train[["x", "y"]])
    test = test[~pd.MultiIndex.from_frame(test[["x", "y"]]).isin(seen)].reset_index(drop=True)
    if len(test) == 0:
        raise EmptySelectionError(
            f"no held-out point is left once the {len(train)} training pixels are removed; "
            "draw fewer training points or label more pixels"
        )
    return train, test
