"""Real widths on one CUDA GPU (`make gpu-check`): the Qwen2.5-VL-3B and Qwen3-VL-4B shapes (random bf16
weights built on the GPU, the real Qwen tokenizer, 4 text layers) through the DeepSpeed learner (ZeRO-2,
MLAE rank 64 on attention and MLP) and transformers generation. bench/shapes.py measures the 3B shape
at full depth; these check that each family's real layout trains, exports and generates on CUDA.

They fail rather than skip without CUDA (see test_learner_gpu.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _cuda() -> None:
    if not torch.cuda.is_available():
        pytest.fail("no CUDA device visible to torch: run `make gpu-check` on a GPU machine")
    if os.environ.get("DS_ACCELERATOR") != "cuda":
        pytest.fail("DS_ACCELERATOR must be 'cuda' for GPU tests (tools/gpu_check.sh sets it)")


@pytest.mark.parametrize(("shape", "width"), [("qwen2_5_vl_3b", 2048), ("qwen3_vl_4b", 2560)])
def test_real_shape_trains_exports_and_generates_in_bf16(shape: str, width: int, tmp_path: Path) -> None:
    from bench.learner import make_batch
    from bench.shapes import generate
    from learner.config import LearnerConfig
    from learner.engine import LearnerEngine
    from rollout.images import FAMILIES
    from services.models.shapes import REAL
    from services.models.tiny import build_model_dir

    model_dir = build_model_dir(tmp_path / shape, shape=shape, layers=4, dtype="bfloat16", device="cuda",  # type: ignore[arg-type]
                                min_pixels=224 * 224, max_pixels=224 * 224)
    samples = make_batch(model_dir, 4, 32, 224)
    family = REAL[shape].family  # type: ignore[index]
    cfg = LearnerConfig(micro_batch_size=4, lr=1e-3, mlae={"rank": 64, "target_modules": FAMILIES[family].lora_modules})  # type: ignore[arg-type]  # noqa: E501
    engine = LearnerEngine(model_dir, cfg)
    try:
        assert engine.bf16 and engine.device.type == "cuda"
        sft = [engine.sft_step(samples).loss for _ in range(3)]
        grpo = engine.grpo_step(samples)
        artefact = engine.export(1)
    finally:
        engine.close()
    assert all(math.isfinite(x) for x in sft) and sft[-1] < sft[0], f"SFT loss did not fall: {sft}"
    assert math.isfinite(grpo.loss) and grpo.grad_norm > 0
    q = artefact.tensors["base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert q.shape == (64, width) and q.dtype == torch.float32
    assert len(artefact.tensors) == 4 * 7 * 2
    generated = generate(model_dir, samples, cuda=True, new_tokens=16)
    assert generated["generate_tokens_per_s"] > 0 and generated["generate_peak_gib"] > 0
