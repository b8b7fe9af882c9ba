"""LearnerEngine (one DeepSpeed rank on CPU) with ``shared_prefix`` on and off: the same GRPO steps give the
same metrics and the same adapter, with a KL reference, stochastic MLAE masks, an off-policy second update
(the stale-version pass), the rollout correction's eval-mode pass and the sync reading all taking the packed
path. (The packing itself, per family, against the plain forward: tests/unit/learner/test_packing.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from learner_samples import group_samples

from learner.batch import TrainBatch, TrainSample
from learner.config import LearnerConfig

pytestmark = pytest.mark.integration  # two DeepSpeed engines in-process: ~50 s on 2 cores


def _run(model_dir: Path, shared: bool,
         samples: list[TrainSample]) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    from learner.engine import LearnerEngine

    cfg = LearnerConfig(shared_prefix=shared, lr=1e-2, micro_batch_size=3, mlae={"p": 0.5},  # type: ignore[arg-type]
                        grpo={"beta": 0.04, "updates_per_batch": 2,  # the correction's eval-mode pass too
                              "rollout_correction": "sequence_truncate"})
    torch.manual_seed(0)  # the mask draws start from the same RNG state in both engines
    engine = LearnerEngine(model_dir, cfg)
    try:
        engine.begin_stage("grpo", cfg.lr)
        rows = []
        for version in (0, 1):
            batch = TrainBatch(tuple(dataclasses.replace(s, adapter_version=version) for s in samples))
            m = engine.grpo_step(batch)
            rows.append({"loss": m.loss, "kl": m.kl, "ratio_max": m.ratio_max, "entropy": m.entropy,
                         "grad_norm": m.grad_norm, "mismatch": m.logprob_mismatch or 0.0, "tokens": m.tokens,
                         "correction_ratio_mean": m.correction_ratio_mean or 0.0,
                         "correction_kl": m.correction_kl or 0.0})
            engine.export(version + 1)
        return rows, engine.export(2).tensors
    finally:
        engine.close()


def test_shared_prefix_engine_equals_the_plain_engine(tiny_model_dir: Path) -> None:
    samples = [dataclasses.replace(s, sampling_logprobs=tuple([-2.0] * len(s.completion_ids)))
               for s in group_samples(tiny_model_dir)]
    plain_rows, plain_adapter = _run(tiny_model_dir, False, samples)
    shared_rows, shared_adapter = _run(tiny_model_dir, True, samples)
    for plain, shared in zip(plain_rows, shared_rows, strict=True):
        for key, value in plain.items():
            assert shared[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
    assert plain_rows[1]["kl"] > 0 and plain_rows[1]["ratio_max"] > 1.0  # the KL and stale passes did work
    assert plain_rows[0]["mismatch"] > 0  # the sync alarm read the first micro-batch on both paths
    assert plain_rows[1]["correction_ratio_mean"] != 0.0  # the correction's eval-mode pass ran on both paths
    # two AdamW updates carry the per-token differences (~1e-6) through the correction's sequence weights, an
    # exp of a sum over tokens: 4e-5 measured; the gradients themselves agree within 1e-5 (test_packing.py)
    assert max(float((plain_adapter[k] - shared_adapter[k]).abs().max()) for k in plain_adapter) < 1e-4
