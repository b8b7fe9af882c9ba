"""Set rewards for zero, one or many boxes (issue 31): one-to-one matching of predicted and true boxes by
maximum total IoU, the F1 accuracy at a threshold, and the mean matched IoU.

Predictions and truths are matched by the Hungarian method (scipy's `linear_sum_assignment` on the IoU
matrix, maximised), as DETR matches a set of predictions, and as RadVLM evaluates per-sample AP with
multi-box matching. docs/algorithms.md, "Zero, one or many boxes", has the definitions and the choices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from rewards.boxes import FloatArray, iou_pairs
from rewards.frames import Box

IntArray = npt.NDArray[np.int64]


def match_pairs(pred: Sequence[Box] | FloatArray, truth: Sequence[Box] | FloatArray,
                ) -> tuple[IntArray, IntArray, FloatArray]:
    """The one-to-one matching of `pred` [P, 4] and `truth` [T, 4] (one frame) with the largest total IoU:
    (prediction indices [K], truth indices [K], their IoUs [K]), K = min(P, T), prediction indices
    increasing, pairs of IoU 0 included; empty when either side is empty."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 4)  # [P, 4]
    t = np.asarray(truth, dtype=np.float64).reshape(-1, 4)  # [T, 4]
    if len(p) == 0 or len(t) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    table = iou_pairs(p[:, None, :], t[None, :, :])  # [P, T]
    rows, cols = linear_sum_assignment(table, maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64), np.asarray(table[rows, cols], dtype=np.float64)


def match_boxes(pred: Sequence[Box] | FloatArray, truth: Sequence[Box] | FloatArray) -> FloatArray:
    """IoUs of the one-to-one matching with the largest total IoU (`match_pairs`): [min(P, T)] values.

    >>> match_boxes([(0, 0, 10, 10), (20, 0, 30, 10)], [(20, 0, 30, 10), (0, 0, 10, 5)]).tolist()
    [0.5, 1.0]
    """
    return match_pairs(pred, truth)[2]


def set_accuracy(matched: Sequence[float] | FloatArray, n_pred: int, n_true: int, tau: float) -> float:
    """Accuracy at threshold `tau`: the F1 of the matches with IoU >= tau, 2 hits / (n_pred + n_true).

    A negative (n_true = 0) scores 1 for the empty answer and 0 for any box; an empty answer on a positive
    scores 0. One box against one truth is 1 when IoU >= tau, else 0: the single-box reward.

    >>> set_accuracy([0.9, 0.4], n_pred=3, n_true=2, tau=0.5)  # 1 hit: 2 / 5
    0.4
    >>> set_accuracy([], 0, 0, 0.5), set_accuracy([], 1, 0, 0.5), set_accuracy([], 0, 2, 0.5)
    (1.0, 0.0, 0.0)
    """
    if n_true == 0:
        return 1.0 if n_pred == 0 else 0.0
    if n_pred == 0:
        return 0.0
    hits = sum(1 for v in matched if v >= tau)
    return 2.0 * hits / (n_pred + n_true)


def set_iou(matched: Sequence[float] | FloatArray, n_pred: int, n_true: int) -> float:
    """Mean matched IoU: the matched IoUs' sum over max(n_pred, n_true), so an extra or a missing box counts
    as IoU 0 (the raw-IoU reward). A negative: 1 for the empty answer, 0 for any box.

    >>> set_iou([0.9, 0.4], n_pred=3, n_true=2)  # (0.9 + 0.4) / 3
    0.43333333333333335
    """
    if n_true == 0:
        return 1.0 if n_pred == 0 else 0.0
    if n_pred == 0:
        return 0.0
    return math.fsum(float(v) for v in matched) / max(n_pred, n_true)
