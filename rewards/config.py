"""Configuration of the reward actor: term weights, accuracy mode, and the MedLoc-R1 schedule.

Defaults and their sources: docs/algorithms.md, "MedLoc-R1" and "Rewards"; a field's description gives its
unit
and range.
Tables (the P/S thresholds, piecewise steps, stepped stages) are tuples of rows sorted by their first
column; a row applies from its first value upwards, until the next row starts.
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # weights stay finite


def _check_sorted_from_zero(rows: tuple[tuple[float, ...], ...], name: str, first_col: str) -> None:
    starts = [row[0] for row in rows]
    if not rows or starts[0] != 0.0 or any(b <= a for a, b in itertools.pairwise(starts)):
        raise ValueError(
            f"{name} must start at {first_col}=0.0 and its {first_col} values must strictly increase, got "
            f"{starts}; sort the rows and begin with a row for {first_col}=0.0"
        )


class ScheduleConfig(_Strict):
    """MedLoc-R1 performance-aware IoU threshold schedule (docs/algorithms.md, "MedLoc-R1")."""

    window: int = Field(30, ge=2, description="Window length N in prompt groups [paper].")
    tau0: float = Field(0.3, gt=0.0, lt=1.0, description="Initial IoU threshold, in (0, 1).")
    tau_target: float = Field(0.8, gt=0.0, le=1.0,
                              description="Final threshold in (0, 1]; no updates once reached.")
    margin: float = Field(0.10, ge=0.0,
                          description="Delta: required mean-IoU margin above tau [paper], >= 0.")
    thresholds: tuple[tuple[float, float, float], ...] = Field(
        ((0.0, 0.80, 0.20), (0.60, 0.75, 0.35), (0.75, 0.55, 0.40)),
        description="Rows (tau_from, P, S): from tau_from upwards, raise needs r_bar >= P and sigma <= S; "
        "P, S in [0, 1] [default table, unverified port of the paper's].",
    )
    step: Literal["piecewise", "linear", "cosine", "constant"] = Field(
        "piecewise",
        description="Step-size rule delta(tau); `constant` raises by `constant_delta` every time.")
    piecewise_steps: tuple[tuple[float, float], ...] = Field(
        ((0.0, 0.15), (0.55, 0.10), (0.75, 0.05)),
        description="Rows (tau_from, delta) of the piecewise rule [paper]: path 0.30, 0.45, 0.60, 0.70, "
                    "0.80.",
    )
    delta0: float = Field(0.2, gt=0.0,
                          description="First step of the linear/cosine rules [paper: 0.2], in IoU units.")
    min_delta: float = Field(0.05, gt=0.0,
                             description="Smallest step of the linear/cosine rules, in IoU units.")
    constant_delta: float = Field(0.15, gt=0.0, le=1.0,
                                  description="Step of the `constant` rule, in IoU units "
                                  "[paper's fixed-step ablation: 0.05, 0.15, 0.25].")
    use_reward_condition: bool = Field(True, description="Require r_bar >= P(tau) (ablation switch).")
    use_std_condition: bool = Field(True, description="Require sigma <= S(tau) (ablation switch).")
    use_margin_condition: bool = Field(True,
                                       description="Require mean IoU - tau >= margin (ablation switch).")
    require_full_window: bool = Field(True, description="Only a full window (N entries) may raise tau.")
    refresh: Literal["half", "full", "quarter"] = Field(
        "half",
        description="Window entries dropped after a raise: oldest half [paper], all, or oldest quarter."
    )

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.tau0 > self.tau_target:
            raise ValueError(f"tau0={self.tau0} is above tau_target={self.tau_target}; set tau0 <= "
                             "tau_target")
        _check_sorted_from_zero(self.thresholds, "schedule.thresholds", "tau_from")
        _check_sorted_from_zero(self.piecewise_steps, "schedule.piecewise_steps", "tau_from")
        if any(not (0.0 <= p <= 1.0 and 0.0 <= s <= 1.0) for _, p, s in self.thresholds):
            raise ValueError(f"schedule.thresholds P and S must lie in [0, 1], got {self.thresholds}")
        if any(d <= 0.0 for _, d in self.piecewise_steps):
            raise ValueError(f"schedule.piecewise_steps deltas must be > 0, got {self.piecewise_steps}")
        return self


# reward/<name> metric keys already taken by the built-in columns and the reward client's fault counts.
RESERVED_TERM_NAMES = frozenset({"total", "task", "weighted", "acc", "format", "recite", "grade", "iou",
                                 "actor_deaths", "actor_timeouts", "requests_resent"})


class ExtraTerm(_Strict):
    """A reward term the user adds (docs/algorithms.md, "Reward terms you add"; rewards/extra_terms.py)."""

    fn: str = Field(..., description="'package.module:function', a pure function (completions, targets) -> "
                    "list[float] over the batch's ScoredCompletion and RewardTarget lists; imported (and its "
                    "signature checked) when the config is validated, called in the reward actor.")
    weight: float = Field(1.0, description="Its weight w in the total (negative: a penalty).")
    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$",
                      description="Its column, logged as reward/<name> (lower case, digits, underscores).")
    task: bool = Field(False, description="Counts as task signal for dynamic sampling's zero-variance rule, "
                       "as accuracy, format and grade do; false (default): a shaping term, as recitation.")

    @model_validator(mode="after")
    def _importable(self) -> ExtraTerm:
        from rewards.extra_terms import load_term  # imports the user's module: here, not at package import

        if self.name in RESERVED_TERM_NAMES:
            raise ValueError(f"name {self.name!r} is a built-in reward column; choose another name")
        load_term(self.fn, where=f"term {self.name!r}")
        return self


class RewardConfig(_Strict):
    """Which reward terms are on and how they combine: total = sum_k w_k * r_k (or of their group-standardised
    values, `aggregation: normalize_then_sum`)."""

    accuracy: Literal["medloc", "fixed", "raw_iou", "stepped"] = Field(
        "medloc",
        description="Accuracy reward: MedLoc-R1 schedule, fixed tau, continuous IoU, or tau by progress."
    )
    boxes: Literal["single", "set"] = Field(
        "single", description="How a grounding answer is scored (issue 31): `single` takes its first box "
        "at its best IoU over the truths (nothing is right on a negative); `set` matches every box of the "
        "answer to the truths one-to-one (Hungarian, max total IoU): accuracy = F1 of the matches with "
        "IoU >= tau, IoU = mean matched IoU over max(#pred, #true); on a negative the empty answer scores 1, "
        "any box 0.")
    fixed_tau: float = Field(0.5, gt=0.0, le=1.0, description="Threshold of `fixed` mode (VLM-R1 uses 0.5).")
    stepped_stages: tuple[tuple[float, float], ...] = Field(
        ((0.0, 0.3), (0.2, 0.45), (0.4, 0.6), (0.6, 0.7), (0.8, 0.8)),
        description="Rows (progress_from, tau) of `stepped` mode (V-Triune/ROLL style): progress in [0, 1] "
                    "is the fraction of the stage's steps done [default: the piecewise path at even "
                    "intervals].",
    )
    w_acc: float = Field(1.0, description="Weight of the accuracy term.")
    w_format: float = Field(0.5, description="Weight of the format term.")
    w_recite: float = Field(-0.5,
                            description="Weight of BLEU(think, knowledge); negative penalises recitation.")
    w_grade: float = Field(1.0, description="Weight of the graded (MFRS) or classification term.")
    grade_formula: Literal["exp2", "inverse_square"] = Field(
        "exp2",
        description="MFRS: 2^(-2d) [default], or 1/(2(d^2+1)) for d >= 1 (1 at d = 0); d = |grade error|."
    )
    label_match: Literal["normalised", "exact"] = Field(
        "normalised",
        description="Classification match: `normalised` compares case-folded labels with punctuation and "
                    "extra whitespace removed ('Pleural effusion.' == 'pleural  effusion'); `exact` "
                    "compares stripped strings.",
    )
    aggregation: Literal["sum", "normalize_then_sum"] = Field(
        "sum", description="How the terms combine into the reward the advantage is computed from: their "
        "weighted sum, or the weighted sum of each term standardised within its group (GDPO; TRL "
        "multi_objective_aggregation='normalize_then_sum'). Dynamic sampling looks at the raw task terms "
        "either way.")
    term_eps: float = Field(1e-4, gt=0.0, description="Added to each term's group std under "
                            "normalize_then_sum (as learner.grpo.adv_eps in the advantage).")
    extra_terms: tuple[ExtraTerm, ...] = Field(
        (), description="Reward terms you add: [{fn: 'package.module:function', weight: w, name: n}], each "
        "adding w * fn(...) to the total and logged as reward/<name>.")
    schedule: ScheduleConfig = ScheduleConfig()
    call_timeout_s: float = Field(
        60.0, gt=0.0,
        description="Deadline in seconds for the reward actor to score one batch; an actor that has not "
                    "answered by then is killed and a new one, restored from the state after the last "
                    "batch, scores it (scoring is pure CPU work, milliseconds per group).")

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:
        _check_sorted_from_zero(self.stepped_stages, "reward.stepped_stages", "progress_from")
        if any(not (0.0 < tau <= 1.0) or p > 1.0 for p, tau in self.stepped_stages):
            raise ValueError("reward.stepped_stages needs progress in [0, 1] and tau in (0, 1], got "
                             f"{self.stepped_stages}")
        names = [t.name for t in self.extra_terms]
        if len(set(names)) != len(names):
            raise ValueError(f"reward.extra_terms names {names} repeat one; give each term its own name")
        return self
