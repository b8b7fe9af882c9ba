"""Evaluation of set answers (issue 31): per-image AP@0.5 with matching, P/R/F1 at 0.3/0.5/0.8, the
false-positive rate on negatives and the miss rate on positives, against an independent computation
(brute-force matching, a plain AP loop); answers read from model text (boxes outside the image) and
overlays with every box numbered."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rollout.images import ImageFrame
from services.data.manifest import Manifest
from services.data.records import Record
from services.evaluation import Prediction, report, write_overlays
from services.evaluation.heldout import grounding_boxes
from services.evaluation.set_metrics import SetAnswer, image_ap, set_metrics, set_report

Box = tuple[float, float, float, float]


def _iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _brute_hits(pred: list[Box], truth: list[Box], t: float) -> list[bool]:
    """Hits per prediction under the injection of predictions into truths (or back) of largest total IoU."""
    best, best_pairs = -1.0, []
    if len(pred) <= len(truth):
        for perm in itertools.permutations(range(len(truth)), len(pred)):
            s = sum(_iou(pred[i], truth[j]) for i, j in enumerate(perm))
            if s > best + 1e-12:
                best, best_pairs = s, list(enumerate(perm))
    else:
        for perm in itertools.permutations(range(len(pred)), len(truth)):
            s = sum(_iou(pred[i], truth[j]) for j, i in enumerate(perm))
            if s > best + 1e-12:
                best, best_pairs = s, [(i, j) for j, i in enumerate(perm)]
    hit = [False] * len(pred)
    for i, j in best_pairs:
        hit[i] = _iou(pred[i], truth[j]) >= t
    return hit


def _plain_ap(hit: list[bool], n_true: int) -> float:
    ap, tp = 0.0, 0
    precisions = []
    for k, h in enumerate(hit, start=1):
        tp += h
        precisions.append(tp / k)
    tp = 0
    for k, h in enumerate(hit):
        if h:
            tp += 1
            ap += (1 / n_true) * max(precisions[k:])  # recall grows by 1/n_true at a hit
    return ap


T = [(10.0, 10.0, 40.0, 40.0), (60.0, 10.0, 90.0, 40.0), (30.0, 60.0, 70.0, 95.0)]
ANSWERS = [
    # several truths, several predictions with a duplicate and a far false positive, a near one (IoU 0.6)
    SetAnswer(((60.0, 10.0, 90.0, 40.0), (60.0, 10.0, 90.0, 40.0), (10.0, 10.0, 40.0, 35.0),
               (0.0, 90.0, 5.0, 99.0)), tuple(T), 0.14),
    SetAnswer(((12.0, 12.0, 42.0, 42.0),), (T[0],), 0.09),  # one box, IoU 784/1016 = 0.77
    SetAnswer((), (T[1],), 0.09),  # empty on a positive: a miss
    SetAnswer(None, (T[2],), 0.14),  # unparsable on a positive: a miss
    SetAnswer((), ()),  # empty on a negative: right
    SetAnswer(((5.0, 5.0, 20.0, 20.0),), ()),  # a box on a negative: a false positive
    SetAnswer(None, ()),  # unparsable on a negative
]


def test_set_metrics_equal_an_independent_computation() -> None:
    got = set_metrics(ANSWERS)
    pos = [a for a in ANSWERS if a.truth]
    aps = [_plain_ap(_brute_hits(list(a.pred or ()), list(a.truth), 0.5), len(a.truth)) for a in pos]
    # Image 1 by hand: ranks 1-4 hit, miss (duplicate), hit (IoU 0.833), miss: precision 1, 1/2, 2/3, 1/2;
    # AP = 1/3 * 1 + 1/3 * 2/3 = 0.5556. Image 2: 1. Images 3, 4: 0.
    assert aps[0] == pytest.approx(1 / 3 + 2 / 9)
    assert got["AP@0.5"] == pytest.approx(100 * np.mean(aps))
    for t in (0.3, 0.5, 0.8):
        tp = sum(sum(_brute_hits(list(a.pred or ()), list(a.truth), t)) for a in pos)
        p, r = tp / 5, tp / 6  # 5 predicted and 6 true boxes on positives
        assert got[f"P@{t}"] == pytest.approx(100 * p) and got[f"R@{t}"] == pytest.approx(100 * r)
        assert got[f"F1@{t}"] == pytest.approx(100 * (2 * p * r / (p + r) if p + r else 0.0))
    assert (got["n_pos"], got["n_neg"]) == (4, 3)
    assert got["miss_rate"] == 50.0  # images 3 and 4
    assert got["fp_rate"] == pytest.approx(100 / 3) and got["neg_parse_fail_pct"] == pytest.approx(100 / 3)
    rep = set_report(ANSWERS)
    assert set(rep) == {"all", "2-10%", ">10%", "multi", "negatives"}
    assert rep["multi"]["n"] == 1 and rep["multi"]["R@0.5"] == pytest.approx(200 / 3)
    assert rep["negatives"]["fp_rate"] == pytest.approx(100 / 3) and "AP@0.5" not in rep["negatives"]
    with pytest.raises(ValueError, match="false-positive rate"):
        image_ap([], [])


def test_answers_are_read_from_text_with_boxes_outside_the_image_clipped_or_refused() -> None:
    frame = ImageFrame(200, 100, 112, 56, "input_pixels")  # x 200/112, y 100/56
    two = grounding_boxes('<think>t</think><answer>[{"bbox_2d": [-10, 0, 56, 28]}, '
                          '{"bbox_2d": [56, 28, 200, 90]}]</answer>', frame)
    assert two == ((0.0, 0.0, 100.0, 50.0), (100.0, 50.0, 200.0, 100.0))  # clipped to 112 x 56, then scaled
    outside = '<answer>[{"bbox_2d": [120, 60, 130, 70]}]</answer>'
    assert grounding_boxes(outside, frame) is None  # wholly outside the 112 x 56 input
    assert grounding_boxes("<answer>[]</answer>", frame) == ()


def test_report_adds_set_metrics_and_overlays_number_every_box(tmp_path: Path) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "img.png")
    two = Record(id="two", image="img.png", width=100, height=100, phrase="every mass", boxes=tuple(T[:2]))
    neg = Record(id="neg", image="img.png", width=100, height=100, phrase="every mass")
    preds = [Prediction(two, "", T[1], 1.0, boxes=(T[1], (10.0, 10.0, 40.0, 35.0))),
             Prediction(neg, "", None, 0.0, boxes=())]
    row = report(preds, multi_box=True)
    assert row["eval/sets/AP@0.5"] == 100.0 and row["eval/sets/negatives/fp_rate"] == 0.0
    assert row["eval/sets/multi/R@0.5"] == 100.0 and row["eval/n"] == 1  # A@t only over positives
    assert "eval/sets/AP@0.5" not in report(preds)
    paths = write_overlays(preds, Manifest(tmp_path / "m.jsonl", (two, neg)), tmp_path / "o", 2)
    pixels = np.asarray(Image.open(paths[0]).convert("RGB"))  # 100 px enlarged x2
    red, green = np.all(pixels == (230, 30, 30), axis=-1), np.all(pixels == (0, 220, 0), axis=-1)
    assert red[20:70, 20].any() and red[20:80, 120].any()  # both predicted boxes drawn (x = 10 and 60, x2)
    assert green[78:82, 20:80].any()  # the first truth's bottom edge (y = 40 x 2), below its prediction's
    assert pixels[23:33, 23:30].any()  # its number "1" inside its top-left corner (the image is black)
    assert pixels[23:33, 123:130].any()  # the second truth's "2"
