"""The training service end to end on CPU: 2 rollout workers (vLLM), the reward actor, a 2-rank DeepSpeed
learner, SFT then GRPO, checkpoints, and an exact resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import TREE as RESUME_TREE

from services.config import RunConfig
from services.metrics import read_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.data.synth import make_spec, write_dataset

    out = tmp_path_factory.mktemp("data")
    spec = make_spec("demo", splits={"train": 24, "val": 4, "test": 0})
    return write_dataset(spec, out, seed=0, manifest_name="manifest.jsonl")


def _config(model: Path, manifest: Path, out: Path, **over: Any) -> RunConfig:
    tree: dict[str, Any] = {
        "name": "it", "seed": 0, "output_dir": str(out),
        "model": {"path": str(model), "family": "qwen2_5_vl"},
        "data": {"manifest": str(manifest)},
        "stages": [{"name": "warmup", "kind": "sft", "steps": 2, "prompts_per_step": 4, "lr": 1e-3},
                   {"name": "grounding", "kind": "grpo", "steps": 3, "prompts_per_step": 2, "refill_cap": 1}],
        "rollout": {"num_workers": 2, "group_size": 4, "cpus_per_worker": 0.25, "max_model_len": 512,
                    "sampling": {"temperature": 1.0, "max_new_tokens": 12}},
        "learner": {"num_ranks": 2, "cpus_per_rank": 0.25, "micro_batch_size": 4, "lr": 1e-3},
        "reward": {"accuracy": "raw_iou"},
        "eval": {"every": 0, "max_samples": 4, "overlays": 2},
        "checkpoint": {"every": 3, "keep": 3},
    }
    tree.update(over)
    return RunConfig.model_validate(tree)


def test_grpo_steps_push_each_adapter_to_every_worker(ray_local: None, tiny_model_dir: Path, demo_data: Path,
                                                      tmp_path: Path) -> None:
    from services import train_loop

    cfg = _config(tiny_model_dir, demo_data, tmp_path)
    rows: list[dict[str, Any]] = []
    run_dir = train_loop.run(cfg, on_step=lambda step, row: rows.append({"step": step, **row}))

    assert [r["stage"] for r in rows] == ["warmup"] * 2 + ["grounding"] * 3
    grpo = [r for r in rows if r["stage"] == "grounding"]
    # Each GRPO step pushes version v+1 after the step; the next step's groups were all sampled by it.
    for before, after in itertools.pairwise(grpo):
        assert after["batch/adapter_version_min"] == after["batch/adapter_version_max"] == before["adapter_version"]
    assert all(r["batch/staleness"] == 0 for r in grpo)
    assert all(r["rollout/workers"] == 2 for r in rows)

    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert "eval/A@0.5" in metrics[0] and "eval/A@0.5" in metrics[-1]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "plots" / "reward.png").is_file()
    assert json.loads((run_dir / "resolved_config.json").read_text())["name"] == "it"
    assert list((run_dir / "samples").glob("step-*/*.png"))


class _Interrupted(Exception):
    """Stands for the driver being killed right after a step."""


@pytest.mark.parametrize("staleness", [0, 1])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(ray_local: None, tiny_model_dir: Path,
                                                                     demo_data: Path, tmp_path: Path,
                                                                     staleness: int) -> None:
    """With staleness 1, step 3 generates step 4's batch while it learns (step 4 checkpoints, so it drains):
    the interrupted step 3 is redone with its prefetch, and steps 4-5 match the uninterrupted run."""
    from services import train_loop

    over = {k: v for k, v in RESUME_TREE.items() if k not in ("name", "seed")}  # the fault tests' run too
    over["rollout"] = {**over["rollout"], "max_staleness": staleness}
    full = train_loop.run(_config(tiny_model_dir, demo_data, tmp_path / "full", **over))

    def interrupt(step: int, row: dict[str, Any]) -> None:
        if step == 3:  # the checkpoint of step 2 is on disk; step 3's work is lost
            raise _Interrupted

    partial_cfg = _config(tiny_model_dir, demo_data, tmp_path / "partial", **over)
    with pytest.raises(train_loop.RunFailed, match=r"stopped after step 3 .*step-2; continue with: medground train "
                       r"--resume") as failed:
        train_loop.run(partial_cfg, on_step=interrupt)
    assert isinstance(failed.value.__cause__, _Interrupted)
    resumed = train_loop.run(partial_cfg, run_dir=tmp_path / "partial" / "it", resume=True)

    keys = ("tau/value", "tau/version", "reward/total", "reward/iou", "learner/loss", "batch/groups_seen",
            "adapter_version")
    want = {r["step"]: r for r in read_metrics(full / "metrics.jsonl")}
    got = {r["step"]: r for r in read_metrics(resumed / "metrics.jsonl")}
    assert sorted(got) == sorted(want) == [0, 1, 2, 3, 4, 5]
    for step in (3, 4, 5):
        for key in keys:
            expected = want[step].get(key)
            if expected is None:  # e.g. no learner loss when every group had equal rewards
                assert got[step].get(key) is None, (step, key)
            else:
                assert got[step].get(key) == pytest.approx(expected, rel=1e-5, abs=1e-6), (step, key)
    assert [want[s]["batch/staleness"] for s in (2, 3, 4, 5)] == [0, 0, staleness, 0]
    assert [want[s]["tau/value"] for s in (2, 3, 4, 5)] != [want[2]["tau/value"]] * 4, "tau never moved"
    assert all(want[s]["learner/loss"] > 1e-5 for s in (2, 3, 4, 5)), "the learner did not train"


def test_curriculum_grounding_then_classification(ray_local: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    """VRFT-Aug's perception-driven refinement: a classification GRPO stage continues from the grounding
    stage's adapter (the version keeps counting; no reset) and is scored with label rewards."""
    from services import train_loop
    from services.data.synth import make_spec, write_dataset

    manifest = write_dataset(make_spec("demo", splits={"train": 8, "val": 2, "test": 0},
                                       tasks=["grounding", "classification"]),
                             tmp_path / "data", seed=0, manifest_name="manifest.jsonl")
    cfg = _config(tiny_model_dir, manifest, tmp_path / "runs", **{
        "stages": [{"name": "ground", "kind": "grpo", "steps": 1, "prompts_per_step": 2, "refill_cap": 0},
                   {"name": "classify", "kind": "grpo", "steps": 1, "prompts_per_step": 2, "refill_cap": 0,
                    "task": "classification"}],
        "rollout": {"num_workers": 1, "group_size": 2, "cpus_per_worker": 0.25, "max_model_len": 512,
                    "sampling": {"temperature": 1.0, "max_new_tokens": 8}},
        "learner": {"num_ranks": 1, "cpus_per_rank": 0.25, "micro_batch_size": 4},
        "eval": {"every": 0, "max_samples": 4, "overlays": 0}, "checkpoint": {"every": 0}})
    rows: list[dict[str, Any]] = []
    train_loop.run(cfg, on_step=lambda step, row: rows.append(row))
    assert [r["stage"] for r in rows] == ["ground", "classify"]
    # the classification stage sampled with the adapter the grounding stage pushed
    assert rows[1]["batch/adapter_version_min"] == rows[0]["adapter_version"] >= 1
    assert rows[1]["adapter_version"] == rows[0]["adapter_version"] + 1
    assert "eval/cls/accuracy" in rows[1] and "eval/A@0.5" in rows[1]  # the held-out split mixes both tasks


