"""The rollout-vs-learner correction (TIS / MIS): hand-computed values from the definitions, a loop written
from the papers' formulas, the edge cases (unknown behaviour log-probs, all tokens masked, a sequence of
length 1, a ratio exactly at the cap), the statistics, and the all-dropped error."""

from __future__ import annotations

import math

import pytest
import torch

from learner import correction
from learner.correction import CorrectionMode

NAN = float("nan")
MODES: tuple[CorrectionMode, ...] = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def _close(t: torch.Tensor, expected: list[list[float]] | list[float]) -> None:
    torch.testing.assert_close(t, torch.tensor(expected, dtype=t.dtype))


def _lp(*probs: float) -> torch.Tensor:
    return torch.log(torch.tensor([list(probs)], dtype=torch.float64))


def test_token_modes_hand_computed() -> None:
    # Learner 0.5, 0.9, 0.2 against engine 0.25, 0.9, 0.8: ratios 2, 1, 0.25.
    logp, rollout, mask = _lp(0.5, 0.9, 0.2), _lp(0.25, 0.9, 0.8), torch.ones(1, 3)
    w, kept = correction.rollout_correction(logp, rollout, mask, "token_truncate", cap=1.5)
    _close(w, [[1.5, 1.0, 0.25]])  # min(r, 1.5); nothing is dropped
    assert kept.tolist() == [[True, True, True]]
    w, kept = correction.rollout_correction(logp, rollout, mask, "token_mask", cap=1.5, low=0.5)
    _close(w, [[0.0, 1.0, 0.0]])  # 2 > 1.5 and 0.25 < 0.5 dropped; 1 keeps weight 1
    assert kept.tolist() == [[False, True, False]]
    w, kept = correction.rollout_correction(logp, rollout, mask, "token_mask", cap=3.0)
    _close(w, [[2.0, 1.0, 0.25]])  # MIS keeps the ratio itself where it is kept
    assert kept.all()


def test_sequence_modes_hand_computed() -> None:
    # Sequence 0: ratios 2, 1, 0.25 -> product 0.5. Sequence 1: ratios 2, 2, 1 -> product 4.
    logp = torch.cat([_lp(0.5, 0.9, 0.2), _lp(0.4, 0.6, 0.3)])
    rollout = torch.cat([_lp(0.25, 0.9, 0.8), _lp(0.2, 0.3, 0.3)])
    mask = torch.ones(2, 3)
    w, kept = correction.rollout_correction(logp, rollout, mask, "sequence_truncate", cap=3.0)
    _close(w, [[0.5] * 3, [3.0] * 3])  # min(0.5, 3), min(4, 3) on every token
    assert kept.all()
    w, kept = correction.rollout_correction(logp, rollout, mask, "sequence_mask", cap=3.0)
    _close(w, [[0.5] * 3, [0.0] * 3])  # 4 > 3: the whole sequence is dropped
    assert kept.tolist() == [[True] * 3, [False] * 3]
    w, kept = correction.rollout_correction(logp, rollout, mask, "sequence_mask", cap=5.0, low=0.6)
    assert kept.tolist() == [[False] * 3, [True] * 3]  # 0.5 < 0.6 dropped, 4 <= 5 kept with weight 4
    assert w[1].tolist() == pytest.approx([4.0] * 3)


