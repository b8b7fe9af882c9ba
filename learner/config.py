"""Configuration of the learner: GRPO loss, MLAE adapter, optimiser and DeepSpeed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MLAEConfig(_Strict):
    """Masked LoRA experts (docs/algorithms.md, "MLAE")."""

    rank: int = Field(8, ge=1, description="r: rank-1 experts per adapted layer.")
    alpha: float = Field(1.0, gt=0.0, description="Initial per-expert scale lambda_i (no alpha/r scaling).")
    mask: Literal["stochastic", "fixed", "mixed", "none"] = Field("stochastic", description="Expert mask kind.")
    p: float = Field(0.5, ge=0.0, lt=1.0, description="Drop rate of the stochastic mask.")
    fixed_p: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of experts permanently off (fixed/mixed).")
    layerwise: Literal["uniform", "increasing", "decreasing"] = Field("uniform", description="Drop rate over depth.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj"), description="Language-model projections to adapt."
    )
    seed: int = Field(0, description="Seed of the fixed mask's expert choice (default in a run: derived from the "
                      "run's `seed`).")


class GRPOConfig(_Strict):
    """GRPO loss and update (docs/algorithms.md, "GRPO")."""

    eps_low: float = Field(0.2, ge=0.0, description="Lower clip range of the ratio.")
    eps_high: float = Field(0.2, ge=0.0, description="Upper clip range of the ratio.")
    beta: float = Field(0.04, ge=0.0, description="k3 KL coefficient against the reference policy (0: no KL "
                        "term and no reference forward).")
    reference: Literal["stage_start", "base"] = Field(
        "stage_start", description="KL reference: `stage_start` is a frozen copy of the adapter as the GRPO stage "
        "began (after SFT or an earlier stage, the policy RL started from, as TRL's ref adapter); `base` is the "
        "model with the adapter off (equal to stage_start only when the adapter starts at zero).")
    aggregation: Literal["grpo", "dapo"] = Field("grpo", description="Sequence-mean (GRPO) or token-mean (DAPO).")
    adv_eps: float = Field(1e-4, gt=0.0, description="Added to the std in the advantage.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantage denominator: the group's reward std (GRPO), the whole batch's std (TRL "
        "`batch`, no per-question difficulty weighting) or none (Dr. GRPO).")
    updates_per_batch: int = Field(
        1, ge=1, description="Optimiser steps on each generated batch (TRL num_iterations, verl ppo_epochs); "
        "from the second on, the ratio is taken against the log-probs of the adapter that sampled the batch.")
    mask_truncated_completions: bool = Field(
        False, description="Completions cut by max_new_tokens carry no loss (DAPO's overlong filtering); they "
        "still count in the rewards and the `rollout/truncated_fraction` metric.")
    sync_alarm: Literal["stop", "warn", "off"] = Field(
        "stop", description="After each adapter version change, the mean |behaviour - learner| log-prob of the "
        "first micro-batch (eval mode) above `sync_alarm_nats` stops the run (or warns).")
    sync_alarm_nats: float = Field(
        0.02, gt=0.0, description="Alarm threshold in nats/token. fp32 engines agree to ~1e-6 (measured); raise it "
        "for bf16 engines, whose numerics alone differ by ~1e-2.")

class LearnerConfig(_Strict):
    """The DeepSpeed learner: ranks, optimiser, precision and the adapter it trains."""

    adapter: Literal["mlae", "lora"] = Field(
        "mlae", description="Adapter trained on the frozen base: MLAE (section 5) or plain PEFT LoRA (baseline)."
    )
    lora_alpha: float = Field(
        16.0, gt=0.0, description="Plain-LoRA scaling numerator (scaling = lora_alpha / mlae.rank); unused by MLAE."
    )
    seed: int = Field(0, description="Seeds adapter initialisation and the stochastic MLAE masks, identical on every "
                      "rank (default in a run: derived from the run's `seed`).")
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
        True, description="GRPO: forward each prompt once per micro-batch, followed by its completions (a block "
        "attention mask keeps completions apart), and the vision tower once per image per step; log-probs and "
        "gradients equal the plain path's (docs/algorithms.md, \"Shared-prefix learner\"). Micro-batches then hold "
        "whole groups (a group above micro_batch_size is split, the prompt packed with each piece). false: one "
        "sequence per completion, as SFT always runs.")
    cpus_per_rank: float = Field(1.0, gt=0.0, description="Ray CPUs per learner rank.")
    torch_threads: int = Field(0, ge=0, description="CPU threads of a rank's torch ops (0: Ray's default, one "
                               "per reserved CPU). With rollout.max_staleness 0 the rollout workers wait while "
                               "the learner trains, so on a small CPU box it may use every core; with overlap "
                               "split the cores with rollout.torch_threads.")
    gpus_per_rank: float = Field(0.0, ge=0.0, description="Ray GPUs per learner rank.")
    mlae: MLAEConfig = MLAEConfig()
    grpo: GRPOConfig = GRPOConfig()
