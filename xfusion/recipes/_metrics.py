"""Scores a recipe reports beyond the library's (:mod:`xfusion.models.baselines`)."""

from __future__ import annotations

import numpy as np

from xfusion.errors import InputError

__all__ = ["aggregation_rmse"]


def aggregation_rmse(fine: np.ndarray, coarse: np.ndarray, factor: int) -> float:
    """RMSE between a fine field averaged over ``factor × factor`` blocks and a coarse field.

    ``fine`` is ``(..., Y * factor, X * factor)`` and ``coarse`` ``(..., Y, X)``; blocks are
    averaged over their finite pixels, and blocks or coarse pixels without data are skipped.

    Examples
    --------
    >>> import numpy as np
    >>> fine = np.arange(16.0).reshape(4, 4)
    >>> aggregation_rmse(fine, np.array([[2.5, 4.5], [10.5, 13.5]]), 2)
    0.5
    """
    f = np.asarray(fine, dtype=np.float64)
    c = np.asarray(coarse, dtype=np.float64)
    *lead, h, w = f.shape
    if (h, w) != (c.shape[-2] * factor, c.shape[-1] * factor):
        raise InputError(
            f"fine field {h}×{w} is not the coarse field {c.shape[-2]}×{c.shape[-1]} times {factor}"
        )
    blocks = f.reshape(*lead, h // factor, factor, w // factor, factor)
    count = np.isfinite(blocks).sum(axis=(-3, -1))
    total = np.nansum(blocks, axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
    diff = (mean - c)[np.isfinite(mean - c)]
    if diff.size == 0:
        raise InputError("no coarse pixel with data in both fields")
    return float(np.sqrt(np.mean(diff**2)))
