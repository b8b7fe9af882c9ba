"""The rollout-vs-learner correction (TIS / MIS) as pure torch functions (docs/algorithms.md, "Rollout
correction").

vLLM and the learner never give identical log-probs of the same tokens under the same adapter (bf16
kernels, batch-dependent numerics). The engines' behaviour log-probs (``logp_rollout``) and the learner's
log-probs under the version that sampled the batch (``logp``, logp_old) give an importance ratio
``r = exp(logp - logp_rollout)`` per token, or its product per sequence (policy lag between versions is the
PPO ratio's part: logp_old is taken under the sampling version, learner/engine.py); its
truncation (TIS: Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training") or a mask outside ``[low, cap]`` (MIS: Liu, Li et al. 2025, "When speed kills stability:
demystifying RL collapse from the training-inference mismatch") weights the clipped surrogate, detached.
TRL (``vllm_importance_sampling_mode``), verl (rollout correction) and ms-swift
(``rollout_importance_sampling_mode``) name the same four modes.

Shapes: B sequences, T completion-aligned token positions. The engine sums ``CorrectionStats`` over
micro-batches, updates and ranks (``accumulate``) and turns the sums into metrics (``step_metrics``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from learner.grpo import KL_LOG_RATIO_CLAMP, kl_k3

CorrectionMode = Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


class RolloutCorrectionError(ValueError):
    """The correction dropped every loss token of a step: nothing would train, silently."""


def _check_arguments(logp: torch.Tensor, logp_rollout: torch.Tensor | None, mask: torch.Tensor, mode: str,
                     cap: float, low: float | None) -> None:
    """One-line ValueErrors for what the config would refuse (learner/config.py), for direct callers."""
    modes = get_args(CorrectionMode)
    if mode not in modes:
        raise ValueError(f"rollout_correction mode {mode!r}: use one of {', '.join(modes)}")
    if not (math.isfinite(cap) and cap >= 1.0):
        raise ValueError(f"rollout_correction cap {cap}: a finite ratio >= 1 (TRL's default 3.0)")
    if low is not None and not 0.0 < low <= 1.0:
        raise ValueError(f"rollout_correction low {low}: a ratio in (0, 1], or None for no lower bound")
    if logp_rollout is None or logp_rollout.shape != logp.shape or mask.shape != logp.shape:
        got = None if logp_rollout is None else tuple(logp_rollout.shape)
        raise ValueError(f"rollout_correction needs logp, logp_rollout and mask of one shape [B, T], got "
                         f"{tuple(logp.shape)}, {got} and {tuple(mask.shape)}; mark unknown behaviour "
                         "log-probs NaN rather than leaving them out")


def _log_ratios(logp: torch.Tensor, logp_rollout: torch.Tensor, mask: torch.Tensor,
                mode: CorrectionMode) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log w [B, T], known [B, T] bool)``: per-token log-ratios, or each sequence's summed log-ratio on
    every one of its tokens (sequence modes); tokens of unknown behaviour log-prob contribute 0 (ratio 1)."""
    known = mask.bool() & ~torch.isnan(logp_rollout)  # [B, T]
    log_w = torch.where(known, logp.detach() - logp_rollout, torch.zeros_like(logp))  # [B, T]
    if mode.startswith("sequence"):
        log_w = log_w.sum(dim=1, keepdim=True).expand_as(log_w)  # [B, T]: log prod_t w_t
    return log_w, known


