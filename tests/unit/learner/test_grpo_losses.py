"""The loss variants behind the presets: GSPO's sequence ratio, Dr. GRPO's constant normaliser, and the
correction weights in grpo_loss. Hand-computed values, loops written from the papers' formulas, gradients
against the papers' analytic gradients, and the edge cases (length 1, empty sequences, G = 2)."""

from __future__ import annotations

import math

import pytest
import torch

from learner import grpo


def test_gspo_hand_computed() -> None:
    # Token log-ratios ln 1.21 and 0: s = exp(ln 1.21 / 2) = 1.1. A = +1, eps 0.05: clip(1.1) = 1.05 < 1.1,
    # so the sequence's loss is -1.05 on each token (clipped); with A = -1: min(-1.1, -1.05) = -1.1 -> 1.1.
    logp = torch.tensor([[math.log(1.21), 0.0, 5.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding: it never enters s
    loss, ratio, clipped = grpo.sequence_surrogate(logp, old, torch.tensor([1.0]), mask, 0.05, 0.05)
    assert loss[0, :2].tolist() == pytest.approx([-1.05, -1.05]) and clipped[0, :2].all()
    assert ratio[0, 0].item() == pytest.approx(1.1)
    loss, _, clipped = grpo.sequence_surrogate(logp, old, torch.tensor([-1.0]), mask, 0.05, 0.05)
    assert loss[0, :2].tolist() == pytest.approx([1.1, 1.1]) and not clipped[0, :2].any()


def _gspo_loop(logp: list[list[float]], old: list[list[float]], adv: list[float], mask: list[list[float]],
               eps_low: float, eps_high: float) -> float:
    """GSPO eq. 5 in Python floats: mean over sequences of -min(s_i A_i, clip(s_i) A_i), with
    s_i = (prod_t pi/pi_old)^(1/|y_i|) over the sequence's loss tokens."""
    terms = []
    for b in range(len(logp)):
        toks = [t for t in range(len(logp[b])) if mask[b][t] > 0]
        if not toks:
            continue
        s = math.exp(sum(logp[b][t] - old[b][t] for t in toks) / len(toks))
        a = adv[b]
        terms.append(-min(s * a, min(max(s, 1 - eps_low), 1 + eps_high) * a))
    return sum(terms) / max(len(terms), 1)


def test_gspo_loss_matches_loop_and_its_gradient_is_the_papers() -> None:
    gen = torch.Generator().manual_seed(0)
    b, t = 6, 5
    base = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 2
    old = base + (torch.rand(b, t, generator=gen, dtype=torch.float64) - 0.5) * 0.02
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    mask = (torch.rand(b, t, generator=gen) > 0.3).double()
    mask[2] = 0
    n_seq = grpo.sequences_with_tokens(mask)
    logp = base.clone().requires_grad_(True)
    parts = grpo.grpo_loss(logp, old, None, adv, mask, eps_low=3e-4, eps_high=4e-4, beta=0.0, mode="grpo",
                           num_sequences=n_seq, num_tokens=float(mask.sum()), ratio_level="sequence")
    expected = _gspo_loop(base.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 3e-4, 4e-4)
    assert parts.loss.item() == pytest.approx(expected, rel=1e-9)
    assert parts.clipped_sum > 0  # tiny eps: some sequences are clipped
    parts.loss.backward()
    assert logp.grad is not None
    # GSPO eq. 7: an unclipped sequence's gradient is -A_i s_i / |y_i| on each of its loss tokens, / n_seq;
    # a clipped one has none.
    live_seen = 0
    for i in range(b):
        toks = mask[i] > 0
        if not toks.any():
            assert torch.all(logp.grad[i] == 0)
            continue
        s = math.exp(float(((base[i] - old[i]) * mask[i]).sum() / mask[i].sum()))
        a = float(adv[i])
        live = min(max(s, 1 - 3e-4), 1 + 4e-4) * a >= s * a  # the unclipped term is the minimum
        live_seen += live
        want = -a * s / float(mask[i].sum()) / n_seq if live else 0.0
        torch.testing.assert_close(logp.grad[i][toks],
                                   torch.full((int(toks.sum()),), want, dtype=torch.float64))
        assert torch.all(logp.grad[i][~toks] == 0)
    assert 0 < live_seen < n_seq  # both kinds of sequence were checked


def test_gspo_on_length_one_sequences_is_token_grpo() -> None:
    gen = torch.Generator().manual_seed(1)
    logp, old = -torch.rand(5, 1, generator=gen), -torch.rand(5, 1, generator=gen)
    adv, mask = torch.randn(5, generator=gen), torch.ones(5, 1)
    kw = dict(eps_low=0.1, eps_high=0.2, beta=0.0, mode="grpo", num_sequences=5, num_tokens=5)
    seq = grpo.grpo_loss(logp, old, None, adv, mask, ratio_level="sequence", **kw)  # type: ignore[arg-type]
    tok = grpo.grpo_loss(logp, old, None, adv, mask, ratio_level="token", **kw)  # type: ignore[arg-type]
    assert seq.loss.item() == pytest.approx(tok.loss.item()) and seq.clipped_sum == tok.clipped_sum


def test_dr_grpo_hand_computed_and_length_free() -> None:
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # (1 + 2 + 4) / (L = 4 * 2 sequences) = 7 / 8; GRPO would give (1.5 + 4) / 2, DAPO 7 / 3.
    assert grpo.aggregate(loss, mask, "dr_grpo", 2, 3, constant_length=4).item() == pytest.approx(7 / 8)
    with pytest.raises(ValueError, match="constant_length"):
        grpo.aggregate(loss, mask, "dr_grpo", 2, 3)
    # Every loss token of every sequence has gradient weight 1 / (L * n): no length enters (Dr. GRPO section
    # 3.1).
    tok = torch.zeros(2, 3, requires_grad=True)
    grpo.aggregate(tok, mask, "dr_grpo", 2, 3, constant_length=4).backward()
    assert tok.grad is not None
    torch.testing.assert_close(tok.grad, mask / 8)


@pytest.mark.parametrize("mode", ["grpo", "dapo", "dr_grpo"])
def test_two_half_batches_equal_full_batch_with_correction(mode: grpo.Aggregation) -> None:
    """Accumulation invariance holds for every aggregation with correction weights (global normalisers)."""
    gen = torch.Generator().manual_seed(3)
    b, t = 8, 6
    base = -torch.rand(b, t, generator=gen) * 2
    old = base + (torch.rand(b, t, generator=gen) - 0.5) * 0.4
    adv = torch.randn(b, generator=gen)
    mask = (torch.rand(b, t, generator=gen) > 0.4).float()
    weights = torch.rand(b, t, generator=gen) * 2 * mask
    kw = dict(eps_low=0.2, eps_high=0.28, beta=0.0, mode=mode, num_sequences=grpo.sequences_with_tokens(mask),
              num_tokens=float(mask.sum()), constant_length=6)
    full_p = base.clone().requires_grad_(True)
    full = grpo.grpo_loss(full_p, old, None, adv, mask, correction=weights, **kw).loss  # type: ignore[arg-type]
    full.backward()
    acc_p = base.clone().requires_grad_(True)
    total = torch.zeros(())
    for sl in (slice(0, 4), slice(4, 8)):
        part = grpo.grpo_loss(acc_p[sl], old[sl], None, adv[sl], mask[sl], correction=weights[sl], **kw).loss  # type: ignore[arg-type]
        part.backward()
        total = total + part.detach()
    torch.testing.assert_close(total, full.detach())
    assert full_p.grad is not None and acc_p.grad is not None
    torch.testing.assert_close(acc_p.grad, full_p.grad)


def test_correction_weights_multiply_the_surrogate_not_the_kl() -> None:
    # One sequence, 2 tokens, ratio 1, A = 0.5: surrogate -0.5 each. Weights 2 and 0 (a dropped token).
    # KL: token 1 zero, token 2 0.5 + ln 2 - 1 (logp ln 0.5, ref ln 0.25).
    # grpo: mean(2 * -0.5 + 0.1 * 0, 0 * -0.5 + 0.1 * 0.193147) = (-1 + 0.0193147) / 2.
    logp = torch.log(torch.tensor([[0.3, 0.5]]))
    ref = torch.log(torch.tensor([[0.3, 0.25]]))
    parts = grpo.grpo_loss(logp, logp.detach(), ref, torch.tensor([0.5]), torch.ones(1, 2), eps_low=0.2,
                           eps_high=0.2, beta=0.1, mode="grpo", num_sequences=1, num_tokens=2,
                           correction=torch.tensor([[2.0, 0.0]]))
    assert parts.loss.item() == pytest.approx((-1.0 + 0.1 * (0.5 + math.log(2) - 1)) / 2, rel=1e-6)


def test_group_of_two_advantages_are_plus_minus_one_over_sqrt2() -> None:
    # G = 2, rewards 0 and 1: mean 0.5, unbiased std sqrt(0.5) = 0.7071: A = -+0.5 / (0.7071 + 1e-4).
    adv, zero = grpo.group_advantages(torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(adv, torch.tensor([[-0.5, 0.5]]) / (math.sqrt(0.5) + 1e-4))
    assert zero.tolist() == [False]
    none, _ = grpo.group_advantages(torch.tensor([[0.0, 1.0]]), scale="none")  # Dr. GRPO: centred only
    torch.testing.assert_close(none, torch.tensor([[-0.5, 0.5]]))