def test_padding_unknown_tokens_and_none() -> None:
    # Token 2 is padding (mask 0); token 1's behaviour log-prob is unknown (NaN): ratio 1, kept.
    logp, rollout = _lp(0.5, 0.3, 0.9), torch.tensor([[math.log(0.25), NAN, math.log(0.1)]],
                                                     dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    w, kept = correction.rollout_correction(logp, rollout, mask, "token_mask", cap=3.0)
    _close(w, [[2.0, 1.0, 0.0]])
    assert kept.tolist() == [[True, True, False]]
    # Sequence ratio: only the known loss token counts (2); padding's ratio of 9 is ignored.
    w, _ = correction.rollout_correction(logp, rollout, mask, "sequence_truncate", cap=3.0)
    _close(w, [[2.0, 2.0, 0.0]])
    # No known token at all: ratio 1.
    w, kept = correction.rollout_correction(logp, torch.full((1, 3), NAN, dtype=torch.float64), mask,
                                            "sequence_mask", cap=1.0)
    _close(w, [[1.0, 1.0, 0.0]])
    assert kept.tolist() == [[True, True, False]]
    w, kept = correction.rollout_correction(logp, rollout, mask, "none", cap=3.0)
    assert w.tolist() == [[1.0, 1.0, 0.0]] and kept.tolist() == [[True, True, False]]


def test_ratio_exactly_at_the_cap_is_kept_and_truncates_to_the_cap() -> None:
    # float32 log 3 against 0: the ratio is the cap itself (compared in the tensors' dtype, not rounded up).
    logp, rollout, mask = torch.tensor([[math.log(3.0)]]), torch.zeros(1, 1), torch.ones(1, 1)
    for mode in MODES:
        w, kept = correction.rollout_correction(logp, rollout, mask, mode, cap=3.0, low=None)
        assert kept.item() and w.item() == pytest.approx(3.0, rel=1e-6), mode
    w, kept = correction.rollout_correction(torch.tensor([[math.log(0.5)]]), rollout, mask,
                                            "token_mask", cap=3.0,
                                            low=0.5)
    assert kept.item() and w.item() == pytest.approx(0.5)  # exactly at the lower bound: kept


def test_length_one_sequence_modes_equal_token_modes() -> None:
    gen = torch.Generator().manual_seed(0)
    logp, rollout = -torch.rand(6, 1, generator=gen) * 2, -torch.rand(6, 1, generator=gen) * 2
    mask = torch.ones(6, 1)
    for kind in ("truncate", "mask"):
        tok = correction.rollout_correction(logp, rollout, mask, f"token_{kind}", cap=1.5, low=0.7)  # type: ignore[arg-type]
        seq = correction.rollout_correction(logp, rollout, mask, f"sequence_{kind}", cap=1.5, low=0.7)  # type: ignore[arg-type]
        torch.testing.assert_close(tok[0], seq[0])
        assert torch.equal(tok[1], seq[1])


def _loop(logp: list[list[float]], rollout: list[list[float]], mask: list[list[float]], mode: str, cap: float,
          low: float | None) -> list[list[float]]:
    """The weights from the definitions, in Python floats: TIS min(r, C), MIS r * 1{low <= r <= C}, with r a
    token's ratio or its sequence's product of ratios (unknown tokens count as ratio 1)."""
    out = []
    for b in range(len(logp)):
        known = [mask[b][t] > 0 and not math.isnan(rollout[b][t]) for t in range(len(logp[b]))]
        seq = math.exp(sum(logp[b][t] - rollout[b][t] for t in range(len(logp[b])) if known[t]))
        row = []
        for t in range(len(logp[b])):
            if mask[b][t] == 0:
                row.append(0.0)
                continue
            r = seq if mode.startswith("sequence") else (math.exp(logp[b][t] - rollout[b][t])
                                                         if known[t] else 1.0)
            if mode.endswith("truncate"):
                row.append(min(r, cap))
            else:
                row.append(r if r <= cap and (low is None or r >= low) else 0.0)
        out.append(row)
    return out


@pytest.mark.parametrize("mode", MODES)
def test_matches_loop(mode: CorrectionMode) -> None:
    gen = torch.Generator().manual_seed(1)
    logp = -torch.rand(7, 5, generator=gen, dtype=torch.float64) * 2
    rollout = logp + (torch.rand(7, 5, generator=gen, dtype=torch.float64) - 0.5) * 0.9
    rollout[0, 1] = NAN  # one unknown behaviour log-prob
    mask = (torch.rand(7, 5, generator=gen) > 0.25).double()
    mask[3] = 0  # one empty sequence
    low = 0.6 if mode.endswith("mask") else None
    w, kept = correction.rollout_correction(logp, rollout, mask, mode, cap=1.3, low=low)
    expected = _loop(logp.tolist(), rollout.tolist(), mask.tolist(), mode, 1.3, low)
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64))
    assert torch.equal(kept, (torch.tensor(expected) > 0) if mode.endswith("mask") else mask.bool())
    if mode.endswith("mask"):
        assert 0 < int(kept.sum()) < int(mask.sum())  # the bounds bit
    else:
        assert bool(torch.isclose(w, torch.tensor(1.3, dtype=w.dtype)).any())  # the cap bit
    assert not w.requires_grad


def test_weights_are_detached() -> None:
    logp = torch.zeros(1, 2, requires_grad=True)
    w, _ = correction.rollout_correction(logp, torch.full((1, 2), -1.0), torch.ones(1, 2),
                                         "token_truncate", 3.0)
    assert not w.requires_grad


def test_stats_hand_computed() -> None:
    # Ratios 2, 1, 0.25 (sequence 0) and an empty sequence 1. token_mask, cap 1.5, low 0.5: 2 and 0.25
    # dropped.
    # k3 of KL(rollout || learner) with d = logp - rollout: d = ln 2 -> 2 - ln 2 - 1; d = 0 -> 0;
    # d = ln 0.25 -> 0.25 + ln 4 - 1.
    logp = torch.cat([_lp(0.5, 0.9, 0.2), _lp(0.5, 0.5, 0.5)])
    rollout = torch.cat([_lp(0.25, 0.9, 0.8), _lp(0.5, 0.5, 0.5)])
    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    s = correction.correction_stats(logp, rollout, mask, "token_mask", cap=1.5, low=0.5)
    assert (s.ratio_sum, s.ratio_count, s.ratio_min, s.ratio_max) == pytest.approx((3.25, 3, 0.25, 2.0))
    assert (s.tokens, s.tokens_affected, s.sequences, s.sequences_affected) == (3, 2, 1, 1)
    kl = (2 - math.log(2) - 1) + 0.0 + (0.25 + math.log(4) - 1)
    assert (s.kl_sum, s.kl_count) == pytest.approx((kl, 3))
    # Sequence mode: one ratio per sequence (0.5), truncation at 0.4 touches all 3 tokens of it.
    s = correction.correction_stats(logp, rollout, mask, "sequence_truncate", cap=0.4)
    assert (s.ratio_sum, s.ratio_count, s.tokens_affected,
            s.sequences_affected) == pytest.approx((0.5, 1, 3, 1))


