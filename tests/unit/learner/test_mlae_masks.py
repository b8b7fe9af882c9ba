"""MLAE masks: depth schedules, fixed masks, the stochastic keep rate."""

from __future__ import annotations

import pytest
import torch

from learner.mlae_masks import fixed_keep_mask, layer_index, layer_rate, stochastic_mask


def test_layer_index_reads_decoder_depth() -> None:
    assert layer_index("model.language_model.layers.7.self_attn.q_proj") == 7
    assert layer_index("lm_head") is None


def test_layer_rate_schedules_by_hand() -> None:
    # 3 layers: pos = 0/2, 1/2, 2/2 = 0, 0.5, 1.
    assert [layer_rate(0.5, i, 3, "uniform") for i in range(3)] == [0.5, 0.5, 0.5]
    assert [layer_rate(0.5, i, 3, "increasing") for i in range(3)] == [0.0, 0.25, 0.5]   # 0.5 * pos
    assert [layer_rate(0.5, i, 3, "decreasing") for i in range(3)] == [0.5, 0.25, 0.0]   # 0.5 * (1 - pos)
    assert layer_rate(0.4, 0, 1, "increasing") == 0.4  # a single layer counts as the deepest
    with pytest.raises(ValueError, match="outside"):
        layer_rate(0.5, 3, 3, "uniform")


def test_fixed_mask_is_seeded_per_layer_and_drops_floor_of_r_times_rate() -> None:
    keep = fixed_keep_mask(8, 0.4, seed=1, module_name="layers.0.q_proj")
    assert keep.tolist().count(0.0) == 3  # floor(8 * 0.4) = floor(3.2) = 3
    assert torch.equal(keep, fixed_keep_mask(8, 0.4, seed=1, module_name="layers.0.q_proj"))
    others = [fixed_keep_mask(8, 0.4, seed=s, module_name=f"layers.{i}.q_proj") for s in range(3)
              for i in range(4)]
    assert len({tuple(k.tolist()) for k in others}) > 1  # seed and name both move the choice
    assert torch.equal(fixed_keep_mask(8, 0.0, 1, "x"), torch.ones(8))


def test_stochastic_mask_values_and_empirical_keep_rate() -> None:
    torch.manual_seed(0)
    p = 0.3
    draws = torch.stack([stochastic_mask(8, p, torch.device("cpu")) for _ in range(5000)])  # [5000, 8]
    assert torch.all((draws == 0) | torch.isclose(draws, torch.tensor(1 / (1 - p))))
    keep_rate = (draws > 0).float().mean().item()
    # 40000 Bernoulli(0.7) draws: std of the mean = sqrt(0.7 * 0.3 / 40000) = 0.0023; allow 4 std.
    assert abs(keep_rate - (1 - p)) < 0.01
    # Inverted scaling keeps the expected mask at 1: mean of 40000 entries within ~4 std (0.0023 / 0.7).
    assert abs(draws.mean().item() - 1.0) < 0.015
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        stochastic_mask(8, 1.0, torch.device("cpu"))
