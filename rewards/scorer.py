"""RewardScorer: the plain class behind the reward actor (scoring plus the MedLoc-R1 schedule state).

Batch semantics: every group of a batch is scored under the tau snapshot taken at the start of the
batch (or the one passed as `under`: the driver passes the first round's snapshot to a step's refill
rounds); afterwards each grounding group is observed by the schedule in order (one window entry per
group, its mean binary reward taken at the tau current when it is observed). A raise inside a step
therefore affects the next step's scoring, never the current one, so all completions of a step share one tau.
Negative groups (no true box) are not observed: their reward does not depend on tau (docs/algorithms.md,
"Zero, one or many boxes").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from rewards.config import RewardConfig
from rewards.extra_terms import load_term
from rewards.schedule import RaiseRecord, ThresholdSchedule
from rewards.scoring import RewardBreakdown, RewardColumns, RewardTarget, ScheduleSnapshot, score_columns

_STATE_FORMAT = 1


@dataclass(frozen=True)
class ScoredBatch:
    """Result of one `score_batch` call.

    columns: every completion's terms as arrays, groups in the order given (see RewardColumns);
    scored_under: the snapshot every completion was scored with; schedule: the snapshot after observing
    this batch (with window stats); raises: audit records of the raises made while observing this batch.
    """

    columns: RewardColumns
    scored_under: ScheduleSnapshot
    schedule: ScheduleSnapshot
    raises: tuple[RaiseRecord, ...]

    @cached_property
    def groups(self) -> list[list[RewardBreakdown]]:
        """Breakdowns per group, built on first access (on the receiving side of a Ray call)."""
        return self.columns.breakdowns()


class RewardScorer:
    """Scores batches of groups; owns the threshold schedule in `medloc` mode. No I/O: the caller
    persists `state_dict()` with its checkpoint and hands it back through `load_state_dict()`."""

    def __init__(self, config: RewardConfig | None = None) -> None:
        self.config = config if config is not None else RewardConfig()
        self.schedule = ThresholdSchedule(self.config.schedule)
        for term in self.config.extra_terms:  # import the user's terms here, in the actor, before any batch
            load_term(term.fn, where=f"reward term {term.name!r}")

    def snapshot(self, progress: float = 0.0) -> ScheduleSnapshot:
        """The tau completions are scored under now; `progress` in [0, 1] matters in `stepped` mode only."""
        cfg = self.config
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be the fraction of training done, in [0, 1], got {progress}")
        match cfg.accuracy:
            case "medloc":
                return ScheduleSnapshot(self.schedule.tau, self.schedule.version, self.schedule.stats())
            case "fixed":
                return ScheduleSnapshot(cfg.fixed_tau, 0)
            case "raw_iou":
                return ScheduleSnapshot(None, 0)
            case "stepped":
                stage = max(i for i, (start, _) in enumerate(cfg.stepped_stages) if start <= progress)
                return ScheduleSnapshot(cfg.stepped_stages[stage][1], stage)
        raise AssertionError(f"unhandled accuracy mode {cfg.accuracy!r}")

    def score_batch(
        self, groups: Sequence[tuple[Sequence[str], RewardTarget]], step: int = -1, progress: float = 0.0,
        under: ScheduleSnapshot | None = None,
    ) -> ScoredBatch:
        """Score all groups under the current tau (or `under`), then feed the grounding groups to the
        schedule."""
        before = self.snapshot(progress) if under is None else under
        cols = score_columns(groups, before, self.config)
        raised_from = len(self.schedule.history)
        if self.config.accuracy == "medloc":
            for g, (_, target) in enumerate(groups):
                lo, hi = int(cols.offsets[g]), int(cols.offsets[g + 1])
                if target.task == "grounding" and target.boxes and hi > lo:  # negatives: not observed (docs)
                    sets = cols.sets
                    matches = None if sets is None else [
                        (sets.matched_of(j).tolist(), max(int(sets.n_pred[j]), 0) + int(sets.n_true[j]))
                        for j in range(lo, hi)]
                    self.schedule.observe(cols.iou[lo:hi].tolist(), step=step, matches=matches)
        return ScoredBatch(cols, before, self.snapshot(progress), self.schedule.history[raised_from:])

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (the schedule's; other modes are stateless)."""
        return {"format": _STATE_FORMAT, "accuracy": self.config.accuracy,
                "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"reward state format {state.get('format')!r} is not {_STATE_FORMAT}; it was "
                             "written by another medground version, start the schedule fresh or convert "
                             "the checkpoint")
        self.schedule.load_state_dict(state["schedule"])
