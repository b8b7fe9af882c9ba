"""Configuration of the reward actor: term weights, accuracy mode, and the MedLoc-R1 schedule.

Every default is ALGORITHMS.md's (sections 2 and 3); a field's comment gives its unit and range.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScheduleConfig(_Strict):
    """MedLoc-R1 performance-aware IoU threshold schedule (ALGORITHMS.md section 2)."""

    window: int = Field(30, ge=2, description="Window length N in prompt groups [paper].")
    tau0: float = Field(0.3, gt=0.0, lt=1.0, description="Initial IoU threshold.")
    tau_target: float = Field(0.8, gt=0.0, le=1.0, description="Final threshold; no updates once reached.")
    margin: float = Field(0.10, ge=0.0, description="Delta: required mean-IoU margin above tau [paper].")
    step: Literal["piecewise", "linear", "cosine"] = Field("piecewise", description="Step-size rule delta(tau).")
    delta0: float = Field(0.2, gt=0.0, description="First step of the linear/cosine rules [paper: 0.2].")
    min_delta: float = Field(0.05, gt=0.0, description="Smallest step of the linear/cosine rules.")
    use_reward_condition: bool = Field(True, description="Require r_bar >= P(tau) (ablation switch).")
    use_std_condition: bool = Field(True, description="Require sigma <= S(tau) (ablation switch).")
    use_margin_condition: bool = Field(True, description="Require mean IoU - tau >= margin (ablation switch).")
    require_full_window: bool = Field(True, description="Only a full window may raise tau.")
    refresh: Literal["half", "full", "quarter"] = Field(
        "half", description="Window entries dropped after a raise: oldest half [paper], all, or oldest quarter."
    )


class RewardConfig(_Strict):
    """Which reward terms are on and how they combine: total = sum_k w_k * r_k."""

    accuracy: Literal["medloc", "fixed", "raw_iou", "stepped"] = Field(
        "medloc", description="Accuracy reward: MedLoc-R1 schedule, fixed tau, continuous IoU, or tau by progress."
    )
    fixed_tau: float = Field(0.5, gt=0.0, le=1.0, description="Threshold of `fixed` mode (VLM-R1 uses 0.5).")
    w_acc: float = Field(1.0, description="Weight of the accuracy term.")
    w_format: float = Field(0.5, description="Weight of the format term.")
    w_recite: float = Field(-0.5, description="Weight of BLEU(think, knowledge); negative penalises recitation.")
    w_grade: float = Field(1.0, description="Weight of the graded (MFRS) or classification term.")
    schedule: ScheduleConfig = ScheduleConfig()
