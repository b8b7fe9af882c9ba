"""The rollout pool on a local Ray grows and shrinks between calls with every new worker on the current
adapter.
(A worker killed or stopped mid-call loses no request: tests/integration/test_faults_rollout.py, on one
pool.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from bench.faults.inputs import adapter_artefact, make_lora_adapter, requests
from rollout.config import RolloutConfig, SamplingConfig
from services.cluster.rollout_pool import RolloutPool
from services.config import PoolConfig

# slow tier: make test grows and shrinks a real pool inside a running job (test_operator_cli.py: the added
# worker serves the current adapter) and resets the shared pool to the base model before every run
# (conftest.py lend_pool); this checks the same at the pool's own level, greedy answers compared
pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONFIG = RolloutConfig(max_model_len=512)
POOL = PoolConfig(cpus_per_worker=0.25, num_workers=2)
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("pool-adapters") / "v1")


def _pids(pool: RolloutPool) -> set[int]:
    return set(ray.get([h.pid.remote() for h in pool.handles()]))


def test_pool_grows_and_shrinks_between_calls(ray_local: None, tiny_model_dir: Path,
                                              adapter_dir: Path) -> None:
    pool = RolloutPool(tiny_model_dir, CONFIG.model_copy(update={"engine": "hf"}), POOL, num_workers=1)
    try:
        pool.load_adapter(1, ray.put(adapter_artefact(adapter_dir, version=1)))
        reqs = requests(4)
        alone = pool.generate(reqs, n=2, sampling=GREEDY)
        pool.resize(2)
        assert pool.size == 2
        pool.wait_ready(timeout=300)
        assert len(_pids(pool)) == 2
        # the new worker loaded adapter v1 before its first shard, so greedy output is unchanged
        together = pool.generate(reqs, n=2, sampling=GREEDY)
        assert [g.completions for g in together] == [g.completions for g in alone]
        assert all(g.adapter_version == 1 for g in together)
        pool.resize(1)
        assert pool.size == 1
        again = pool.generate(reqs, n=2, sampling=GREEDY)
        assert [g.completions for g in again] == [g.completions for g in alone]
        # back to the base model everywhere
        pool.load_adapter(0, None)
        assert [g.adapter_version for g in pool.generate(reqs[:1], n=1, sampling=GREEDY)] == [0]
    finally:
        pool.shutdown()
