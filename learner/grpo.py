"""GRPO math as pure torch functions (docs/algorithms.md, "GRPO").

Shapes: B sequences (or B prompt groups of G completions for advantages), T completion-aligned token
positions. Every function takes and returns tensors; none holds state or knows about DeepSpeed, so the
engine, the tests and a plain-torch benchmark loop all call the same code.

Loss normalisation is by *global* counts passed in by the caller (number of sequences with at least one
loss token, or number of loss tokens, summed over micro-batches and ranks). The per-micro-batch losses then
add up to the full-batch loss exactly, which is what makes gradient accumulation and several data-parallel
ranks equal to one big batch.

The rollout-vs-learner correction's weights (``learner/correction.py``) multiply the surrogate through
``grpo_loss(correction=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from learner.batch import SamplingSpec

Aggregation = Literal["grpo", "dapo", "dr_grpo"]
RatioLevel = Literal["token", "sequence"]
RewardScaling = Literal["group", "batch", "none"]
SUPPRESS_BIAS = -100.0  # the engines' logit bias on vision tokens (rollout/engine_vllm.py)
KL_LOG_RATIO_CLAMP = 20.0  # |ref - logp| bound before exp, and the k3 cap below (as verl's low_var_kl)
KL_MAX = 10.0


def group_advantages(
    rewards: torch.Tensor,
    signal: torch.Tensor | None = None,
    *,
    scale: RewardScaling = "group",
    eps: float = 1e-4,
    equal_tol: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages ``A_i = (r_i - mean_group(r)) / (std + eps)`` (docs/algorithms.md, GRPO).

    Args:
        rewards: ``[B, G]`` total reward of each of G completions of B prompts.
        signal: ``[B, G]`` the part of the reward that carries the task (accuracy, format, grade), which
            decides whether a group has any spread; defaults to ``rewards``. A shaping term such as the
            recitation BLEU can differ by 0.001 inside a group that failed the task: deciding on the total
            would keep that group and scale its noise to advantages of about +-1.
        scale: the std divided by: ``group`` the group's unbiased std (GRPO), ``batch`` the unbiased std of
            all B x G rewards (TRL ``scale_rewards="batch"``), ``none`` no division (Dr. GRPO).
        eps: added to the std. equal_tol: a group whose ``signal`` spans at most this is "all equal".

    Returns:
        ``(advantages [B, G], zero_variance [B] bool)``; zero-variance groups get zero advantage. A group
        of one completion (G = 1) has no spread, so it is zero-variance.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    signal = rewards if signal is None else signal
    if signal.shape != rewards.shape:
        raise ValueError(f"signal {tuple(signal.shape)} must have the shape of rewards "
                         f"{tuple(rewards.shape)}")
    rewards = rewards.float()
    zero_var = zero_variance_groups(signal, equal_tol)  # [B]
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards), zero_var
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # [B, G]
    match scale:
        case "group":
            adv = centred / (rewards.std(dim=1, unbiased=True, keepdim=True) + eps)  # [B, G]
        case "batch":
            adv = centred / (rewards.std(unbiased=True) + eps) if rewards.numel() > 1 else centred
        case "none":
            adv = centred
    adv = torch.where(zero_var[:, None], torch.zeros_like(adv), adv)
    return adv, zero_var


def zero_variance_groups(signal: torch.Tensor, equal_tol: float = 1e-6) -> torch.Tensor:
    """``[B, G]`` task rewards -> ``[B]`` bool: groups whose rewards span at most ``equal_tol`` (no signal).

    A group of one completion has no spread, so it is zero-variance.
    """
    if signal.dim() != 2:
        raise ValueError(f"signal must be [B, G], got shape {tuple(signal.shape)}")
    if signal.shape[1] < 2:
        return torch.ones(signal.shape[0], dtype=torch.bool)
    spread: torch.Tensor = signal.max(dim=1).values - signal.min(dim=1).values  # [B]
    return spread <= equal_tol


def select_groups(zero_variance: torch.Tensor, room: int, drop_zero_variance: bool = True) -> list[int]:
    """DAPO dynamic sampling for one generation round: indices of the groups a step keeps, in order.

    ``zero_variance [B]`` from :func:`zero_variance_groups`; at most ``room`` groups are kept (the batch's
    remaining slots); zero-variance groups are skipped when ``drop_zero_variance`` (they would carry no
    gradient), so the driver refills their slots with fresh prompts.

    >>> select_groups(torch.tensor([False, True, False, False]), room=2)
    [0, 2]
    """
    candidates = [i for i, z in enumerate(zero_variance.tolist()) if not (z and drop_zero_variance)]
    return candidates[: max(room, 0)]


def sampling_logits(logits: torch.Tensor, spec: SamplingSpec, completion_start: torch.Tensor) -> torch.Tensor:
    """The logits of the distribution the engine sampled from: ``[B, T, V]`` -> ``[B, T, V]`` float32.

    Mirrors vLLM's sampler order (logit processors, then temperature): -100 on ``spec.suppressed_token_ids``,
    -inf on ``spec.eos_token_ids`` at the first ``spec.min_new_tokens`` completion positions (position
    ``completion_start[b]`` predicts completion token 0), then division by ``spec.temperature``. Log-probs
    and the entropy of the result are those of the sampling distribution (docs/algorithms.md, GRPO).
    """
    out = logits.float()
    if not (spec.suppressed_token_ids or spec.min_new_tokens > 0 or spec.temperature != 1.0):
        return out
    out = out.clone() if out is logits else out  # one [B, T, V] copy, then in place (a 152k vocab is large)
    if spec.suppressed_token_ids:
        out[..., list(spec.suppressed_token_ids)] += SUPPRESS_BIAS
    if spec.min_new_tokens > 0:
        pos = torch.arange(out.shape[1], device=out.device)[None,
                                                            :] - completion_start.to(out.device)[:, None]
        early = (pos >= 0) & (pos < spec.min_new_tokens)  # [B, T]
        eos = list(spec.eos_token_ids)
        out[..., eos] = out[..., eos].masked_fill(early[..., None], float("-inf"))
    if spec.temperature != 1.0:
        out.div_(spec.temperature)
    return out


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token: ``logits [B, T, V]``, ``targets [B, T]`` -> ``[B, T]`` float32.

    Uses ``gather - logsumexp`` rather than a full ``log_softmax`` so only one ``[B, T, V]`` float32 copy
    of the logits exists at a time.
    """
    logits = logits.float()
    picked = torch.gather(logits, dim=-1, index=targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return picked - torch.logsumexp(logits, dim=-1)  # [B, T]


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution: ``logits [B, T, V]`` -> ``[B, T]`` float32 (nats).

    Tokens with logit -inf (forbidden by ``sampling_logits``) contribute 0, not NaN.
    """
    p = torch.softmax(logits.float(), dim=-1)  # [B, T, V]
    plogp: torch.Tensor = torch.special.xlogy(p, p)  # [B, T, V], 0 where p = 0
    return -plogp.sum(dim=-1)  # [B, T]


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(policy || reference) per token: ``exp(d) - d - 1`` with ``d = ref - logp``.

    Shapes ``[B, T]`` -> ``[B, T]``; always >= 0 and exactly 0 where the two log-probs agree. ``d`` is
    clamped to +-20 and the estimate to at most 10 (verl's ``low_var_kl``): one token whose log-prob fell
    from -2 to -30 would otherwise give 1.4e12 and set the direction of the whole clipped step.
    """
    d = (ref_logp - logp).clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)  # [B, T]
    return (torch.exp(d) - d - 1.0).clamp(max=KL_MAX)


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


