"""The learner recomputes the engines' behaviour log-probs exactly, and the sync alarm reads that agreement.

An MLAE adapter (stochastic mask p = 0.5) trained by a few SFT steps is exported and loaded into vLLM and
the transformers engine; completions sampled at temperature 0.3 and 0.9 (and with min_new_tokens, which
forbids end tokens early) get the same log-probs from the learner, within 1e-4 in fp32. The alarm's
eval-mode reading of a synced batch stays near 0; a worker that kept the previous adapter trips it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from learner_samples import make_samples
from run_configs import ENGINE as SHARED_ENGINE

from bench.faults.inputs import requests
from learner.batch import TrainBatch
from learner.config import LearnerConfig
from rollout.config import RolloutConfig, SamplingConfig
from rollout.core import RolloutWorkerCore

pytestmark = pytest.mark.integration
ENGINE = RolloutConfig.model_validate(SHARED_ENGINE)
ALL_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LEARNER = LearnerConfig(lr=5e-2, micro_batch_size=8, mlae={"p": 0.5, "target_modules": ALL_PROJ})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def learner(tiny_model_dir: Path) -> Iterator[object]:
    """A learner whose adapter was moved by SFT (B starts at zero and would change nothing)."""
    from learner.engine import LearnerEngine

    engine = LearnerEngine(tiny_model_dir, LEARNER)
    answers = make_samples(tiny_model_dir, [0.0] * 4, completions=("<answer>[3, 4, 50, 60]</answer>",))
    for _ in range(3):
        engine.sft_step(answers)
    yield engine
    engine.close()


# vLLM is the engine whose log-probs differ from the learner's in practice; the transformers engine's agree
# with vLLM's in make test (test_rollout_engines.py) and with the learner's in the slow tier. The vLLM engine
# is the session's (tests/integration/conftest.py `shared_vllm_core`).
@pytest.fixture(scope="module", params=["vllm", pytest.param("hf", marks=pytest.mark.slow)])
def core(request: pytest.FixtureRequest, tiny_model_dir: Path,
         learner: object) -> Iterator[RolloutWorkerCore]:
    if request.param == "vllm":
        worker = request.getfixturevalue("shared_vllm_core")
    else:
        worker = RolloutWorkerCore(tiny_model_dir, ENGINE.model_copy(update={"engine": request.param}))
    # versions are never reused, not even across the two engines (test_rollout_engines.py takes 1-6 on the
    # session's vLLM engine)
    version = {"vllm": 20, "hf": 30}[request.param]
    worker.load_adapter(learner.export(version))  # type: ignore[attr-defined]
    yield worker
    if request.param == "vllm":
        worker.load_adapter(None)  # the session's engine goes back on the base model
    else:
        worker.close()


@pytest.mark.parametrize("sampling", [SamplingConfig(temperature=0.3, max_new_tokens=12),
                                      SamplingConfig(temperature=0.9, max_new_tokens=12),
                                      SamplingConfig(temperature=0.9, max_new_tokens=8, min_new_tokens=5)],
                         ids=["T0.3", "T0.9", "T0.9-min5"])
def test_learner_logprobs_equal_engine_behaviour_logprobs(core: RolloutWorkerCore, learner: object,
                                                          tiny_model_dir: Path,
                                                          sampling: SamplingConfig) -> None:
    from services.convert import grpo_samples, sampling_spec

    groups = core.generate(requests(3), n=3, sampling=sampling)
    samples = [s for g in groups for s in grpo_samples(g, [0.0] * len(g.completions))]
    assert all(s.adapter_version == core.adapter_version > 0 for s in samples)
    spec = sampling_spec(sampling, tiny_model_dir, core.processor.tokenizer)
    ours = learner.logprobs(samples, spec)  # type: ignore[attr-defined]
    diffs = [np.abs(o.numpy() - np.array(s.sampling_logprobs)).max() for o,
             s in zip(ours, samples, strict=True)]
    assert max(diffs) <= 1e-4, f"max |learner - {core.config.engine}| = {max(diffs):.2e}"
    # the temperature is part of the distribution: the untempered log-probs differ
    untempered = learner.logprobs(samples)  # type: ignore[attr-defined]
    if sampling.temperature != 1.0:
        assert max(np.abs(u.numpy() - np.array(s.sampling_logprobs)).max()
                   for u, s in zip(untempered, samples, strict=True)) > 1e-2
    if sampling.min_new_tokens:
        assert all(len(s.completion_ids) >= sampling.min_new_tokens for s in samples)


def test_sync_alarm_quiet_when_synced_and_trips_on_a_stale_worker(core: RolloutWorkerCore, learner: object,
                                                                  tiny_model_dir: Path) -> None:
    """MLAE p = 0.5: the training forward's mask noise is ~0.7 nats/token, the alarm's eval-mode reading of a
    synced batch ~1e-6. A worker that reports adapter v+1 but still samples with v trips it in one step."""
    from services.convert import grpo_samples, sampling_spec
    from services.training.train_loop import AdapterSyncError, check_adapter_sync

    engine: Any = learner
    sampling = SamplingConfig(temperature=0.9, max_new_tokens=12)
    spec = sampling_spec(sampling, tiny_model_dir, core.processor.tokenizer)
    v = core.adapter_version  # the learner's live version, loaded by the fixture
    engine.begin_stage("grpo", LEARNER.lr)

    def batch(version: int) -> list[Any]:
        return [dataclasses.replace(s, adapter_version=version)
                for g in core.generate(requests(4), n=4, sampling=sampling)
                for s in grpo_samples(g, [1.0, -1.0, 0.5, -0.5])]

    synced = engine.grpo_step(TrainBatch(tuple(batch(v)), spec))
    assert synced.logprob_mismatch is not None and synced.logprob_mismatch < 1e-4
    check_adapter_sync(synced, LEARNER.grpo, version=v)  # quiet
    answers = make_samples(tiny_model_dir, [0.0] * 4, completions=("<answer>[3, 4, 50, 60]</answer>",))
    for _ in range(2):  # move the learner well past v, then "push" v+1 to a worker that keeps v
        engine.sft_step(answers)
    engine.export(v + 1)
    stale = engine.grpo_step(TrainBatch(tuple(batch(v + 1)), spec))
    assert stale.logprob_mismatch is not None and stale.logprob_mismatch > LEARNER.grpo.sync_alarm_nats
    with pytest.raises(AdapterSyncError, match=r"did not reach a rollout engine.*sync_alarm=warn"):
        check_adapter_sync(stale, LEARNER.grpo, version=v + 1)
