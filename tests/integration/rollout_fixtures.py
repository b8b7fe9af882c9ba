"""Helpers shared by the rollout integration tests: a non-zero LoRA adapter built with PEFT, test
images, requests and a small knowledge folder. Not collected (no test_ prefix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from learner.export import LoraArtefact
from rollout.contracts import RolloutRequest

# The KV cache of every vLLM engine a test builds with LLM() directly (engines built by rollout's VllmEngine
# take rollout.kv_cache_gib). On CPU an engine without a size asks for 0.92 of the machine's RAM and refuses to
# start when other processes hold memory (tests/architecture/test_vllm_kv_cache.py holds every call to it).
TEST_KV_CACHE_BYTES = 2**30

KNOWLEDGE_YAML = """\
version: 1
entries:
  chest_xray/nodule:
    modality: chest x-ray
    finding: nodule
    appearance: A small round well defined opacity.
    location: the upper lung zones
"""


def make_lora_adapter(model_dir: Path, out: Path, seed: int = 1, scale: float = 0.5) -> Path:
    """A rank-8 LoRA on q/k/v/o of the language model with random non-zero B (so it changes outputs).

    The vision tower's attention is named qkv/proj, so these target names leave it untouched.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    peft_model.save_pretrained(out)
    return out


def adapter_artefact(adapter_dir: Path, version: int) -> LoraArtefact:
    """The adapter directory as the in-memory artefact that travels through Ray (the learner's type)."""
    return LoraArtefact.load(adapter_dir, version=version)


def image(seed: int, size: tuple[int, int] = (130, 90)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


def requests(count: int, knowledge: bool = False) -> list[RolloutRequest]:
    return [RolloutRequest(prompt_id=f"p{i}", image=image(i, (130 + 20 * (i % 3), 90)),
                           question=f"Locate the small left upper nodule number {i}.",
                           knowledge_key="chest_xray/nodule" if knowledge else None)
            for i in range(count)]
