"""Shared fixtures: generated models (never downloaded), a local Ray, and cleanup of what engines leave."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cluster.startup import CPU_ENV

for _key, _value in CPU_ENV.items():  # the product's one CPU environment, as `medground train` sets it
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parents[1]
_SESSION_MARK = Path(os.environ.get("TMPDIR", "/tmp")) / f"medground-test-start-{os.getpid()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    _SESSION_MARK.touch()


# The longest modules of make test first (measured with --durations): with two xdist workers and
# --dist loadfile, a long module started last is the whole run's tail.
_LONG_FIRST = ("test_operator_cli.py", "test_faults_rollout.py", "test_train_loop_e2e.py",
               "test_tracking_mlflow.py", "test_faults_driver.py", "test_dicom_dataset_e2e.py",
               "test_serve.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move the long modules to the front; the order inside a module, and of the others, is kept."""
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL (answers in input pixels), built once per test session."""
    from services.models.tiny import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("models") / "tiny-qwen2_5_vl",
                           "qwen2_5_vl", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2-VL (answers in 0..1000 units), built once per test session."""
    from services.models.tiny import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("models") / "tiny-qwen2_vl", "qwen2_vl", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3-VL (16 px patches, 32 px cells, answers in 0..1000 units), built once per
    session."""
    from services.models.tiny import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("models") / "tiny-qwen3_vl", "qwen3_vl", "tiny", seed=0)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for the session (2 CPUs, no dashboard); shut down and cleaned at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": CPU_ENV})
    yield
    ray.shutdown()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove vLLM shared memory, semaphores and sockets that engines of this session left behind."""
    subprocess.run(["bash", str(ROOT / "tools" / "clean_runtime.sh"), "--newer", str(_SESSION_MARK)],
                   check=False, timeout=120)
    _SESSION_MARK.unlink(missing_ok=True)
