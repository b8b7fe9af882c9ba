"""Held-out grounding and classification metrics (docs/algorithms.md, "Evaluation"), as pure functions.

Inputs are per-sample IoUs (0 for an unparsable answer), a parse flag and the ground-truth box's area
relative to the image, so train-time evaluation, `medground eval` and the benchmarks share one definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from rewards import label_match
from services.data.records import SIZE_BUCKETS, size_bucket

MAP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50, 0.55, ..., 0.95


def grounding_metrics(ious: Sequence[float], parsed: Sequence[bool]) -> dict[str, float]:
    """A@0.3, A@0.5, A@0.8 and pseudo-mAP in percent, mIoU in [0, 1], parse failures in percent, n =
    len(ious),
    and standard errors: `A@t_se` = 100 sqrt(p (1 - p) / n) (binomial), `mIoU_se` = std / sqrt(n)."""
    iou = np.asarray(ious, dtype=np.float64)
    if iou.size == 0:
        return {"n": 0}
    ok = np.asarray(parsed, dtype=bool)
    n = iou.size
    at = {t: float(np.mean(iou >= t)) for t in (0.3, 0.5, 0.8)}
    return {
        "n": int(n),
        "A@0.3": 100.0 * at[0.3],
        "A@0.3_se": 100.0 * math.sqrt(at[0.3] * (1.0 - at[0.3]) / n),
        "A@0.5": 100.0 * at[0.5],
        "A@0.5_se": 100.0 * math.sqrt(at[0.5] * (1.0 - at[0.5]) / n),
        "A@0.8": 100.0 * at[0.8],
        "A@0.8_se": 100.0 * math.sqrt(at[0.8] * (1.0 - at[0.8]) / n),
        "mIoU_se": float(iou.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        "pseudo_mAP": float(100.0 * np.mean([np.mean(iou >= t) for t in MAP_THRESHOLDS])),
        "mIoU": float(iou.mean()),
        "parse_fail_pct": float(100.0 * np.mean(~ok)),
    }


def sampled_metrics(ious: Sequence[Sequence[float]]) -> dict[str, float]:
    """Accuracy of k samples per image (docs/algorithms.md, "Sampled accuracy"): `ious [n][k]` (0 for an
    unparsable sample). `A@t` is pass@1, the mean over images of the fraction of its k samples with IoU >= t;
    `pass@k/A@t` the fraction of images with at least one such sample (exactly k drawn: the plain estimate);
    `mIoU` the mean IoU over every sample; all in percent but mIoU, each with its standard error over images
    (`_se`: the std of the per-image values / sqrt(n)), and `n`, `k`."""
    iou = np.asarray(ious, dtype=np.float64)
    if iou.size == 0:
        return {"n": 0}
    if iou.ndim != 2:
        raise ValueError(f"sampled IoUs must be [images, samples], got shape {iou.shape}")
    n, k = iou.shape
    out: dict[str, float] = {"n": int(n), "k": int(k)}

    def mean_se(per_image: np.ndarray, scale: float) -> tuple[float, float]:
        se = float(per_image.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        return scale * float(per_image.mean()), scale * se

    for t in (0.3, 0.5, 0.8):
        out[f"A@{t}"], out[f"A@{t}_se"] = mean_se((iou >= t).mean(axis=1), 100.0)
        out[f"pass@k/A@{t}"], out[f"pass@k/A@{t}_se"] = mean_se((iou >= t).any(axis=1).astype(float), 100.0)
    out["mIoU"], out["mIoU_se"] = mean_se(iou.mean(axis=1), 1.0)
    return out


def paired_change(before: Sequence[float], after: Sequence[float],
                  threshold: float | None) -> tuple[float, float]:
    """The change of a held-out metric between two evaluations of the same images, and its standard error
    from the per-image differences (paired: tighter than the two unpaired errors). `before`/`after`: IoUs in
    the same image order; `threshold`: A@threshold in percent points, or None for mIoU. Raises ValueError
    when the two lists differ in length or hold fewer than two images."""
    b, a = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if b.shape != a.shape or b.size < 2:
        raise ValueError(f"paired change needs the same >= 2 images in both evaluations, got {b.size} and "
                         f"{a.size}")
    d = (100.0
         * ((a >= threshold).astype(float) - (b >= threshold).astype(float))) if threshold is not None else a - b  # noqa: E501
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


PAIRED_METRICS: tuple[tuple[str, float | None], ...] = (("A@0.3", 0.3), ("A@0.5", 0.5),
                                                        ("A@0.8", 0.8), ("mIoU", None))


def paired_changes(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """`paired_change` of A@0.3, A@0.5, A@0.8 and mIoU between two evaluations given as IoU by record id
    (`services.evaluation.read_ious`). Raises ValueError when they cover different images."""
    if before.keys() != after.keys():
        raise ValueError(f"the two evaluations cover different held-out images ({len(before)} and "
                         f"{len(after)}, {len(before.keys() & after.keys())} shared); compare evaluations "
                         "of the same split")
    ids = sorted(before)
    b, a = [before[i] for i in ids], [after[i] for i in ids]
    return {name: paired_change(b, a, threshold) for name, threshold in PAIRED_METRICS}


def paired_sampled_changes(before: Mapping[str, Sequence[float]],
                           after: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, float]]:
    """The change of sampled pass@1 at IoU 0.3/0.5/0.8 (percent points) and of sampled mIoU between two
    evaluations of the same images (k IoUs per image, by record id, `read_sampled_ious`), with the standard
    error of the per-image differences. Raises ValueError when they cover different images."""
    if before.keys() != after.keys() or len(before) < 2:
        raise ValueError(f"the two sampled evaluations cover different held-out images ({len(before)} and "
                         f"{len(after)}); compare evaluations of the same split with eval.samples > 0")
    ids = sorted(before)
    b = np.asarray([before[i] for i in ids], dtype=np.float64)  # [n, k]
    a = np.asarray([after[i] for i in ids], dtype=np.float64)  # [n, k']
    out = {}
    for name, t in PAIRED_METRICS:
        d = (100.0
             * ((a >= t).mean(axis=1) - (b >= t).mean(axis=1))) if t is not None else a.mean(1) - b.mean(1)
        out[name] = (float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)))
    return out


def grounding_report(ious: Sequence[float], parsed: Sequence[bool],
                     relative_areas: Sequence[float]) -> dict[str, dict[str, float]]:
    """Metrics over all samples (`all`) and per size bucket (only buckets with samples)."""
    report = {"all": grounding_metrics(ious, parsed)}
    buckets = [size_bucket(a) for a in relative_areas]
    for name, _, _ in SIZE_BUCKETS:
        idx = [i for i, b in enumerate(buckets) if b == name]
        if idx:
            report[name] = grounding_metrics([ious[i] for i in idx], [parsed[i] for i in idx])
    return report


def classification_metrics(pred: Sequence[str | None], truth: Sequence[str],
                           mode: Literal["normalised", "exact"] = "normalised") -> dict[str, float]:
    """Accuracy in percent; an unparsable answer (None) counts as wrong. Labels are compared by the
    classification reward's own rule (`rewards.label_match`, `mode` as reward.label_match), so what the
    reward pays for is what eval counts as right ("Pleural effusion." = "pleural effusion")."""
    if not truth:
        return {"n": 0}
    hits = [label_match(p, t, mode) == 1.0 for p, t in zip(pred, truth, strict=True)]
    return {"n": len(truth), "accuracy": 100.0 * float(np.mean(hits)),
            "parse_fail_pct": 100.0 * float(np.mean([p is None for p in pred]))}


def grading_metrics(pred: Sequence[int | None], truth: Sequence[int]) -> dict[str, float]:
    """Accuracy in percent and mean absolute grade error; an unparsable answer counts as the worst error
    seen in this label set (max - min grade), so failures are never rewarded."""
    if not truth:
        return {"n": 0}
    worst = max(truth) - min(truth) if len(set(truth)) > 1 else 1
    err = [abs(p - t) if p is not None else worst for p, t in zip(pred, truth, strict=True)]
    return {"n": len(truth), "accuracy": 100.0 * float(np.mean([e == 0 for e in err])),
            "mean_abs_grade_error": float(np.mean(err)),
            "parse_fail_pct": 100.0 * float(np.mean([p is None for p in pred]))}
