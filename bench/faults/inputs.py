"""Inputs the fault bench and the integration tests share: a non-zero LoRA adapter built with PEFT and the
artefact it travels as, test images, rollout requests, and reward batches on which the MedLoc-R1 schedule
moves. One copy each; tests import them from here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from learner.export import LoraArtefact
from rewards import ImageFrame, RewardTarget
from rollout.contracts import RolloutRequest

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# The KV cache of every vLLM engine built with LLM() directly (engines built by rollout's VllmEngine take
# rollout.kv_cache_gib). On CPU an engine without a size asks for 0.92 of the machine's RAM and refuses to
# start when other processes hold memory (tests/architecture/test_vllm_kv_cache.py holds every call to it).
TEST_KV_CACHE_BYTES = 2**30


def make_lora_adapter(model_dir: Path, out: Path, seed: int = 1, scale: float = 0.5, rank: int = 8) -> Path:
    """A LoRA of rank `rank` on q/k/v/o of the language model with random non-zero B (so it changes outputs).

    The vision tower's attention is named qkv/proj, so these target names leave it untouched.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=16, target_modules=list(LORA_TARGETS)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    peft_model.save_pretrained(str(out))
    return out


def adapter_artefact(adapter_dir: Path, version: int) -> LoraArtefact:
    """The adapter directory as the in-memory artefact that travels through Ray (the learner's type)."""
    return LoraArtefact.load(adapter_dir, version=version)


def image(seed: int, size: tuple[int, int] = (130, 90)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


def requests(count: int, knowledge: bool = False) -> list[RolloutRequest]:
    """`count` requests on images of three sizes; with `knowledge`, each asks for the knowledge entry
    `chest_xray/nodule` (the caller's knowledge folder must hold it)."""
    return [RolloutRequest(prompt_id=f"p{i}", image=image(i, (130 + 20 * (i % 3), 90)),
                           question=f"Locate the small left upper nodule number {i}.",
                           knowledge_key="chest_xray/nodule" if knowledge else None)
            for i in range(count)]


def seeded_requests(count: int) -> list[RolloutRequest]:
    """`requests(count)`, each with its own sampling seed: a repeated call must answer identically."""
    return [dataclasses.replace(r, seed=1000 + i) for i, r in enumerate(requests(count))]


FRAME = ImageFrame(200.0, 100.0, 400.0, 200.0, "input_pixels")
TARGET = RewardTarget("grounding", boxes=((10.0, 10.0, 50.0, 50.0),), frame=FRAME, knowledge="round opacity")


def reward_group(x2: int) -> tuple[list[str], RewardTarget]:
    # Model boxes (20, 20, x2, 100) -> original (10, 10, x2/2, 50): IoU (x2/2 - 10) / 40; 4 of 5 parse,
    # so a group's mean reward is 0.8 while its IoUs clear tau: enough (P = 0.80) for the schedule to move.
    answer = f"<think>look</think><answer>{{\"bbox_2d\": [20, 20, {x2}, 100]}}</answer>"
    return [answer] * 4 + ["oops"], TARGET


# Six batches of three groups (IoU 1.0, 0.875, 0.75): the reward actor's tests and the bench's reward row.
REWARD_BATCHES = [[reward_group(100), reward_group(90), reward_group(80)] for _ in range(6)]
