"""Adapter export: an MLAE (or plain LoRA) PEFT model becomes a standard LoRA adapter.

This is the weight-sync contract of docs/architecture.md ("Backends"): after each step the learner exports the
adapter, ships
one `LoraArtefact` through the object store, and rollout workers (vLLM's LoRA loader) and serving load it.

MLAE layer `B diag(lambda * m_fixed) A` (scaling 1) -> LoRA with A' = A, B' = B diag(lambda * m_fixed),
lora_alpha = r. A plain LoRA layer `scaling * B A` -> A' = A, B' = scaling * B, lora_alpha = r too, so every
artefact has scaling 1 and a reader never needs rank/alpha patterns.

Key names are PEFT's, as `save_pretrained` writes them: `base_model.model.<module path>.lora_A.weight`,
where the module path is the transformers one (`model.language_model.layers.N.self_attn.q_proj` for
Qwen2/2.5-VL in transformers 5). vLLM loads these names unchanged: its Qwen2/2.5-VL models map the HF
prefixes onto their own modules (checked by tests/integration/test_mlae_vllm.py), so no renaming happens.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learner.adapter_files import VERSION_FILE

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LoraArtefact:
    """One exported adapter version.

    version: the adapter version (vLLM LoRA int id and the tag each completion carries), >= 0.
    tensors: PEFT key -> CPU tensor; `...lora_A.weight` shape (r, in), `...lora_B.weight` shape (out, r).
    peft_config: the adapter_config.json content (peft_type LORA, r, lora_alpha == r, target_modules, ...).
    """

    version: int
    tensors: dict[str, torch.Tensor] = field(repr=False)
    peft_config: dict[str, Any]

    def save(self, out: str | Path) -> Path:
        """Write a standard PEFT adapter directory (weights, config, our version file); return it."""
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(out / ADAPTER_WEIGHTS),
                  metadata={"format": "pt"})
        (out / ADAPTER_CONFIG).write_text(json.dumps(self.peft_config, indent=2, sort_keys=True) + "\n")
        (out / VERSION_FILE).write_text(json.dumps({"version": self.version}) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path, version: int | None = None) -> LoraArtefact:
        """Read a PEFT LoRA adapter directory; version from our version file unless given."""
        from safetensors.torch import load_file

        path = Path(path)
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name} is missing: {path} is not a PEFT adapter directory")
        if version is None:
            if not (path / VERSION_FILE).is_file():
                raise FileNotFoundError(f"{path / VERSION_FILE} is missing; pass version= explicitly")
            version = int(json.loads((path / VERSION_FILE).read_text())["version"])
        return cls(version=version, tensors=load_file(str(path / ADAPTER_WEIGHTS)),
                   peft_config=json.loads((path / ADAPTER_CONFIG).read_text()))


@contextlib.contextmanager
def _gathered(params: list[nn.Parameter]) -> Iterator[None]:
    """Gather DeepSpeed ZeRO-3 partitioned parameters for reading; a no-op otherwise.

    Collective under ZeRO-3: every rank must call `export_lora` (all ranks enter the gather).
    """
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed  # only reached under ZeRO-3, where DeepSpeed is already loaded

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def _lora_layers(peft_model: nn.Module, adapter: str) -> dict[str, Any]:
    """LoRA layers by module name; typed Any because PEFT's layers are untyped mixins."""
    from peft.tuners.lora.layer import LoraLayer

    return {n: m for n, m in peft_model.named_modules()
            if isinstance(m, LoraLayer) and adapter in m.lora_A}


def export_lora(peft_model: nn.Module, version: int, adapter_name: str = "default") -> LoraArtefact:
    """Export `adapter_name` of an MLAE or plain LoRA PEFT model as a scaling-1 LoRA artefact (fp32, CPU).

    `peft_model` is the `PeftModel`, or a wrapper that holds it as `.module` (DeepSpeed engine, DDP).
    Under ZeRO-3 call it on every rank.
    """
    inner = peft_model._modules.get("module")  # _modules: no __getattr__ forwarding into PEFT/HF models
    if isinstance(inner, nn.Module):
        peft_model = inner
    from peft.tuners.lora.layer import LoraLayer

    from learner.mlae import MLAELinear

    layers = _lora_layers(peft_model, adapter_name)
    if not layers:
        raise ValueError(f"no LoRA/MLAE layer carries adapter {adapter_name!r}; pass the PeftModel "
                         "returned by apply_mlae or get_peft_model (for DeepSpeed, engine.module)")
    # Only the adapter's own weights: gathering the partitioned base weights too would cost a full copy.
    params = [p for m in layers.values() for attr in m.adapter_layer_names if hasattr(m, attr)
              and adapter_name in getattr(m, attr) for p in getattr(m, attr)[adapter_name].parameters()]
    tensors: dict[str, torch.Tensor] = {}
    rank: int | None = None
    with _gathered(params):
        for name, layer in layers.items():
            a = layer.lora_A[adapter_name].weight.detach().float()     # [r, in]
            b = layer.lora_B[adapter_name].weight.detach().float()     # [out, r]
            if isinstance(layer, MLAELinear):
                b = b * layer.expert_scales(adapter_name).detach()       # [out, r] * [r]
            else:
                if layer.lora_variant.get(adapter_name) is not None or layer.lora_bias[adapter_name]:
                    raise ValueError(f"{name}: LoRA variants (DoRA, ...) and lora_bias have no plain LoRA "
                                     "form")
                b = b * float(layer.scaling[adapter_name])
            if rank is not None and a.shape[0] != rank:
                raise ValueError(f"{name}: rank {a.shape[0]} differs from {rank}; rank patterns are not "
                                 "exported")
            rank = a.shape[0]
            prefix = name if name.startswith("base_model.model.") else f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = a.cpu().clone()
            tensors[f"{prefix}.lora_B.weight"] = b.cpu().clone()
    assert rank is not None
    base: Any = getattr(peft_model, "get_base_model", lambda: peft_model)()
    module_paths = [k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                    for k in tensors if k.endswith(".lora_A.weight")]
    short = sorted({p.rsplit(".", 1)[-1] for p in module_paths})
    # Short names when they pick exactly the exported modules (vision MLPs share names with the language
    # model's, so an MLP adapter needs full paths to leave the vision tower alone when PEFT loads it).
    same_named = {n for n, m in base.named_modules()
                  if n.rsplit(".", 1)[-1] in short and isinstance(m, (nn.Linear, LoraLayer))}
    exact = same_named == set(module_paths)
    peft_config = _plain_lora_config(rank, short if exact else sorted(module_paths),
                                     str(getattr(getattr(base, "config", None), "_name_or_path", "") or ""))
    return LoraArtefact(version=version, tensors=tensors, peft_config=peft_config)


def _plain_lora_config(rank: int, target_modules: list[str], base_model: str) -> dict[str, Any]:
    """adapter_config.json of a plain LoRA with scaling 1, as PEFT's own LoraConfig writes it."""
    from peft import LoraConfig

    cfg = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", target_modules=target_modules,
                     base_model_name_or_path=base_model or None, inference_mode=True)
    d = cfg.to_dict()  # type: ignore[no-untyped-call]
    for k, v in d.items():
        if isinstance(v, set):
            d[k] = sorted(v)
    out: dict[str, Any] = json.loads(json.dumps(d, default=str))
    return out
