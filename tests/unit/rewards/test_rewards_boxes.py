"""Box primitives: IoU hand values and properties (symmetric, in [0, 1], 1 only for equal boxes), vectorised
vs
scalar, the best IoU over several truths, clipping, the tight box of a mask."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import best_iou, clip_box, iou, iou_pairs, mask_box, max_iou


def test_hand_values() -> None:
    # (0,0,2,2) vs (1,1,3,3): intersection 1x1 = 1, union 4 + 4 - 1 = 7.
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    # (0,0,4,2) vs (2,0,6,2): intersection 2x2 = 4, union 8 + 8 - 4 = 12.
    assert iou((0, 0, 4, 2), (2, 0, 6, 2)) == pytest.approx(1 / 3)
    assert iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0  # touching edges: no area in common
    assert iou((0, 0, 0, 1), (0, 0, 0, 1)) == 0.0  # no area, no union
    assert iou((0, 0, 1, 1), (float("nan"), 0, 1, 1)) == 0.0


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
boxes = st.tuples(finite, finite, finite, finite)
# On a grid of 1/64 px below 4096 px every area and sum is exact in float64, so IoU == 1 iff equal boxes.
grid = st.integers(min_value=0, max_value=4096 * 64).map(lambda v: v / 64)


def ordered(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


@settings(deadline=None)  # a shared 2-core box: timing is not what these test
@given(a=boxes, b=boxes)
def test_symmetric_and_bounded(a: tuple[float, ...], b: tuple[float, ...]) -> None:
    a4, b4 = ordered(*a), ordered(*b)
    v = iou(a4, b4)
    assert v == iou(b4, a4)
    assert 0.0 <= v <= 1.0


@settings(deadline=None)  # a shared 2-core box: timing is not what these test
@given(a=st.tuples(grid, grid, grid, grid), b=st.tuples(grid, grid, grid, grid))
def test_one_only_for_equal_boxes(a: tuple[float, ...], b: tuple[float, ...]) -> None:
    a4, b4 = ordered(*a), ordered(*b)
    has_area = a4[0] < a4[2] and a4[1] < a4[3]
    assert (iou(a4, b4) == 1.0) == (a4 == b4 and has_area)
    if has_area:
        assert iou(a4, a4) == 1.0


def test_vectorised_equals_loop() -> None:
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, size=(500, 2, 2))
    pred = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)  # [500, 4]
    gt_c = rng.uniform(0, 100, size=(500, 3, 2, 2))
    gt = np.concatenate([gt_c.min(axis=2), gt_c.max(axis=2)], axis=2)  # [500, 3, 4]
    gt[::5, 2] = np.nan  # padded rows: targets with fewer boxes
    pred[::7] = np.nan  # unparsable predictions
    got = max_iou(pred, gt)
    want = [best_iou(None if np.isnan(p).any() else tuple(p), [tuple(g) for g in gs if not np.isnan(g).any()])
            for p, gs in zip(pred, gt, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(iou_pairs(pred, gt[:, 0]), [iou(tuple(p), tuple(g)) for p,
                                                           g in zip(pred, gt[:, 0], strict=True)])


def test_best_iou_clip_and_mask_box_hand_values() -> None:
    # (0,0,2,2) vs (1,0,2,2): intersection 1x2 = 2, union 4 + 2 - 2 = 4 -> 0.5; the far box gives 0.
    assert best_iou((0, 0, 2, 2), [(10, 10, 12, 12), (1, 0, 2, 2)]) == 0.5
    assert best_iou(None, [(0, 0, 1, 1)]) == 0.0 and best_iou((0, 0, 1, 1), []) == 0.0
    assert clip_box((-5, 3, 120, 90), 100, 80) == (0, 3, 100, 80)
    assert clip_box((-5, -1, 120, 90), None, None) == (0, 0, 120, 90)  # unknown size: clipped at 0 only
    assert clip_box((50, 10, 40, 20), 100, 80) == (50, 10, 40, 20)  # never reordered
    mask = np.zeros((6, 8), dtype=bool)
    mask[2:4, 3:7] = True  # rows 2-3, columns 3-6: pixel i spans [i, i + 1)
    assert mask_box(mask) == (3.0, 2.0, 7.0, 4.0)
    assert mask_box(np.zeros((3, 3), dtype=bool)) is None
