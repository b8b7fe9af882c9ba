"""The set reward's columns (`reward.boxes: set`, issue 31): every grounding completion's boxes clipped,
mapped into original pixels and matched to the truths (rewards/matching.py), as arrays the batch scorer
and the MedLoc-R1 window read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rewards.boxes import FloatArray
from rewards.frames import Box, ImageFrame
from rewards.matching import match_boxes, set_accuracy, set_iou
from rewards.parse import clip_answer_box

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class BoxSets:
    """Every completion's box set, for N completions (rows of non-grounding completions are empty).

    n_pred: int64 [N], boxes answered (-1: no usable answer, a format failure); n_true: int64 [N], the
    target's boxes (0: a negative); matched: float64 [M], the matched IoUs of all completions, completion j's
    at matched_offsets[j]:matched_offsets[j + 1] (int64 [N + 1]); boxes: float64 [B, 4] in original pixels,
    completion j's at box_offsets[j]:box_offsets[j + 1].
    """

    n_pred: IntArray
    n_true: IntArray
    matched: FloatArray
    matched_offsets: IntArray
    boxes: FloatArray
    box_offsets: IntArray

    def matched_of(self, j: int) -> FloatArray:
        return self.matched[int(self.matched_offsets[j]) : int(self.matched_offsets[j + 1])]

    def boxes_of(self, j: int) -> tuple[Box, ...] | None:
        """Completion j's boxes in original pixels; None when it gave no usable answer."""
        if self.n_pred[j] < 0:
            return None
        rows = self.boxes[int(self.box_offsets[j]) : int(self.box_offsets[j + 1])].tolist()
        return tuple((r[0], r[1], r[2], r[3]) for r in rows)

    def accuracy(self, j: int, tau: float) -> float:
        """Completion j's F1 at `tau` (`set_accuracy`; 0 without a usable answer)."""
        if self.n_pred[j] < 0:
            return 0.0
        return set_accuracy(self.matched_of(j), int(self.n_pred[j]), int(self.n_true[j]), tau)


def box_set_columns(sets: Sequence[tuple[Box, ...] | None], frames: Sequence[ImageFrame],
                    truths: Sequence[tuple[Box, ...]]) -> tuple[BoxSets, FloatArray]:
    """Score K grounding completions as sets: `sets` [K] raw boxes in the model's convention (None when the
    answer did not parse), each with its prompt's frame and true boxes (original pixels).

    Returns (BoxSets over the K, mean matched IoU [K]). A box with no area left after clipping to the image
    makes the answer a format failure (n_pred -1), as one such box is in the single-box reward.
    """
    k = len(sets)
    n_pred, n_true = np.full(k, -1, dtype=np.int64), np.zeros(k, dtype=np.int64)
    matched: list[float] = []
    boxes: list[Box] = []
    m_off, b_off = [0], [0]
    mean_iou = np.zeros(k)
    for j, (raw, frame, truth) in enumerate(zip(sets, frames, truths, strict=True)):
        n_true[j] = len(truth)
        clipped = None if raw is None else [clip_answer_box(b, frame) for b in raw]
        if clipped is not None and all(b is not None for b in clipped):
            sx, sy = frame.to_original_scale
            orig = [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in clipped if b is not None]
            hits = match_boxes(orig, truth)
            n_pred[j] = len(orig)
            matched.extend(hits.tolist())
            boxes.extend(orig)
            mean_iou[j] = set_iou(hits, len(orig), len(truth))
        m_off.append(len(matched))
        b_off.append(len(boxes))
    out = BoxSets(n_pred, n_true, np.asarray(matched, dtype=np.float64), np.asarray(m_off, dtype=np.int64),
                  np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(b_off, dtype=np.int64))
    return out, mean_iou


def empty_rows(sets: BoxSets, rows: IntArray, n: int) -> BoxSets:
    """`sets` over K grounding completions spread to all N completions of a batch: row rows[i] holds
    completion i's set; the others (classification, grading) are empty with n_pred -1."""
    n_pred, n_true = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
    n_pred[rows], n_true[rows] = sets.n_pred, sets.n_true
    m_len, b_len = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    m_len[rows], b_len[rows] = np.diff(sets.matched_offsets), np.diff(sets.box_offsets)
    # rows are increasing (batch order), so the K completions' data stay contiguous and in order
    return BoxSets(n_pred, n_true, sets.matched, np.concatenate([[0], np.cumsum(m_len)]).astype(np.int64),
                   sets.boxes, np.concatenate([[0], np.cumsum(b_len)]).astype(np.int64))
