"""Class codes of a label product as a binary target: 1, 0, and NaN (no data) for the rest.

Label products code more than two classes: USGS DSWE has water of high and moderate confidence
(1, 2), partial surface water (3, 4), cloud (9) and fill (255); the JRC yearly water history
has permanent (3) and seasonal (2) water, land (1) and no observation (0). A segmentation model
learns from two classes and ignores the rest: :func:`binary_labels` maps the codes of one class
to 1, those of the other to 0 and every other code (and NaN) to NaN, so that no-data pixels never
become the second class. Ordered codes (a settlement model's degree of urbanisation) split at a
class instead: :func:`threshold_labels` maps codes at or above it to 1 and the others to 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

from xfusion.errors import InputError

__all__ = ["binary_labels", "threshold_labels"]


def _binary_block(block: np.ndarray, positive: tuple, negative: tuple) -> np.ndarray:
    out = np.full(block.shape, np.nan, dtype=np.float32)
    out[np.isin(block, np.asarray(negative, dtype=block.dtype))] = 0.0
    out[np.isin(block, np.asarray(positive, dtype=block.dtype))] = 1.0
    return out


def binary_labels(
    codes: xr.DataArray, positive: Iterable[float], negative: Iterable[float]
) -> xr.DataArray:
    """Return 1 where ``codes`` is one of ``positive``, 0 where one of ``negative``, else NaN.

    Lazy: a chunked ``codes`` gives a chunked result with the same chunks, computed per block.

    Parameters
    ----------
    codes : DataArray
        Class codes of a label product (any dims; integer or float, NaN allowed).
    positive, negative : iterable of float
        The codes of class 1 and of class 0; non-empty and disjoint.

    Returns
    -------
    DataArray
        ``float32`` with the dims and coordinates of ``codes``: 1, 0 or NaN.

    Raises
    ------
    InputError
        ``codes`` is not a DataArray, or the code lists are empty or share a code.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> dswe = xr.DataArray(np.array([[0, 1, 2], [3, 9, 255]]), dims=("y", "x"))
    >>> binary_labels(dswe, positive=(1, 2), negative=(0,)).values
    array([[ 0.,  1.,  1.],
           [nan, nan, nan]], dtype=float32)
    """
    if not isinstance(codes, xr.DataArray):
        raise InputError(f"codes must be an xarray.DataArray; got {type(codes).__name__}")
    positive, negative = tuple(positive), tuple(negative)
    if not positive or not negative:
        raise InputError(
            f"positive and negative must each list at least one code; got {positive}, {negative}"
        )
    shared = sorted(set(positive) & set(negative))
    if shared:
        raise InputError(f"codes {shared} are both positive and negative; expected disjoint lists")
    return xr.apply_ufunc(
        _binary_block,
        codes,
        kwargs={"positive": positive, "negative": negative},
        dask="parallelized",
        output_dtypes=[np.float32],
    )


def threshold_labels(codes: xr.DataArray, min_class: float) -> xr.DataArray:
    """Return 1 where ``codes >= min_class``, 0 where below, NaN where ``codes`` is NaN.

    For ordered class codes, e.g. the GHSL settlement model, where classes 2 (low density) and
    3 (high density) are built-up. Lazy: a chunked ``codes`` gives a chunked ``float32`` result.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> smod = xr.DataArray(np.array([[0.0, 1.0], [2.0, np.nan], [3.0, 1.0]]), dims=("y", "x"))
    >>> threshold_labels(smod, 2).values
    array([[ 0.,  0.],
           [ 1., nan],
           [ 1.,  0.]], dtype=float32)
    """
    if not isinstance(codes, xr.DataArray):
        raise InputError(f"codes must be an xarray.DataArray; got {type(codes).__name__}")
    return (codes >= min_class).astype("float32").where(codes.notnull())
