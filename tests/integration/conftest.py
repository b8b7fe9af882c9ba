"""Fixtures of the integration tier: a synthetic data set, one rollout pool shared by the in-process
training runs (starting 2 vLLM engines costs ~20 s; each run borrows the pool, starting on the base model),
and one vLLM engine shared by the engine-level modules (test_rollout_engines.py, test_behaviour_logprobs.py).
tests/conftest.py schedules the modules of each shared thing on one xdist worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from run_configs import ENGINE, KNOWLEDGE_YAML, POOL, ROLLOUT


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train and 4 val demo phantoms (one finding each), seed 0."""
    from services.data.synth import make_spec, write_dataset

    spec = make_spec("demo", splits={"train": 24, "val": 4, "test": 0})
    return write_dataset(spec, tmp_path_factory.mktemp("data"), seed=0, manifest_name="manifest.jsonl")


@pytest.fixture(scope="session")
def engine_knowledge(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The knowledge base of KNOWLEDGE_YAML."""
    from rollout.knowledge import load_knowledge

    folder = tmp_path_factory.mktemp("knowledge")
    (folder / "chest.yaml").write_text(KNOWLEDGE_YAML)
    return load_knowledge(folder)


@pytest.fixture(scope="session")
def shared_vllm_core(tiny_model_dir: Path, engine_knowledge: Any,
                     release_after_unit: Callable[..., Callable[[], None]]) -> Iterator[Any]:
    """One vLLM RolloutWorkerCore of the tiny model with ENGINE and engine_knowledge, for the modules of its
    unit (closed after the last); a module that takes it loads the adapter it needs (`load_adapter(None)`:
    the base model) and leaves it on the base model."""
    from rollout.config import RolloutConfig
    from rollout.core import RolloutWorkerCore

    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_CPU_KVCACHE_SPACE", "3")  # a shell default must not mask rollout.kv_cache_gib
        core = RolloutWorkerCore(tiny_model_dir, RolloutConfig.model_validate({**ENGINE, "engine": "vllm"}),
                                 engine_knowledge)
    close = release_after_unit("shared_vllm_core", core.close)
    yield core
    close()


@pytest.fixture(scope="session")
def shared_pool(ray_local: None, tiny_model_dir: Path,
                release_after_unit: Callable[..., Callable[[], None]]) -> Iterator[Any]:
    """2 vLLM workers of the tiny model with run_configs.ROLLOUT and the shipped knowledge, for the modules
    of its unit (shut down after the last)."""
    from rollout.config import RolloutConfig
    from rollout.knowledge import load_knowledge
    from services.cluster.rollout_pool import RolloutPool
    from services.config import PoolConfig

    pool = RolloutPool(tiny_model_dir, RolloutConfig.model_validate(ROLLOUT), PoolConfig.model_validate(POOL),
                       load_knowledge("deploy/knowledge"))
    close = release_after_unit("shared_pool", pool.shutdown)
    yield pool
    close()


@pytest.fixture(scope="session")
def lend_pool(shared_pool: Any) -> Callable[..., Any]:
    """`start=` for `train_loop.run`: the run's handles on the shared pool (reset to the base model)."""
    from services.training.handles import BorrowedPool, start_handles

    def start(cfg: Any, run_dir: Path) -> Any:
        return start_handles(cfg, run_dir, pool=BorrowedPool(shared_pool))
    return start
