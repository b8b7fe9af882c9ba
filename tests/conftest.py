"""Shared fixtures: generated models (never downloaded), a local Ray, and cleanup of what engines leave."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.cluster.startup import CPU_ENV

for _key, _value in CPU_ENV.items():  # the product's one CPU environment, as `medground train` sets it
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parents[1]
_SESSION_MARK = Path(os.environ.get("TMPDIR", "/tmp")) / f"medground-test-start-{os.getpid()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    _SESSION_MARK.touch()


# make test runs two xdist workers with --dist loadfile: a worker runs a module whole, so its module-scoped
# engines start once. Two changes to xdist's scheduling (pytest_xdist_make_scheduler below):
# - the modules that share a session engine (tests/integration/conftest.py: `shared_pool`, 2 vLLM workers
#   that the in-process training runs borrow, ~45 s to start on a busy machine; `shared_vllm_core`, the
#   engine-level tests' vLLM engine) are one unit each, so only one worker starts each engine;
# - units go out in collection order, longest first (measured with --durations), not xdist's default of the
#   unit with the most tests first, which started the one-test operator CLI module last, as the run's tail.
# (xdist's --dist loadgroup would group them too, but sets module fixtures up twice per module.)
SHARED = {"shared_pool": ("test_train_loop_e2e.py", "test_faults_driver.py", "test_dicom_dataset_e2e.py",
                          "test_multibox_e2e.py", "test_real_volumes_e2e.py", "test_curriculum_e2e.py"),
          "shared_vllm_core": ("test_rollout_engines.py", "test_behaviour_logprobs.py")}
_UNIT = {module: fixture for fixture, modules in SHARED.items() for module in modules}
_LONG_FIRST = ("test_operator_cli.py", *SHARED["shared_pool"], "test_faults_rollout.py",
               "test_tracking_mlflow.py", "test_serve.py", *SHARED["shared_vllm_core"],
               "test_mlae_deepspeed.py", "test_learner.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move the long modules to the front (the order inside a module, and of the others, is kept); a module
    that takes a shared engine without being in SHARED is a usage error (it would start a second one)."""
    strays = sorted({f"{item.path.name} ({fixture})" for item in items for fixture in SHARED
                     if fixture in item.fixturenames and _UNIT.get(item.path.name) != fixture})
    if strays:
        raise pytest.UsageError(f"{', '.join(strays)} takes a shared engine: add the module to SHARED in "
                                "tests/conftest.py")
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# closers of the live shared engines, by fixture name (release_after_unit); each runs once its unit ends
_RELEASE: dict[str, Callable[[], None]] = {}


@pytest.fixture(scope="session")
def release_after_unit() -> Callable[[str, Callable[[], None]], Callable[[], None]]:
    """`register(name, close)` for a session engine of SHARED: `close` runs right after the last test of the
    engine's unit (pytest_runtest_teardown below), not at the session's end, so a later module in the same
    process gets the engine's CPUs and memory back (a 2-CPU Ray held by the shared pool's workers left a
    later run's worker unplaceable: a hang in `make test-slow`). Returns the idempotent closer, for the
    fixture's own teardown."""
    def register(name: str, close: Callable[[], None]) -> Callable[[], None]:
        def once() -> None:
            if _RELEASE.pop(name, None) is not None:
                close()
        _RELEASE[name] = once
        return once
    return register


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After the last test of a shared engine's unit (the next test is in another unit, or none is left),
    release that engine; the units' modules run one after another (collection order and the scheduler)."""
    yield
    unit = _UNIT.get(item.path.name)
    if unit in _RELEASE and (nextitem is None or _UNIT.get(nextitem.path.name) != unit):
        _RELEASE[unit]()


@pytest.hookimpl(optionalhook=True)  # an xdist hook: a run with -p no:xdist must not reject it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadfile with the modules of each shared engine as one unit and the units in collection
    order."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedEngineFileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return _UNIT.get(path.rsplit("/", 1)[-1], path)

    config.option.loadscopereorder = False
    return SharedEngineFileScheduling(config, log)


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
