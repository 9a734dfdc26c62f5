"""Held-out tiles for pixel models and the agreement of two binary masks.

:func:`holdout_tiles` draws random square tiles of a grid to keep out of training (pixel models
score there, on pixels never seen in their neighbourhood); :func:`agreement` scores a binary
mask against a reference (accuracy, IoU and Cohen's κ), as cloud and water masks are compared.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from xfusion.errors import InputError

__all__ = ["agreement", "holdout_tiles"]


def holdout_tiles(
    template: xr.DataArray, tile: int, fraction: float, *, seed: int = 0
) -> xr.DataArray:
    """Boolean ``(y, x)`` map of randomly drawn ``tile × tile`` tiles covering ``fraction``.

    The grid is cut into tiles from its top-left corner (the last row and column of tiles may
    be cut short); ``max(1, round(fraction × tiles))`` of them are drawn with
    ``numpy.random.default_rng(seed)``. The map is numpy-backed (small) on ``template``'s
    ``y``/``x`` coordinates.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> grid = xr.DataArray(np.zeros((4, 6)), dims=("y", "x"))
    >>> mask = holdout_tiles(grid, 2, 0.5, seed=0)
    >>> int(mask.sum()), mask.shape
    (12, (4, 6))
    """
    if tile < 1 or not 0.0 < fraction < 1.0:
        raise InputError(
            f"holdout_tiles needs tile >= 1 and 0 < fraction < 1; got {tile}, {fraction}"
        )
    ny, nx = template.sizes["y"], template.sizes["x"]
    ty, tx = math.ceil(ny / tile), math.ceil(nx / tile)
    rng = np.random.default_rng(seed)
    n_out = max(1, round(fraction * ty * tx))
    tiles = np.zeros(ty * tx, bool)
    tiles[rng.permutation(ty * tx)[:n_out]] = True
    mask = np.repeat(np.repeat(tiles.reshape(ty, tx), tile, axis=0), tile, axis=1)[:ny, :nx]
    return xr.DataArray(mask, dims=("y", "x"), coords={"y": template.y, "x": template.x})


def agreement(mask: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Accuracy, intersection over union and Cohen's κ of two boolean masks (eager).

    Parameters
    ----------
    mask, reference : array of bool
        The masks (same shape); only their common pixels are compared.

    Returns
    -------
    dict
        ``accuracy``, ``iou`` (of the ``True`` class) and ``kappa``. A score with nothing to
        count is NaN (undefined), as in :func:`xfusion.models.binary.binary_scores`: the IoU
        when neither mask has a ``True`` pixel, κ when both masks are one and the same
        constant (chance agreement 1).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([True, True, False, False]); b = np.array([True, False, False, False])
    >>> {k: round(v, 3) for k, v in agreement(a, b).items()}
    {'accuracy': 0.75, 'iou': 0.5, 'kappa': 0.5}
    """
    a = np.asarray(mask, dtype=bool).ravel()
    b = np.asarray(reference, dtype=bool).ravel()
    n = a.size
    if n == 0:
        raise InputError("agreement needs at least one pixel")
    if b.size != n:
        raise InputError(f"agreement needs masks of one size; got {n} and {b.size} pixels")
    tp = float(np.sum(a & b))
    tn = float(np.sum(~a & ~b))
    union = float(np.sum(a | b))
    po = (tp + tn) / n
    pe = (a.mean() * b.mean()) + ((1 - a.mean()) * (1 - b.mean()))
    kappa = math.nan if pe == 1 else (po - pe) / (1 - pe)
    return {"accuracy": po, "iou": tp / union if union else math.nan, "kappa": float(kappa)}
