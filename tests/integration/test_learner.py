"""The DeepSpeed learner on CPU with the tiny model: ranks agree, steps move log-probs the right way,
checkpoints resume exactly. Kept to a handful of short sequences (2 shared CPUs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from learner_samples import DISJOINT_COMPLETIONS, make_samples

from learner.batch import TrainBatch, TrainSample
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

    from learner.batch import SamplingSpec
    from learner.engine import LearnerEngine
    from services.cluster.learner_group import LearnerGroup

    samples = make_samples(tiny_model_dir, [1.0, -0.5, 0.25, -1.0, 0.7])
    spec = SamplingSpec()

    def sampled_by(version: int) -> list[TrainSample]:  # on-policy, as the driver pushes before each step
        return [dataclasses.replace(s, adapter_version=version) for s in samples]

    # Deterministic adapter (no stochastic MLAE mask): the masks would otherwise be drawn per micro-batch.
    base = dict(lr=1e-2, micro_batch_size=2, cpus_per_rank=0.5, mlae={"mask": "none"}, grpo={"beta": 0.04})
    one = LearnerEngine(tiny_model_dir, LearnerConfig(num_ranks=1, **base))  # type: ignore[arg-type]
    try:
        one.begin_stage("grpo", 1e-2)
        # step 1 gives the adapter a direction (B starts at zero)
        one.grpo_step(TrainBatch(tuple(sampled_by(0)), spec))
        one.export(1)
        m1 = one.grpo_step(TrainBatch(tuple(sampled_by(1)), spec))
        a1 = one.export(2)
    finally:
        one.close()
    group = LearnerGroup(tiny_model_dir, LearnerConfig(num_ranks=2, **base))  # type: ignore[arg-type]
    try:
        group.begin_stage("grpo", 1e-2, carry_optimizer=False)
        group.grpo_step(TrainBatch(tuple(sampled_by(0)), spec))
        ray.get(group.export(version=1))
        m2 = group.grpo_step(TrainBatch(tuple(sampled_by(1)), spec))
        a2 = ray.get(group.export(version=2))
        # Multi-rank checkpoint round trip: every rank's ZeRO partition and RNG state, then a restore.
        group.save_checkpoint(tmp_path / "ckpt", tmp_path / "adapter", version=2)
        assert json.loads((tmp_path / "adapter" / "medground_adapter.json").read_text())["version"] == 2
        assert sorted(p.name
                      for p in (tmp_path / "ckpt").glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
        assert group.load_checkpoint(tmp_path / "ckpt") == 2
        m3 = group.grpo_step(TrainBatch(tuple(sampled_by(2)), spec))
    finally:
        group.shutdown()
    assert m1.tokens == m2.tokens == sum(len(s.completion_ids) for s in samples)
    assert m1.kl > 0  # the second step sees a moved adapter, so the loss has a KL part
    assert m2.loss == pytest.approx(m1.loss, abs=1e-5)
    assert m2.kl == pytest.approx(m1.kl, abs=1e-5)
    assert m2.grad_norm == pytest.approx(m1.grad_norm, rel=1e-4)
    assert a1.version == a2.version == 2
    assert _max_diff(a1.tensors, a2.tensors) < 1e-5
    assert np.isfinite(m3.loss) and m3.kl > 0


def test_step_moves_logprobs_by_advantage_sign(tiny_model_dir: Path) -> None:
    """With fixed advantages, one step raises positive completions' log-probs and lowers negative ones';
    then SFT steps on the same answers lower their cross-entropy."""
    from learner.batch import SamplingSpec
    from learner.engine import LearnerEngine

    advantages = [1.0, -1.0, 1.0, -1.0]
    samples = make_samples(tiny_model_dir, advantages, completions=DISJOINT_COMPLETIONS)
    engine = LearnerEngine(tiny_model_dir, LearnerConfig(lr=1e-2, micro_batch_size=2, grpo={"beta": 0.0}))  # type: ignore[arg-type]
    try:
        before = [lp.sum().item() for lp in engine.logprobs(samples)]
        metrics = engine.grpo_step(TrainBatch(tuple(samples), SamplingSpec(temperature=0.5)))
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
    from learner.batch import SamplingSpec
    from learner.engine import LearnerEngine

    samples = make_samples(tiny_model_dir, [1.0, -1.0, 0.5], image_every=3)
    spec = SamplingSpec(temperature=0.9)
    cfg = LearnerConfig(lr=1e-2, micro_batch_size=2)  # stochastic MLAE mask on: the RNG state must resume too
    ckpt = tmp_path / "step-1"
    first = LearnerEngine(tiny_model_dir, cfg)
    try:
        first.begin_stage("grpo", 1e-2)
        first.grpo_step(TrainBatch(tuple(samples), spec))
        # the KL reference (stage start) now differs from the weights
        first.grpo_step(TrainBatch(tuple(samples), spec))
        first.save_checkpoint(ckpt)  # no adapter_dir: the learner's state only
        expected = first.grpo_step(TrainBatch(tuple(samples), spec))
        expected_adapter = first.export(2).tensors
    finally:
        first.close()
    assert not ckpt.with_name("step-1.tmp").exists()
    assert not (ckpt / "adapter").exists()  # the adapter is written once, where the driver asks

    # a different initial adapter
    second = LearnerEngine(tiny_model_dir, cfg.model_copy(update={"seed": 123}))
    try:
        second.load_checkpoint(ckpt)
        assert second.steps == 2
        resumed = second.grpo_step(TrainBatch(tuple(samples), spec))
        resumed_adapter = second.export(2).tensors
    finally:
        second.close()
    assert expected.kl > 0  # the restored reference is the stage start, not the resume point
    assert resumed.kl == pytest.approx(expected.kl, abs=1e-7)
    assert resumed.loss == pytest.approx(expected.loss, abs=1e-6)
    assert resumed.grad_norm == pytest.approx(expected.grad_norm, rel=1e-5)
    assert _max_diff(resumed_adapter, expected_adapter) < 1e-6


def _adapter_values(engine: object) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.model.parameters() if p.requires_grad]  # type: ignore[attr-defined]


def test_grpo_stage_starts_at_its_reference_with_fresh_moments(tiny_model_dir: Path) -> None:
    """After SFT: the KL to the stage-start reference is exactly 0 at the first GRPO step (MLAE p = 0.5: the
    reference forward draws the same mask), and a fresh AdamW's first update moves each weight by lr (|m/sqrt
    v|
    = 1), while carried SFT moments shrink it. `reference: base` measures the distance to the untrained
    base."""
    from learner.batch import SamplingSpec
    from learner.engine import LearnerEngine

    samples = make_samples(tiny_model_dir, [1.0, -1.0, 0.5, -0.5], completions=DISJOINT_COMPLETIONS)
    spec = SamplingSpec(temperature=0.7)
    lr = 1e-3
    moves: dict[str, float] = {}
    for label, reference, carry in (("fresh", "stage_start", False), ("carried", "stage_start", True),
                                    ("base", "base", False)):
        cfg = LearnerConfig(lr=2e-2, micro_batch_size=4, grpo={"beta": 0.04, "reference": reference})  # type: ignore[arg-type]
        engine = LearnerEngine(tiny_model_dir, cfg)
        try:
            for _ in range(4):
                engine.sft_step(samples)
            engine.begin_stage("grpo", lr, carry_optimizer=carry)
            before = _adapter_values(engine)
            metrics = engine.grpo_step(TrainBatch(tuple(samples), spec))
            after = _adapter_values(engine)
        finally:
            engine.close()
        steps = torch.cat([(a - b).abs().flatten() / lr for a, b in zip(after, before, strict=True)])
        moves[label] = float(steps[steps > 0].median())  # experts masked in this step do not move
        if reference == "stage_start":
            assert metrics.kl == 0.0, (
                f"{label}: KL to the stage-start reference at its first step is {metrics.kl}")
        else:
            assert metrics.kl > 1e-3  # the SFT adapter is far from the base
    assert moves["fresh"] == pytest.approx(1.0, abs=1e-3)  # Adam's first step: lr * g / |g|
    assert moves["carried"] < 0.9, moves


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_learner_recomputes_an_earlier_adapter_version(tiny_model_dir: Path, zero_stage: int) -> None:
    """Off-policy ratios need the policy that sampled a batch: after two updates on one batch
    (updates_per_batch = 2, the second off-policy), the saved copy of v1 gives v1's log-probs exactly, and
    the second update's ratio moved off 1."""
    from learner.batch import SamplingSpec
    from learner.engine import LearnerEngine

    samples = [dataclasses.replace(s, adapter_version=1)
               for s in make_samples(tiny_model_dir, [1.0, -1.0, 0.5, -0.5],
                                     completions=DISJOINT_COMPLETIONS)]
    cfg = LearnerConfig(lr=5e-2, micro_batch_size=2, zero_stage=zero_stage, mlae={"mask": "none"},  # type: ignore[arg-type]
                        grpo={"beta": 0.0, "updates_per_batch": 2})
    engine = LearnerEngine(tiny_model_dir, cfg)
    try:
        engine.sft_step(samples)
        engine.begin_stage("grpo", 5e-2)
        engine.export(1)
        v1 = engine.logprobs(samples)
        metrics = engine.grpo_step(TrainBatch(tuple(samples), SamplingSpec()))
        moved = engine.logprobs(samples)
        with engine.copies.as_version(1):  # the saved copy, swapped in for a forward
            again = engine.logprobs(samples)
        restored = engine.logprobs(samples)
    finally:
        engine.close()
    assert max(float((a - b).abs().max()) for a, b in zip(again, v1, strict=True)) < 1e-6
    assert max(float((a - b).abs().max()) for a, b in zip(moved, v1, strict=True)) > 1e-3
    assert max(float((a - b).abs().max()) for a, b in zip(restored, moved, strict=True)) == 0.0
    assert metrics.ratio_max > 1.0 and metrics.ratio_min < 1.0


