"""Scores of two-class predictions and the best-F1 threshold, against scikit-learn and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from xfusion.errors import InputError
from xfusion.models.binary import best_f1_threshold, binary_scores


def test_binary_scores_are_scikit_learns():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.8, truth, 1 - truth).astype(bool)
    got = binary_scores(truth.astype(float), pred, "m_")
    assert got == {
        "m_accuracy": accuracy_score(truth, pred),
        "m_f1": f1_score(truth, pred),
        "m_precision": precision_score(truth, pred),
        "m_recall": recall_score(truth, pred),
    }
    assert binary_scores([0, 0], [0, 0]) == {
        "accuracy": 1.0, "f1": 0.0, "precision": 0.0, "recall": 0.0
    }  # fmt: skip
    with pytest.raises(InputError, match="3 predictions for 2 labels"):
        binary_scores([0, 1], [0, 1, 1])


def test_best_f1_threshold_by_hand():
    values = np.array([0.1, 0.3, 0.3, 0.6, 0.7, 0.9])
    truth = np.array([0, 0, 1, 1, 0, 1])
    # values >= t for every distinct t, F1 by hand: 0.1 -> 2*3/(6+3) = 0.667, 0.3 -> 0.75,
    # 0.6 -> 2*2/(3+3) = 0.667, 0.7 -> 0.4, 0.9 -> 0.5
    assert best_f1_threshold(values, truth) == 0.3
    # a tie goes to the smallest value
    assert best_f1_threshold([1.0, 2.0], [1, 1]) == 1.0
    with pytest.raises(InputError, match="0 values for 0 labels"):
        best_f1_threshold([], [])
