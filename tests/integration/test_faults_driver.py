"""Faults that stop a run, on the real driver, learner and rollout workers: a learner rank killed between
steps stops the run within seconds (its peer would otherwise wait in a collective for 30 min) naming the last
checkpoint and the resume command; an adapter the engine refuses stops the run with the engine's reason, the
workers still on the previous adapter (issue 21, faults 7 and 6)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
from run_configs import run_config

from bench.faults.helpers import gone
from services.training import train_loop
from services.training.seams import RunHandles

pytestmark = pytest.mark.integration


def _pid(actor: Any) -> int:
    return int(ray.get(actor.__ray_call__.remote(lambda self: os.getpid())))


def test_a_killed_learner_rank_stops_the_run_with_the_resume_command(lend_pool: Callable[..., Any],
                                                                     tiny_model_dir: Path, demo_data: Path,
                                                                     tmp_path: Path) -> None:
    cfg = run_config(tiny_model_dir, demo_data, tmp_path, **{
        "stages": [{"name": "warmup", "kind": "sft", "steps": 4, "prompts_per_step": 2, "lr": 1e-3}],
        "eval": {"at_start": False, "every": 0, "max_samples": 2, "overlays": 0},
        "checkpoint": {"every": 2, "keep": 2}})
    live: dict[str, Any] = {}

    def start(c: Any, d: Path) -> RunHandles:
        live["h"] = lend_pool(c, d)
        return live["h"]

    def kill_rank(step: int, row: dict[str, Any]) -> None:
        if step == 2:  # step-2 is on disk; rank 0 will wait for rank 1 in step 3's first collective
            ranks = live["h"].learner._workers
            live["pids"] = [_pid(r) for r in ranks]
            os.kill(live["pids"][1], signal.SIGKILL)
            live["killed"] = time.monotonic()

    with pytest.raises(train_loop.RunFailed) as failed:
        train_loop.run(cfg, on_step=kill_rank, start=start)
    stopped_after = time.monotonic() - live["killed"]
    message = str(failed.value)
    assert "stopped after step 2 (LearnerRankLost: learner rank(s) [1] died during sft_step" in message, (
        message)
    assert f"the last complete checkpoint is {tmp_path / 'it' / 'checkpoints' / 'step-2'}; continue with: " \
           f"medground train --resume {tmp_path / 'it'}" in message
    assert stopped_after < 60.0, f"the run took {stopped_after:.0f} s to stop after a rank died"
    assert gone(live["pids"][0]), "the surviving rank was left waiting in its collective"


@pytest.mark.slow  # the same stop against fakes: tests/unit/services/test_train_loop.py; the refusal on real
# engines: tests/integration/test_faults_rollout.py
def test_an_adapter_the_engine_refuses_stops_the_run_with_the_reason(ray_local: None, tiny_model_dir: Path,
                                                                     demo_data: Path, tmp_path: Path) -> None:
    # a rank-16 adapter for engines that take rank 8 at most: the first push (at the SFT stage's end) is
    # refused
    cfg = run_config(tiny_model_dir, demo_data, tmp_path, **{
        "stages": [{"name": "warmup", "kind": "sft", "steps": 2, "prompts_per_step": 2, "lr": 1e-3},
                   {"name": "grounding", "kind": "grpo", "steps": 1, "prompts_per_step": 2}],
        "pool": {"num_workers": 1, "cpus_per_worker": 0.25},
        "rollout": {"group_size": 2, "max_model_len": 512,
                    "max_lora_rank": 8, "sampling": {"temperature": 1.0, "max_new_tokens": 8}},
        "learner": {"num_ranks": 1, "cpus_per_rank": 0.25, "micro_batch_size": 4, "mlae": {"rank": 16}},
        "eval": {"at_start": False, "every": 0, "max_samples": 2, "overlays": 0},
        "checkpoint": {"every": 1}})
    with pytest.raises(train_loop.RunFailed) as failed:
        train_loop.run(cfg)
    message = str(failed.value)
    assert "stopped after step 2 (AdapterLoadError: adapter v1 failed to load on rollout worker(s) [0]" in message  # noqa: E501
    assert "LoRA rank 16 is greater than max_lora_rank 8" in message
    assert "Every worker serves adapter v0 again" in message
    assert "checkpoints/step-1; continue with: medground train --resume" in message


def test_a_live_ranks_collective_error_after_a_rank_died_is_still_a_lost_rank(ray_local: None) -> None:
    """The race seen in CI: rank 0's collective fails ("connection reset by peer") and ray.get raises that
    task error before Ray reports rank 1 dead. The group still stops as LearnerRankLost; a task error with
    every rank alive is re-raised as it is (a bug, not a lost rank)."""
    from ray.exceptions import RayTaskError

    from services.cluster.learner_group import LearnerGroup, LearnerRankLost

    @ray.remote
    class Rank:
        def fail(self) -> None:
            raise RuntimeError("Connection reset by peer")

        def pid(self) -> int:
            return os.getpid()

    def group(ranks: list[Any]) -> LearnerGroup:
        g = object.__new__(LearnerGroup)
        g._workers, g._setup = ranks, None  # ranks set up
        return g

    alive, dying = Rank.remote(), Rank.remote()
    pid = ray.get(dying.pid.remote())
    os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    with pytest.raises(LearnerRankLost, match=r"learner rank\(s\) \[1\] died during sft_step \(RayTaskError"):
        group([alive, dying])._all([alive.fail.remote()], "sft_step")
    healthy = [Rank.remote(), Rank.remote()]
    with pytest.raises(RayTaskError, match="Connection reset by peer"):
        group(healthy)._all([healthy[0].fail.remote()], "sft_step")
