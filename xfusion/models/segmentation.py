"""Scores of a binary segmentation map (water, cloud, built-up) against labels with no data.

:func:`segmentation_scores` compares a map of 1 (the class) and 0 (the rest) with a reference
of the same values, leaving out every pixel where either is NaN (clouds over the labels, partial
water, the map's own no data), and returns the scores a segmentation is judged by: the IoU and
F1 of the class, precision, recall and accuracy. It is eager: it takes arrays in memory (the
held-out region of a computed map).

A score with nothing to count is NaN (undefined), as in :func:`xfusion.models.binary.binary_scores`:
IoU and F1 when neither map has the class, precision without a predicted pixel of it, recall
without a true one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xfusion.errors import EmptySelectionError, InputError

__all__ = ["segmentation_scores"]


def segmentation_scores(prediction: Any, reference: Any) -> dict[str, float]:
    """IoU, F1, precision, recall and accuracy of a binary map against labels (eager).

    Pixels where either is NaN (no data) are left out; values are 1 (the class, e.g. water) and
    0 (the rest).

    Parameters
    ----------
    prediction, reference : array-like
        Maps of the same shape with values 1, 0 or NaN.

    Returns
    -------
    dict
        ``iou`` and ``f1`` of the class (NaN when neither map has it), ``precision`` and
        ``recall`` (NaN without a predicted, resp. a true pixel of the class), ``accuracy`` and
        ``n`` (the pixels compared).

    Raises
    ------
    InputError
        The maps have different sizes.
    EmptySelectionError
        No pixel is valid in both.

    Examples
    --------
    >>> import numpy as np
    >>> pred = np.array([1, 1, 0, 0, np.nan]); ref = np.array([1, 0, 0, np.nan, 1])
    >>> {k: round(v, 3) for k, v in segmentation_scores(pred, ref).items()}
    {'iou': 0.5, 'f1': 0.667, 'precision': 0.5, 'recall': 1.0, 'accuracy': 0.667, 'n': 3}
    """
    p = np.asarray(prediction, dtype=np.float64).ravel()
    r = np.asarray(reference, dtype=np.float64).ravel()
    if p.shape != r.shape:
        raise InputError(f"prediction has {p.size} pixels but the reference has {r.size}")
    ok = np.isfinite(p) & np.isfinite(r)
    if not ok.any():
        raise EmptySelectionError("no pixel where both the prediction and the reference are valid")
    p, r = p[ok] == 1, r[ok] == 1
    tp, fp, fn = float(np.sum(p & r)), float(np.sum(p & ~r)), float(np.sum(~p & r))
    union = tp + fp + fn
    return {
        "iou": tp / union if union else math.nan,
        "f1": 2 * tp / (2 * tp + fp + fn) if union else math.nan,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "accuracy": float(np.mean(p == r)),
        "n": int(ok.sum()),
    }
