"""Configuration of the learner: GRPO loss, MLAE adapter, optimiser and DeepSpeed."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MLAEConfig(_Strict):
    """Masked LoRA experts (docs/algorithms.md, "MLAE")."""

    rank: int = Field(8, ge=1, description="r: rank-1 experts per adapted layer.")
    alpha: float = Field(1.0, gt=0.0, description="Initial per-expert scale lambda_i (no alpha/r scaling).")
    mask: Literal["stochastic", "fixed", "mixed",
                  "none"] = Field("stochastic", description="Expert mask kind.")
    p: float = Field(0.5, ge=0.0, lt=1.0, description="Drop rate of the stochastic mask.")
    fixed_p: float = Field(0.0, ge=0.0, lt=1.0,
                           description="Fraction of experts permanently off (fixed/mixed).")
    layerwise: Literal["uniform", "increasing",
                       "decreasing"] = Field("uniform", description="Drop rate over depth.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj"), description="Language-model projections to adapt."
    )
    seed: int = Field(0,
                      description="Seed of the fixed mask's expert choice (default in a run: derived from "
                                  "the run's `seed`).")


# Each named loss expands to these fields; a field the config sets itself wins (docs/algorithms.md, "Loss
# presets"). The papers' other choices (DAPO's eps_high 0.28, no KL in DAPO and GSPO) stay separate fields.
LOSS_PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {"aggregation": "grpo", "scale_rewards": "group", "ratio_level": "token", "eps_low": 0.2,
             "eps_high": 0.2},
    "dapo": {"aggregation": "dapo", "scale_rewards": "group", "ratio_level": "token", "eps_low": 0.2,
             "eps_high": 0.2},
    "dr_grpo": {"aggregation": "dr_grpo", "scale_rewards": "none", "ratio_level": "token", "eps_low": 0.2,
                "eps_high": 0.2},
    # GSPO (arXiv 2507.18071 v2, section 5.1): clip ranges 3e-4 and 4e-4 on the sequence ratio.
    "gspo": {"aggregation": "grpo", "scale_rewards": "group", "ratio_level": "sequence", "eps_low": 3e-4,
             "eps_high": 4e-4},
}


class GRPOConfig(_Strict):
    """GRPO loss and update (docs/algorithms.md, "GRPO")."""

    loss: Literal["grpo", "dapo", "dr_grpo", "gspo"] = Field(
        "grpo", description="Named loss preset; it fills aggregation, scale_rewards, ratio_level, eps_low "
        "and eps_high (LOSS_PRESETS) unless the config sets them: grpo (the seeds': sequence mean, group "
        "std), dapo (token mean over the batch), dr_grpo (constant normaliser, no std), gspo (sequence-level "
        "ratio).")
    eps_low: float = Field(0.2, ge=0.0, lt=1.0,
                           description="Lower clip range of the ratio, below 1 (gspo: 3e-4).")
    eps_high: float = Field(0.2, ge=0.0, allow_inf_nan=False,
                            description="Upper clip range of the ratio (gspo: 4e-4).")
    beta: float = Field(0.04, ge=0.0, allow_inf_nan=False,
                        description="k3 KL coefficient against the reference policy (0: no KL term, no "
                                    "reference forward and no reference copy).")
    reference: Literal["stage_start", "base"] = Field(
        "stage_start",
        description="KL reference: `stage_start` is a frozen copy of the adapter as the GRPO stage began "
                    "(after SFT or an earlier stage, the policy RL started from, as TRL's ref adapter); "
                    "`base` is the model with the adapter off (equal to stage_start only when the adapter "
                    "starts at zero).")
    aggregation: Literal["grpo", "dapo", "dr_grpo"] = Field(
        "grpo", description="Loss normaliser: sequence-mean (grpo), token-mean over the global batch (dapo), "
        "or the token sum over constant_length x sequences (dr_grpo).")
    constant_length: int | None = Field(
        None, ge=1, description="dr_grpo's constant normaliser length in tokens; a run config fills it from "
        "rollout.sampling.max_new_tokens when unset. Only with aggregation dr_grpo.")
    ratio_level: Literal["token", "sequence"] = Field(
        "token", description="Importance ratio: per token (GRPO) or the sequence's geometric-mean ratio, "
        "clipped per sequence (GSPO); sequence needs aggregation grpo.")
    adv_eps: float = Field(1e-4, gt=0.0, description="Added to the std in the advantage.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Advantage denominator: the group's reward std (GRPO), the whole batch's std (TRL "
        "`batch`, no per-question difficulty weighting) or none (Dr. GRPO).")
    rollout_correction: Literal["none", "token_truncate", "token_mask", "sequence_truncate",
                                "sequence_mask"] = Field(
        "none", description="Rollout-vs-learner correction (TIS/MIS): importance weights of learner over "
        "engine probability on the surrogate, truncated at the cap or masked outside [low, cap], per token "
        "or per sequence (product of token ratios). none: off.")
    rollout_correction_cap: float = Field(
        3.0, ge=1.0, allow_inf_nan=False,
        description="Upper bound C of the correction's ratio (TRL's default 3.0), finite and >= 1.")
    rollout_correction_low: float | None = Field(
        None, gt=0.0, le=1.0, description="Lower bound of the mask modes, in (0, 1]; None: no lower bound.")
    updates_per_batch: int = Field(
        1, ge=1, description="Optimiser steps on each generated batch (TRL num_iterations, verl ppo_epochs); "
        "from the second on, the ratio is taken against the log-probs of the adapter that sampled the batch.")
    mask_truncated_completions: bool = Field(
        False,
        description="Completions cut by max_new_tokens carry no loss (DAPO's overlong filtering); they "
        "still count in the rewards and the `rollout/truncated_fraction` metric.")
    sync_alarm: Literal["stop", "warn", "off"] = Field(
        "stop",
        description="After each adapter version change, the mean |behaviour - learner| log-prob of the "
        "first micro-batch (eval mode) above `sync_alarm_nats` stops the run (or warns).")
    sync_alarm_nats: float = Field(
        0.02, gt=0.0,
        description="Alarm threshold in nats/token. fp32 engines agree to ~1e-6 (measured); raise it "
        "for bf16 engines, whose numerics alone differ by ~1e-2.")

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        """``loss`` fills the fields it names; a field given explicitly wins."""
        if not isinstance(data, dict):
            return data
        preset = LOSS_PRESETS.get(data.get("loss", "grpo"))
        return data if preset is None else {**preset, **data}  # an unknown name: the Literal reports it

    def preset_departures(self) -> dict[str, tuple[Any, Any]]:
        """The fields that define `loss` (LOSS_PRESETS) but are set to other values: {field: (value, the
        preset's)}. For grpo, dapo and dr_grpo the clip ranges are not part of the definition (DAPO's own
        clip-higher is eps_high 0.28); for gspo they are (3e-4 and 4e-4 on a sequence ratio)."""
        preset = LOSS_PRESETS[self.loss]
        keys = preset if self.loss == "gspo" else ("aggregation", "scale_rewards", "ratio_level")
        return {k: (getattr(self, k), preset[k]) for k in keys if getattr(self, k) != preset[k]}

    @model_validator(mode="after")
    def _consistent(self) -> GRPOConfig:
        """One line per contradiction, naming the fields and the fix."""
        rc = self.rollout_correction
        if self.ratio_level == "sequence" and rc.startswith("token"):
            raise ValueError(f"ratio_level=sequence (gspo) with rollout_correction={rc}: GSPO replaces "
                             "token-level importance weights, which it finds ill-posed for a sequence "
                             "reward; use rollout_correction=sequence_mask or sequence_truncate")
        if self.ratio_level == "sequence" and self.aggregation != "grpo":
            raise ValueError(f"ratio_level=sequence (gspo) with aggregation={self.aggregation}: the sequence "
                             "ratio's objective is a mean over sequences, and a token sum weights each by "
                             "its length; set aggregation=grpo")
        if self.rollout_correction_low is not None and not rc.endswith("mask"):
            raise ValueError(f"rollout_correction_low={self.rollout_correction_low} with "
                             f"rollout_correction={rc}: the lower bound drops tokens in the mask modes only; "
                             "remove it or use a *_mask mode")
        if self.aggregation == "dr_grpo" and self.constant_length is None:
            raise ValueError("aggregation=dr_grpo needs constant_length, the completion-length budget in "
                             "tokens (a run config fills it from rollout.sampling.max_new_tokens)")
        if self.aggregation != "dr_grpo" and self.constant_length is not None:
            raise ValueError(f"constant_length={self.constant_length} with aggregation={self.aggregation}: "
                             "only dr_grpo divides by it; remove it or set aggregation=dr_grpo")
        return self


class LearnerConfig(_Strict):
    """The DeepSpeed learner: ranks, optimiser, precision and the adapter it trains."""

    adapter: Literal["mlae", "lora"] = Field(
        "mlae",
        description="Adapter trained on the frozen base: MLAE (section 5) or plain PEFT LoRA (baseline)."
    )
    lora_alpha: float = Field(
        16.0, gt=0.0,
        description="Plain-LoRA scaling numerator (scaling = lora_alpha / mlae.rank); unused by MLAE."
    )
    seed: int = Field(0,
                      description="Seeds adapter initialisation and the stochastic MLAE masks, identical on "
                                  "every rank (default in a run: derived from the run's `seed`).")
    num_ranks: int = Field(1, ge=1, description="DeepSpeed ranks (Ray actors in one placement group).")
    lr: float = Field(1e-4, gt=0.0, description="AdamW learning rate on the adapter.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward on one rank.")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    offload_optimizer: bool = Field(False, description="ZeRO optimizer offload to CPU.")
    gradient_clipping: float = Field(1.0, ge=0.0, description="Global grad-norm clip (0 disables).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
    shared_prefix: bool = Field(
        True,
        description="GRPO: forward each prompt once per micro-batch, followed by its completions (a block "
                    "attention mask keeps completions apart), and the vision tower once per image per step; "
                    "log-probs and gradients equal the plain path's (docs/algorithms.md, \"Shared-prefix "
                    "learner\"). Micro-batches then hold whole groups (a group above micro_batch_size is "
                    "split, the prompt packed with each piece). false: one sequence per completion, as SFT "
                    "always runs.")
    cpus_per_rank: float = Field(1.0, gt=0.0, description="Ray CPUs per learner rank.")
    torch_threads: int = Field(0, ge=0,
                               description="CPU threads of a rank's torch ops (0: Ray's default, one per "
                                           "reserved CPU). With max_staleness 0 the rollout workers wait "
                                           "while the learner trains, so on a small CPU box it may use "
                                           "every core; with overlap split the cores with "
                                           "rollout.torch_threads.")
    gpus_per_rank: float = Field(0.0, ge=0.0, description="Ray GPUs per learner rank.")
    kept_versions: int = Field(
        2, ge=1,
        description="Adapter versions each rank keeps a copy of (the live one and those before it), for the "
                    "off-policy ratio of a batch sampled by an older version: at least the run's "
                    "max_staleness + 1 (the run config checks it); each copy costs the adapter's size.")
    mlae: MLAEConfig = MLAEConfig()
    grpo: GRPOConfig = GRPOConfig()

    @property
    def stochastic_train_forward(self) -> bool:
        """Whether a training-mode forward draws a random MLAE expert mask, so its log-probs differ from the
        eval-mode policy the engines sample (~0.7 nats/token at p = 0.5; docs/algorithms.md, sync alarm)."""
        return self.adapter == "mlae" and self.mlae.mask in ("stochastic", "mixed") and self.mlae.p > 0.0