def rollout_correction(
    logp: torch.Tensor, logp_rollout: torch.Tensor, mask: torch.Tensor, mode: CorrectionMode, cap: float,
    low: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance weights for the rollout-vs-learner mismatch (docs/algorithms.md, "Rollout correction").

    Args:
        logp: ``[B, T]`` the learner's log-probs of the sampled tokens under the version that sampled them
            (logp_old; detached here). logp_rollout: ``[B, T]`` the engine's behaviour log-probs, NaN where
            unknown. mask: ``[B, T]`` 1 on loss tokens.
        mode: ``none``; ``token_truncate`` ``w_t = min(r_t, cap)`` (TIS, Yao et al. 2025); ``token_mask``
            ``w_t = r_t`` if ``low <= r_t <= cap`` else dropped; ``sequence_truncate`` / ``sequence_mask``
            the same with the sequence ratio ``r = prod_t r_t`` on all of its tokens (MIS), where
            ``r_t = exp(logp_t - logp_rollout_t)``. ``low`` applies to the mask modes only.

    Returns:
        ``(weights [B, T] float, detached, 0 off the mask and on dropped tokens; kept [B, T] bool, the loss
        tokens still carrying loss)``. A token of unknown behaviour log-prob has ratio 1: weight 1 and kept
        in token modes; in sequence modes it leaves its sequence's product unchanged.
        Dropped tokens stay in the loss normaliser (the estimator is ``E[1{r <= cap} r ...]``).
    """
    _check_arguments(logp, logp_rollout, mask, mode, cap, low)
    m = mask.bool()
    if mode == "none":
        return m.to(logp.dtype), m
    log_w, _ = _log_ratios(logp, logp_rollout, mask, mode)
    log_cap = torch.tensor(math.log(cap), dtype=log_w.dtype)
    if mode.endswith("truncate"):
        weights = torch.exp(torch.minimum(log_w, log_cap))  # [B, T] min(r, cap)
        return torch.where(m, weights, torch.zeros_like(weights)), m
    out = log_w > log_cap  # [B, T]
    if low is not None:
        out |= log_w < torch.tensor(math.log(low), dtype=log_w.dtype)
    kept = m & ~out  # [B, T]
    weights = torch.exp(log_w.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP))  # [B, T]
    return torch.where(kept, weights, torch.zeros_like(weights)), kept


@dataclass(frozen=True)
class CorrectionStats:
    """One micro-batch's correction statistics as *sums*, reduced over micro-batches and ranks by the caller.

    ratio_*: the ratio the mode applies (token ratios over known loss tokens; sequence ratios over sequences
    with a known token), before truncation or masking. tokens / sequences: loss tokens and sequences with
    a loss token; *_affected: of those, truncated (ratio above the cap) or masked. kl_sum / kl_count: the k3
    estimate of KL(rollout || learner) summed over the known loss tokens.
    """

    ratio_sum: float
    ratio_count: float
    ratio_min: float
    ratio_max: float
    tokens: float
    tokens_affected: float
    sequences: float
    sequences_affected: float
    kl_sum: float
    kl_count: float


def correction_stats(
    logp: torch.Tensor, logp_rollout: torch.Tensor, mask: torch.Tensor, mode: CorrectionMode, cap: float,
    low: float | None = None,
) -> CorrectionStats:
    """The statistics of :func:`rollout_correction` on the same inputs (``[B, T]`` each).

    KL(rollout || learner) per known token is ``exp(d) - d - 1`` with ``d = logp - logp_rollout``: the k3
    estimator (Schulman 2020) for tokens sampled from the rollout policy, >= 0 and clamped as :func:`kl_k3`.
    """
    m = mask.bool()
    log_w, known = _log_ratios(logp, logp_rollout, mask, mode)
    seq_mode = mode.startswith("sequence")
    which = (known.any(dim=1) & m.any(dim=1)) if seq_mode else known[m]  # the ratios the mode applies
    ratios = torch.exp(log_w.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP))  # [B, T]
    applied = ratios[:, 0][which] if seq_mode else ratios[m][which]
    if mode == "none":
        affected = torch.zeros_like(m)
    elif mode.endswith("truncate"):
        affected = m & (log_w > torch.tensor(math.log(cap), dtype=log_w.dtype))  # [B, T]
    else:
        affected = m & ~rollout_correction(logp, logp_rollout, mask, mode, cap, low)[1]  # [B, T]
    kl = kl_k3(logp_rollout.nan_to_num(0.0), logp.detach())[known]  # [K]
    n = applied.numel()
    return CorrectionStats(
        ratio_sum=float(applied.sum()), ratio_count=float(n),
        ratio_min=float(applied.min()) if n else math.inf, ratio_max=float(applied.max()) if n else -math.inf,
        tokens=float(m.sum()), tokens_affected=float(affected.sum()),
        sequences=float(m.any(dim=1).sum()), sequences_affected=float(affected.any(dim=1).sum()),
        kl_sum=float(kl.sum()), kl_count=float(kl.numel()))


def require_kept(tokens: float, tokens_dropped: float, mode: CorrectionMode, cap: float,
                 low: float | None = None) -> None:
    """Raise :class:`RolloutCorrectionError` when a mask mode dropped all of a step's ``tokens`` loss tokens
    (global counts): that step would train on nothing while looking like a step. Truncation drops nothing."""
    if mode.endswith("mask") and tokens > 0 and tokens_dropped >= tokens:
        bounds = f"[{low}, {cap}]" if low is not None else f"at most {cap}"
        raise RolloutCorrectionError(
            f"learner.grpo.rollout_correction={mode} dropped all {tokens:.0f} loss tokens of the step: no "
            f"ratio of learner to engine probability was {bounds} (learner.grpo.rollout_correction_cap="
            f"{cap}). The learner and the engines disagree on every sequence: check learner/logprob_mismatch "
            "(the sync alarm) and learner/correction_kl, then raise the cap or use a *_truncate mode")


def weigh(
    logp: torch.Tensor, sampling_logprobs: torch.Tensor, sampling_mask: torch.Tensor, mask: torch.Tensor,
    mode: CorrectionMode, cap: float, low: float | None = None,
) -> tuple[torch.Tensor, CorrectionStats]:
    """:func:`rollout_correction`'s weights ``[B, T]`` and :func:`correction_stats` from a collated batch's
    behaviour log-probs ``sampling_logprobs [B, T]`` (0 where unknown) and ``sampling_mask [B, T]`` (1 where
    known); ``logp``, ``mask`` as there."""
    rollout = sampling_logprobs.masked_fill(sampling_mask <= 0, float("nan"))  # [B, T], NaN where unknown
    weights, _ = rollout_correction(logp, rollout, mask, mode, cap, low)
    return weights, correction_stats(logp, rollout, mask, mode, cap, low)


def accumulate(stats: CorrectionStats, sums: dict[str, float], lows: dict[str, float],
               highs: dict[str, float]) -> None:
    """Add one micro-batch's statistics into running sums, minima and maxima (keys ``rc_*``)."""
    for key, value in dataclasses.asdict(stats).items():
        if key == "ratio_min":
            lows["rc_ratio"] = min(lows.get("rc_ratio", value), value)
        elif key == "ratio_max":
            highs["rc_ratio"] = max(highs.get("rc_ratio", value), value)
        else:
            sums[f"rc_{key}"] = sums.get(f"rc_{key}", 0.0) + value


def step_metrics(total: dict[str, float], low: dict[str, float], high: dict[str, float]) -> dict[str, float]:
    """``StepMetrics``' correction fields from the step's reduced sums (empty when the correction is off)."""
    if "rc_tokens" not in total:
        return {}
    count = total["rc_ratio_count"]
    return {"correction_ratio_mean": total["rc_ratio_sum"] / count if count else 1.0,
            "correction_ratio_min": low["rc_ratio"] if count else 1.0,
            "correction_ratio_max": high["rc_ratio"] if count else 1.0,
            "correction_token_fraction": total["rc_tokens_affected"] / max(total["rc_tokens"], 1.0),
            "correction_sequence_fraction": total["rc_sequences_affected"] / max(total["rc_sequences"], 1.0),
            "correction_kl": total["rc_kl_sum"] / max(total["rc_kl_count"], 1.0)}
