"""Resizing the pool beyond what the cluster can place never stalls it: adapter pushes wait only for the
workers that are up, work goes to them, the unplaced worker is reported as not live and is removed at once
(what `medground scale rollout N` relies on; tests/integration/test_operator_cli.py runs it end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from bench.faults.inputs import adapter_artefact, make_lora_adapter, requests
from rollout.config import RolloutConfig, SamplingConfig
from services.cluster.rollout_pool import RolloutPool
from services.config import PoolConfig

pytestmark = pytest.mark.integration
# 1.5 CPUs per worker on the 2-CPU test Ray: the first worker fits, a second can never be placed
CONFIG = RolloutConfig(engine="hf", max_model_len=512)
POOL = PoolConfig(cpus_per_worker=1.5, num_workers=1)
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=8)


# A regression stalls forever (it waited on a worker that can never start): the timeout turns that into a
# failure instead of a hung suite, without timing anything that passes.
@pytest.mark.timeout(600)
def test_an_unplaceable_worker_neither_stalls_nor_serves(ray_local: None, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    adapter = make_lora_adapter(tiny_model_dir, tmp_path / "v1")
    pool = RolloutPool(tiny_model_dir, CONFIG, POOL)
    try:
        pool.wait_ready(timeout=300)
        pool.resize(2)
        assert (pool.size, pool.live_count()) == (2, 1)
        pool.load_adapter(1, ray.put(adapter_artefact(adapter, version=1)))  # would block forever before
        groups = pool.generate(requests(3), n=2, sampling=GREEDY)
        assert [g.adapter_version for g in groups] == [1, 1, 1]
        assert pool.last_serving == (0,), "only the worker that is up may take work"
        assert pool.live_count() == 1
        waits: list[object] = []
        real_get = ray.get
        with pytest.MonkeyPatch.context() as patch:  # count the waits instead of timing them
            patch.setattr(ray, "get", lambda *a, **kw: waits.append(a) or real_get(*a, **kw))
            pool.resize(1)  # the unplaced worker goes without waiting for a close it can never run
        assert not waits, "removing a worker that never started must not wait on it"
        assert (pool.size, pool.live_count()) == (1, 1)
    finally:
        pool.shutdown()
