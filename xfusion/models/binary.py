"""Two-class maps: their scores, and the one-band threshold with the best F1.

Both work on plain arrays of labels (0/1) and predictions, eagerly: a recipe scores its map,
or a table of held-out points, with :func:`binary_scores`, and its simplest baseline, one band
split at the value that scores best on the training points, with :func:`best_f1_threshold`.

A score with nothing to count (F1, precision or recall without a true or a predicted 1) is NaN:
undefined, neither perfect nor zero. That is xfusion's one convention for scores on an empty
class (:func:`xfusion.models.segmentation.segmentation_scores`,
:func:`xfusion.models.evaluation.agreement`, :func:`xfusion.models.baselines.score_predictions`
follow it); a model's metrics with a NaN main score get no verdict against the baselines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xfusion.errors import InputError

__all__ = ["best_f1_threshold", "binary_scores"]


def binary_scores(truth: Any, pred: Any, prefix: str = "") -> dict[str, float]:
    """Return accuracy, F1, precision and recall of class 1 (eager).

    Parameters
    ----------
    truth, pred : array-like of equal length
        Labels and predictions, 0/1 (booleans and floats are read as integers).
    prefix : str
        Put before every key (``"baseline_"`` gives ``baseline_f1``...).

    Returns
    -------
    dict
        ``{prefix}accuracy``, ``{prefix}f1``, ``{prefix}precision``, ``{prefix}recall``. A
        score whose denominator is zero is NaN (undefined): precision without a predicted 1,
        recall without a true 1, F1 with neither.

    Examples
    --------
    >>> binary_scores([1, 1, 0, 0], [1, 0, 0, 0])
    {'accuracy': 0.75, 'f1': 0.666..., 'precision': 1.0, 'recall': 0.5}
    >>> binary_scores([0, 0], [0, 0])  # no 1 anywhere: only the accuracy is defined
    {'accuracy': 1.0, 'f1': nan, 'precision': nan, 'recall': nan}
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    t = np.asarray(truth).astype(int)
    p = np.asarray(pred).astype(int)
    if t.shape != p.shape:
        raise InputError(f"{p.size} predictions for {t.size} labels; expected as many")
    return {
        f"{prefix}accuracy": float(accuracy_score(t, p)),
        f"{prefix}f1": float(f1_score(t, p, zero_division=np.nan)),
        f"{prefix}precision": float(precision_score(t, p, zero_division=np.nan)),
        f"{prefix}recall": float(recall_score(t, p, zero_division=np.nan)),
    }


def best_f1_threshold(values: Any, truth: Any) -> float:
    """Return the value ``t`` of ``values`` for which ``values >= t`` has the best F1 (eager).

    Every distinct value is tried; ties go to the smallest. (A split without a predicted or a
    true 1 counts as F1 0 here, so that it is never chosen; :func:`binary_scores` reports
    such an F1 as NaN.)

    Parameters
    ----------
    values : array-like
        One band's values at the training points (finite).
    truth : array-like
        Their labels, 0/1.

    Examples
    --------
    >>> best_f1_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    0.8
    """
    from sklearn.metrics import f1_score

    v = np.asarray(values)
    t = np.asarray(truth).astype(int)
    if v.size == 0 or v.shape != t.shape:
        raise InputError(f"{v.size} values for {t.size} labels; expected as many, at least one")
    candidates = np.unique(v)
    scores = [f1_score(t, v >= c, zero_division=0.0) for c in candidates]
    return float(candidates[int(np.argmax(scores))])
