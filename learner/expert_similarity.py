"""Expert similarity of a LoRA-form adapter: the MLAE paper's diversity measure (docs/algorithms.md, "MLAE").

Each adapted layer `delta_W = sum_i b_i a_i^T` is r rank-1 experts. The cosine similarity of two experts,
as flattened matrices, factorises: cos(b_i a_i^T, b_j a_j^T) = cos(a_i, a_j) * cos(b_i, b_j), so it is
blind to the per-expert scale lambda_i (folded into B on export) up to its sign. MLAE's claim is that
masking experts makes them less alike than plain LoRA's rank components; we report the mean |cos| over
expert pairs i < j of each layer, averaged over layers (and the signed mean beside it).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def expert_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of the rank-1 experts b_i a_i^T.

    a: [r, in] (LoRA A), b: [out, r] (LoRA B, any per-expert scale folded in). Returns [r, r]; rows and
    columns of an all-zero expert are NaN (an expert that never moved has no direction).
    """
    a = a.detach().double()
    b = b.detach().double()
    na = a.norm(dim=1)  # [r]
    nb = b.norm(dim=0)  # [r]
    ga = (a @ a.T) / torch.outer(na, na)  # [r, r] cos(a_i, a_j)
    gb = (b.T @ b) / torch.outer(nb, nb)  # [r, r] cos(b_i, b_j)
    return ga * gb


def mean_pairwise(cos: torch.Tensor, absolute: bool = True) -> float:
    """Mean over pairs i < j of `cos` [r, r] (|cos| when `absolute`), skipping NaN pairs; NaN if none."""
    r = cos.shape[0]
    iu = torch.triu_indices(r, r, offset=1)
    vals = cos[iu[0], iu[1]]
    vals = vals[~torch.isnan(vals)]
    if vals.numel() == 0:
        return float("nan")
    return float((vals.abs() if absolute else vals).mean())


def adapter_expert_similarity(tensors: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Layer-averaged expert similarity of a PEFT LoRA state dict (`...lora_A.weight` [r, in] and
    `...lora_B.weight` [out, r] per layer): `expert_cos_abs` (mean |cos|), `expert_cos_signed`, `layers`."""
    abs_vals, signed_vals = [], []
    for key, a in sorted(tensors.items()):
        if not key.endswith("lora_A.weight"):
            continue
        b = tensors[key.replace("lora_A.weight", "lora_B.weight")]
        cos = expert_cosine(a, b)
        m_abs, m_signed = mean_pairwise(cos), mean_pairwise(cos, absolute=False)
        if m_abs == m_abs:  # not NaN
            abs_vals.append(m_abs)
            signed_vals.append(m_signed)
    if not abs_vals:
        return {"expert_cos_abs": float("nan"), "expert_cos_signed": float("nan"), "layers": 0.0}
    return {"expert_cos_abs": sum(abs_vals) / len(abs_vals),
            "expert_cos_signed": sum(signed_vals) / len(signed_vals),
            "layers": float(len(abs_vals))}
