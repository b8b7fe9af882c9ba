"""Expert similarity (MLAE's diversity measure): hand values, the factorised form against flattened
outer products, and invariance to per-expert scales."""

from __future__ import annotations

import math

import torch

from learner.expert_similarity import adapter_expert_similarity, expert_cosine, mean_pairwise


def test_hand_value() -> None:
    # a_0 = (1, 0), a_1 = (1, 1): cos = 1/sqrt(2); b_0 = (1, 0), b_1 = (1, 1) (columns of B): cos = 1/sqrt(2).
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    cos = expert_cosine(a, b)
    assert math.isclose(float(cos[0, 1]), 0.5, rel_tol=1e-12)  # (1/sqrt 2) * (1/sqrt 2)
    assert math.isclose(float(cos[0, 0]), 1.0, rel_tol=1e-12)
    assert math.isclose(mean_pairwise(cos), 0.5, rel_tol=1e-12)


def test_matches_flattened_outer_products() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g).double(), torch.randn(6, 5, generator=g).double()
    cos = expert_cosine(a, b)
    experts = [torch.outer(b[:, i], a[i]).flatten().double() for i in range(5)]
    for i in range(5):
        for j in range(5):
            want = float(experts[i] @ experts[j] / (experts[i].norm() * experts[j].norm()))
            assert math.isclose(float(cos[i, j]), want, rel_tol=1e-9, abs_tol=1e-12)


def test_scale_invariance_and_orthogonal_experts() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 8, generator=g), torch.randn(3, 4, generator=g)
    lam = torch.tensor([0.5, 2.0, 3.0, 0.1])  # lambda folded into B on export: |cos| must not change
    assert torch.allclose(expert_cosine(a, b * lam), expert_cosine(a, b))
    ortho = torch.eye(4, 8)
    assert mean_pairwise(expert_cosine(ortho, b)) == 0.0


def test_zero_experts_are_skipped_and_layers_averaged() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # expert 2 never moved (B column zero)
    sd = {"m.l0.lora_A.weight": a, "m.l0.lora_B.weight": b,
          "m.l1.lora_A.weight": torch.eye(2), "m.l1.lora_B.weight": torch.eye(2)}
    out = adapter_expert_similarity(sd)
    assert out["layers"] == 2.0
    assert math.isclose(out["expert_cos_abs"], (0.5 + 0.0) / 2, rel_tol=1e-12)
