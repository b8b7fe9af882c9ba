"""Grouped LoRA ops for vLLM's CPU backend: one matmul per adapter slot instead of one weight copy per token.

vLLM's CPU backend applies LoRA with its PyTorch reference ops (`vllm/lora/ops/torch_ops/lora_ops.py`,
from vllm-project/vllm#11100): `bgmv_shrink`, `bgmv_expand` and `bgmv_expand_slice` gather each token's
adapter matrix (`weights[indices]`, shape [T, out, in]) and contract it with an einsum. The gather copies the
matrix once per token: at the vs-TRL shapes (8 prompts x 8 completions x 64 tokens, the small model, 2 cores)
LoRA took 2 of the 3 s of a batch's generation, 1.0 s without an adapter (docs/environment.md, "vLLM on CPU").

A rollout batch uses one adapter (the policy's), so every token of a step shares one slot. The ops here
group the tokens by slot and run one matmul per slot present: the same products, summed in another order
(float32 results agree to rounding, tests/unit/rollout/test_vllm_cpu_lora.py). Slot -1 (a request without
an adapter) indexes the last slot, as the reference's `weights[indices]` does. A call the grouped path does
not cover (no rows, or an index tensor whose length differs from the rows) goes to vLLM's own op, which
broadcasts it or raises.

`register()`, a vLLM general plugin (pyproject.toml), swaps them in on the CPU platform only, in every process
vLLM starts (GPUs use vLLM's Triton kernels), and each process logs one line at the first LoRA call.
`VLLM_PLUGINS` names the plugins vLLM loads: a list without `medground_cpu_lora` runs vLLM's own ops
(`VLLM_PLUGINS=""` turns off every plugin, vLLM's LoRA resolvers included).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("vllm.plugins.medground_cpu_lora")  # prints where vLLM logs
REFERENCE: dict[str, Any] = {}  # vLLM's own ops, by name (filled by install(), or on first use)
_ANNOUNCED: list[bool] = []  # one log line per process, at the first call


def _reference(name: str) -> Any:
    """vLLM's own op `name` (the one install() replaced, or the module's while it is not installed)."""
    if name not in REFERENCE:
        from vllm.lora.ops.torch_ops import lora_ops

        REFERENCE[name] = getattr(lora_ops, name)
    return REFERENCE[name]


def _grouped(op: Callable[..., None]) -> Callable[..., None]:
    """The grouped op for one index per input row; any other call (no rows, or an index tensor whose
    length differs from the rows, which vLLM's op broadcasts or refuses) goes to vLLM's own op."""

    @functools.wraps(op)
    def call(inputs: torch.Tensor, weights: torch.Tensor, output: torch.Tensor, indices: torch.Tensor,
             *args: Any, **kwargs: Any) -> None:
        if not _ANNOUNCED:  # at first use: vLLM configures its logging after it loads plugins
            _ANNOUNCED.append(True)
            log.info("LoRA runs on medground's grouped CPU ops (rollout/vllm_cpu_lora.py; leave "
                     "medground_cpu_lora out of VLLM_PLUGINS to run vLLM's own)")
        if inputs.shape[0] == 0 or indices.shape[0] != inputs.shape[0]:
            return _reference(op.__name__)(inputs, weights, output, indices, *args, **kwargs)  # type: ignore[no-any-return]
        return op(inputs, weights, output, indices, *args, **kwargs)

    return call


def _groups(indices: torch.Tensor) -> list[tuple[int, Any]]:
    """(slot, rows) for each slot present; rows is a slice when every token has the same slot."""
    first = int(indices[0])
    if bool((indices == first).all()):
        return [(first, slice(None))]
    return [(int(slot), (indices == slot).nonzero(as_tuple=True)[0]) for slot in torch.unique(indices)]


def _matrices(weights: torch.Tensor) -> torch.Tensor:
    """[slots, out, in] from vLLM's [slots, 1, out, in] or [slots, out, in] stacks."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def _products(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
              dtype: torch.dtype) -> torch.Tensor:
    """out[t] = weights[indices[t]] @ inputs[t], shape [T, out], in `dtype`."""
    mats = _matrices(weights)
    x = inputs.to(dtype)
    out = torch.empty(x.shape[0], mats.shape[1], dtype=dtype, device=x.device)
    for slot, rows in _groups(indices):
        out[rows] = x[rows] @ mats[slot].to(dtype).T
    return out


@_grouped
def bgmv_shrink(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, scaling: float = 1.0) -> None:
    """output[:, :rank] = scaling * x @ A[slot].T (vLLM's signature: A arrives as `lora_b_weights`)."""
    outputs = _products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


@_grouped
def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, add_inputs: bool = True) -> None:
    """output[:, :n] (+)= x @ B[slot].T over the columns both have (the reference's padding rule)."""
    outputs = _products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


@_grouped
def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      lora_indices_tensor: torch.Tensor, slice_offset: int, slice_size: int,
                      add_inputs: bool = True) -> None:
    """output[:, offset:offset + size] (+)= x @ B[slot].T (one slice of a merged q/k/v or gate/up)."""
    outputs = _products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


OPS = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}


def install() -> None:
    """Swap the grouped ops into vLLM's torch ops module (its sgmv_* call them) and its CPU punica wrapper
    (which imported them by name). Idempotent."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if all(getattr(punica_cpu, name) is op for name, op in OPS.items()):
        return
    for name, op in OPS.items():
        _reference(name)
        for module in (lora_ops, punica_cpu):
            setattr(module, name, op)


def register() -> None:
    """vLLM's general-plugin hook (pyproject.toml, `vllm.general_plugins`): vLLM calls it in every process
    that builds an engine, the engine-core child included; it installs the ops on the CPU platform only."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        install()
