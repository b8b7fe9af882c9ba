"""The pure parts of fault handling: the fault log's per-step counts, the rollout pool's per-worker deadline
clocks, durable files (debris of a killed checkpoint write, a metrics row torn by a crash), the driver's
SIGTERM/SIGINT handler and what the CLI prints for a stopped run. The faults themselves, on real
components: tests/integration/test_faults_*.py."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from learner import durable
from services import checkpointing as ckpt
from services.cluster.fault_log import FaultLog
from services.cluster.rollout_pool import _InFlight, _Worker
from services.training.launch import GracefulStop
from services.training.metrics import MetricsWriter, read_metrics
from services.training.train_loop import RunFailed, StopRequested


def test_fault_log_counts_each_kind_since_the_last_take_with_zeros() -> None:
    faults = FaultLog("rollout", ("worker_death", "worker_timeout"))
    assert faults.take() == {"rollout/worker_deaths": 0, "rollout/worker_timeouts": 0,
                             "rollout/requests_resent": 0}
    faults.record("worker_timeout", "rollout worker 3 (pid 7)", "did not answer", requests=4)
    faults.record("worker_timeout", "rollout worker 5 (pid 8)", "did not answer", requests=2)
    assert faults.take() == {"rollout/worker_deaths": 0, "rollout/worker_timeouts": 2,
                             "rollout/requests_resent": 6}
    assert faults.take()["rollout/worker_timeouts"] == 0  # counted once
    assert [e.who for e in faults.events] == ["rollout worker 3 (pid 7)", "rollout worker 5 (pid 8)"]
    with pytest.raises(ValueError, match="unknown fault kind"):
        faults.record("meltdown", "x", "y")


def _worker(serial: int) -> _Worker:
    return _Worker(handle=None, ready=None, serial=serial, where=None)  # type: ignore[arg-type]


def test_a_shards_clock_starts_when_the_shard_before_it_on_its_worker_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("services.cluster.rollout_pool.time.monotonic", lambda: now[0])
    flight = _InFlight()
    a, b = _worker(0), _worker(1)
    flight.add("a1", a, [0, 1], budget_s=10.0)  # type: ignore[arg-type]
    flight.add("b1", b, [2, 3], budget_s=10.0)  # type: ignore[arg-type]
    now[0] = 105.0
    flight.add("a2", a, [4], budget_s=5.0)  # type: ignore[arg-type]  # queued behind a1: no clock yet
    assert flight.next_deadline() == 110.0
    now[0] = 109.0
    assert flight.pop("a1").indices == [0, 1]  # type: ignore[arg-type]
    # a2 started now (109), not when it was sent (105): a worker is not late for work it has not begun
    assert flight.next_deadline() == 110.0  # b1
    now[0] = 113.0
    assert [s.worker.serial for s in flight.expired(now[0])] == [1]
    assert flight.drop(b) == [2, 3] and flight.next_deadline() == 114.0
    now[0] = 114.0
    assert [s.indices for s in flight.expired(now[0])] == [[4]]
    assert flight.drop(a) == [4] and not flight.shards and not flight.queues


def test_killed_checkpoint_writes_leave_the_previous_checkpoint_and_their_debris_goes(tmp_path: Path) -> None:
    def fill(d: Path) -> None:
        (d / "part").write_text("x")

    ckpt.write_checkpoint(tmp_path, 2, fill, keep=2)
    root = tmp_path / "checkpoints"
    # what kills leave: a write cut before its rename, a swap cut between renames, a prune cut mid-delete
    (root / ".tmp-step-4").mkdir()
    (root / ".tmp-step-4" / "part").write_text("half")
    (root / ".step-2.old").mkdir()
    (root / ".step-2.old" / ckpt.COMPLETE_MARK).write_text("2\n")
    (root / ".old-step-1").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-2"]
    ckpt.write_checkpoint(tmp_path, 4, fill, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-4"]
    assert (root / "step-4" / ckpt.COMPLETE_MARK).read_text() == "4\n"


def test_durable_write_replaces_a_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    durable.write_text(path, "old\n")
    durable.write_text(path, "new\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    src, dst = tmp_path / "tmp", tmp_path / "final"
    for text in ("first", "second"):
        src.mkdir()
        (src / "f").write_text(text)
        durable.replace_dir(src, dst)
    assert (dst / "f").read_text() == "second" and sorted(p.name for p in tmp_path.iterdir()) == ["final",
                                                                                                 "metrics.jsonl"]


def test_a_metrics_row_torn_by_a_crash_is_dropped_on_resume(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path, tensorboard=False, plots=False)
    for step in range(4):
        writer.log(step, {"reward/total": float(step)})
    with writer.path.open("a") as f:
        f.write('{"step": 4, "reward/to')  # the driver was killed mid-append
    assert [r["step"] for r in read_metrics(writer.path)] == [0, 1, 2, 3]
    writer.truncate_after(2)
    assert writer.path.read_text().splitlines() == [json.dumps({"reward/total": float(s),
                                                                "step": s}, sort_keys=True)
                                                    for s in range(3)]
    writer.path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON metrics row"):
        read_metrics(writer.path)


def test_first_sigterm_stops_at_the_step_boundary_and_a_second_at_once() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        stop.check(1, {})  # nothing asked yet
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        with pytest.raises(StopRequested, match="SIGTERM received"):
            stop.check(2, {})
        with pytest.raises(KeyboardInterrupt, match="twice"):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(("cause", "code"), [(StopRequested("SIGTERM received"), 143),
                                             (RuntimeError("x"), 1)])
def test_the_cli_prints_a_stopped_runs_resume_command(monkeypatch: pytest.MonkeyPatch, cause: Exception,
                                                      code: int) -> None:
    from services.cli import app

    message = ("run it stopped after step 4 (...); the last complete checkpoint is "
               "runs/it/checkpoints/step-4; continue with: medground train --resume runs/it")

    def stopped(*args: Any) -> None:
        raise RunFailed(message) from cause

    monkeypatch.setattr("services.training.launch.train", stopped)
    result = CliRunner().invoke(app, ["train", "--resume", "runs/it"])
    assert result.exit_code == code
    assert f"error: {message}" in result.output


def _died(init_failed: bool = False) -> Exception:
    from ray.exceptions import RayActorError

    return RayActorError(actor_id="ab12", error_msg="the actor's node died", actor_init_failed=init_failed)


def test_a_reward_actor_that_dies_before_it_runs_is_followed_by_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a lost node Ray placed the reward actor's replacement on that node, and it died before it ran;
    the run stopped (make test-slow, test_faults_node.py). The client starts another, up to STARTS."""
    from rewards.config import RewardConfig
    from services.cluster import reward_client as rc

    outcomes: list[Any] = [_died(), _died(), "actor-3"]

    def create(config: RewardConfig, state: dict[str, Any] | None) -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(rc, "create_reward_actor", create)
    client = rc.RewardClient(RewardConfig())
    assert client._actor == "actor-3" and not outcomes
    assert client.take_faults()["reward/actor_deaths"] == 2
    assert "died before it ran" in client.faults.events[-1].detail

    outcomes[:] = [_died()] * rc.STARTS
    with pytest.raises(rc.RewardUnavailable, match=r"3 reward actors in a row died before they ran.*ray st"):
        client._start()
    outcomes[:] = [_died(init_failed=True), "never"]  # a constructor that raised is not retried
    with pytest.raises(Exception, match="the actor's node died"):
        client._start()
    assert outcomes == ["never"]
