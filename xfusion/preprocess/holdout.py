"""Spatial hold-out: training and evaluation boxes, windows of a cube, pixel tables of patches.

A model trained on patches is scored on pixels it never saw. These helpers draw the line:
:func:`split_box` cuts a grid's bounds into a western training box and an eastern held-out box
on a whole number of coarse cells, :func:`boxes_overlap` tells whether two boxes given by a user
share area, :func:`window` selects the pixels of a cube inside a box, and :func:`patch_pixels`
turns training patches (:func:`xfusion.patches`) into the pixel table a pixel baseline
(:mod:`xfusion.models.baselines`) is fitted on, so that baseline and network learn from the same
pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["boxes_overlap", "patch_pixels", "split_box", "window"]

Box = tuple[float, float, float, float]


def split_box(bounds: Sequence[float], step: float, holdout_fraction: float) -> tuple[Box, Box]:
    """Split ``bounds`` into a western training box and an eastern held-out box.

    The split lies on a cell edge of a grid of ``step``-wide cells starting at ``left`` (a
    coarse pixel, so no coarse pixel straddles the two boxes); the held-out box covers
    ``holdout_fraction`` of the cells, rounded, and each box keeps at least one cell.

    Parameters
    ----------
    bounds : (left, bottom, right, top)
        The extent to split.
    step : float
        Width of a cell, in the units of ``bounds``.
    holdout_fraction : float
        Share of the width held out (east).

    Returns
    -------
    (train, heldout)
        Two ``(left, bottom, right, top)`` boxes.

    Examples
    --------
    >>> split_box((0.0, 0.0, 24.0, 8.0), 4.0, 1 / 3)
    ((0.0, 0.0, 16.0, 8.0), (16.0, 0.0, 24.0, 8.0))
    """
    left, bottom, right, top = (float(v) for v in bounds)
    cells = max(round((right - left) / abs(step)), 2)
    held = min(max(round(holdout_fraction * cells), 1), cells - 1)
    split = left + (cells - held) * abs(step)
    return (left, bottom, split, top), (split, bottom, right, top)


def boxes_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Return whether two ``(left, bottom, right, top)`` boxes share area (touching is not).

    Examples
    --------
    >>> boxes_overlap((0, 0, 10, 10), (5, 0, 20, 10)), boxes_overlap((0, 0, 1, 1), (1, 0, 2, 1))
    (True, False)
    """
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def window(da: xr.DataArray, box: Sequence[float]) -> xr.DataArray:
    """Return the pixels of ``da`` whose centres lie strictly inside ``box`` (lazy).

    Only the ``x`` and ``y`` coordinates are read; the data stay as they are (a Dask array
    stays lazy).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.arange(16.0).reshape(4, 4), dims=("y", "x"),
    ...                   coords={"y": [3.5, 2.5, 1.5, 0.5], "x": [0.5, 1.5, 2.5, 3.5]})
    >>> window(da, (2.0, 0.0, 4.0, 2.0)).values.tolist()
    [[10.0, 11.0], [14.0, 15.0]]
    """
    left, bottom, right, top = box
    x, y = da.x.values, da.y.values  # coordinates, not data
    return da.isel(
        x=np.flatnonzero((x > left) & (x < right)), y=np.flatnonzero((y > bottom) & (y < top))
    )


def patch_pixels(patches: xr.Dataset) -> tuple[pd.DataFrame, np.ndarray]:
    """Every pixel of training patches with finite inputs and target, as a table and targets.

    Parameters
    ----------
    patches : xarray.Dataset
        From :func:`xfusion.patches` with a target: ``inputs`` ``(sample, band, y, x)`` and
        ``target`` ``(sample, target_band, y, x)`` held in memory (its first target band is
        used).

    Returns
    -------
    (pandas.DataFrame, numpy.ndarray)
        One row per pixel, one column per band (named by ``band``), and the target per row.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset(
    ...     {"inputs": (("sample", "band", "y", "x"), np.arange(8.0).reshape(1, 2, 2, 2)),
    ...      "target": (("sample", "target_band", "y", "x"), [[[[1.0, np.nan], [3.0, 4.0]]]])},
    ...     coords={"band": ["a", "b"], "target_band": ["t"]})
    >>> rows, y = patch_pixels(ds)
    >>> rows.to_dict("list"), y.tolist()
    ({'a': [0.0, 2.0, 3.0], 'b': [4.0, 6.0, 7.0]}, [1.0, 3.0, 4.0])
    """
    inputs = patches["inputs"].transpose("sample", "y", "x", "band").data
    x = np.reshape(inputs, (-1, patches.sizes["band"]))
    y = np.reshape(patches["target"].isel(target_band=0).data, (-1,))
    keep = np.isfinite(x).all(axis=1) & np.isfinite(y)
    bands = [str(b) for b in patches.band.values]
    return pd.DataFrame(x[keep], columns=bands), y[keep]
