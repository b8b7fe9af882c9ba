"""GRPO math: hand-computed values, vectorised against loops, accumulation invariance, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from learner import grpo


def test_advantages_hand_computed() -> None:
    # rewards 1, 2, 3: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1, so A = (r - 2) / (1 + 1e-4).
    adv, zero = grpo.group_advantages(torch.tensor([[1.0, 2.0, 3.0]]))
    expected = torch.tensor([[-1.0, 0.0, 1.0]]) / (1.0 + 1e-4)
    torch.testing.assert_close(adv, expected)
    assert zero.tolist() == [False]


def test_advantages_binary_group() -> None:
    # rewards 1, 0, 0, 0: mean 0.25, unbiased var = (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5;
    # A = (0.75, -0.25, -0.25, -0.25) / 0.5001.
    adv, _ = grpo.group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / 0.5001)


def test_advantages_equal_rewards_and_single_completion_are_zero() -> None:
    # Second group spreads by 5e-7 <= 1e-6: counted as all-equal. Third group has a real spread.
    rewards = torch.tensor([[0.5, 0.5, 0.5], [0.3, 0.3 + 5e-7, 0.3], [0.0, 1.0, 0.0]])
    adv, zero = grpo.group_advantages(rewards)
    assert zero.tolist() == [True, True, False]
    assert torch.all(adv[:2] == 0)
    assert torch.all(torch.isfinite(adv))
    adv1, zero1 = grpo.group_advantages(torch.tensor([[0.7], [0.1]]))  # G = 1: no spread exists
    assert torch.all(adv1 == 0) and zero1.tolist() == [True, True]


def test_advantages_match_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(5, 8, generator=gen)
    adv, _ = grpo.group_advantages(rewards)
    for b in range(5):
        r = rewards[b].tolist()
        mean = sum(r) / 8
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / 7)
        for g in range(8):
            assert adv[b, g].item() == pytest.approx((r[g] - mean) / (std + 1e-4), rel=1e-5)


def test_kl_k3_hand_computed() -> None:
    # logp = ln 0.5, ref = ln 0.25: d = ln 0.5 = -0.693147; exp(d) - d - 1 = 0.5 + 0.693147 - 1 = 0.193147.
    kl = grpo.kl_k3(torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]]))
    assert kl.item() == pytest.approx(0.5 + math.log(2) - 1, rel=1e-6)
    assert grpo.kl_k3(torch.tensor([[-1.3]]), torch.tensor([[-1.3]])).item() == 0.0


def test_clipped_surrogate_hand_computed() -> None:
    # ratio 1.5, A=+1: min(1.5, clip(1.5, 0.9, 1.3)=1.3) = 1.3 -> loss -1.3, clipped.
    # ratio 1.5, A=-1: min(-1.5, -1.3) = -1.5 -> loss 1.5, not clipped (the pessimistic term is kept).
    # ratio 0.5, A=-1: clip to 0.9: min(-0.5, -0.9) = -0.9 -> loss 0.9, clipped.
    # ratio 0.5, A=+1: min(0.5, 0.9) = 0.5 -> loss -0.5, not clipped.
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    old = torch.zeros(1, 4)
    loss, ratio, clipped = [], [], []
    for i, a in enumerate([1.0, -1.0, -1.0, 1.0]):
        l_, r_, c_ = grpo.clipped_surrogate(logp[:, i : i + 1], old[:, i : i + 1],
                                            torch.tensor([a]), 0.1, 0.3)
        loss.append(l_.item())
        ratio.append(r_.item())
        clipped.append(bool(c_.item()))
    assert loss == pytest.approx([-1.3, 1.5, 0.9, -0.5], rel=1e-6)
    assert ratio == pytest.approx([1.5, 1.5, 0.5, 0.5], rel=1e-6)
    assert clipped == [True, False, True, False]


def test_aggregate_hand_computed() -> None:
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # GRPO: (1+2)/2 = 1.5 and 4/1 = 4 (third sequence has no tokens, contributes 0); 5.5 over 2 sequences.
    assert grpo.aggregate(loss, mask, "grpo", 2, 3).item() == pytest.approx(2.75)
    # DAPO: (1 + 2 + 4) / 3 tokens.
    assert grpo.aggregate(loss, mask, "dapo", 2, 3).item() == pytest.approx(7 / 3)


def test_grpo_loss_hand_computed_with_kl() -> None:
    # One sequence, two tokens, ratio 1, A = 0.5: surrogate -0.5 per token.
    # KL token 1: logp = ref -> 0; token 2: d = ln 0.25 - ln 0.5 = -ln 2 -> 0.5 + ln 2 - 1 = 0.193147.
    # loss = mean(-0.5 + 0.1*0, -0.5 + 0.1*0.193147) = -0.5 + 0.0096574 = -0.4903426.
    logp = torch.log(torch.tensor([[0.3, 0.5]]))
    ref = torch.log(torch.tensor([[0.3, 0.25]]))
    parts = grpo.grpo_loss(logp, logp.detach(), ref, torch.tensor([0.5]), torch.ones(1, 2), eps_low=0.2,
                           eps_high=0.2, beta=0.1, mode="grpo", num_sequences=1, num_tokens=2)
    assert parts.loss.item() == pytest.approx(-0.5 + 0.1 * (0.5 + math.log(2) - 1) / 2, rel=1e-6)
    assert parts.kl_sum == pytest.approx(0.5 + math.log(2) - 1, rel=1e-6)
    assert parts.tokens == 2 and parts.clipped_sum == 0 and parts.ratio_min == parts.ratio_max == 1.0


def _loop_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, mode):  # type: ignore[no-untyped-def]
    """The obvious nested-loop GRPO loss, in Python floats."""
    seq_means, tok_sum, tok_n, n_seq = [], 0.0, 0, 0
    for b in range(len(logp)):
        total, n = 0.0, 0
        for t in range(len(logp[b])):
            if mask[b][t] == 0:
                continue
            rho = math.exp(logp[b][t] - old[b][t])
            a = adv[b]
            surr = -min(rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a)
            d = ref[b][t] - logp[b][t]
            val = surr + beta * (math.exp(d) - d - 1)
            total, n = total + val, n + 1
        if n:
            seq_means.append(total / n)
            n_seq += 1
        tok_sum, tok_n = tok_sum + total, tok_n + n
    return sum(seq_means) / max(n_seq, 1) if mode == "grpo" else tok_sum / max(tok_n, 1)


@pytest.mark.parametrize("mode", ["grpo", "dapo"])
def test_grpo_loss_matches_loop(mode: grpo.Aggregation) -> None:
    gen = torch.Generator().manual_seed(1)
    b, t = 6, 7
    logp = -torch.rand(b, t, generator=gen) * 3
    old = logp + (torch.rand(b, t, generator=gen) - 0.5) * 0.8  # ratios from ~0.67 to ~1.5: clipping binds
    ref = logp + (torch.rand(b, t, generator=gen) - 0.5)
    adv = torch.randn(b, generator=gen)
    mask = (torch.rand(b, t, generator=gen) > 0.3).float()
    mask[2] = 0  # one empty sequence
    n_seq = grpo.sequences_with_tokens(mask)
    parts = grpo.grpo_loss(logp, old, ref, adv, mask, eps_low=0.1, eps_high=0.3, beta=0.04, mode=mode,
                           num_sequences=n_seq, num_tokens=float(mask.sum()))
    expected = _loop_loss(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(),
                          0.1, 0.3, 0.04, mode)
    assert parts.loss.item() == pytest.approx(expected, rel=1e-5)
    assert parts.clipped_sum > 0  # the random ratios exercised the clip


def test_token_logprobs_and_entropy_match_loop() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=gen)
    targets = torch.randint(0, 5, (2, 3), generator=gen)
    lp, ent = grpo.token_logprobs(logits, targets), grpo.token_entropy(logits)
    for b in range(2):
        for t in range(3):
            z = [math.exp(v) for v in logits[b, t].tolist()]
            p = [v / sum(z) for v in z]
            assert lp[b, t].item() == pytest.approx(math.log(p[targets[b, t]]), rel=1e-5)
            assert ent[b, t].item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-5)


@pytest.mark.parametrize("mode", ["grpo", "dapo"])
def test_two_half_batches_equal_full_batch(mode: grpo.Aggregation) -> None:
    """Loss values and gradients of two half-batches, normalised by global counts, add up to the full
    batch."""
    gen = torch.Generator().manual_seed(3)
    b, t = 8, 6
    base = -torch.rand(b, t, generator=gen) * 2
    ref = base + (torch.rand(b, t, generator=gen) - 0.5)
    adv = torch.randn(b, generator=gen)
    mask = (torch.rand(b, t, generator=gen) > 0.4).float()
    n_seq, n_tok = grpo.sequences_with_tokens(mask), float(mask.sum())
    kw = dict(eps_low=0.2, eps_high=0.28, beta=0.04, mode=mode, num_sequences=n_seq, num_tokens=n_tok)

    full_p = base.clone().requires_grad_(True)
    full = grpo.grpo_loss(full_p, full_p.detach(), ref, adv, mask, **kw).loss  # type: ignore[arg-type]
    full.backward()

    acc_p = base.clone().requires_grad_(True)
    total = torch.zeros(())
    for sl in (slice(0, 4), slice(4, 8)):
        part = grpo.grpo_loss(acc_p[sl], acc_p[sl].detach(), ref[sl], adv[sl], mask[sl], **kw).loss  # type: ignore[arg-type]
        part.backward()
        total = total + part.detach()
    torch.testing.assert_close(total, full.detach())
    assert full_p.grad is not None and acc_p.grad is not None
    torch.testing.assert_close(acc_p.grad, full_p.grad)


def test_empty_mask_gives_zero_loss_and_finite_gradient() -> None:
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3)
    for mode in ("grpo", "dapo"):
        parts = grpo.grpo_loss(logp, logp.detach(), logp.detach(), torch.ones(2), mask, eps_low=0.2,
                               eps_high=0.2, beta=0.04, mode=mode, num_sequences=0, num_tokens=0)  # type: ignore[arg-type]
        assert parts.loss.item() == 0.0 and parts.tokens == 0
        parts.loss.backward()
        assert logp.grad is not None and torch.all(torch.isfinite(logp.grad))
    assert grpo.sft_loss(torch.zeros(2, 3), mask, 0).item() == 0.0


def test_sft_loss_hand_computed() -> None:
    # answer tokens with p = 0.5 and 0.25 (the third position is prompt): (ln 2 + ln 4) / 2 = 1.5 ln 2.
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert grpo.sft_loss(logp, mask, 2).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)


def test_beta_without_reference_is_an_error() -> None:
    with pytest.raises(ValueError, match="ref_logp"):
        grpo.grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), None, torch.ones(1),
                       torch.ones(1, 1), eps_low=0.2,
                       eps_high=0.2, beta=0.1, mode="grpo", num_sequences=1, num_tokens=1)


def test_zero_variance_is_decided_on_the_task_signal() -> None:
    # A grounding group that failed on IoU and format: totals differ only by -0.5 * BLEU (0, 0.002, 0.001,
    # 0.003).
    # Deciding on the total would keep it and std-normalise BLEU noise to |A| ~ 1; on the task part it has
    # none.
    bleu = torch.tensor([[0.0, 0.002, 0.001, 0.003]])
    totals = -0.5 * bleu
    adv_total, zero_total = grpo.group_advantages(totals)
    assert not zero_total.item() and adv_total.abs().max() > 1.0  # the defect this guards against
    adv, zero = grpo.group_advantages(totals, torch.zeros_like(totals))
    assert zero.tolist() == [True] and torch.all(adv == 0)
    # With task signal, the shaping term still shapes: advantages come from the totals.
    task = torch.tensor([[1.5, 0.0, 0.0, 0.0]])
    adv2, zero2 = grpo.group_advantages(task - 0.5 * bleu, task)
    assert not zero2.item() and adv2[0, 1] > adv2[0, 3]  # less recitation, higher advantage


def test_reward_scaling_modes_hand_computed() -> None:
    # Two groups: [0, 1] (mean 0.5, group std 0.7071) and [0, 3] (mean 1.5, group std 2.1213).
    # batch std of (0, 1, 0, 3): mean 1, unbiased var (1 + 0 + 1 + 4) / 3 = 2, std 1.4142.
    r = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    group, _ = grpo.group_advantages(r, scale="group", eps=0.0)
    torch.testing.assert_close(group, torch.tensor([[-0.7071068, 0.7071068], [-0.7071068, 0.7071068]]))
    batch, _ = grpo.group_advantages(r, scale="batch", eps=0.0)
    torch.testing.assert_close(batch, torch.tensor([[-0.5, 0.5], [-1.5, 1.5]]) / math.sqrt(2.0))
    none, _ = grpo.group_advantages(r, scale="none")
    torch.testing.assert_close(none, torch.tensor([[-0.5, 0.5], [-1.5, 1.5]]))


def test_select_groups_keeps_signal_up_to_the_room_left() -> None:
    zero = torch.tensor([True, False, False, True, False])
    assert grpo.select_groups(zero, room=2) == [1, 2]
    assert grpo.select_groups(zero, room=10) == [1, 2, 4]
    assert grpo.select_groups(zero, room=3, drop_zero_variance=False) == [0, 1, 2]
    assert grpo.select_groups(zero, room=0) == []
    assert grpo.zero_variance_groups(torch.tensor([[0.2], [0.4]])).tolist() == [True, True]  # G = 1


def test_sampling_logits_match_a_loop() -> None:
    """Bias, then min-tokens masking, then temperature (vLLM's order), per position."""
    from learner.batch import SamplingSpec

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 9, generator=gen)  # [B, T, V]
    start = torch.tensor([1, 3])  # completion 0 starts at position 1, completion 1 at position 3
    spec = SamplingSpec(temperature=0.3, suppressed_token_ids=(7, 8), min_new_tokens=2, eos_token_ids=(0, 5))
    out = grpo.sampling_logits(logits, spec, start)
    for b in range(2):
        for t in range(6):
            row = logits[b, t].clone()
            row[[7, 8]] += -100.0
            if 0 <= t - int(start[b]) < 2:
                row[[0, 5]] = float("-inf")
            torch.testing.assert_close(out[b, t], row / 0.3)
    assert not torch.equal(out, logits) and logits.isfinite().all()  # the input is left untouched
    # entropy of a distribution with forbidden tokens is finite (0 * log 0 counts as 0)
    assert torch.isfinite(grpo.token_entropy(out)).all()
    plain = grpo.sampling_logits(logits, SamplingSpec(), start)
    assert torch.equal(plain, logits)


def test_kl_k3_is_clamped() -> None:
    # ref -2, logp -30: d = 28, exp(28) - 29 = 1.4e12 unclamped; clamped at d = 20 and then at 10 (verl).
    kl = grpo.kl_k3(torch.tensor([[-30.0]]), torch.tensor([[-2.0]]))
    assert kl.item() == 10.0
    small = grpo.kl_k3(torch.tensor([[-1.0]]), torch.tensor([[-1.5]]))  # d = -0.5: exp(-0.5) + 0.5 - 1
    assert small.item() == pytest.approx(math.exp(-0.5) - 0.5, rel=1e-6)
