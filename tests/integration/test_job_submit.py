"""`ray job submit` against a `ray start --head` on loopback runs the training job to success.

The cluster is this test's own (tests/integration/local_cluster.py): free ports, token auth, and a teardown
that stops only it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from local_cluster import BIN, head_cluster, run

pytestmark = pytest.mark.integration


def test_ray_job_submit_runs_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    from services.data.synth import make_spec, write_dataset

    manifest = write_dataset(make_spec("demo", splits={"train": 8, "val": 2, "test": 0}), tmp_path / "data",
                             seed=0, manifest_name="manifest.jsonl")
    with head_cluster(tmp_path) as cluster:
        entry = [str(BIN / "python"), "-m", "services.cli", "train", "deploy/configs/demo.yaml",
                 "--set", f"model.path={tiny_model_dir}", "--set", f"data.manifest={manifest}",
                 "--set", f"output_dir={tmp_path / 'runs'}", "--set", "name=job",
                 "--set", "stages.0.steps=2", "--set", "stages.0.prompts_per_step=2",
                 "--set", "rollout.group_size=2", "--set", "rollout.max_lora_rank=16",
                 "--set", "rollout.sampling.max_new_tokens=8", "--set", "rollout.cpus_per_worker=0.5",
                 "--set", "learner.cpus_per_rank=0.5", "--set", "eval.max_samples=2", "--set", "eval.every=0",
                 "--set", "checkpoint.every=0"]
        t0 = time.time()
        submit = run([str(BIN / "ray"), "job", "submit", "--address", str(cluster["dashboard"]),
                      "--working-dir", ".", "--runtime-env", "deploy/jobs/runtime_env_cpu.yaml", "--", *entry],
                     cluster["env"], 600)
        assert submit.returncode == 0, (submit.stdout[-4000:], submit.stderr[-2000:])
        assert "succeeded" in submit.stdout.lower(), submit.stdout[-3000:]
        run_dir = tmp_path / "runs" / "job"
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1, 2]  # the evaluation at the start, two GRPO steps
        assert (run_dir / "adapter" / "adapter_config.json").is_file()
        assert (run_dir / "resolved_config.json").is_file()
        print(f"job finished in {time.time() - t0:.0f} s")