def sequence_surrogate(
    logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GSPO's sequence-level surrogate (Zheng et al. 2025, arXiv 2507.18071, eq. 5-7), as ``[B, T]`` tokens.

    ``s_i = exp(mean_t m_t (logp - logp_old))`` (the geometric mean of the token ratios of sequence i) is
    clipped per sequence: ``-min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)``, the same value on every
    token of the sequence, so a sequence-mean aggregation gives GSPO's per-sequence objective and its
    gradient ``A_i grad s_i = A_i s_i mean_t grad logp_t``. Shapes as :func:`clipped_surrogate`, and
    ``mask [B, T]``.
    """
    m = mask.to(logp.dtype)
    log_s = ((logp - logp_old) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # [B]
    ratio = torch.exp(log_s)[:, None].expand_as(logp)  # [B, T], gradient through every masked token
    adv = advantages[:, None].to(ratio.dtype)  # [B, 1]
    unclipped = ratio * adv  # [B, T]
    clipped_val = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv  # [B, T]
    return -torch.minimum(unclipped, clipped_val), ratio.detach(), clipped_val < unclipped


def aggregate(
    loss_tok: torch.Tensor, mask: torch.Tensor, mode: Aggregation, num_sequences: float, num_tokens: float,
    constant_length: float | None = None,
) -> torch.Tensor:
    """Reduce per-token losses ``[B, T]`` under ``mask [B, T]`` to this micro-batch's share of the loss.

    GRPO: each sequence's token-mean, summed, divided by ``num_sequences`` (global count of sequences with
    at least one loss token). DAPO: all masked tokens summed, divided by ``num_tokens`` (global). Dr. GRPO
    (Liu et al. 2025, arXiv 2503.20783, eq. 3): all masked tokens summed, divided by the constant
    ``constant_length * num_sequences`` (the completion-length budget), so no length enters the weights.
    A sequence with an empty mask contributes exactly 0; zero global counts give 0, never NaN.
    """
    mask = mask.to(loss_tok.dtype)
    match mode:
        case "grpo":
            per_seq_tokens = mask.sum(dim=1)  # [B]
            per_seq = (loss_tok * mask).sum(dim=1) / per_seq_tokens.clamp(min=1.0)  # [B]
            return per_seq.sum() / max(num_sequences, 1.0)
        case "dapo":
            return (loss_tok * mask).sum() / max(num_tokens, 1.0)
        case "dr_grpo":
            if constant_length is None or constant_length <= 0:
                raise ValueError(f"aggregation dr_grpo needs constant_length > 0 (the completion-length "
                                 f"budget, rollout.sampling.max_new_tokens), got {constant_length}")
            return (loss_tok * mask).sum() / (constant_length * max(num_sequences, 1.0))
    raise ValueError(f"unknown aggregation {mode!r}; use grpo, dapo or dr_grpo")


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
    ratio_level: RatioLevel = "token",
    correction: torch.Tensor | None = None,
    constant_length: float | None = None,
) -> LossParts:
    """The GRPO loss of one micro-batch: (corrected) clipped surrogate plus ``beta * k3 KL``, aggregated.

    Args:
        logp: ``[B, T]`` current log-probs (with gradient). logp_old: ``[B, T]`` (detached).
        ref_logp: ``[B, T]`` reference log-probs (the stage's starting adapter, or the base), or None when
            ``beta == 0``.
        advantages: ``[B]``. mask: ``[B, T]`` 1 on completion tokens that carry loss.
        num_sequences / num_tokens / constant_length: normalisers (see :func:`aggregate`).
        ratio_level: ``token`` (GRPO's per-token ratio) or ``sequence`` (GSPO, :func:`sequence_surrogate`).
        correction: ``[B, T]`` detached weights of :func:`rollout_correction`, multiplying the surrogate (not
            the KL term), or None for none.
    """
    if ratio_level == "sequence":
        surrogate, ratio, clipped = sequence_surrogate(logp, logp_old, advantages, mask, eps_low, eps_high)
    else:
        surrogate, ratio, clipped = clipped_surrogate(logp, logp_old, advantages, eps_low, eps_high)
    if correction is not None:
        surrogate = surrogate * correction.detach()  # [B, T]
    if beta > 0.0:
        if ref_logp is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_logp (the reference policy's log-probs)")
        kl = kl_k3(logp, ref_logp)  # [B, T]
        loss_tok = surrogate + beta * kl
    else:
        kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
        loss_tok = surrogate
    loss = aggregate(loss_tok, mask, mode, num_sequences, num_tokens, constant_length)
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
