"""The training service end to end on CPU, on real components: 2 vLLM rollout workers (the session's shared
pool), the reward actor, a 2-rank DeepSpeed learner; SFT then GRPO with overlapped generation, evaluation,
checkpoints, and an exact resume from the run's own checkpoint.

One full run serves every check of this file (the scenarios of the driver -- refills, stage switches,
resizes, refused adapters, stops -- run against fakes in tests/unit/services/test_train_loop.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from run_configs import run_config

from bench.faults.helpers import KEYS
from bench.faults.helpers import TREE as RESUME_TREE
from services.training.metrics import read_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def full_run(lend_pool: Callable[..., Any], tiny_model_dir: Path, demo_data: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The fault tests' run (one SFT step, four GRPO steps whose tau, rewards and learner state depend on what
    came before; checkpoints at 1, 2, 4, 5) on 2 workers and 2 ranks with max_staleness 1 and the
    sequence_mask
    rollout correction: step 3 generates step 4's batch while it learns (steps 2 and 4 checkpoint, so they
    drain the pipeline)."""
    from services.training import train_loop

    over = {k: v for k, v in RESUME_TREE.items() if k not in ("name", "seed", "rollout", "pool")}
    learner = {**RESUME_TREE["learner"], "num_ranks": 2}
    learner["grpo"] = {**learner["grpo"], "rollout_correction": "sequence_mask"}  # TRL's default correction
    over |= {"max_staleness": 1, "learner": learner,
             "eval": {"every": 0, "max_samples": 4, "overlays": 2}, "checkpoint": {"every": 2, "keep": 3}}
    cfg = run_config(tiny_model_dir, demo_data, tmp_path_factory.mktemp("full"), **over)
    rows: list[dict[str, Any]] = []
    run_dir = train_loop.run(cfg, on_step=lambda step, row: rows.append({"step": step, **row}),
                             start=lend_pool)
    return run_dir, rows


def test_overlapped_grpo_pushes_every_adapter_to_both_workers(
        full_run: tuple[Path, list[dict[str, Any]]]) -> None:
    run_dir, rows = full_run
    assert [r["stage"] for r in rows] == ["warmup"] + ["grounding"] * 4
    grpo = {r["step"]: r for r in rows if r["stage"] == "grounding"}
    assert [grpo[s]["batch/staleness"] for s in (2, 3, 4, 5)] == [0, 0, 1, 0]
    for step, r in grpo.items():
        # one version per batch, live on both workers: the one just pushed, or (step 4) the one before
        assert r["batch/adapter_version_min"] == r["batch/adapter_version_max"], step
        assert r["adapter_version"] - 1 - r["batch/adapter_version_max"] == r["batch/staleness"], step
        assert (r["rollout/workers"], r["rollout/workers_serving"]) == (2, 2), step
        assert r["learner/loss"] > 1e-5, "the learner did not train"
    # the stale batch's ratio is taken against the version that sampled it, which the learner has moved past
    assert grpo[4]["learner/ratio_max"] != 1.0 or grpo[4]["learner/ratio_min"] != 1.0
    # the rollout-vs-learner correction (sequence_mask, cap 3) read every step's engine log-probs against the
    # learner's under the sampling version: fp32 engines agree, so nothing is masked and the ratio is ~1
    for step, r in grpo.items():
        assert r["learner/correction_ratio_mean"] == pytest.approx(1.0, abs=1e-3), step
        assert r["learner/correction_sequence_fraction"] == 0.0 and r["learner/correction_kl"] < 1e-4, step
    assert [grpo[s]["tau/value"] for s in (2, 3, 4, 5)] != [grpo[2]["tau/value"]] * 4, "tau never moved"

    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert "eval/A@0.5" in metrics[0] and "eval/A@0.5" in metrics[-1]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "plots" / "reward.png").is_file()
    assert json.loads((run_dir / "resolved_config.json").read_text())["max_staleness"] == 1
    assert len(list((run_dir / "samples").glob("step-*/*.png"))) == 4  # 2 overlays at the start, 2 at the end
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-4", "step-5"]


def test_resume_from_the_runs_checkpoint_reproduces_the_rest(full_run: tuple[Path, list[dict[str, Any]]],
                                                             lend_pool: Callable[..., Any],
                                                             tmp_path: Path) -> None:
    """A copy of the run as a kill right after step 3 would leave it (newest complete checkpoint: step-2)
    resumes to the same steps 3-5: learner, adapter versions, MedLoc-R1 window and tau, data order, sampling
    seeds and the overlapped step's prefetch. (A real `kill -9` mid-step:
    tests/integration/test_faults_process.py,
    slow tier.)"""
    from services.config import load_run_config
    from services.training import train_loop

    full, _ = full_run
    partial = tmp_path / "it"
    shutil.copytree(full, partial)
    for later in ("step-4", "step-5"):
        shutil.rmtree(partial / "checkpoints" / later)
    shutil.rmtree(partial / "adapter")
    resumed = train_loop.run(load_run_config(partial), run_dir=partial, resume=True, start=lend_pool)

    want = {r["step"]: r for r in read_metrics(full / "metrics.jsonl")}
    got = {r["step"]: r for r in read_metrics(resumed / "metrics.jsonl")}
    assert sorted(got) == sorted(want) == [0, 1, 2, 3, 4, 5]
    for step in (3, 4, 5):
        for key in KEYS:
            expected = want[step].get(key)
            if expected is None:  # e.g. no learner loss when every group had equal rewards
                assert got[step].get(key) is None, (step, key)
            else:
                assert got[step].get(key) == pytest.approx(expected, rel=1e-5, abs=1e-6), (step, key)
