"""Faults of whole processes: a node lost mid-generate (a two-node cluster on this machine) and `kill -9` of a
`medground train` driver, mid-step and mid-checkpoint, then `--resume`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.faults.cluster import BIN, ROOT, head_cluster, worker_node
from bench.faults.helpers import KEYS, TREE, kill_with_env, pids_with_env, process_tree, wait_busy
from bench.faults.inputs import seeded_requests
from bench.faults.rows import Row, requests_lost


def lost_node(model: Path) -> Row:
    """Two vLLM workers spread over a head and a second node; every process of the second node SIGKILLed
    while its worker generates. Runs as a driver of that cluster (call with no Ray initialised)."""
    import ray

    from rollout.config import RolloutConfig, SamplingConfig
    from services.cluster.rollout_pool import RolloutPool
    from services.config import PoolConfig

    cfg = RolloutConfig(engine="vllm", max_model_len=512)
    pool_cfg = PoolConfig(cpus_per_worker=0.5, num_workers=2, scheduling="spread", call_timeout_s=2.0)
    sampling = SamplingConfig(temperature=0.9, max_new_tokens=64, min_new_tokens=64)
    saved = dict(os.environ)
    tmp = Path(tempfile.mkdtemp(prefix="mgb-node-"))
    try:
        with head_cluster(tmp) as cluster, worker_node(cluster, num_cpus=1, resources={"victim": 1}) as node:
            os.environ.update({k: cluster["env"][k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})
            ray.init(address=cluster["gcs"])
            pool = RolloutPool(model, cfg, pool_cfg)
            try:
                pool.wait_ready()
                reqs = seeded_requests(16)
                want = pool.generate(reqs, n=4, sampling=sampling)
                victims = [p for p in pids_with_env(node["marker"])
                           if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"ray::RolloutWorker")]
                assert victims, "no rollout worker was placed on the second node"
                out: list[list[Any]] = []
                call = _thread(lambda: out.append(pool.generate(reqs, n=4, sampling=sampling)))
                wait_busy(victims[0])
                t_fault = time.time()
                for pid in process_tree(node["marker"]):  # the node goes at once: raylet, agents, workers
                    os.kill(pid, signal.SIGKILL)
                call.join(timeout=600)
                t_end = time.time()
                event = next(e for e in pool.faults.events if e.kind in ("worker_death", "worker_timeout"))
                pool.wait_ready(timeout=600)
                return {"fault": "node lost",
                        "injected": "SIGKILL to every process of the second node while its "
                        "worker generates", "deadline_s": pool_cfg.call_timeout_s * 8,
                        "detect_s": event.at - t_fault,
                        "recover_s": t_end - event.at, "requests_lost": requests_lost(reqs, want, out[0]),
                        "steps_lost": 0,
                        "outcome": f"{event.kind.replace('_', ' ')}: {event.detail}; the replacement came "
                                   "up on the head"}
            finally:
                pool.shutdown()
                ray.shutdown()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)


def _thread(fn: Callable[[], None]) -> Any:
    import threading

    call = threading.Thread(target=fn)
    call.start()
    return call


class _Driver:
    """`medground train ...` with its own local Ray (a private RAY_TMPDIR, ended whatever happens)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.ray_dir = tempfile.mkdtemp(prefix="mgb-", dir="/tmp")
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MEDGROUND_RAY_ADDRESS")}
        env |= {"RAY_TMPDIR": self.ray_dir, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
        self.log, self.started = log, time.time()
        self.tree: set[int] = set()  # its processes, taken before the kill (Ray's agents lose their ancestry)
        with log.open("w") as out:
            self.proc = subprocess.Popen([str(BIN / "python"), "-m", "services.cli", "train",
                                          *args], cwd=ROOT,
                                         env=env, stdout=out, stderr=subprocess.STDOUT, text=True)

    def until(self, ready: Callable[[], bool], what: str, timeout: float = 900) -> float:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no {what}: {self.log.read_text()[-2000:]}")
            time.sleep(0.01)
        return time.time()

    def finish(self) -> None:
        if self.proc.wait(timeout=900) != 0:
            raise RuntimeError(f"the run failed: {self.log.read_text()[-2000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)
        kill_with_env(f"RAY_TMPDIR={self.ray_dir}", also=self.tree)
        shutil.rmtree(self.ray_dir, ignore_errors=True)


def _rows(run_dir: Path) -> dict[int, dict[str, Any]]:
    from services.training.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    return {r["step"]: r for r in read_metrics(path)} if path.is_file() else {}


def _complete(run_dir: Path) -> list[str]:
    from services.checkpointing import list_checkpoints

    return [p.name for p in list_checkpoints(run_dir)]


def _run(args: list[str], log: Path, body: Callable[[_Driver], Any] | None = None) -> Any:
    driver = _Driver(args, log)
    try:
        return driver.finish() if body is None else body(driver)
    finally:
        driver.close()


def driver_kills(model: Path, manifest: Path, work: Path) -> list[Row]:
    """The uninterrupted run, then two runs whose driver is SIGKILLed (after step 3's row; inside the write of
    checkpoint step-4), each resumed with `medground train --resume` and compared with the first."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = work / "faults.yaml"
    config.write_text(yaml.safe_dump({**TREE, "model": {"path": str(model), "family": "qwen2_5_vl"},
                                      "data": {"manifest": str(manifest)}}))
    _run([str(config), "--set", f"output_dir={work / 'calm'}"], work / "calm.log")
    want = _rows(work / "calm" / "faults")
    rows = []
    for name, trigger, redo_from in (("mid-step", lambda d: 3 in _rows(d), 3),
                                     ("mid-checkpoint",
                                      lambda d: (d / "checkpoints" / ".tmp-step-4").exists(), 3)):
        run_dir = work / name / "faults"

        def kill(driver: _Driver, run_dir: Path = run_dir,
                 trigger: Callable[[Path], bool] = trigger) -> float:
            driver.until(lambda: (run_dir / "metrics.jsonl").is_file(), "the first row")  # Ray is up: note it
            driver.tree |= process_tree(f"RAY_TMPDIR={driver.ray_dir}")
            t = driver.until(lambda: trigger(run_dir), "moment to kill")
            driver.proc.send_signal(signal.SIGKILL)
            driver.proc.wait(timeout=60)
            return t

        t_kill = _run([str(config), "--set", f"output_dir={work / name}"], work / f"{name}.log", kill)
        done_before = max(_rows(run_dir))
        checkpoint = int(_complete(run_dir)[-1].removeprefix("step-"))

        def resume(driver: _Driver, run_dir: Path = run_dir, done_before: int = done_before) -> float:
            # recovered: the resumed run has finished a step the killed one had not (start-up included)
            t = driver.until(lambda: max(_rows(run_dir), default=-1) > done_before, "progress past the kill")
            driver.finish()
            return t - driver.started

        recover = _run(["--resume", str(run_dir)], work / f"{name}-resume.log", resume)
        got = _rows(run_dir)
        bad = [s for s in range(redo_from, 6) for k in KEYS
               if (got[s].get(k) is None) != (want[s].get(k) is None)
               or (want[s].get(k) is not None and abs(got[s][k] - want[s][k]) > 1e-6 + 1e-5
                   * abs(want[s][k]))]
        rows.append({"fault": f"driver killed {name}", "injected": "kill -9 of the `medground train` process "
                     + ("right after step 3's row (in step 4)" if name == "mid-step"
                        else "while checkpoints/.tmp-step-4 was being written"),
                     "deadline_s": None, "detect_s": None, "recover_s": recover,
                     "requests_lost": 0 if not bad else None, "steps_lost": done_before - checkpoint,
                     "outcome": f"`medground train --resume` from step-{checkpoint}: steps {redo_from}-5 "
                                + ("equal the uninterrupted run's" if not bad
                                   else f"DIFFER at {sorted(set(bad))}"),
                     "killed_at_s": t_kill, "matches_uninterrupted": not bad})
    return rows
