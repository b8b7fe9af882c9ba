"""The learner on one CUDA GPU: bf16 ZeRO-2 (the default), ZeRO-3 and optimizer offload (`make gpu-check`).

These fail rather than skip without CUDA: they only run when asked for (`-m gpu`), and a GPU check that
silently skipped everything would report success on a machine that checked nothing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from learner_samples import DISJOINT_COMPLETIONS, make_samples

from learner import grpo
from learner.config import LearnerConfig

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _cuda() -> None:
    if not torch.cuda.is_available():
        pytest.fail("no CUDA device visible to torch: run `make gpu-check` on a GPU machine")
    if os.environ.get("DS_ACCELERATOR") != "cuda":
        pytest.fail("DS_ACCELERATOR must be 'cuda' for GPU tests (tools/gpu_check.sh sets it)")


def test_grpo_math_on_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 64, generator=gen).to(torch.bfloat16)
    targets = torch.randint(0, 64, (4, 9), generator=gen)
    mask = (torch.rand(4, 9, generator=gen) > 0.3).float()
    adv = torch.randn(4, generator=gen)
    kw = dict(eps_low=0.2, eps_high=0.28, beta=0.04, mode="grpo", num_sequences=4,
              num_tokens=float(mask.sum()))
    cpu_lp = grpo.token_logprobs(logits, targets)
    gpu_lp = grpo.token_logprobs(logits.cuda(), targets.cuda())
    torch.testing.assert_close(gpu_lp.cpu(), cpu_lp, atol=1e-5, rtol=1e-5)
    ref = cpu_lp + 0.1
    cpu = grpo.grpo_loss(cpu_lp, cpu_lp - 0.05, ref, adv, mask, **kw)  # type: ignore[arg-type]
    gpu = grpo.grpo_loss(gpu_lp, gpu_lp - 0.05, ref.cuda(), adv.cuda(), mask.cuda(), **kw)  # type: ignore[arg-type]
    assert gpu.loss.item() == pytest.approx(cpu.loss.item(), abs=1e-5)
    assert gpu.clipped_sum == cpu.clipped_sum


def test_bf16_zero2_step_follows_advantage_sign(tiny_model_dir: Path) -> None:
    from learner.engine import LearnerEngine

    advantages = [1.0, -1.0, 1.0, -1.0]
    samples = make_samples(tiny_model_dir, advantages, completions=DISJOINT_COMPLETIONS)
    engine = LearnerEngine(tiny_model_dir, LearnerConfig(lr=1e-2, micro_batch_size=2, grpo={"beta": 0.0}))  # type: ignore[arg-type]
    try:
        assert engine.bf16 and engine.device.type == "cuda"
        before = [lp.sum().item() for lp in engine.logprobs(samples)]
        metrics = engine.grpo_step(samples)
        after = [lp.sum().item() for lp in engine.logprobs(samples)]
        artefact = engine.export(1)
        sft = [engine.sft_step(samples).loss for _ in range(3)]
    finally:
        engine.close()
    assert math.isfinite(metrics.loss) and metrics.grad_norm > 0
    for adv, b, a in zip(advantages, before, after, strict=True):
        assert (a - b) * adv > 0, f"advantage {adv}: log-prob went {b:.4f} -> {a:.4f}"
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in artefact.tensors.values())
    assert sft[-1] < sft[0], f"SFT loss did not fall over 3 steps: {sft}"


@pytest.mark.parametrize("variant", [{"zero_stage": 3}, {"zero_stage": 2, "offload_optimizer": True}],
                         ids=["zero3", "zero2-offload"])
def test_other_zero_modes_step_and_export(tiny_model_dir: Path, variant: dict[str, object]) -> None:
    from learner.engine import LearnerEngine

    samples = make_samples(tiny_model_dir, [1.0, -1.0, 0.5])
    engine = LearnerEngine(tiny_model_dir, LearnerConfig(lr=1e-3, micro_batch_size=2, **variant))  # type: ignore[arg-type]
    try:
        metrics = [engine.grpo_step(samples) for _ in range(2)]
        artefact = engine.export(2)
    finally:
        engine.close()
    assert all(math.isfinite(m.loss) and math.isfinite(m.grad_norm) for m in metrics)
    assert metrics[1].kl > 0  # the first step moved the adapter away from the reference
    a_keys = [k for k in artefact.tensors if k.endswith("lora_A.weight")]
    assert a_keys and all(artefact.tensors[k].numel() > 0 for k in a_keys)  # ZeRO-3 gathered full tensors
