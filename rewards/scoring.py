"""Scoring: the target contract, the per-completion breakdown, and the batch scorer (pure, vectorised).

`score_groups` scores a whole batch in one pass: a regex parse per completion, then one numpy pass for
clipping, the frame conversion and max-IoU over every completion at once; the user's terms
(`reward.extra_terms`) then see the parsed columns, and the terms combine as `reward.aggregation` says.
`score_group` is the same code for one group. Neither touches the schedule: the caller passes the tau
snapshot to score under.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from rewards.aggregate import normalize_then_sum
from rewards.boxes import FloatArray, max_iou
from rewards.config import RewardConfig
from rewards.extra_terms import ScoredCompletion, load_term, term_values
from rewards.frames import Box, ImageFrame
from rewards.parse import (
    FAST_GROUNDING,
    Task,
    box_numbers,
    finite_box,
    parse_box_list,
    parse_grade,
    parse_label,
    split_completion,
)
from rewards.schedule import ScheduleStats
from rewards.set_scoring import BoxSets, box_set_columns, empty_rows
from rewards.terms import grade_reward, label_match, recitation


@dataclass(frozen=True)  # no slots: slotted frozen dataclasses pickle ~2x slower (Ray calls)
class RewardTarget:
    """What one prompt is scored against (owned by rewards; services builds it from a dataset record).

    boxes: ground-truth (x1, y1, x2, y2) in original-image pixels; under `reward.boxes: single` a
    prediction's IoU is its best over them, under `set` the answer's boxes are matched to them one-to-one
    (one phrase can name several regions: MS-CXR "bilateral effusions" has two boxes). No box: a negative
    (the finding is absent; only the set reward can pay for saying so).
    label (classification), grade (grading, integer >= 0), max_grade (grading: the top of the question's
    scale; a parsed grade above it is no answer, `parse_grade`; None: 1000), knowledge: the injected
    prior-knowledge text
    ("" when none; what the recitation reward compares against). frame: required for grounding.
    """

    task: Task
    boxes: tuple[Box, ...] = ()
    label: str | None = None
    grade: int | None = None
    knowledge: str = ""
    frame: ImageFrame | None = None
    max_grade: int | None = None

    def __post_init__(self) -> None:
        if self.task == "grounding":
            if self.frame is None:
                raise ValueError("a grounding RewardTarget needs a frame (the prompt's image frame)")
            for b in self.boxes:
                if len(b) != 4 or not all(math.isfinite(v) for v in b) or not (b[0] < b[2] and b[1] < b[3]):
                    raise ValueError(f"ground-truth box {b} is not finite (x1, y1, x2, y2) with x1 < x2, y1 "
                                     "< y2")
        elif self.task == "classification":
            if not self.label:
                raise ValueError("a classification RewardTarget needs a non-empty label")
        elif self.task == "grading":
            if self.grade is None or isinstance(self.grade, bool) or not 0 <= self.grade <= 1000:
                raise ValueError("a grading RewardTarget needs an integer grade in [0, 1000], got "
                                 f"{self.grade!r}")
            if self.max_grade is not None and not self.grade <= self.max_grade <= 1000:
                raise ValueError(f"max_grade {self.max_grade!r} must be an integer in [grade, 1000] "
                                 f"(grade {self.grade}); it is the top of the question's grade scale")
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
                "grade": self.grade, "max_grade": self.max_grade, "knowledge": self.knowledge, "frame": frame}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RewardTarget:
        frame = d.get("frame")
        return cls(
            task=d["task"],
            boxes=tuple((float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in d.get("boxes") or ()),
            label=d.get("label"),
            grade=None if d.get("grade") is None else int(d["grade"]),
            knowledge=d.get("knowledge") or "",
            max_grade=None if d.get("max_grade") is None else int(d["max_grade"]),
            frame=None if frame is None else ImageFrame(**frame),
        )


@dataclass(frozen=True)
class RewardBreakdown:
    """One completion's reward: total = w_acc*r_acc + w_format*r_format + w_recite*r_recite + w_grade*r_grade
    (plus the user's terms; under `normalize_then_sum` the sum of the group-standardised terms instead).

    task: the part of the weighted sum that carries the task, without w_recite*r_recite and the user's
    shaping terms (recitation is shaping: a group whose task part is all equal holds no task signal, however
    its BLEU differs). iou: best IoU over the target's boxes in original pixels (0 when unparsable or not
    grounding; under `reward.boxes: set` the mean matched IoU, rewards/matching.py);
    pred_box: the parsed box in original pixels (the first, under `set`), or None; tau / tau_version: the
    threshold it was scored under (tau None in raw_iou mode); pred_boxes: under `set`, every box of the
    answer in original pixels (() for "not present", None when it did not parse).
    """

    total: float
    task: float
    r_acc: float
    r_format: float
    r_recite: float
    r_grade: float
    iou: float
    pred_box: Box | None
    format_ok: bool
    tau: float | None
    tau_version: int
    pred_boxes: tuple[Box, ...] | None = None


@dataclass(frozen=True, slots=True)
class ScheduleSnapshot:
    """The threshold a batch is scored under: tau (None for raw_iou), its version, and window stats."""

    tau: float | None
    version: int
    stats: ScheduleStats | None = field(default=None)


@dataclass(frozen=True, eq=False)
class RewardColumns:
    """A scored batch as columns (cheap to ship between processes; the driver's advantages want arrays).

    N completions, groups laid out contiguously: group g is rows offsets[g]:offsets[g+1].
    total, weighted, task, r_acc, r_format, r_recite, r_grade, iou: float64 [N]. weighted: sum_k w_k r_k
    over every term (the user's included); total: what the advantage is computed from, equal to weighted
    under `reward.aggregation: sum`, the sum of the group-standardised weighted terms under
    `normalize_then_sum`; task: see RewardBreakdown. pred_box: float64 [N, 4] in original pixels, NaN rows
    where no box; format_ok: bool [N]; offsets: int64 [n_groups + 1]; extra: each user term's unweighted
    values [N] by name (`reward.extra_terms`); sets: under `reward.boxes: set`, every completion's boxes and
    matches (rewards/set_scoring.py BoxSets), else None.
    """

    total: FloatArray
    weighted: FloatArray
    task: FloatArray
    r_acc: FloatArray
    r_format: FloatArray
    r_recite: FloatArray
    r_grade: FloatArray
    iou: FloatArray
    pred_box: FloatArray
    format_ok: npt.NDArray[np.bool_]
    offsets: npt.NDArray[np.int64]
    tau: float | None
    tau_version: int
    extra: Mapping[str, FloatArray] = field(default_factory=dict)
    sets: BoxSets | None = None

    @property
    def num_groups(self) -> int:
        return len(self.offsets) - 1

    def group(self, g: int) -> list[RewardBreakdown]:
        """Breakdowns of group `g` (built on demand: objects cost more than the scoring itself)."""
        lo, hi = int(self.offsets[g]), int(self.offsets[g + 1])
        boxes = self.pred_box[lo:hi].tolist()
        cols = zip(self.total[lo:hi].tolist(), self.task[lo:hi].tolist(), self.r_acc[lo:hi].tolist(),
                   self.r_format[lo:hi].tolist(), self.r_recite[lo:hi].tolist(), self.r_grade[lo:hi].tolist(),
                   self.iou[lo:hi].tolist(), boxes, self.format_ok[lo:hi].tolist(), strict=True)
        sets = self.sets
        every = [None] * (hi - lo) if sets is None else [sets.boxes_of(j) for j in range(lo, hi)]
        return [RewardBreakdown(t, tk, a, f, rc, gr, io, None if b[0] != b[0]
                                else (b[0], b[1], b[2], b[3]), ok,
                                self.tau, self.tau_version, e)
                for (t, tk, a, f, rc, gr, io, b, ok), e in zip(cols, every, strict=True)]

    def breakdowns(self) -> list[list[RewardBreakdown]]:
        return [self.group(g) for g in range(self.num_groups)]


@dataclass
class _Parsed:
    """Step 1 of scoring: every completion parsed, in batch order (N completions, K of grounding groups)."""

    thinks: list[str] = field(default_factory=list)
    fmt: list[bool] = field(default_factory=list)  # tags in order and a payload (boxes: validity added later)
    r_grade: list[float] = field(default_factory=list)  # grade (MFRS) or label-match term; 0 for grounding
    # [K] raw boxes of grounding completions, NaN when unparsable
    raw: list[Box] = field(default_factory=list)
    raw_sets: list[tuple[Box, ...] | None] = field(default_factory=list)  # [K] under reward.boxes: set
    grounding_rows: list[int] = field(default_factory=list)  # completion index of each raw box
    group_of_row: list[int] = field(default_factory=list)  # group index of each raw box
    offsets: list[int] = field(default_factory=lambda: [0])


def score_columns(
    groups: Sequence[tuple[Sequence[str], RewardTarget]],
    snapshot: ScheduleSnapshot,
    config: RewardConfig,
) -> RewardColumns:
    """Score every completion of every group under one tau snapshot, as columns."""
    if config.accuracy != "raw_iou" and snapshot.tau is None:
        raise ValueError(f"accuracy mode {config.accuracy!r} needs a snapshot with a tau; only raw_iou has "
                         "none")
    parsed = _parse(groups, config)  # 1. Parse (Python, one regex match per completion on the fast path).
    tau = snapshot.tau
    sets: BoxSets | None = None
    if config.boxes == "set":  # 2. Match each answer's boxes to the truths, or the best IoU of one box.
        iou, pred_box, format_ok, sets = _grounding_sets(groups, parsed)
        r_acc = iou.copy() if config.accuracy == "raw_iou" else np.array(
            [sets.accuracy(j, tau if tau is not None else math.inf) for j in range(len(iou))])
    else:
        iou, pred_box, format_ok, is_grounding = _grounding_ious(groups, parsed)  # vectorised
        if config.accuracy == "raw_iou":
            r_acc = np.where(is_grounding, iou, 0.0)
        else:
            r_acc = (is_grounding & (iou >= (tau if tau is not None else math.inf))).astype(np.float64)
    # 3. Combine the terms.
    r_format = format_ok.astype(np.float64)
    offsets = parsed.offsets
    r_rec = np.zeros(len(parsed.fmt))
    if config.w_recite != 0.0:  # BLEU only when it can change the total: it dominates the cost
        for g, (_, target) in enumerate(groups):
            if target.knowledge:
                for j in range(offsets[g], offsets[g + 1]):
                    r_rec[j] = recitation(parsed.thinks[j], target.knowledge)
    r_grd = np.asarray(parsed.r_grade, dtype=np.float64)
    offs = np.asarray(offsets, dtype=np.int64)
    terms = {"acc": r_acc, "format": r_format, "grade": r_grd, "recite": r_rec}
    if config.extra_terms:  # 4. The user's terms, over the parsed columns.
        seen = _scored_completions(groups, parsed.thinks, format_ok, pred_box, iou, r_acc, r_grd)
        targets = [target for completions, target in groups for _ in completions]
        for term in config.extra_terms:
            terms[term.name] = term_values(term.name, term.fn, load_term(term.fn), seen, targets)
    weighted, task, total = _combine(terms, offs, config)
    return RewardColumns(total, weighted, task, r_acc, r_format, r_rec, r_grd, iou, pred_box, format_ok, offs,
                         tau, snapshot.version, {t.name: terms[t.name] for t in config.extra_terms}, sets)


def _parse(groups: Sequence[tuple[Sequence[str], RewardTarget]], config: RewardConfig) -> _Parsed:
    """Every completion's think and answer; a grounding answer's raw box (model frame, unclipped)."""
    out = _Parsed()
    nan_box = (math.nan, math.nan, math.nan, math.nan)
    fast = FAST_GROUNDING.fullmatch
    as_set = config.boxes == "set"
    for g, (completions, target) in enumerate(groups):
        if target.task == "grounding":
            out.grounding_rows.extend(range(out.offsets[-1], out.offsets[-1] + len(completions)))
            out.group_of_row.extend([g] * len(completions))
            for text in completions:
                m = fast(text) if isinstance(text, str) else None
                boxes: tuple[Box, ...] | None = None
                if m is not None:  # one object, the exact format: a set of one
                    think, a, b, c, d = m.groups()
                    box = finite_box(float(a), float(b), float(c), float(d))
                    boxes = None if box is None else (box,)
                    tags_ok = True
                else:
                    think, answer, tags_ok = split_completion(text) if isinstance(text, str) else ("", None, False)  # noqa: E501
                    box = None if answer is None or as_set else box_numbers(answer)
                    boxes = None if answer is None or not as_set else parse_box_list(answer).boxes
                out.thinks.append(think)
                out.raw.append(nan_box if box is None else box)
                out.raw_sets.append(boxes)
                out.fmt.append(tags_ok)  # and-ed with box validity in _grounding_ious / _grounding_sets
            out.r_grade.extend([0.0] * len(completions))
        else:
            for text in completions:
                think, answer, tags_ok = split_completion(text) if isinstance(text, str) else ("", None, False)  # noqa: E501
                out.thinks.append(think)
                if target.task == "classification":
                    label = None if answer is None else parse_label(answer)
                    out.fmt.append(tags_ok and label is not None)
                    out.r_grade.append(label_match(label, target.label or "", config.label_match))
                else:
                    grade = None if answer is None else parse_grade(answer, target.max_grade)
                    out.fmt.append(tags_ok and grade is not None)
                    out.r_grade.append(grade_reward(grade, target.grade or 0, config.grade_formula))
        out.offsets.append(out.offsets[-1] + len(completions))
    return out


def _grounding_ious(groups: Sequence[tuple[Sequence[str], RewardTarget]], parsed: _Parsed,
                    ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Clip every raw box to the model's extent, map it into original pixels and take its best IoU over the
    group's truths, all at once: ``(iou [N], pred_box [N, 4] NaN when none, format_ok [N], is_grounding
    [N])``."""
    n = len(parsed.fmt)
    iou = np.zeros(n)
    pred_box = np.full((n, 4), np.nan)
    format_ok = np.asarray(parsed.fmt, dtype=bool)
    is_grounding = np.zeros(n, dtype=bool)
    if not parsed.raw:
        return iou, pred_box, format_ok, is_grounding
    rows = np.asarray(parsed.grounding_rows)
    gid = np.asarray(parsed.group_of_row)
    frames = [t.frame for _, t in groups]
    ext = np.array([f.model_extent if f is not None else (1.0, 1.0) for f in frames])[gid]  # [K, 2]
    scale = np.array([f.to_original_scale if f is not None else (1.0, 1.0) for f in frames])[gid]  # [K, 2]
    m_max = max(len(t.boxes) for _, t in groups)
    gt = np.full((len(groups), max(m_max, 1), 4), np.nan)  # [n_groups, M, 4], NaN padding
    for g, (_, t) in enumerate(groups):
        if t.boxes:
            gt[g, : len(t.boxes)] = t.boxes
    arr = np.asarray(parsed.raw, dtype=np.float64)  # [K, 4]
    arr = np.minimum(np.maximum(arr, 0.0), np.concatenate([ext, ext], axis=1))  # NaN stays NaN
    valid = (arr[:, 0] < arr[:, 2]) & (arr[:, 1] < arr[:, 3])  # [K]; False for NaN rows
    orig = arr * np.concatenate([scale, scale], axis=1)  # [K, 4] original pixels
    orig[~valid] = np.nan
    iou[rows] = np.where(valid, max_iou(orig, gt[gid]), 0.0)
    pred_box[rows] = orig
    format_ok[rows] &= valid
    is_grounding[rows] = True
    return iou, pred_box, format_ok, is_grounding


def _grounding_sets(groups: Sequence[tuple[Sequence[str], RewardTarget]], parsed: _Parsed,
                    ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_], BoxSets]:
    """The set reward's columns (rewards/set_scoring.py): ``(mean matched IoU [N], first box [N, 4] NaN when
    none, format_ok [N], BoxSets over the N)``."""
    n = len(parsed.fmt)
    iou, pred_box = np.zeros(n), np.full((n, 4), np.nan)
    format_ok = np.asarray(parsed.fmt, dtype=bool)
    frames = [groups[g][1].frame for g in parsed.group_of_row]  # never None: RewardTarget checks it
    sets, mean_iou = box_set_columns(parsed.raw_sets, frames,  # type: ignore[arg-type]
                                     [groups[g][1].boxes for g in parsed.group_of_row])
    rows = np.asarray(parsed.grounding_rows, dtype=np.int64)
    if len(rows):
        iou[rows] = mean_iou
        format_ok[rows] &= sets.n_pred >= 0
        firsts = [sets.boxes_of(j) for j in range(len(rows))]
        pred_box[rows] = [b[0] if b else (math.nan,) * 4 for b in firsts]
    return iou, pred_box, format_ok, empty_rows(sets, rows, n)


def _scored_completions(groups: Sequence[tuple[Sequence[str], RewardTarget]], thinks: list[str],
                        format_ok: npt.NDArray[np.bool_], pred_box: FloatArray, iou: FloatArray,
                        r_acc: FloatArray, r_grade: FloatArray) -> list[ScoredCompletion]:
    """What the user's terms see of each completion, in batch order (rewards/extra_terms.py)."""
    out: list[ScoredCompletion] = []
    for g, (completions, target) in enumerate(groups):
        for text in completions:
            j = len(out)
            b = pred_box[j].tolist()
            box = None if math.isnan(b[0]) else (b[0], b[1], b[2], b[3])
            out.append(ScoredCompletion(text if isinstance(text, str) else "", thinks[j], target.task, g,
                                        bool(format_ok[j]), box, float(iou[j]), float(r_acc[j]),
                                        float(r_grade[j])))
    return out


def _combine(terms: dict[str, FloatArray], offsets: npt.NDArray[np.int64],
             config: RewardConfig) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(weighted, task, total)``, each ``[N]``, from every term's values by name (``reward.aggregation``).

    task sums the task terms (accuracy, format, grade, the user's with ``task: true``) in that order and
    weighted adds the shaping terms to it, so without user terms both are bit-identical to the plain sums.
    """
    weights = {"acc": config.w_acc, "format": config.w_format, "grade": config.w_grade}
    weights |= {t.name: t.weight for t in config.extra_terms if t.task}
    shaping = {"recite": config.w_recite} | {t.name: t.weight for t in config.extra_terms if not t.task}
    task = np.zeros(int(offsets[-1]))
    for k, w in weights.items():
        task = task + w * terms[k]
    weighted = task
    for k, w in shaping.items():
        weighted = weighted + w * terms[k]
    if config.aggregation == "sum":
        return weighted, task, weighted
    weights |= shaping
    names = list(weights)
    return weighted, task, normalize_then_sum(np.stack([terms[k] for k in names], axis=1),
                                              np.array([weights[k] for k in names]), offsets, config.term_eps)


def score_groups(
    groups: Sequence[tuple[Sequence[str], RewardTarget]],
    snapshot: ScheduleSnapshot,
    config: RewardConfig,
) -> list[list[RewardBreakdown]]:
    """Score every completion of every group under one tau snapshot; returns breakdowns per group."""
    return score_columns(groups, snapshot, config).breakdowns()


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
