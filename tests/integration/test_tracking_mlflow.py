"""A training run tracked by a real MLflow server on loopback (`mlflow server`, a sqlite backend, artifacts
proxied into a local folder): what MLflow holds after a stop, a resume into the same MLflow run, and an
outage of the server mid-run -- read back with MLflow's own client.

The real component is MLflow (server and client) behind the run's tracker
(services/training/tracker_mlflow.py, trackers.py, fed by the metrics writer). The training engines are the
in-process fakes of tests/driver_fakes.py (a scripted rollout pool, a learner that records its batches and
writes real PEFT-format adapter folders, the reward scorer without an actor): the driver, its rows,
checkpoints, evaluation reports and final adapter are the real code, only the numbers come from fakes. No
Ray, vLLM or DeepSpeed; the same loop on them is tests/integration/test_train_loop_e2e.py. The outage is a
TCP relay in front of the server that stops listening and cuts its open connections (what the client sees of
a server that died: refused and reset connections), then listens again: the server starts once (~10 s);
the rest (both runs, the outage's bounded retries, every metric history read back) ~15 s. The delivery
queue's rules and the privacy defaults are tested against fakes, a sqlite store and a W&B offline run in
tests/unit/services/test_trackers.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from driver_fakes import QueueControl, RecordingLearner, ScriptedPool, handles, varied_answer, write_records

from learner.distributed import free_port
from services.config import RunConfig
from services.training.metrics import MetricsWriter, read_metrics
from services.training.trackers import numeric, open_trackers, read_state

pytestmark = pytest.mark.integration


class MlflowServer:
    """`mlflow server` in its own process group on a free loopback port; `kill` is a SIGKILL of the group."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port, self.uri = root, port, f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"], stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = (self.root / "server.log").read_text()[-2000:]
                raise AssertionError(f"mlflow server exited: {tail}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server not up after {timeout:.0f} s"
            time.sleep(0.5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


class Relay:
    """A TCP relay from a free loopback port to `target`: `down()` stops listening and cuts the open
    connections, `up()` listens again on the same port."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.listening = threading.Event()
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the port again after down()
        listener.settimeout(0.2)
        self.listening.set()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        self.listening.clear()
        time.sleep(0.5)  # the accept loop sees it and closes the listener
        with self.lock:
            cut, self.open = self.open, []
        for conn in cut:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while self.listening.is_set():
                try:
                    client = listener.accept()[0]
                except TimeoutError:
                    continue
                server = socket.create_connection(("127.0.0.1", self.target))
                with self.lock:
                    self.open += [client, server]
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _config(tmp_path: Path, logging_section: dict[str, Any]) -> RunConfig:
    """An SFT step then 4 GRPO steps (global steps 1..5), checkpoints every 2 steps, evaluations at the
    start and the end (reports eval/step-0.json and eval/step-5.json)."""
    return RunConfig.model_validate({
        "name": "tracked", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "model": {"path": "unused"}, "data": {"manifest": "unused", "eval_split": "val"},
        "stages": [{"name": "warmup", "kind": "sft", "steps": 1, "prompts_per_step": 2, "lr": 1e-3},
                   {"name": "grounding", "kind": "grpo", "steps": 4, "prompts_per_step": 2, "refill_cap": 0}],
        "rollout": {"group_size": 4}, "reward": {"accuracy": "raw_iou", "w_recite": 0.0},
        "learner": {"num_ranks": 1, "lr": 1e-3}, "logging": logging_section,
        "eval": {"every": 0, "max_samples": 2, "overlays": 2}, "checkpoint": {"every": 2, "keep": 2}})


def test_an_mlflow_tracked_run_resumes_into_its_run_and_outlives_an_outage(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from services.training import train_loop
    from services.training.tracker_mlflow import mlflow_key

    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(tmp_path / "mlflow", free_port())
    relay = Relay(server.port)  # the run's way to the server
    logging_section = {"trackers": ["tensorboard", "mlflow"], "samples_every": 1, "log_adapter": True,
                       "mlflow": {"tracking_uri": relay.uri, "register_model": "medground-it"}}
    cfg = _config(tmp_path, logging_section)
    manifest = write_records(tmp_path / "data", n_train=6, n_val=2)

    def start(c: RunConfig, d: Path) -> Any:  # fresh fakes per process; the writer opens the real trackers
        return handles(c, d, manifest, ScriptedPool(varied_answer), RecordingLearner(), QueueControl(),
                       writer=MetricsWriter(d, trackers=open_trackers(c, d)))
    server.start()
    relay.up()
    try:
        client = MlflowClient(server.uri)

        # ---- a stop after step 2 (SIGTERM's path): the MLflow run holds steps 0..2 and says KILLED
        def stop(step: int, row: dict[str, Any]) -> None:
            if step == 2:
                raise train_loop.StopRequested("SIGTERM received")
        with pytest.raises(train_loop.RunFailed):
            train_loop.run(cfg, on_step=stop, start=start)
        run_dir = tmp_path / "runs" / "tracked"
        run_id = read_state(run_dir)["mlflow"]["run_id"]
        first = client.get_run(run_id)
        assert first.info.status == "KILLED" and first.info.run_name == "tracked"
        # the GRPO steps so far: step 2 (step 1 is the SFT step's, which has no reward)
        assert [m.step for m in client.get_metric_history(run_id, "reward/total")] == [2]

        # ---- resume into the same MLflow run; the server is out of reach after step 3, back after step 4
        def outage(step: int, row: dict[str, Any]) -> None:
            if step == 3:
                assert client.get_run(run_id).info.status == "RUNNING"  # the same run, continued
                relay.down()
            elif step == 4:
                relay.up()
        train_loop.run(cfg, run_dir=run_dir, resume=True, on_step=outage, start=start)
        assert read_state(run_dir)["mlflow"]["run_id"] == run_id

        # ---- the run finished with every row on disk, the failure counted in the next row
        rows = read_metrics(run_dir / "metrics.jsonl")
        assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
        # row 4's delivery failed (the server was out of reach): counted in row 5; the retry went through
        # before row 5 was written (with the final evaluation's report), so nothing waited any more
        assert (rows[5]["tracker/failures"], rows[5]["tracker/pending"]) == (1, 0)
        assert all(r["tracker/failures"] == 0 for r in rows[:5])

        # ---- MLflow holds every numeric key of every row at its step, exactly once
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for key in {k for r in rows for k in numeric(r)}:
            history = client.get_metric_history(run_id, mlflow_key(key))
            want = {r["step"]: r[key] for r in rows if key in numeric(r)}
            assert sorted(m.step for m in history) == sorted(want), key  # no step twice, none missing
            assert {m.step: m.value for m in history} == pytest.approx(want), key
        assert run.data.params["stages.1.name"] == "grounding" and run.data.params["learner.num_ranks"] == "1"
        assert run.data.params["logging.mlflow.tracking_uri"] == relay.uri

        # ---- the artifacts: config, plots, evaluation reports (numbers), the adapter (the fake learner's
        # PEFT folder of its last checkpoint, registered); no text or image of a record
        files = _files(client, run_id)
        assert "resolved_config.json" in files and "plots/reward.png" in files
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(files)
        assert sorted(f for f in files if f.startswith(("samples/", "eval/"))) == \
            ["eval/step-0.json", "eval/step-5.json"]
        assert list((run_dir / "samples").glob("train-step-*.jsonl"))  # the run directory keeps them
        versions = client.search_model_versions("name='medground-it'")
        assert [(v.version, v.run_id) for v in versions] == [("1", run_id)]
    finally:
        relay.down()
        server.kill()


def _files(client: Any, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        out += _files(client, run_id, info.path) if info.is_dir else [info.path]
    return out
