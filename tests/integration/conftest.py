"""Fixtures of the integration tier: a synthetic data set and one rollout pool shared by the in-process
training runs (starting 2 vLLM engines costs ~20 s; each run borrows the pool, starting on the base model)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from run_configs import POOL, ROLLOUT


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train and 4 val demo phantoms (one finding each), seed 0."""
    from services.data.synth import make_spec, write_dataset

    spec = make_spec("demo", splits={"train": 24, "val": 4, "test": 0})
    return write_dataset(spec, tmp_path_factory.mktemp("data"), seed=0, manifest_name="manifest.jsonl")


@pytest.fixture(scope="session")
def shared_pool(ray_local: None, tiny_model_dir: Path) -> Iterator[Any]:
    """2 vLLM workers of the tiny model with run_configs.ROLLOUT and the shipped knowledge, for the
    session."""
    from rollout.config import RolloutConfig
    from rollout.knowledge import load_knowledge
    from services.cluster.rollout_pool import RolloutPool
    from services.config import PoolConfig

    pool = RolloutPool(tiny_model_dir, RolloutConfig.model_validate(ROLLOUT), PoolConfig.model_validate(POOL),
                       load_knowledge("deploy/knowledge"))
    yield pool
    pool.shutdown()


@pytest.fixture(scope="session")
def lend_pool(shared_pool: Any) -> Callable[..., Any]:
    """`start=` for `train_loop.run`: the run's handles on the shared pool (reset to the base model)."""
    from services.training.handles import BorrowedPool, start_handles

    def start(cfg: Any, run_dir: Path) -> Any:
        return start_handles(cfg, run_dir, pool=BorrowedPool(shared_pool))
    return start
