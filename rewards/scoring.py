"""Scoring: the target contract, the per-completion breakdown, and the batch scorer (pure, vectorised).

`score_groups` scores a whole batch in one pass: a regex parse per completion, then one numpy pass for
clipping, the frame conversion and max-IoU over every completion at once. `score_group` is the same code
for one group. Neither touches the schedule: the caller passes the tau snapshot to score under.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rewards.boxes import max_iou
from rewards.config import RewardConfig
from rewards.frames import Box, ImageFrame
from rewards.parse import Task, box_numbers, parse_grade, parse_label, split_completion
from rewards.schedule import ScheduleStats
from rewards.terms import grade_reward, label_match, recitation


@dataclass(frozen=True, slots=True)
class RewardTarget:
    """What one prompt is scored against (owned by rewards; services builds it from a dataset record).

    boxes: ground-truth (x1, y1, x2, y2) in original-image pixels; a prediction's IoU is its best over
    them, since one phrase can name several regions (MS-CXR "bilateral effusions" has two boxes).
    label (classification), grade (grading, integer >= 0), knowledge: the injected prior-knowledge text
    ("" when none; what the recitation reward compares against). frame: required for grounding.
    """

    task: Task
    boxes: tuple[Box, ...] = ()
    label: str | None = None
    grade: int | None = None
    knowledge: str = ""
    frame: ImageFrame | None = None

    def __post_init__(self) -> None:
        if self.task == "grounding":
            if self.frame is None or not self.boxes:
                raise ValueError("a grounding RewardTarget needs a frame and at least one ground-truth box")
            for b in self.boxes:
                if len(b) != 4 or not all(math.isfinite(v) for v in b) or not (b[0] < b[2] and b[1] < b[3]):
                    raise ValueError(f"ground-truth box {b} is not finite (x1, y1, x2, y2) with x1 < x2, y1 < y2")
        elif self.task == "classification":
            if not self.label:
                raise ValueError("a classification RewardTarget needs a non-empty label")
        elif self.task == "grading":
            if self.grade is None or isinstance(self.grade, bool) or not 0 <= self.grade <= 1000:
                raise ValueError(f"a grading RewardTarget needs an integer grade in [0, 1000], got {self.grade!r}")
        else:
            raise ValueError(f"unknown task {self.task!r}; use 'grounding', 'classification' or 'grading'")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (a dataset column for the TRL adapter, a record in a manifest)."""
        frame = None if self.frame is None else {
            "original_width": self.frame.original_width, "original_height": self.frame.original_height,
            "input_width": self.frame.input_width, "input_height": self.frame.input_height,
            "convention": self.frame.convention,
        }
        return {"task": self.task, "boxes": [list(b) for b in self.boxes], "label": self.label,
                "grade": self.grade, "knowledge": self.knowledge, "frame": frame}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RewardTarget:
        frame = d.get("frame")
        return cls(
            task=d["task"],
            boxes=tuple((float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in d.get("boxes") or ()),
            label=d.get("label"),
            grade=None if d.get("grade") is None else int(d["grade"]),
            knowledge=d.get("knowledge") or "",
            frame=None if frame is None else ImageFrame(**frame),
        )


@dataclass(frozen=True, slots=True)
class RewardBreakdown:
    """One completion's reward: total = w_acc*r_acc + w_format*r_format + w_recite*r_recite + w_grade*r_grade.

    iou: best IoU over the target's boxes in original pixels (0 when unparsable or not grounding);
    pred_box: the parsed box in original pixels, or None; tau / tau_version: the threshold it was scored
    under (tau None in raw_iou mode).
    """

    total: float
    r_acc: float
    r_format: float
    r_recite: float
    r_grade: float
    iou: float
    pred_box: Box | None
    format_ok: bool
    tau: float | None
    tau_version: int


@dataclass(frozen=True, slots=True)
class ScheduleSnapshot:
    """The threshold a batch is scored under: tau (None for raw_iou), its version, and window stats."""

    tau: float | None
    version: int
    stats: ScheduleStats | None = field(default=None)


def score_groups(
    groups: Sequence[tuple[Sequence[str], RewardTarget]],
    snapshot: ScheduleSnapshot,
    config: RewardConfig,
) -> list[list[RewardBreakdown]]:
    """Score every completion of every group under one tau snapshot; returns breakdowns per group."""
    if config.accuracy != "raw_iou" and snapshot.tau is None:
        raise ValueError(f"accuracy mode {config.accuracy!r} needs a snapshot with a tau; only raw_iou has none")
    # 1. Parse (Python, one regex pass per completion).
    thinks: list[str] = []
    fmt: list[bool] = []
    r_grade: list[float] = []
    raw: list[Box] = []  # [K] raw boxes of grounding completions, NaN when unparsable
    grounding_rows: list[int] = []  # completion index of each raw box
    group_of_row: list[int] = []  # group index of each raw box
    nan_box = (math.nan, math.nan, math.nan, math.nan)
    for g, (completions, target) in enumerate(groups):
        for text in completions:
            think, answer, tags_ok = split_completion(text) if isinstance(text, str) else ("", None, False)
            thinks.append(think)
            if target.task == "grounding":
                box = None if answer is None else box_numbers(answer)
                grounding_rows.append(len(fmt))
                group_of_row.append(g)
                raw.append(nan_box if box is None else box)
                fmt.append(tags_ok)  # and-ed with box validity below
                r_grade.append(0.0)
            elif target.task == "classification":
                label = None if answer is None else parse_label(answer)
                fmt.append(tags_ok and label is not None)
                r_grade.append(label_match(label, target.label or "", config.label_match))
            else:
                grade = None if answer is None else parse_grade(answer)
                fmt.append(tags_ok and grade is not None)
                r_grade.append(grade_reward(grade, target.grade or 0, config.grade_formula))
    n = len(fmt)
    iou = np.zeros(n)
    pred_boxes: list[Box | None] = [None] * n
    # 2. Clip, convert and IoU for all grounding completions at once (numpy).
    if raw:
        rows = np.asarray(grounding_rows)
        gid = np.asarray(group_of_row)
        frames = [t.frame for _, t in groups]
        ext = np.array([f.model_extent if f is not None else (1.0, 1.0) for f in frames])[gid]  # [K, 2]
        scale = np.array([f.to_original_scale if f is not None else (1.0, 1.0) for f in frames])[gid]  # [K, 2]
        m = max(len(t.boxes) for _, t in groups)
        gt = np.full((len(groups), max(m, 1), 4), np.nan)
        for g, (_, t) in enumerate(groups):
            if t.boxes:
                gt[g, : len(t.boxes)] = t.boxes
        arr = np.asarray(raw, dtype=np.float64)  # [K, 4]
        arr = np.minimum(np.maximum(arr, 0.0), np.concatenate([ext, ext], axis=1))  # NaN stays NaN
        valid = (arr[:, 0] < arr[:, 2]) & (arr[:, 1] < arr[:, 3])  # [K]; False for NaN rows
        orig = arr * np.concatenate([scale, scale], axis=1)  # [K, 4] original pixels
        orig[~valid] = np.nan
        row_iou = np.where(valid, max_iou(orig, gt[gid]), 0.0)  # [K]
        iou[rows] = row_iou
        for r, ok, b in zip(grounding_rows, valid.tolist(), orig.tolist(), strict=True):
            if ok:
                pred_boxes[r] = (b[0], b[1], b[2], b[3])
            else:
                fmt[r] = False
    # 3. Combine the terms (numpy), then build the breakdowns.
    is_grounding = np.zeros(n, dtype=bool)
    if raw:
        is_grounding[np.asarray(grounding_rows)] = True
    tau = snapshot.tau
    if config.accuracy == "raw_iou":
        r_acc = np.where(is_grounding, iou, 0.0)
    else:
        r_acc = (is_grounding & (iou >= (tau if tau is not None else math.inf))).astype(np.float64)
    r_format = np.asarray(fmt, dtype=np.float64)
    r_rec = np.zeros(n)
    if config.w_recite != 0.0:  # BLEU only when it can change the total: it dominates the cost
        i = 0
        for completions, target in groups:
            if target.knowledge:
                for j in range(i, i + len(completions)):
                    r_rec[j] = recitation(thinks[j], target.knowledge)
            i += len(completions)
    r_grd = np.asarray(r_grade, dtype=np.float64)
    total = config.w_acc * r_acc + config.w_format * r_format + config.w_recite * r_rec + config.w_grade * r_grd
    cols = zip(total.tolist(), r_acc.tolist(), r_format.tolist(), r_rec.tolist(), r_grd.tolist(), iou.tolist(),
               pred_boxes, fmt, strict=True)
    flat = [RewardBreakdown(t, a, f, rc, gr, io, pb, ok, tau, snapshot.version)
            for t, a, f, rc, gr, io, pb, ok in cols]
    out: list[list[RewardBreakdown]] = []
    i = 0
    for completions, _ in groups:
        out.append(flat[i : i + len(completions)])
        i += len(completions)
    return out


def score_group(
    completions: Sequence[str],
    target: RewardTarget,
    schedule_snapshot: ScheduleSnapshot,
    config: RewardConfig | None = None,
) -> list[RewardBreakdown]:
    """Score one group of completions under `schedule_snapshot` (weights and mode from `config`).

    >>> frame = ImageFrame(200.0, 100.0, 200.0, 100.0, "input_pixels")
    >>> target = RewardTarget("grounding", boxes=((10.0, 10.0, 50.0, 50.0),), frame=frame)
    >>> [b] = score_group(['<think>x</think><answer>{"bbox_2d": [10, 10, 50, 50]}</answer>'], target,
    ...                   ScheduleSnapshot(tau=0.5, version=0), RewardConfig(w_recite=0.0))
    >>> (b.total, b.iou, b.format_ok)
    (1.5, 1.0, True)
    """
    return score_groups([(completions, target)], schedule_snapshot, config or RewardConfig())[0]
