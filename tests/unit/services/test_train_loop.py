"""The driver's whole loop in-process, against the fakes of tests/driver_fakes.py: stages, dynamic-sampling
refills, evaluation cadence, adapter pushes, checkpoint and exact resume, a resize request, a reward crash.
(The same loop on real Ray, vLLM and DeepSpeed: tests/integration/test_train_loop_e2e.py.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from driver_fakes import (
    LocalReward,
    QueueControl,
    RecordingLearner,
    ScriptedPool,
    handles,
    varied_answer,
    write_records,
)

from rollout.config import SamplingConfig
from rollout.contracts import RolloutRequest
from services.config import RunConfig
from services.training import train_loop
from services.training.metrics import read_metrics


def _config(tmp_path: Path, **over: Any) -> RunConfig:
    tree: dict[str, Any] = {
        "name": "fake", "seed": 0, "output_dir": str(tmp_path / "runs"), "model": {"path": "unused"},
        "data": {"manifest": "unused", "eval_split": "val"},
        "stages": [{"name": "warm", "kind": "sft", "steps": 2, "prompts_per_step": 2, "lr": 0.01},
                   {"name": "rl", "kind": "grpo", "steps": 3, "prompts_per_step": 2, "refill_cap": 2}],
        "rollout": {"group_size": 4}, "reward": {"accuracy": "raw_iou", "w_recite": 0.0},
        "eval": {"every": 2, "max_samples": 2, "overlays": 0}, "checkpoint": {"every": 0},
    }
    return RunConfig.model_validate(tree | over)


def _run(cfg: RunConfig, tmp_path: Path, control: QueueControl | None = None, reward: Any = LocalReward,
         resume: bool = False, on_step: Any = None, learner: RecordingLearner | None = None,
         ) -> tuple[Path, ScriptedPool, RecordingLearner, QueueControl]:
    manifest = write_records(tmp_path / "data", n_train=6, n_val=2)
    pool, learner = ScriptedPool(varied_answer), learner or RecordingLearner()
    control = control or QueueControl()
    run_dir = tmp_path / "runs" / cfg.name
    train_loop.run(cfg, run_dir=run_dir, resume=resume, on_step=on_step,
                   start=lambda c, d: handles(c, d, manifest, pool, learner, control, reward))
    return run_dir, pool, learner, control


def test_two_stages_refill_zero_variance_groups_and_push_every_grpo_step(tmp_path: Path) -> None:
    run_dir, pool, learner, control = _run(_config(tmp_path), tmp_path)
    rows = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
    assert [rows[s]["stage"] for s in range(6)] == ["warm"] * 3 + ["rl"] * 3
    assert learner.stages == [("sft", 0.01, False), ("grpo", 1e-4, False)]  # a fresh optimiser per stage
    assert len(learner.sft_batches) == 2 and all(len(b) == 2 for b in learner.sft_batches)
    grpo = [rows[s] for s in (3, 4, 5)]
    # every GRPO step trains on exactly 2 groups of 4, all with signal; zero-variance groups were refilled
    assert [len(b.samples) for b in learner.batches] == [8, 8, 8]
    assert all(r["batch/groups_kept"] == 2 for r in grpo)
    assert sum(r["batch/groups_seen"] for r in grpo) == sum(len(c) for c in pool.calls
                                                            if c[0].startswith("train"))
    assert any(r["batch/groups_seen"] > 2 for r in grpo), "no step met a zero-variance group"
    for r in grpo:
        seen = r["batch/groups_seen"]
        assert r["batch/zero_variance_fraction"] == pytest.approx((seen - 2) / seen)
    for batch in learner.batches:
        advantages = np.array([s.advantage for s in batch.samples]).reshape(2, 4)
        assert np.all(advantages.std(axis=1) > 0)  # no zero-variance group reached the learner
        assert batch.sampling.temperature == 0.9
    # SFT pushes once (its stage end, also its evaluation); GRPO after every step; each batch was sampled by
    # the adapter live when its step began
    assert pool.loads == [1, 2, 3, 4]
    assert [{s.adapter_version for s in b.samples} for b in learner.batches] == [{1}, {2}, {3}]
    assert [s for s, r in rows.items() if "eval/A@0.5" in r] == [0, 2, 4, 5]  # at start, every 2, at the end
    # beside the greedy answer, eval.samples = 4 samples per image at the training temperature, the same draws
    # at every evaluation (the fake answers greedy with the truth's box and samples with seeded shifts)
    assert rows[5]["eval/sampled/k"] == 4 and rows[5]["eval/sampled/n"] == 2
    assert rows[5]["eval/sampled/A@0.5"] <= rows[5]["eval/sampled/pass@k/A@0.5"] <= 100.0
    sampled = [json.loads(line)["sampled_iou"]
               for line in (run_dir / "eval" / "step-5.jsonl").read_text().splitlines()]
    assert [len(s) for s in sampled] == [4, 4]
    assert sampled == [json.loads(line)["sampled_iou"] for line in
                       # the fake does not learn
                       (run_dir / "eval" / "step-2.jsonl").read_text().splitlines()]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()  # the last checkpoint's adapter, v4
    assert '"version": 4' in (run_dir / "adapter" / "medground_adapter.json").read_text()
    assert control.reports[-1].step == 5 and control.reports[-1].adapter_version == 4


class _Interrupted(Exception):
    """Stands for the driver being killed right after a step."""


def test_resume_from_a_checkpoint_gives_the_identical_next_steps(tmp_path: Path) -> None:
    over = {"reward": {"accuracy": "medloc", "w_recite": 0.0,  # tau moves whenever its 2-group window fills
                       "schedule": {"window": 2, "tau0": 0.05, "tau_target": 0.6,
                                    "use_reward_condition": False,
                                    "use_std_condition": False, "use_margin_condition": False}},
            "checkpoint": {"every": 2, "keep": 2}, "name": "full"}
    full_dir, _, full_learner, _ = _run(_config(tmp_path / "a", **over), tmp_path / "a")

    def interrupt(step: int, row: dict[str, Any]) -> None:
        if step == 4:  # the checkpoint of step 4 is written before on_step: stop before step 5
            raise _Interrupted

    cfg = _config(tmp_path / "b", **over)
    with pytest.raises(train_loop.RunFailed,
                       match=r"stopped after step 4 .*step-4; continue with: medground train "
                                                   r"--resume .*/full") as failed:
        _run(cfg, tmp_path / "b", on_step=interrupt)
    assert isinstance(failed.value.__cause__, _Interrupted)
    resumed_dir, _, resumed_learner, _ = _run(cfg, tmp_path / "b", resume=True)
    want = {r["step"]: r for r in read_metrics(full_dir / "metrics.jsonl")}
    got = {r["step"]: r for r in read_metrics(resumed_dir / "metrics.jsonl")}
    assert sorted(got) == sorted(want) == [0, 1, 2, 3, 4, 5]
    keys = [k for k in want[5] if k.split("/")[0] in ("reward", "tau", "batch", "learner", "eval")]
    assert {"tau/value", "learner/loss", "batch/groups_seen"} <= set(keys)
    for step in (5,):
        assert {k: got[step].get(k) for k in keys} == {k: want[step][k] for k in keys}
    assert [want[s]["tau/value"] for s in (3, 4, 5)] != [0.05] * 3, "tau never moved"
    # the resumed learner received exactly the batch the uninterrupted one did at step 5
    assert [s.advantage for s in resumed_learner.batches[-1].samples] == \
        [s.advantage for s in full_learner.batches[-1].samples]


def test_a_resize_request_applies_before_the_next_step(tmp_path: Path) -> None:
    control = QueueControl(requests=[None, None, None, 3])  # read before steps 1, 2, 3, 4
    run_dir, pool, _, control = _run(_config(tmp_path), tmp_path, control=control)
    assert pool.resizes == [3]
    assert [r.rollout_workers for r in control.reports] == [1, 1, 1, 1, 3, 3]  # at start, then steps 1..5
    rows = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
    assert rows[3]["rollout/workers"] == 1 and rows[4]["rollout/workers"] == 3
    assert rows[4]["rollout/workers_serving"] == 3


def test_a_reward_crash_stops_the_run_with_the_resume_command(tmp_path: Path) -> None:
    cfg = _config(tmp_path, checkpoint={"every": 1})

    def dying(config: Any, state: Any) -> LocalReward:
        return LocalReward(config, state, fail_at=3)  # during step 4

    with pytest.raises(train_loop.RunFailed) as failed:
        _run(cfg, tmp_path, reward=dying)
    message = str(failed.value)
    assert "stopped after step 3 (RuntimeError: reward actor died" in message
    assert "checkpoints/step-3; continue with: medground train --resume" in message


def test_faults_the_pool_handled_are_counted_in_their_steps_row(tmp_path: Path) -> None:
    manifest = write_records(tmp_path / "data", n_train=6, n_val=2)
    # generate calls: 0-1 the evaluation at start (greedy, sampled), 2 step 1, 3 step 2, 4-5 the evaluation
    # after
    # step 2, 6 step 3
    pool = ScriptedPool(varied_answer, hung={2: 1, 6: 2})
    run_dir = tmp_path / "runs" / "fake"
    train_loop.run(_config(tmp_path, stages=[{"name": "rl", "kind": "grpo", "steps": 3, "prompts_per_step": 2,
                                              "refill_cap": 0}]), run_dir=run_dir,
                   start=lambda c, d: handles(c, d, manifest, pool, RecordingLearner(), QueueControl()))
    rows = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
    assert [rows[s]["rollout/worker_timeouts"] for s in (1, 2, 3)] == [1, 0, 2]
    assert all(rows[s]["reward/actor_timeouts"] == 0 for s in (1, 2, 3))


def test_a_refused_adapter_stops_the_run_with_the_reason_and_the_previous_adapter_live(
        tmp_path: Path) -> None:
    manifest = write_records(tmp_path / "data", n_train=6, n_val=2)
    pool = ScriptedPool(varied_answer, refuse={3})  # SFT publishes v1, GRPO steps v2, v3, ...
    cfg = _config(tmp_path, checkpoint={"every": 1})
    with pytest.raises(train_loop.RunFailed) as failed:
        train_loop.run(cfg, run_dir=tmp_path / "runs" / "fake",
                       start=lambda c, d: handles(c, d, manifest, pool, RecordingLearner(), QueueControl()))
    message = str(failed.value)
    assert "stopped after step 3 (RuntimeError: adapter v3 failed to load" in message
    assert "LoRA rank 16 is greater than max_lora_rank 8" in message
    assert "checkpoints/step-3; continue with: medground train --resume" in message
    assert pool.version == 2 and pool.loads == [1, 2]


def test_a_stop_request_between_steps_checkpoints_that_step_and_resumes_identically(tmp_path: Path) -> None:
    over = {"reward": {"accuracy": "medloc", "w_recite": 0.0,
                       "schedule": {"window": 2, "tau0": 0.05, "tau_target": 0.6,
                                    "use_reward_condition": False,
                                    "use_std_condition": False, "use_margin_condition": False}},
            "checkpoint": {"every": 0}, "name": "stop"}  # no checkpoint before the end, but for the stop's
    full_dir, *_ = _run(_config(tmp_path / "a", **over), tmp_path / "a")

    def sigterm(step: int, row: dict[str, Any]) -> None:
        if step == 4:
            raise train_loop.StopRequested("SIGTERM received")

    cfg = _config(tmp_path / "b", **over)
    with pytest.raises(train_loop.RunFailed,
                       match=r"stopped after step 4 \(StopRequested: SIGTERM received\); the "
                                                   r"last complete checkpoint is .*step-4; continue with"):
        _run(cfg, tmp_path / "b", on_step=sigterm)
    resumed_dir, *_ = _run(cfg, tmp_path / "b", resume=True)
    want = {r["step"]: r for r in read_metrics(full_dir / "metrics.jsonl")}
    got = {r["step"]: r for r in read_metrics(resumed_dir / "metrics.jsonl")}
    assert sorted(got) == sorted(want) == [0, 1, 2, 3, 4, 5]
    keys = [k for k in want[5] if k.split("/")[0] in ("reward", "tau", "batch", "learner", "eval")]
    assert {k: got[5].get(k) for k in keys} == {k: want[5][k] for k in keys}
def test_overlapped_generation_trains_each_batch_one_version_behind(tmp_path: Path) -> None:
    """max_staleness = 1: while the learner takes step t, the pool makes step t+1's batch with the
    adapter of step t (one version behind); a step that evaluates drains the pipeline, so the batch after it
    is fresh. Every batch is sampled by exactly one version."""
    cfg = _config(tmp_path, rollout={"group_size": 4}, max_staleness=1,
                  stages=[{"name": "rl", "kind": "grpo", "steps": 6, "prompts_per_step": 2, "refill_cap": 2}],
                  eval={"every": 3, "max_samples": 2, "overlays": 0})
    run_dir, pool, learner, _ = _run(cfg, tmp_path)
    rows = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
    # step 1 is made synchronously; steps 2-3 were prefetched; step 3 evaluates, so step 4 is fresh again
    assert [rows[s]["batch/staleness"] for s in range(1, 7)] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert [{s.adapter_version for s in b.samples} for b in learner.batches] == [{0}, {0}, {1}, {3}, {3}, {4}]
    assert pool.loads == [1, 2, 3, 4, 5, 6]
    # the timeline: a prefetched batch was generated inside the previous step's window, a fresh one in its own
    lines = {t["step"]: t for t in map(json.loads, (run_dir / "timeline.jsonl").read_text().splitlines())}
    assert sorted(lines) == [1, 2, 3, 4, 5, 6]
    for step, prefetched in ((2, True), (3, True), (4, False), (5, True)):
        first_generate = min(s[2] for s in lines[step]["spans"] if s[:2] == ["producer", "generate"])
        assert (first_generate < lines[step]["start"]) is prefetched, step
        assert any(s[:2] == ["driver", "learner"] for s in lines[step]["spans"])


def test_resume_is_exact_with_overlapped_generation(tmp_path: Path) -> None:
    over = {"rollout": {"group_size": 4}, "max_staleness": 1, "checkpoint": {"every": 2, "keep": 2},
            "stages": [{"name": "rl", "kind": "grpo", "steps": 6, "prompts_per_step": 2, "refill_cap": 2}],
            "eval": {"every": 0, "max_samples": 2, "overlays": 0}, "name": "full"}
    full_dir, _, full_learner, _ = _run(_config(tmp_path / "a", **over), tmp_path / "a")

    def interrupt(step: int, row: dict[str, Any]) -> None:
        if step == 5:
            raise _Interrupted

    cfg = _config(tmp_path / "b", **over)
    with pytest.raises(train_loop.RunFailed):
        _run(cfg, tmp_path / "b", on_step=interrupt)
    resumed_dir, _, resumed_learner, _ = _run(cfg, tmp_path / "b", resume=True)
    want = {r["step"]: r for r in read_metrics(full_dir / "metrics.jsonl")}
    got = {r["step"]: r for r in read_metrics(resumed_dir / "metrics.jsonl")}
    keys = [k for k in want[6] if k.split("/")[0] in ("reward", "tau", "batch", "learner")]
    for step in (5, 6):
        assert {k: got[step].get(k) for k in keys} == {k: want[step][k] for k in keys}, step
    assert [(s.adapter_version, s.advantage) for b in resumed_learner.batches for s in b.samples] == \
        [(s.adapter_version, s.advantage) for b in full_learner.batches[-2:] for s in b.samples]
    timeline = [json.loads(x)["step"] for x in (resumed_dir / "timeline.jsonl").read_text().splitlines()]
    assert timeline == [1, 2, 3, 4, 5, 6]  # the steps after the checkpoint were cut and written once


def test_a_classification_stage_continues_from_the_grounding_stages_adapter(tmp_path: Path) -> None:
    """VRFT-Aug's perception-driven refinement: a classification GRPO stage starts from the adapter the
    grounding stage pushed (the version keeps counting), trains on classification records only, is scored by
    the label reward, and the held-out evaluation reports both tasks."""
    from services.data.manifest import Manifest

    grounding = write_records(tmp_path / "data", n_train=4, n_val=1)
    labelled = [r.model_copy(update={"id": f"cls-{r.id}", "task": "classification", "boxes": (),
                                     "label": "nodule",
                                     "choices": ("nodule", "effusion")}) for r in grounding.records]
    manifest = Manifest(grounding.path, grounding.records + tuple(labelled))

    def answer(request: RolloutRequest, j: int, version: int, sampling: SamplingConfig) -> str:
        if request.task == "grounding":
            return varied_answer(request, j, version, sampling)
        # half of each group right
        label = "nodule" if sampling.temperature == 0.0 or j % 2 == 0 else "effusion"
        return '<think>t</think><answer>{"label": "' + label + '"}</answer>'

    cfg = _config(tmp_path, stages=[
        {"name": "ground", "kind": "grpo", "steps": 1, "prompts_per_step": 2, "refill_cap": 2},
        {"name": "classify", "kind": "grpo", "steps": 1, "prompts_per_step": 2, "task": "classification"}],
        eval={"every": 0, "max_samples": 4, "overlays": 0})
    pool, learner = ScriptedPool(answer), RecordingLearner()
    rows: list[dict[str, Any]] = []
    train_loop.run(cfg, run_dir=tmp_path / "runs" / "fake", on_step=lambda s, r: rows.append(r),
                   start=lambda c, d: handles(c, d, manifest, pool, learner, QueueControl()))
    assert [r["stage"] for r in rows] == ["ground", "classify"]
    assert learner.stages == [("grpo", 1e-4, False), ("grpo", 1e-4, False)]
    assert rows[1]["batch/adapter_version_min"] == rows[0]["adapter_version"] == 1
    assert rows[1]["adapter_version"] == 2
    trained_on = [c for c in pool.calls if c[0].startswith(("train", "cls-train"))]
    assert all(p.startswith("cls-") for p in trained_on[-1]) and not trained_on[0][0].startswith("cls-")
    # the label reward (the graded column: label match for classification): 2 of each group's 4 answers right
    assert (rows[1]["reward/grade"], rows[1]["reward/acc"]) == (pytest.approx(0.5), 0.0)
    assert rows[1]["eval/cls/accuracy"] == 100.0 and "eval/A@0.5" in rows[1]  # percent, as A@0.5


def test_user_terms_and_correction_statistics_reach_the_metrics_row(tmp_path: Path) -> None:
    """reward.extra_terms columns are logged as reward/<name>; under normalize_then_sum reward/total is still
    the weighted sum of the terms; StepMetrics' correction_* fields arrive as learner/correction_*."""

    class CorrectingLearner(RecordingLearner):
        def grpo_step(self, batch: Any) -> Any:
            metrics = super().grpo_step(batch)
            return dataclasses.replace(metrics, correction_kl=0.01, correction_token_fraction=0.25)

    term = {"fn": "deploy.examples.box_terms:oversized_box_penalty", "weight": 0.5, "name": "oversized_box"}
    reward = {"accuracy": "raw_iou", "w_recite": 0.0, "aggregation": "normalize_then_sum",
              "extra_terms": [term]}
    cfg = _config(tmp_path, reward=reward)
    run_dir, _, learner, _ = _run(cfg, tmp_path, learner=CorrectingLearner())
    grpo = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("stage") == "rl"]
    assert len(grpo) == 3
    for r in grpo:
        assert r["reward/oversized_box"] <= 0.0
        assert r["reward/total"] == pytest.approx(r["reward/acc"] + 0.5 * r["reward/format"]
                                                  + 0.5 * r["reward/oversized_box"])
        assert (r["learner/correction_kl"], r["learner/correction_token_fraction"]) == (0.01, 0.25)
    advantages = np.array([s.advantage for s in learner.batches[0].samples]).reshape(2, 4)
    assert np.all(advantages.std(axis=1) > 0)
