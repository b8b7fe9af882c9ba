"""MLAE expert masks as pure functions (docs/algorithms.md, "MLAE").

A mask is a float vector of shape (r,) over the r rank-1 experts of one adapted layer. It multiplies the
per-expert scales lambda, so a zero entry removes an expert from the forward pass and, because the product
is zero, from the backward pass too: a dropped expert gets exactly zero gradient in that step.

- stochastic: drawn once per forward call per layer, shared by the batch, entries 0 or 1/(1-p) (inverted
  scaling, as `torch.nn.functional.dropout` does), so the expected update is unchanged.
- fixed: floor(r * rate) experts chosen once from a seed and the layer's name, off for good (training and
  inference). No rescaling: those experts simply do not exist.
- mixed: the product of the two.

Layer-wise rates follow the schedules of the paper's ablation as a third-party re-implementation writes them
(github.com/EWitting/csir-biomass, `MLAE_README.md`; the paper's own definitions were not available): with
pos = layer / (L - 1), increasing gives rate * pos, decreasing rate * (1 - pos). The stated rate is
therefore the rate of the last (increasing) or first (decreasing) layer.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Literal

import torch

Schedule = Literal["uniform", "increasing", "decreasing"]

_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def layer_index(module_name: str) -> int | None:
    """Depth of a decoder-layer module from its name (`...layers.7.self_attn.q_proj` -> 7), or None."""
    found = _LAYER_INDEX.search(f".{module_name}.")
    return int(found.group(1)) if found else None


def layer_rate(rate: float, layer: int, num_layers: int, schedule: Schedule) -> float:
    """The drop rate of layer `layer` (0-based) out of `num_layers` under a depth schedule.

    Example: rate 0.5, 3 layers, increasing -> 0.0, 0.25, 0.5 (pos = 0, 0.5, 1).
    """
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer {layer} is outside 0..{num_layers - 1}; pass the model's decoder layer "
                         "count")
    pos = layer / (num_layers - 1) if num_layers > 1 else 1.0
    match schedule:
        case "uniform":
            return rate
        case "increasing":
            return rate * pos
        case "decreasing":
            return rate * (1.0 - pos)


def fixed_keep_mask(rank: int, drop_fraction: float, seed: int, module_name: str) -> torch.Tensor:
    """Shape (rank,) float32 of 0/1: floor(rank * drop_fraction) experts off, chosen from seed and name.

    The name enters through CRC32 (stable across processes, unlike `hash`), so every rank of a distributed
    run and every reload of a checkpoint switches off the same experts.
    """
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"fixed drop fraction must be in [0, 1), got {drop_fraction}")
    n_off = math.floor(rank * drop_fraction)
    keep = torch.ones(rank, dtype=torch.float32)
    if n_off:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(module_name.encode()))
        keep[torch.randperm(rank, generator=gen)[:n_off]] = 0.0
    return keep


def stochastic_mask(rank: int, p: float, device: torch.device) -> torch.Tensor:
    """Shape (rank,) float32: each entry 0 with probability p, else 1/(1-p). Uses the global RNG of `device`.

    Drawing from the device's global generator (not a private one) is what lets activation checkpointing
    replay the same mask: `torch.utils.checkpoint` saves and restores exactly that RNG state.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"stochastic drop rate must be in [0, 1), got {p}")
    keep = torch.empty(rank, dtype=torch.float32, device=device).bernoulli_(1.0 - p)
    return keep / (1.0 - p)
