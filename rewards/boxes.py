"""Box primitives, each defined once and used by train, eval, serve, data and bench: IoU (a scalar
definition and its vectorised twin, tested against each other), the best IoU over several ground-truth
boxes, clipping to an image, and the tight box of a mask.

Boxes are `(x1, y1, x2, y2)` in one frame (the original image's pixels when scoring). A box with no area
(x2 <= x1 or y2 <= y1) overlaps nothing; two boxes with no union have IoU 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

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
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0,
                                                                b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    if not (0.0 < union < math.inf):
        return 0.0
    return min(1.0, inter / union)


def best_iou(box: Box | None, truths: Iterable[Box]) -> float:
    """IoU of `box` with the ground-truth box it matches best, in [0, 1]; 0 for no box or no truths.

    A phrase can have several boxes (MS-CXR: "bilateral effusions"); one predicted box is judged against
    the one it matches best, as VLM-R1 does. The scalar twin of :func:`max_iou`.

    >>> best_iou((0.0, 0.0, 2.0, 2.0), [(10.0, 10.0, 12.0, 12.0), (1.0, 0.0, 2.0, 2.0)])
    0.5
    """
    if box is None:
        return 0.0
    return max((iou(box, t) for t in truths), default=0.0)


def clip_box(box: Box, width: float | None, height: float | None) -> Box:
    """Clip each corner to [0, width] x [0, height]; a side whose size is None is clipped at 0 only.

    Corners are clipped, never reordered: a box that ends up with no area stays so (callers decide).
    """
    x1, y1, x2, y2 = box
    w = math.inf if width is None else float(width)
    h = math.inf if height is None else float(height)
    return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


def mask_box(mask: npt.NDArray[np.bool_]) -> Box | None:
    """Tight box of a boolean mask ``[H, W]`` in its pixels (pixel i spans [i, i + 1), so x2 = last column
    + 1); None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


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
    """Best IoU of each prediction over its ground-truth boxes (the vectorised twin of :func:`best_iou`).

    pred: [N, 4], NaN rows for unparsable answers; gt: [N, M, 4], padded with NaN rows where a target has
    fewer than M boxes. Returns [N].
    """
    return np.asarray(iou_pairs(pred[:, None, :], gt).max(axis=1), dtype=np.float64)  # [N, M] -> [N]
