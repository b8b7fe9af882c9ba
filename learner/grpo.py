"""GRPO math as pure torch functions (ALGORITHMS.md section 1).

Shapes: B sequences (or B prompt groups of G completions for advantages), T completion-aligned token
positions. Every function takes and returns tensors; none holds state or knows about DeepSpeed, so the
engine, the tests and a plain-torch benchmark loop all call the same code.

Loss normalisation is by *global* counts passed in by the caller (number of sequences with at least one
loss token, or number of loss tokens, summed over micro-batches and ranks). The per-micro-batch losses then
add up to the full-batch loss exactly, which is what makes gradient accumulation and several data-parallel
ranks equal to one big batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Aggregation = Literal["grpo", "dapo"]


def group_advantages(
    rewards: torch.Tensor, eps: float = 1e-4, equal_tol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-normalised advantages ``A_i = (r_i - mean) / (std_unbiased + eps)``.

    Args:
        rewards: ``[B, G]`` total reward of each of G completions of B prompts.
        eps: added to the group's unbiased standard deviation.
        equal_tol: a group whose rewards span at most this (max - min) is "all equal": zero advantage.

    Returns:
        ``(advantages [B, G], zero_variance [B] bool)``. A group of one completion (G = 1) has no spread,
        so it is zero-variance and gets zero advantage (torch's unbiased std of one value would be NaN).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    rewards = rewards.float()
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards), torch.ones(rewards.shape[0], dtype=torch.bool)
    zero_var = (rewards.max(dim=1).values - rewards.min(dim=1).values) <= equal_tol  # [B]
    mean = rewards.mean(dim=1, keepdim=True)  # [B, 1]
    std = rewards.std(dim=1, unbiased=True, keepdim=True)  # [B, 1]
    adv = (rewards - mean) / (std + eps)  # [B, G]
    adv = torch.where(zero_var[:, None], torch.zeros_like(adv), adv)
    return adv, zero_var


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token: ``logits [B, T, V]``, ``targets [B, T]`` -> ``[B, T]`` float32.

    Uses ``gather - logsumexp`` rather than a full ``log_softmax`` so only one ``[B, T, V]`` float32 copy
    of the logits exists at a time.
    """
    logits = logits.float()
    picked = torch.gather(logits, dim=-1, index=targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return picked - torch.logsumexp(logits, dim=-1)  # [B, T]


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution: ``logits [B, T, V]`` -> ``[B, T]`` float32 (nats)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    return -(logp.exp() * logp).sum(dim=-1)  # [B, T]


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(policy || reference) per token: ``exp(d) - d - 1`` with ``d = ref - logp``.

    Shapes ``[B, T]`` -> ``[B, T]``; always >= 0 and exactly 0 where the two log-probs agree.
    """
    d = ref_logp - logp  # [B, T]
    return torch.exp(d) - d - 1.0


def clipped_surrogate(
    logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO/GRPO surrogate loss ``-min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A)``.

    Args:
        logp, logp_old: ``[B, T]`` current and behaviour log-probs of the sampled tokens.
        advantages: ``[B]`` one advantage per sequence, broadcast over its tokens.

    Returns:
        ``(loss [B, T], ratio [B, T] detached, clipped [B, T] bool)`` where ``clipped`` marks tokens whose
        clipped term was the smaller one (they carry no gradient).
    """
    ratio = torch.exp(logp - logp_old)  # [B, T]
    adv = advantages[:, None].to(ratio.dtype)  # [B, 1]
    unclipped = ratio * adv  # [B, T]
    clipped_val = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv  # [B, T]
    loss = -torch.minimum(unclipped, clipped_val)  # [B, T]
    clipped = clipped_val < unclipped  # [B, T]: the clip bound is active
    return loss, ratio.detach(), clipped


def aggregate(
    loss_tok: torch.Tensor, mask: torch.Tensor, mode: Aggregation, num_sequences: float, num_tokens: float
) -> torch.Tensor:
    """Reduce per-token losses ``[B, T]`` under ``mask [B, T]`` to this micro-batch's share of the loss.

    GRPO: each sequence's token-mean, summed, divided by ``num_sequences`` (global count of sequences with
    at least one loss token). DAPO: all masked tokens summed, divided by ``num_tokens`` (global). A sequence
    with an empty mask contributes exactly 0; zero global counts give 0, never NaN.
    """
    mask = mask.to(loss_tok.dtype)
    if mode == "grpo":
        per_seq_tokens = mask.sum(dim=1)  # [B]
        per_seq = (loss_tok * mask).sum(dim=1) / per_seq_tokens.clamp(min=1.0)  # [B]
        return per_seq.sum() / max(num_sequences, 1.0)
    return (loss_tok * mask).sum() / max(num_tokens, 1.0)


@dataclass(frozen=True)
class LossParts:
    """One micro-batch's loss and metric *sums* (floats), reduced over micro-batches and ranks by the caller.

    ``loss`` is this micro-batch's share of the global loss (a scalar tensor with gradient); the ``*_sum``
    fields are sums over loss tokens, so dividing by the global token count gives token means.
    """

    loss: torch.Tensor
    tokens: float
    kl_sum: float
    clipped_sum: float
    ratio_sum: float
    ratio_min: float
    ratio_max: float


def grpo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    beta: float,
    mode: Aggregation,
    num_sequences: float,
    num_tokens: float,
) -> LossParts:
    """The GRPO loss of one micro-batch: clipped surrogate plus ``beta * k3 KL``, aggregated.

    Args:
        logp: ``[B, T]`` current log-probs (with gradient). logp_old: ``[B, T]`` (detached).
        ref_logp: ``[B, T]`` adapter-off reference log-probs, or None when ``beta == 0``.
        advantages: ``[B]``. mask: ``[B, T]`` 1 on completion tokens that carry loss.
        num_sequences / num_tokens: global normalisers (see :func:`aggregate`).
    """
    surrogate, ratio, clipped = clipped_surrogate(logp, logp_old, advantages, eps_low, eps_high)
    if beta > 0.0:
        if ref_logp is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_logp (the adapter-off log-probs)")
        kl = kl_k3(logp, ref_logp)  # [B, T]
        loss_tok = surrogate + beta * kl
    else:
        kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
        loss_tok = surrogate
    loss = aggregate(loss_tok, mask, mode, num_sequences, num_tokens)
    m = mask.bool()
    n = float(m.sum().item())
    big = torch.finfo(ratio.dtype).max
    return LossParts(
        loss=loss,
        tokens=n,
        kl_sum=float(kl.detach()[m].sum().item()),
        clipped_sum=float(clipped[m].sum().item()),
        ratio_sum=float(ratio[m].sum().item()),
        ratio_min=float(ratio[m].min().item()) if n > 0 else big,
        ratio_max=float(ratio[m].max().item()) if n > 0 else -big,
    )


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, num_tokens: float) -> torch.Tensor:
    """Cross-entropy on reference-answer tokens: ``-sum(logp * mask) / num_tokens`` (global token mean).

    ``logp [B, T]`` log-probs of the answer tokens, ``mask [B, T]`` 1 on answer tokens.
    """
    return -(logp * mask.to(logp.dtype)).sum() / max(num_tokens, 1.0)


def sequences_with_tokens(mask: torch.Tensor) -> int:
    """How many rows of ``mask [B, T]`` have at least one loss token (the GRPO normaliser's share)."""
    return int((mask.sum(dim=1) > 0).sum().item())
