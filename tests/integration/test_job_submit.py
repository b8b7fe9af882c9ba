"""`ray job submit` against a `ray start --head` on loopback runs the training job to success."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def test_ray_job_submit_runs_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    from services.data.synth import make_spec, write_dataset

    manifest = write_dataset(make_spec("demo", splits={"train": 8, "val": 2, "test": 0}), tmp_path / "data",
                             seed=0, manifest_name="manifest.jsonl")
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = 6390 + os.getpid() % 50
    dash = 8300 + os.getpid() % 50
    # Ray's socket paths must stay under 107 bytes: pytest's tmp_path is too deep for its temp dir.
    ray_tmp = Path(tempfile.mkdtemp(prefix="mg-ray-", dir="/tmp"))
    start = _run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                  "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
                  "--temp-dir", str(ray_tmp)], env, 180)
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        entry = [str(BIN / "python"), "-m", "services.cli", "train", "deploy/configs/demo.yaml",
                 "--set", f"model.path={tiny_model_dir}", "--set", f"data.manifest={manifest}",
                 "--set", f"output_dir={tmp_path / 'runs'}", "--set", "name=job",
                 "--set", "stages.0.steps=1", "--set", "stages.0.prompts_per_step=2",
                 "--set", "stages.1.steps=1", "--set", "stages.1.prompts_per_step=2",
                 "--set", "rollout.group_size=2", "--set", "rollout.max_lora_rank=16",
                 "--set", "rollout.sampling.max_new_tokens=8", "--set", "rollout.cpus_per_worker=0.5",
                 "--set", "learner.cpus_per_rank=0.5", "--set", "eval.max_samples=2", "--set", "eval.every=0",
                 "--set", "checkpoint.every=0"]
        t0 = time.time()
        submit = _run([str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                       "--working-dir", ".", "--runtime-env", "deploy/jobs/runtime_env_cpu.yaml", "--", *entry],
                      env, 600)
        assert submit.returncode == 0, (submit.stdout[-4000:], submit.stderr[-2000:])
        assert "succeeded" in submit.stdout.lower(), submit.stdout[-3000:]
        run_dir = tmp_path / "runs" / "job"
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1, 2]
        assert (run_dir / "adapter" / "adapter_config.json").is_file()
        assert (run_dir / "resolved_config.json").is_file()
        print(f"job finished in {time.time() - t0:.0f} s")
    finally:
        _run([str(BIN / "ray"), "stop", "--force"], env, 120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
