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
    # nothing to count is undefined (NaN), not 0 and not 1: the one convention of every score
    empty = binary_scores([0, 0], [0, 0])
    assert empty["accuracy"] == 1.0
    assert all(np.isnan(empty[k]) for k in ("f1", "precision", "recall"))
    missed = binary_scores([1, 0], [0, 0])  # no predicted 1: precision undefined, the rest not
    assert np.isnan(missed["precision"]) and missed["recall"] == 0.0 and missed["f1"] == 0.0
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


def test_every_score_of_an_empty_class_is_nan_and_gives_no_verdict():
    from xfusion.models.baselines import score_predictions
    from xfusion.models.evaluation import agreement
    from xfusion.models.segmentation import segmentation_scores

    none = np.zeros(6)  # neither the map nor the reference has the class
    seg = segmentation_scores(none, none)
    assert seg["accuracy"] == 1.0 and seg["n"] == 6
    assert all(np.isnan(seg[k]) for k in ("iou", "f1", "precision", "recall"))
    agree = agreement(none.astype(bool), none.astype(bool))
    assert agree["accuracy"] == 1.0 and np.isnan(agree["iou"]) and np.isnan(agree["kappa"])
    scored = score_predictions(none, none, task="segmentation")
    assert scored["accuracy"] == 1.0 and np.isnan(scored["iou"])
    assert np.isnan(binary_scores(none, none)["f1"])
    # where the class is present the scores are the usual ones, equal across the functions
    pred, ref = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    iou = 2 / 4
    assert segmentation_scores(pred, ref)["iou"] == iou
    assert agreement(pred.astype(bool), ref.astype(bool))["iou"] == iou
    assert score_predictions(pred, ref, task="segmentation")["iou"] == iou
    assert segmentation_scores(pred, ref)["f1"] == binary_scores(ref, pred)["f1"] == 2 / 3
    # an undefined score gets no verdict against the baselines instead of a pass or a fail
    from xfusion.recipes._base import baseline_block

    block = baseline_block({"iou": seg["iou"]}, {"otsu": {"iou": 0.4}}, metric="iou")
    assert block["beats_baseline"] is None and block["baselines"]["comparable"] is False
