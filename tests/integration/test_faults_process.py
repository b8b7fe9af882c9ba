"""Process-level faults of `medground train`, each a real signal to a real driver process with its own local
Ray (issue 21, faults 3 and 4, and the clean stop):

- `kill -9` of the driver mid-step, then `medground train --resume`: the steps after the checkpoint match
  the uninterrupted run exactly;
- `kill -9` while a checkpoint is being written: the previous checkpoint is complete, `--resume` takes it
  and the run again matches the uninterrupted one;
- SIGTERM: the step finishes, a checkpoint of it is written, the run stops with exit 143 naming it, and
  the local Ray the driver started is gone; `--resume` continues exactly.

Every process of a run is found by its environment (a private RAY_TMPDIR) and ended at teardown, whatever
the test did. Slow: five training runs (~8 min on 2 cores); `make test-slow` runs them.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.faults.cluster import BIN, ROOT
from bench.faults.helpers import KEYS, TREE, gone, kill_with_env, process_tree
from services.training.metrics import read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Driver:
    """`medground train ...` in its own process and process group, with a private Ray temp dir."""

    def __init__(self, args: list[str], log: Path) -> None:
        # short: Ray's socket paths stay < 107 bytes
        self.ray_dir = tempfile.mkdtemp(prefix="mgf-", dir="/tmp")
        self.marker = f"RAY_TMPDIR={self.ray_dir}"
        self.tree: set[int] = set()  # its processes, taken before a signal (Ray's agents lose their ancestry)
        env = {**_base_env(), "RAY_TMPDIR": self.ray_dir}
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen([str(BIN / "python"), "-m", "services.cli", "train",
                                          *args], cwd=ROOT,
                                         env=env, stdout=out, stderr=subprocess.STDOUT, text=True)

    def up(self, run_dir: Path) -> None:
        """Wait until the run has logged step 0 (its Ray, learner and workers are up); note their
        processes."""
        self.until(lambda: (run_dir / "metrics.jsonl").is_file(), "the run's first row")
        self.tree |= process_tree(self.marker)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 600) -> int:
        return self.proc.wait(timeout=timeout)

    def until(self, ready: Callable[[], bool], what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, (
                f"the driver exited ({self.proc.returncode}) before {what}: {self.tail()}")
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.tail()}"
            time.sleep(0.01)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)
        kill_with_env(self.marker, also=self.tree)
        shutil.rmtree(self.ray_dir, ignore_errors=True)


def _base_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MEDGROUND_RAY_ADDRESS")}
    return env | {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}:{env['PATH']}"}


@pytest.fixture(scope="module")
def config(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.data.synth import make_spec, write_dataset

    folder = tmp_path_factory.mktemp("faults")
    manifest = write_dataset(make_spec("demo", splits={"train": 24, "val": 4, "test": 0}), folder / "data",
                             seed=0, manifest_name="manifest.jsonl")
    tree = {**TREE, "model": {"path": str(tiny_model_dir), "family": "qwen2_5_vl"},
            "data": {"manifest": str(manifest)}}
    path = folder / "faults.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture
def drivers() -> Iterator[list[Driver]]:
    started: list[Driver] = []
    yield started
    for d in started:
        d.close()


def _train(drivers: list[Driver], log: Path, *args: str) -> Driver:
    drivers.append(Driver(list(args), log))
    return drivers[-1]


@pytest.fixture(scope="module")
def uninterrupted(config: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    out = tmp_path_factory.mktemp("uninterrupted")
    driver = Driver([str(config), "--set", f"output_dir={out}"], out / "driver.log")
    try:
        assert driver.wait() == 0, driver.tail()
    finally:
        driver.close()
    rows = {r["step"]: r for r in read_metrics(out / "faults" / "metrics.jsonl")}
    assert sorted(rows) == [0, 1, 2, 3, 4, 5]
    assert [rows[s]["tau/value"] for s in (2, 3, 4, 5)] != [rows[2]["tau/value"]] * 4, "tau never moved"
    return rows


def _rows(run_dir: Path) -> dict[int, dict[str, Any]]:
    return {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}


def _matches(got: dict[int, dict[str, Any]], want: dict[int, dict[str, Any]], steps: range) -> None:
    assert sorted(got) == sorted(want)
    for step in steps:
        for key in KEYS:
            if want[step].get(key) is None:
                assert got[step].get(key) is None, (step, key)
            else:
                assert got[step].get(key) == pytest.approx(want[step][key], rel=1e-5, abs=1e-6), (step, key)


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def _resume(drivers: list[Driver], run_dir: Path, log: Path) -> None:
    resumed = _train(drivers, log, "--resume", str(run_dir))
    assert resumed.wait() == 0, resumed.tail()
    assert "resuming" in resumed.tail()


def test_kill_9_of_the_driver_mid_step_then_resume_matches_the_uninterrupted_run(
        config: Path, uninterrupted: dict[int, dict[str, Any]], drivers: list[Driver],
        tmp_path: Path) -> None:
    run_dir = tmp_path / "faults"
    driver = _train(drivers, tmp_path / "first.log", str(config), "--set", f"output_dir={tmp_path}")
    driver.up(run_dir)
    driver.until(lambda: 3 in _rows(run_dir), "step 3's row")
    driver.signal(signal.SIGKILL)  # in step 4 now: the checkpoint of step 2 is the last one
    assert driver.wait() == -signal.SIGKILL
    assert (max(_rows(run_dir)) == 3
            and _checkpoints(run_dir) == ["step-1", "step-2"]), "the kill missed step 4"
    _resume(drivers, run_dir, tmp_path / "resumed.log")
    _matches(_rows(run_dir), uninterrupted, range(3, 6))


def test_kill_9_during_a_checkpoint_write_resumes_from_the_previous_one(
        config: Path, uninterrupted: dict[int, dict[str, Any]], drivers: list[Driver],
        tmp_path: Path) -> None:
    run_dir = tmp_path / "faults"
    partial = run_dir / "checkpoints" / ".tmp-step-4"
    driver = _train(drivers, tmp_path / "first.log", str(config), "--set", f"output_dir={tmp_path}")
    driver.up(run_dir)
    driver.until(partial.exists, "the checkpoint of step 4 to be under way")
    driver.signal(signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL
    assert _checkpoints(run_dir) == [".tmp-step-4", "step-1",
                                     "step-2"], "the kill did not land inside the write"
    assert not (partial / "COMPLETE").exists()
    _resume(drivers, run_dir, tmp_path / "resumed.log")
    assert "from " + str(run_dir / "checkpoints" / "step-2") in drivers[-1].tail()
    _matches(_rows(run_dir), uninterrupted, range(3, 6))
    assert _checkpoints(run_dir) == ["step-4", "step-5"]  # the torn write's debris is gone


def test_sigterm_checkpoints_the_step_stops_local_ray_and_resumes_exactly(
        config: Path, uninterrupted: dict[int, dict[str, Any]], drivers: list[Driver],
        tmp_path: Path) -> None:
    run_dir = tmp_path / "faults"
    # no periodic checkpoints: beside the SFT stage's (step 1), the one the run stops with is SIGTERM's
    driver = _train(drivers, tmp_path / "first.log", str(config), "--set", f"output_dir={tmp_path}",
                    "--set", "checkpoint.every=0")
    driver.up(run_dir)
    driver.until(lambda: 2 in _rows(run_dir), "step 2's row")
    driver.signal(signal.SIGTERM)
    assert driver.wait(timeout=300) == 143, driver.tail()
    last = max(_rows(run_dir))
    assert 2 <= last < 5 and _checkpoints(run_dir) == ["step-1", f"step-{last}"]
    assert (f"stopped after step {last} (StopRequested: SIGTERM received); the last complete checkpoint is "
            f"{run_dir / 'checkpoints' / f'step-{last}'}; continue with: medground train --resume {run_dir}"
            in " ".join(driver.tail().split()))
    deadline = time.monotonic() + 30
    while (left := [p for p in driver.tree if not gone(p, timeout=0)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"the driver's local Ray outlived it: processes {left}"
    _resume(drivers, run_dir, tmp_path / "resumed.log")
    _matches(_rows(run_dir), uninterrupted, range(last + 1, 6))
    assert json.loads((run_dir / "resolved_config.json").read_text())["checkpoint"]["every"] == 0