def test_overlapped_generation_with_two_workers_and_two_ranks(ray_local: None, tiny_model_dir: Path, demo_data: Path,
                                                               tmp_path: Path) -> None:
    """rollout.max_staleness = 1 on real components: each batch was sampled by adapter v-1 or v (never older,
    one version per batch), the learner took the ratio against it (logged), and the run ends like any other."""
    from services import train_loop

    cfg = _config(tiny_model_dir, demo_data, tmp_path, **{
        # a random model's groups carry no task signal: the adapter moves through the KL term to the base,
        # which the SFT step made non-zero, so the off-policy ratio of a stale batch departs from 1
        "stages": [{"name": "warmup", "kind": "sft", "steps": 1, "prompts_per_step": 2, "lr": 0.1},
                   {"name": "grounding", "kind": "grpo", "steps": 4, "prompts_per_step": 2, "refill_cap": 0,
                    "drop_zero_variance": False}],
        "rollout": {"num_workers": 2, "group_size": 4, "cpus_per_worker": 0.25, "max_model_len": 512,
                    "max_staleness": 1, "sampling": {"temperature": 1.0, "max_new_tokens": 12}},
        "learner": {"num_ranks": 2, "cpus_per_rank": 0.25, "micro_batch_size": 4, "lr": 1e-2,
                    "grpo": {"reference": "base", "beta": 0.5}},
        "eval": {"every": 0, "max_samples": 2, "overlays": 0}, "checkpoint": {"every": 0}})
    rows: list[dict[str, Any]] = []
    train_loop.run(cfg, on_step=lambda step, row: rows.append(row) if row["stage"] == "grounding" else None)
    assert [r["batch/staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    for r in rows:
        assert r["batch/adapter_version_min"] == r["batch/adapter_version_max"]  # one version per batch
        assert r["adapter_version"] - 1 - r["batch/adapter_version_max"] in (0, 1)  # v or v-1, never older
    stale = rows[1:]
    assert all("learner/ratio_mean" in r and "learner/clip_fraction" in r for r in stale)
    assert any(r["learner/ratio_max"] != 1.0 or r["learner/ratio_min"] != 1.0 for r in stale)
