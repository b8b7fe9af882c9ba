"""The DeepSpeed learner on CPU with the tiny model: ranks agree, steps move log-probs the right way,
checkpoints resume exactly. Kept to a handful of short sequences (2 shared CPUs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from learner_samples import DISJOINT_COMPLETIONS, make_samples

from learner.config import LearnerConfig

pytestmark = pytest.mark.integration


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_ranks_equal_one_rank(tiny_model_dir: Path, ray_local: None, tmp_path: Path) -> None:
    """5 samples, micro-batch 2: one rank runs 3 micro-batches; two ranks (Ray actors, gloo) get 3 + 2
    samples, so rank 1 pads with a zero-weight pass. Loss and adapter after two steps match within 1e-5.
    The single rank runs in this process (the same engine the actors wrap) to save an actor start-up."""
    import ray

    from learner.engine import LearnerEngine
    from services.learner_group import LearnerGroup

    samples = make_samples(tiny_model_dir, [1.0, -0.5, 0.25, -1.0, 0.7])
    # Deterministic adapter (no stochastic MLAE mask): the masks would otherwise be drawn per micro-batch.
    base = dict(lr=1e-2, micro_batch_size=2, cpus_per_rank=0.5, mlae={"mask": "none"}, grpo={"beta": 0.04})
    one = LearnerEngine(tiny_model_dir, LearnerConfig(num_ranks=1, **base))  # type: ignore[arg-type]
    try:
        one.grpo_step(samples)  # step 1 gives the adapter a direction (B starts at zero)
        m1 = one.grpo_step(samples)
        a1 = one.export(2)
    finally:
        one.close()
    group = LearnerGroup(tiny_model_dir, LearnerConfig(num_ranks=2, **base))  # type: ignore[arg-type]
    try:
        group.grpo_step(samples)
        m2 = group.grpo_step(samples)
        a2 = ray.get(group.export(version=2))
        # Multi-rank checkpoint round trip: every rank's ZeRO partition and RNG state, then a restore.
        group.save_checkpoint(tmp_path / "ckpt")
        assert sorted(p.name for p in (tmp_path / "ckpt").glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
        assert group.load_checkpoint(tmp_path / "ckpt") == 2
        m3 = group.grpo_step(samples)
    finally:
        group.shutdown()
    assert m1.tokens == m2.tokens == sum(len(s.completion_ids) for s in samples)
    assert m1.kl > 0  # the second step sees a moved adapter, so the loss has a KL part
    assert m2.loss == pytest.approx(m1.loss, abs=1e-5)
    assert m2.kl == pytest.approx(m1.kl, abs=1e-5)
    assert m2.grad_norm == pytest.approx(m1.grad_norm, rel=1e-4)
    assert a1.version == a2.version == 2
    assert _max_diff(a1.tensors, a2.tensors) < 1e-5
    assert m1.logprob_mismatch is not None
    assert np.isfinite(m3.loss) and m3.kl > 0


def test_step_moves_logprobs_by_advantage_sign(tiny_model_dir: Path) -> None:
    """With fixed advantages, one step raises positive completions' log-probs and lowers negative ones';
    then SFT steps on the same answers lower their cross-entropy."""
    from learner.engine import LearnerEngine

    advantages = [1.0, -1.0, 1.0, -1.0]
    samples = make_samples(tiny_model_dir, advantages, completions=DISJOINT_COMPLETIONS)
    engine = LearnerEngine(tiny_model_dir, LearnerConfig(lr=1e-2, micro_batch_size=2, grpo={"beta": 0.0}))  # type: ignore[arg-type]
    try:
        before = [lp.sum().item() for lp in engine.logprobs(samples)]
        metrics = engine.grpo_step(samples)
        after = [lp.sum().item() for lp in engine.logprobs(samples)]
        sft = [engine.sft_step(samples).loss for _ in range(3)]  # SFT mode: cross-entropy on the answers
    finally:
        engine.close()
    assert metrics.grad_norm > 0 and np.isfinite(metrics.loss)
    for adv, b, a in zip(advantages, before, after, strict=True):
        assert (a - b) * adv > 0, f"advantage {adv}: log-prob went {b:.4f} -> {a:.4f}"
    assert sft[0] > sft[1] > sft[2], f"SFT loss did not fall: {sft}"


def test_checkpoint_resume_gives_the_same_next_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Run 1: step, checkpoint, step. Run 2 (a fresh engine, as after a crash): load, step. Same loss and
    the same adapter afterwards (so Adam's moments were restored, not only the weights)."""
    from learner.engine import LearnerEngine

    samples = make_samples(tiny_model_dir, [1.0, -1.0, 0.5], image_every=3)
    cfg = LearnerConfig(lr=1e-2, micro_batch_size=2)  # stochastic MLAE mask on: the RNG state must resume too
    ckpt = tmp_path / "step-1"
    first = LearnerEngine(tiny_model_dir, cfg)
    try:
        first.grpo_step(samples)
        first.save_checkpoint(ckpt)
        expected = first.grpo_step(samples)
        expected_adapter = first.export(2).tensors
    finally:
        first.close()
    assert not ckpt.with_name("step-1.tmp").exists()
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()

    second = LearnerEngine(tiny_model_dir, cfg.model_copy(update={"seed": 123}))  # a different initial adapter
    try:
        second.load_checkpoint(ckpt)
        assert second.steps == 1
        resumed = second.grpo_step(samples)
        resumed_adapter = second.export(2).tensors
    finally:
        second.close()
    assert resumed.loss == pytest.approx(expected.loss, abs=1e-6)
    assert resumed.grad_norm == pytest.approx(expected.grad_norm, rel=1e-5)
    assert _max_diff(resumed_adapter, expected_adapter) < 1e-6