def test_kl_estimate_converges_to_the_exact_kl() -> None:
    """Tokens drawn from the rollout distribution p; the mean k3 of q/p estimates KL(p || q) = sum p log
    p/q."""
    gen = torch.Generator().manual_seed(2)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.4, 0.4, 0.1, 0.1], dtype=torch.float64)
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=gen)[None, :]  # [1, N]
    s = correction.correction_stats(q.log()[tokens], p.log()[tokens],
                                    torch.ones_like(tokens, dtype=torch.float64),
                                    "token_truncate", cap=3.0)
    exact = float((p * (p / q).log()).sum())  # 0.0469...
    assert s.kl_sum / s.kl_count == pytest.approx(exact, rel=0.05)


def test_all_masked_and_all_dropped() -> None:
    logp, rollout = _lp(0.9, 0.9), _lp(0.1, 0.1)  # ratio 9 per token, 81 per sequence
    empty = torch.zeros(1, 2)
    for mode in MODES:
        w, kept = correction.rollout_correction(logp, rollout, empty, mode, cap=3.0)
        assert not w.any() and not kept.any()
        s = correction.correction_stats(logp, rollout, empty, mode, cap=3.0)
        assert (s.tokens, s.ratio_count, s.kl_count) == (0, 0, 0)
        correction.require_kept(s.tokens, s.tokens_affected, mode, 3.0)  # no loss tokens: nothing to refuse
    s = correction.correction_stats(logp, rollout, torch.ones(1, 2), "sequence_mask", cap=3.0)
    assert s.tokens_affected == s.tokens == 2
    with pytest.raises(correction.RolloutCorrectionError,
                       match=r"dropped all 2 loss tokens.*rollout_correction_cap=3"):
        correction.require_kept(s.tokens, s.tokens_affected, "sequence_mask", 3.0)
    correction.require_kept(2, 2, "sequence_truncate", 3.0)  # truncation drops nothing


def test_weigh_reads_collated_behaviour_logprobs() -> None:
    # Collated batches hold 0 where the behaviour log-prob is unknown, with sampling_mask 0 there.
    logp = _lp(0.5, 0.5)
    w, stats = correction.weigh(logp, torch.tensor([[math.log(0.25), 0.0]], dtype=torch.float64),
                                torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), "token_truncate", 3.0)
    _close(w, [[2.0, 1.0]])
    assert stats.ratio_count == 1


def test_accumulate_and_metrics() -> None:
    logp, rollout, mask = _lp(0.5, 0.9), _lp(0.25, 0.9), torch.ones(1, 2)  # ratios 2, 1
    sums: dict[str, float] = {}
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    for _ in range(2):  # two micro-batches
        correction.accumulate(correction.correction_stats(logp, rollout, mask, "token_mask", 1.5),
                              sums, lows, highs)
    m = correction.step_metrics(sums, lows, highs)
    assert m == pytest.approx({"correction_ratio_mean": 1.5, "correction_ratio_min": 1.0,
                               "correction_ratio_max": 2.0,
                               "correction_token_fraction": 0.5, "correction_sequence_fraction": 1.0,
                               "correction_kl": (2 - math.log(2) - 1) / 2})
    assert correction.step_metrics({"loss": 1.0}, {}, {}) == {}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "bogus"}, "use one of none, token_truncate"),
    ({"cap": 0.0}, "a finite ratio >= 1"),
    ({"cap": 0.5}, "a finite ratio >= 1"),
    ({"cap": math.inf}, "a finite ratio >= 1"),
    ({"low": 5.0}, "a ratio in \\(0, 1\\]"),
    ({"logp_rollout": None}, "mark unknown behaviour log-probs NaN"),
    ({"logp_rollout": torch.zeros(1, 2)}, "of one shape \\[B, T\\]"),
])
def test_direct_callers_get_one_line_for_what_the_config_refuses(kwargs: dict[str, object],
                                                                message: str) -> None:
    args: dict[str, object] = {"logp": _lp(0.5, 0.5, 0.5), "logp_rollout": _lp(0.5, 0.5, 0.5),
                               "mask": torch.ones(1, 3), "mode": "sequence_mask", "cap": 3.0, **kwargs}
    with pytest.raises(ValueError, match=message) as err:
        correction.rollout_correction(**args)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
