"""The set reward (issue 31): Hungarian matching, F1 at tau and mean matched IoU against an independent
brute-force computation; a single-box record scores exactly as the single-box reward; negatives and the
MedLoc-R1 window."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

from rewards import ImageFrame, RewardConfig, RewardScorer, RewardTarget, ScheduleSnapshot, score_group
from rewards.matching import match_boxes, set_accuracy, set_iou

FRAME = ImageFrame(200.0, 100.0, 200.0, 100.0, "input_pixels")  # model frame = original pixels
SET = RewardConfig(w_recite=0.0, boxes="set", accuracy="fixed", fixed_tau=0.5)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    # Independent of rewards.boxes: area arithmetic on clipped intersections.
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _brute(pred: list[tuple[float, ...]], truth: list[tuple[float, ...]]) -> list[float]:
    """The matched IoUs of the assignment with the largest total, by trying every injection."""
    if not pred or not truth:
        return []
    small, large = (pred, truth) if len(pred) <= len(truth) else (truth, pred)
    best: tuple[float, list[float]] = (-1.0, [])
    for perm in itertools.permutations(range(len(large)), len(small)):
        ious = [_iou(small[i], large[j]) for i, j in enumerate(perm)]
        if sum(ious) > best[0] + 1e-12:
            best = (sum(ious), ious)
    return best[1]


def _answer(boxes: list[tuple[float, ...]]) -> str:
    return "<think>t</think><answer>" + json.dumps([{"bbox_2d": list(b)} for b in boxes]) + "</answer>"


TRUTHS = [(10.0, 10.0, 50.0, 50.0), (120.0, 20.0, 180.0, 80.0), (60.0, 60.0, 90.0, 95.0)]
CASES = {
    "exact two of three": [(10.0, 10.0, 50.0, 50.0), (120.0, 20.0, 180.0, 80.0)],
    "all three, loose": [(12.0, 8.0, 52.0, 46.0), (110.0, 25.0, 170.0, 85.0), (65.0, 55.0, 95.0, 90.0)],
    "duplicates": [(10.0, 10.0, 50.0, 50.0), (10.0, 10.0, 50.0, 50.0), (11.0, 10.0, 50.0, 50.0)],
    "extra false positive": [(10.0, 10.0, 50.0, 50.0), (120.0, 20.0, 180.0, 80.0), (60.0, 60.0, 90.0, 95.0),
                             (150.0, 0.0, 160.0, 10.0)],
    "partly outside the image": [(-20.0, 5.0, 48.0, 52.0), (115.0, 15.0, 260.0, 130.0)],
    "crossed pairing": [(100.0, 10.0, 170.0, 70.0), (30.0, 10.0, 130.0, 60.0)],
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("tau", [0.3, 0.5, 0.8])
def test_set_reward_equals_a_brute_force_computation(name: str, tau: float) -> None:
    pred = CASES[name]
    clipped = [(max(b[0], 0.0), max(b[1], 0.0), min(b[2], 200.0), min(b[3], 100.0)) for b in pred]
    matched = _brute(clipped, TRUTHS)
    f1 = 2 * sum(v >= tau for v in matched) / (len(pred) + len(TRUTHS))
    mean = sum(matched) / max(len(pred), len(TRUTHS))
    target = RewardTarget("grounding", boxes=tuple(TRUTHS), frame=FRAME)
    cfg = SET.model_copy(update={"fixed_tau": tau})
    [b] = score_group([_answer(pred)], target, ScheduleSnapshot(tau, 0), cfg)
    assert b.r_acc == pytest.approx(f1, abs=1e-12) and b.iou == pytest.approx(mean, abs=1e-12)
    assert b.format_ok and b.total == pytest.approx(f1 + 0.5)
    assert b.pred_boxes is not None and len(b.pred_boxes) == len(pred)
    raw_cfg = SET.model_copy(update={"accuracy": "raw_iou"})
    [raw] = score_group([_answer(pred)], target, ScheduleSnapshot(None, 0), raw_cfg)
    assert raw.r_acc == pytest.approx(mean, abs=1e-12)
    assert sorted(match_boxes(clipped, TRUTHS).tolist()) == pytest.approx(sorted(matched), abs=1e-12)


def test_negatives_and_empty_answers() -> None:
    negative = RewardTarget("grounding", boxes=(), frame=FRAME)
    positive = RewardTarget("grounding", boxes=(TRUTHS[0],), frame=FRAME)
    texts = [_answer([]), _answer([TRUTHS[0]]), '<think>t</think><answer>[{"bbox_2d": [1, 2]}]</answer>',
             _answer([(300.0, 10.0, 350.0, 20.0)])]  # empty, one box, a broken member, a box outside
    neg = score_group(texts, negative, ScheduleSnapshot(0.5, 0), SET)
    assert [(b.r_acc, b.iou, b.format_ok) for b in neg] == [(1.0, 1.0, True), (0.0, 0.0, True),
                                                            (0.0, 0.0, False), (0.0, 0.0, False)]
    assert neg[0].pred_boxes == () and neg[2].pred_boxes is None
    pos = score_group(texts, positive, ScheduleSnapshot(0.5, 0), SET)
    assert [(b.r_acc, b.iou, b.format_ok) for b in pos] == [(0.0, 0.0, True), (1.0, 1.0, True),
                                                            (0.0, 0.0, False), (0.0, 0.0, False)]
    # The single-box reward cannot say "not present": nothing is right on a negative, [] does not parse.
    single_cfg = SET.model_copy(update={"boxes": "single"})
    single = score_group(texts, negative, ScheduleSnapshot(0.5, 0), single_cfg)
    assert [(b.r_acc, b.format_ok) for b in single] == [(0.0, False), (0.0, True), (0.0, False), (0.0, False)]
    assert set_accuracy([], 0, 0, 0.5) == 1.0 and set_iou([], 2, 0) == 0.0 and set_iou([], 0, 3) == 0.0


def _random_box(rng: random.Random) -> tuple[float, float, float, float]:
    x, y = rng.uniform(-30, 190), rng.uniform(-30, 90)
    return (round(x, 1), round(y, 1), round(x + rng.uniform(-5, 80), 1), round(y + rng.uniform(-5, 60), 1))


@pytest.mark.parametrize("mode", ["fixed", "medloc", "raw_iou", "stepped"])
def test_a_single_box_record_scores_exactly_as_the_single_box_reward(mode: str) -> None:
    rng = random.Random(7)
    groups = []
    while len(groups) < 40:
        x, y = rng.uniform(0, 150), rng.uniform(0, 60)
        truth = (x, y, x + rng.uniform(1, 50), y + rng.uniform(1, 40))
        # random answers: some outside the image, some with swapped corners, a bare list, Qwen's corners
        texts = [f'<think>x</think><answer>{{"bbox_2d": {list(_random_box(rng))}}}</answer>'
                 for _ in range(4)]
        texts += ["<answer>[1, 2, 3, 4]</answer>", "no answer",
                  "<think>x</think><answer>(5,5),(60,40)</answer>"]
        groups.append((texts, RewardTarget("grounding", boxes=(truth,), frame=FRAME)))
    base = RewardConfig(accuracy=mode, schedule={"window": 4})  # type: ignore[arg-type]
    one, other = RewardScorer(base), RewardScorer(base.model_copy(update={"boxes": "set"}))
    for step in range(3):
        a, b = one.score_batch(groups, step), other.score_batch(groups, step)
        for name in ("total", "r_acc", "iou", "r_format", "r_recite", "task"):
            assert np.array_equal(getattr(a.columns, name), getattr(b.columns, name)), name
        assert np.array_equal(a.columns.pred_box, b.columns.pred_box, equal_nan=True)
    assert one.state_dict() == other.state_dict()  # the MedLoc-R1 window saw the same entries


def test_the_window_sees_f1_and_mean_matched_iou_and_skips_negatives() -> None:
    cfg = RewardConfig(w_recite=0.0, boxes="set", schedule={"window": 2, "require_full_window": False})
    scorer = RewardScorer(cfg)
    two = RewardTarget("grounding", boxes=(TRUTHS[0], TRUTHS[1]), frame=FRAME)
    negative = RewardTarget("grounding", boxes=(), frame=FRAME)
    # One exact box of two: F1 2/3 at any tau, mean matched IoU 1/2; the negative group is not observed.
    scorer.score_batch([([_answer([TRUTHS[0]])], two), ([_answer([])], negative)])
    window = scorer.state_dict()["schedule"]["window"]
    assert window == [[pytest.approx(2 / 3), pytest.approx(0.5)]]
    assert math.isclose(scorer.snapshot().stats.r_bar or 0.0, 2 / 3)  # type: ignore[union-attr]
