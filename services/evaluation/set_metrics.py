"""Held-out metrics of set answers (zero, one or many boxes; issue 31), as pure functions.

One image: its predicted boxes (None when the answer did not parse; `()` for "not present") and its true
boxes (none: a negative), in one frame. Predictions are matched to truths one-to-one by maximum total IoU,
the reward's matching (`rewards.matching.match_pairs`). docs/algorithms.md, "Evaluation of set answers".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rewards import Box
from rewards.matching import match_pairs
from services.data.records import SIZE_BUCKETS, size_bucket

THRESHOLDS = (0.3, 0.5, 0.8)
NEGATIVES = "negatives"
MULTI = "multi"  # images with two or more true boxes


@dataclass(frozen=True)
class SetAnswer:
    """One held-out image's answer: `pred` (None: unparsable), `truth` (() for a negative), and the largest
    true box's area over the image's (None for a negative), for the size buckets."""

    pred: tuple[Box, ...] | None
    truth: tuple[Box, ...]
    relative_area: float | None = None


def hits(pred: Sequence[Box], truth: Sequence[Box], threshold: float) -> list[bool]:
    """Per predicted box, in answer order: is its one-to-one match (max total IoU) at IoU >= `threshold`?"""
    rows, _, ious = match_pairs(pred, truth)
    out = [False] * len(pred)
    for r, v in zip(rows.tolist(), ious.tolist(), strict=True):
        out[r] = v >= threshold
    return out


def image_ap(pred: Sequence[Box] | None, truth: Sequence[Box], threshold: float = 0.5) -> float:
    """Per-image average precision at IoU `threshold` of a positive image (RadVLM's per-sample AP with
    matching): the answer's boxes ranked in the order given (a generated answer has no scores), each a true
    positive when its one-to-one match reaches `threshold`; AP = sum over ranks k of
    (recall_k - recall_{k-1}) * max precision at ranks >= k (all-point interpolation). 0 for no box.
    Raises ValueError for a negative image (no truth: no recall), which the false-positive rate measures.

    >>> image_ap([(0, 0, 10, 10), (50, 50, 60, 60)], [(50, 50, 60, 60)])  # the hit ranks 2nd: precision 1/2
    0.5
    """
    if not truth:
        raise ValueError("image_ap needs a positive image (true boxes); a negative is measured by the "
                         "false-positive rate")
    if not pred:
        return 0.0
    tp = np.cumsum(hits(pred, truth, threshold))  # [P]
    precision = tp / np.arange(1, len(pred) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at ranks >= k
    gains = np.diff(np.concatenate([[0.0], tp / len(truth)]))
    return float(np.sum(gains * envelope))


def set_metrics(answers: Sequence[SetAnswer]) -> dict[str, float]:
    """Over a group of images: `n`, `n_pos`, `n_neg`; on positives `AP@0.5` (mean per-image AP, percent),
    `P@t`, `R@t`, `F1@t` for t in 0.3/0.5/0.8 (micro: hits at IoU >= t over all predicted, resp. true,
    boxes; percent), `miss_rate` (percent of positives answered with no box, unparsable included); on
    negatives `fp_rate` (percent answered with at least one box) and `neg_parse_fail_pct`."""
    pos = [a for a in answers if a.truth]
    neg = [a for a in answers if not a.truth]
    out: dict[str, float] = {"n": len(answers), "n_pos": len(pos), "n_neg": len(neg)}
    if pos:
        out["AP@0.5"] = 100.0 * float(np.mean([image_ap(a.pred, a.truth) for a in pos]))
        n_pred = sum(len(a.pred or ()) for a in pos)
        n_true = sum(len(a.truth) for a in pos)
        for t in THRESHOLDS:
            tp = sum(sum(hits(a.pred, a.truth, t)) for a in pos if a.pred)
            p, r = tp / n_pred if n_pred else 0.0, tp / n_true
            out[f"P@{t}"], out[f"R@{t}"] = 100.0 * p, 100.0 * r
            out[f"F1@{t}"] = 100.0 * (2 * p * r / (p + r) if p + r > 0 else 0.0)
        out["miss_rate"] = 100.0 * float(np.mean([not a.pred for a in pos]))
    if neg:
        out["fp_rate"] = 100.0 * float(np.mean([bool(a.pred) for a in neg]))
        out["neg_parse_fail_pct"] = 100.0 * float(np.mean([a.pred is None for a in neg]))
    return out


def set_report(answers: Sequence[SetAnswer]) -> dict[str, dict[str, float]]:
    """`set_metrics` over all images (`all`), per size bucket of the positives (only buckets with images),
    over positives with two or more true boxes (`multi`) and over negatives (`negatives`)."""
    report = {"all": set_metrics(answers)}
    for name, _, _ in SIZE_BUCKETS:
        group = [a for a in answers if a.truth and size_bucket(a.relative_area or 0.0) == name]
        if group:
            report[name] = set_metrics(group)
    multi = [a for a in answers if len(a.truth) >= 2]
    if multi:
        report[MULTI] = set_metrics(multi)
    negatives = [a for a in answers if not a.truth]
    if negatives:
        report[NEGATIVES] = set_metrics(negatives)
    return report