def test_truncated_completions_can_be_masked_from_the_loss(tiny_model_dir: Path) -> None:
    """mask_truncated_completions: a truncated completion changes nothing, exactly as if it were absent."""
    from learner.batch import SamplingSpec
    from learner.engine import LearnerEngine

    samples = make_samples(tiny_model_dir, [1.0, -1.0, 0.5], completions=DISJOINT_COMPLETIONS)
    with_cut = [*samples, dataclasses.replace(samples[0], advantage=-2.0, truncated=True)]
    adapters, counts = [], []
    for batch, mask in ((with_cut, True), (samples, True), (with_cut, False)):
        cfg = LearnerConfig(lr=1e-2, micro_batch_size=2, mlae={"mask": "none"},  # type: ignore[arg-type]
                            grpo={"beta": 0.04, "mask_truncated_completions": mask})
        engine = LearnerEngine(tiny_model_dir, cfg)
        try:
            engine.begin_stage("grpo", 1e-2)
            counts.append(engine.grpo_step(TrainBatch(tuple(batch), SamplingSpec())).truncated)
            adapters.append(engine.export(1).tensors)
        finally:
            engine.close()
    assert counts == [1, 0, 0]
    # equal up to float noise of padding the micro-batch to another length; unmasked it trains
    assert _max_diff(adapters[0], adapters[1]) < 2e-5
    assert _max_diff(adapters[2], adapters[1]) > 1e-3


def test_process_group_starts_past_a_stale_extension_lock(tmp_path: Path) -> None:
    """A process killed while DeepSpeed loads its CPU shared-memory comm op leaves torch's build lock
    behind; a later learner start must not wait on it (it waited forever and a CI run timed out). The op
    is switched off on CPU, so a process group starts with a stale lock in place (learner/engine.py)."""
    import os
    import subprocess
    import sys

    # where torch builds it under TORCH_EXTENSIONS_DIR
    lock = tmp_path / "ext" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    code = ("from learner.distributed import init_distributed\n"
            "import torch, torch.distributed as dist\n"
            "assert init_distributed(0, 1, 'gloo')\n"
            "t = torch.ones(2); dist.all_reduce(t); assert t.tolist() == [1.0, 1.0]\n"
            "dist.destroy_process_group()\n")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2], check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert lock.exists() and not (lock.parent / "deepspeed_shm_comm.so").exists()  # neither taken nor built
