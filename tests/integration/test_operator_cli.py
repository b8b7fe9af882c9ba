"""The operator CLI against a real cluster: `medground submit` a training job to a `ray start --head` on
loopback (what `ray job submit --working-dir . --runtime-env deploy/jobs/runtime_env_cpu.yaml -- medground
train CONFIG` does: the same job server call), read `medground status` while it runs, scale its rollout pool
1 -> 2 -> 1 with `medground scale rollout`, and check that every step completed, the metrics show the worker
counts, and the added worker sampled with the current adapter; then `medground eval` the finished run. Every
command runs in its own process, through --address.

Teardown stops only this test's cluster: the processes whose command line names its own temp dir (never
`ray stop`, which would stop every Ray on a shared machine).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest

from bench.faults.cluster import BIN, ROOT, head_cluster, run
from services.training.metrics import read_metrics

pytestmark = pytest.mark.integration
# A tiny step takes ~0.4 s and each CLI call a few seconds (a new process joins the cluster): enough steps
# that the shrink lands while the job runs. The added worker's start is waited for (pool.resize_wait_s).
GRPO_STEPS = 50


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with head_cluster(tmp_path) as c:
        yield c


def _cli(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "python"), "-m", "services.cli", *args], env, timeout)


def _status(c: dict[str, Any]) -> dict[str, Any] | None:
    """The job's status, or None while its control actor is not up yet."""
    out = _cli(["status", "--json", "--run", "ops", "--address", c["gcs"]], c["env"], timeout=120)
    if out.returncode != 0:
        assert "no running medground job named 'ops'" in out.stderr, out.stderr[-2000:]
        return None
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def _wait_status(c: dict[str, Any], ok: Any, what: str, timeout: float,
                 submit: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert submit.poll() is None, f"the job ended (submit exit {submit.returncode}) before {what}"
        last = _status(c)
        if last is not None and ok(last):
            return last
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; last status: {last}")


def _wait_for_step(metrics: Path, step: int, timeout: float, submit: subprocess.Popen[str]) -> None:
    """Until the run's metrics.jsonl holds `step`: read from the file, not by polling `medground status` (each
    call is a new process joining the cluster, which took CPU from the starting job on 2 cores)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert submit.poll() is None, f"the job ended (submit exit {submit.returncode}) before step {step}"
        if metrics.is_file() and any(r.get("step", -1) >= step for r in read_metrics(metrics)):
            return
        time.sleep(0.5)
    raise AssertionError(f"the job did not reach step {step} within {timeout:.0f} s")


def test_scale_a_running_job_1_2_1(cluster: dict[str, Any], tiny_model_dir: Path, tmp_path: Path,
                                   request: pytest.FixtureRequest) -> None:
    from services.data.synth import make_spec, write_dataset

    c = cluster
    manifest = write_dataset(make_spec("demo", splits={"train": 8, "val": 2, "test": 0}), tmp_path / "data",
                             seed=0, manifest_name="manifest.jsonl")
    sets = {"name": "ops", "model.path": tiny_model_dir, "data.manifest": manifest,
            "output_dir": tmp_path / "runs", "stages.0.steps": GRPO_STEPS, "stages.0.prompts_per_step": 2,
            "stages.0.refill_cap": 0,
            # transformers-engine workers, which start in seconds: scaling is the pool's and the same for
            # either engine (vLLM workers in a training run: test_train_loop_e2e.py)
            "rollout.engine": "hf",
            "rollout.group_size": 2, "rollout.max_lora_rank": 16, "rollout.sampling.max_new_tokens": 8,
            "pool.cpus_per_worker": 0.5, "pool.resize_wait_s": 300, "learner.cpus_per_rank": 0.5,
            "learner.torch_threads": 1,
            "eval.at_start": False, "eval.every": 0, "eval.max_samples": 2, "eval.overlays": 0,
            "checkpoint.every": 0}
    overrides = [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]
    t0 = time.monotonic()
    # submit follows the job's log until it ends (what an operator sees); it runs beside the commands below
    follow_log = (tmp_path / "submit.log").open("w+")
    submit = subprocess.Popen([str(BIN / "python"), "-m", "services.cli", "submit",
                               "deploy/configs/demo.yaml",
                               *overrides, "--address", c["dashboard"], "--job-id", "ops-job"],
                              env=c["env"], cwd=ROOT, stdout=follow_log, stderr=subprocess.STDOUT, text=True)
    request.addfinalizer(submit.kill)  # runs before the cluster's teardown
    request.addfinalizer(follow_log.close)

    # 1 worker, running: status has every field an operator needs
    _wait_for_step(tmp_path / "runs" / "ops" / "metrics.jsonl", 2, 600, submit)
    first = _wait_status(c, lambda s: (s.get("step") or 0) >= 2, "the job's second step", 120, submit)
    assert first["rollout_workers"] == first["rollout_workers_live"] == 1
    assert first["total_steps"] == GRPO_STEPS and first["stage"] == "grounding"
    assert first["tau"] is not None and first["tau_version"] is not None
    assert first["completions_per_s"] > 0 and first["tokens_per_s"] > 0 and first["adapter_version"] >= 1
    assert 0 <= first["age_s"] < 120
    print(f"step {first['step']} at {time.monotonic() - t0:.0f} s")
    table = _cli(["status", "--address", c["gcs"]], c["env"], 120)  # the only job: no --run needed
    assert table.returncode == 0, table.stderr[-2000:]
    assert "1 target, 1 live, 0 starting" in table.stdout and "completions/s" in table.stdout, table.stdout

    # 1 -> 2: the driver adds a worker between steps; --wait returns once both are live
    up = _cli(["scale", "rollout", "2", "--run", "ops", "--wait", "400", "--address",
               c["gcs"]], c["env"], 450)
    assert up.returncode == 0, (up.stdout[-2000:], up.stderr[-2000:])
    assert ("resize to 2 rollout workers requested" in up.stdout
            and "done: 2 rollout workers live" in up.stdout)
    print(f"2 workers at {time.monotonic() - t0:.0f} s")

    # 2 -> 1
    down = _cli(["scale", "rollout", "1", "--wait", "300", "--address", c["gcs"]], c["env"], 350)
    assert down.returncode == 0, (down.stdout[-2000:], down.stderr[-2000:])
    assert "done: 1 rollout workers live" in down.stdout
    print(f"1 worker at {time.monotonic() - t0:.0f} s")

    submit.wait(timeout=600)
    follow_log.seek(0)
    followed = follow_log.read()
    print(f"job finished in {time.monotonic() - t0:.0f} s")
    assert submit.returncode == 0, followed[-4000:]
    assert "submitted job ops-job" in followed and "ray job logs --follow ops-job" in followed
    assert "run finished:" in followed and "job ops-job: SUCCEEDED" in followed, followed[-3000:]
    job = run([str(BIN / "ray"), "job", "status", "ops-job", "--address", c["dashboard"]], c["env"], 60)
    assert "succeeded" in job.stdout.lower(), job.stdout[-1000:]
    gone = _cli(["status", "--address", c["gcs"]], c["env"], 120)
    assert gone.returncode == 1 and "no running medground job found" in gone.stderr, gone.stderr[-1000:]

    rows = read_metrics(tmp_path / "runs" / "ops" / "metrics.jsonl")
    steps = [r for r in rows if r["step"] >= 1]
    assert [r["step"] for r in steps] == list(range(1, GRPO_STEPS + 1)), "a step is missing"
    grpo = [r for r in steps if r["stage"] == "grounding"]
    assert [k for k, _ in groupby(r["rollout/workers"] for r in grpo)] == [1, 2, 1]
    both = [i for i, r in enumerate(grpo) if r["rollout/workers_serving"] == 2]
    grown = next(i for i, r in enumerate(grpo) if r["rollout/workers"] == 2)
    assert both and both[0] == grown, "the step the resize landed on was not served by both workers"
    for i in both:
        # worker 1 is the one added; every group of the step came from the adapter pushed after the last step
        assert grpo[i]["rollout/serving_serials"] == "0,1"
        assert grpo[i]["batch/adapter_version_min"] == grpo[i]["batch/adapter_version_max"] \
            == grpo[i - 1]["adapter_version"]
    assert grpo[-1]["rollout/workers"] == grpo[-1]["rollout/workers_serving"] == 1
    assert grpo[-1]["rollout/serving_serials"] == "0"
    assert (tmp_path / "runs" / "ops" / "adapter" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "runs" / "ops" / "resolved_config.json").read_text())["pool"]["resize_wait_s"] == 300  # noqa: E501

    # `medground eval RUN_DIR`: the final adapter on the held-out split, on the same cluster
    run_dir = tmp_path / "runs" / "ops"
    ev = _cli(["eval", str(run_dir), "--max-samples", "2", "--address", c["gcs"]], c["env"], 300)
    assert ev.returncode == 0, (ev.stdout[-2000:], ev.stderr[-3000:])
    assert "eval/A@0.5" in ev.stdout and "cli-final.jsonl" in ev.stdout
    assert len((run_dir / "eval" / "cli-final.jsonl").read_text().splitlines()) == 2
    assert json.loads((run_dir / "eval" / "cli-final.json").read_text())["adapter_version"] == steps[-1]["adapter_version"]  # noqa: E501
