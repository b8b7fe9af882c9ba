"""Operator commands fail fast with a message that says what to do, before touching a cluster; the
pieces of `submit` (entrypoint, runtime environment) and the status table. The commands against a live job
are tested in tests/integration/test_operator_cli.py."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from learner.distributed import free_port
from services.cli import app, ops
from services.cluster.control import JobStatus

ROOT = Path(__file__).resolve().parents[3]
runner = CliRunner()


def test_scale_refuses_fewer_than_one_worker() -> None:
    result = runner.invoke(app, ["scale", "rollout", "0", "--address", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "at least 1 worker, got 0" in result.output


def test_unreachable_cluster_says_what_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    joins: list[object] = []
    monkeypatch.setattr(ray, "init", lambda *a, **kw: joins.append(kw))
    result = runner.invoke(app, ["status", "--address", f"127.0.0.1:{free_port()}"])  # nothing listens there
    assert result.exit_code == 1
    assert "unreachable" in result.output and "--address" in result.output
    assert not joins, "an unreachable address must fail before ray.init, not after Ray's connection retries"


def test_dashboard_url_is_not_a_cluster_address() -> None:
    result = runner.invoke(app, ["scale", "rollout", "2", "--address", "http://127.0.0.1:8265"])
    assert result.exit_code == 1
    assert "dashboard URL" in result.output and "127.0.0.1:6379" in result.output


def test_submit_validates_the_config_before_the_network() -> None:
    result = runner.invoke(app, ["submit", "deploy/configs/demo.yaml", "--set", "rollout.grup_size=4",
                                 "--address", "http://127.0.0.1:1"])
    assert result.exit_code == 1
    assert "did you mean 'group_size'" in result.output


def test_submit_needs_the_job_server_address() -> None:
    result = runner.invoke(app, ["submit", str(ROOT / "deploy/configs/demo.yaml"), "--address",
                                 "127.0.0.1:6379",
                                 "--working-dir", str(ROOT)])
    assert result.exit_code == 1
    assert "job server" in result.output and "8265" in result.output


def test_entrypoint_is_medground_train_relative_to_the_upload() -> None:
    entry = ops.entrypoint(ROOT / "deploy/configs/demo.yaml", ["name=a b", "learner.lr=1e-5"], ROOT)
    assert shlex.split(entry) == ["medground", "train", "deploy/configs/demo.yaml", "--set", "name=a b",
                                  "--set", "learner.lr=1e-5"]


@pytest.mark.parametrize("gpu", [False, True])
def test_runtime_env_is_the_projects_file_plus_working_dir(gpu: bool) -> None:
    env = ops.runtime_env(gpu, ROOT)
    shipped = yaml.safe_load((ROOT / "deploy/jobs" / f"runtime_env_{'gpu' if gpu else 'cpu'}.yaml").read_text())  # noqa: E501
    assert env == {**shipped, "working_dir": str(ROOT)}
    assert ("DS_ACCELERATOR" in env["env_vars"]) is not gpu  # CPU engines need it; GPUs must not have it


def test_status_table_names_every_field() -> None:
    report = JobStatus(run="demo", run_dir="runs/demo", step=12, total_steps=420, stage="grounding",
                       tau=0.35, tau_version=2, rollout_workers=3, rollout_workers_live=2,
                       rollout_workers_serving=2, completions_per_s=14.2, tokens_per_s=230.0,
                       step_seconds=3.1,
                       adapter_version=13, reward=0.5, last_eval_a50=0.219, pending_rollout_workers=None,
                       reported_at=time.time() - 2, age_s=2.04)
    table = ops.format_status(report)
    for text in ("12 / 420", "grounding", "0.35 (version 2)", "3 target, 2 live, 1 starting",
                 "2 served the last step", "14.2 completions/s", "230 tokens/s", "v13", "0.219", "2.0 s ago"):
        assert text in table, (text, table)
    assert "starting (no report yet)" in ops.format_status(JobStatus(run="demo", pending_rollout_workers=2))
    assert json.loads(ops.to_json(report))["last_eval_a50"] == 0.219
