"""Intersection over union: one scalar definition and its vectorised twin (tested against each other).

Boxes are `(x1, y1, x2, y2)` in one frame (the original image's pixels when scoring). A box with no area
(x2 <= x1 or y2 <= y1) overlaps nothing; two boxes with no union have IoU 0.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from rewards.frames import Box

FloatArray = npt.NDArray[np.float64]


def iou(a: Box, b: Box) -> float:
    """IoU of two boxes, in [0, 1]; symmetric; 1 only when the boxes are equal (and have area)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if not (iw > 0.0 and ih > 0.0):  # also catches NaN coordinates
        return 0.0
    inter = iw * ih
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    if not (0.0 < union < math.inf):
        return 0.0
    return min(1.0, inter / union)


def iou_pairs(pred: FloatArray, gt: FloatArray) -> FloatArray:
    """Elementwise IoU of broadcastable box arrays `pred` [..., 4] and `gt` [..., 4] -> [...].

    Rows with NaN coordinates (no prediction) give 0.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        iw = np.minimum(pred[..., 2], gt[..., 2]) - np.maximum(pred[..., 0], gt[..., 0])  # [...]
        ih = np.minimum(pred[..., 3], gt[..., 3]) - np.maximum(pred[..., 1], gt[..., 1])  # [...]
        inter = np.where((iw > 0.0) & (ih > 0.0), iw * ih, 0.0)
        area_p = np.maximum(pred[..., 2] - pred[..., 0], 0.0) * np.maximum(pred[..., 3] - pred[..., 1], 0.0)
        area_g = np.maximum(gt[..., 2] - gt[..., 0], 0.0) * np.maximum(gt[..., 3] - gt[..., 1], 0.0)
        union = area_p + area_g - inter
        out = np.where(union > 0.0, inter / np.where(union > 0.0, union, 1.0), 0.0)
    return np.asarray(np.minimum(np.nan_to_num(out, nan=0.0), 1.0), dtype=np.float64)


def max_iou(pred: FloatArray, gt: FloatArray) -> FloatArray:
    """Best IoU of each prediction over its ground-truth boxes.

    pred: [N, 4], NaN rows for unparsable answers; gt: [N, M, 4], padded with NaN rows where a target has
    fewer than M boxes. Returns [N]. A phrase can have several boxes (MS-CXR: "bilateral effusions"); a
    single predicted box is judged against the box it matches best, as VLM-R1 does for multi-box phrases.
    """
    return np.asarray(iou_pairs(pred[:, None, :], gt).max(axis=1), dtype=np.float64)  # [N, M] -> [N]
