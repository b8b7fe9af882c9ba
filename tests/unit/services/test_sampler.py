"""Prompt order: `stage_sampler` is the order the driver trains on (bench/vs_trl.py feeds TRL the same
prompts through it), and the driver's row counts the tokens of the rollouts it trains on."""

from __future__ import annotations

from pathlib import Path

import pytest
from driver_fakes import (
    LocalReward,
    QueueControl,
    RecordingLearner,
    ScriptedPool,
    box_answer,
    handles,
    write_records,
)
from pydantic import ValidationError

from services.config import RunConfig
from services.training import train_loop
from services.training.metrics import read_metrics
from services.training.sampler import stage_sampler


def test_stage_sampler_is_the_drivers_prompt_order(tmp_path: Path) -> None:
    cfg = RunConfig.model_validate({
        "name": "order", "seed": 3, "output_dir": str(tmp_path / "runs"), "model": {"path": "unused"},
        "data": {"manifest": "unused", "eval_split": "val"},
        "stages": [{"name": "warm", "kind": "sft", "steps": 1, "prompts_per_step": 2},
                   {"name": "rl", "kind": "grpo", "steps": 3, "prompts_per_step": 2, "refill_cap": 0,
                    "drop_zero_variance": False}],
        "rollout": {"group_size": 2}, "reward": {"w_recite": 0.0},
        "eval": {"at_start": False, "max_samples": 1, "overlays": 0}})
    manifest = write_records(tmp_path / "data", n_train=5, n_val=1)
    pool = ScriptedPool(lambda *_: box_answer((10, 10, 40, 50)), group_size=2)
    run_dir = train_loop.run(cfg, run_dir=tmp_path / "run", start=lambda c, d: handles(
        c, d, manifest, pool, RecordingLearner(), QueueControl(), LocalReward))
    trained = [i for call in pool.calls for i in call if i.startswith("train-")]  # not the evaluation's
    assert trained == [r.id for r in stage_sampler(manifest, cfg, 1).take(6)]
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "rollout/prompt_tokens" in r]
    # each step: 2 groups, 5 prompt tokens each; 2 completions of 3 tokens per group (driver_fakes)
    assert [(r["rollout/prompt_tokens"], r["rollout/completion_tokens"]) for r in rows] == [(10, 12)] * 3


def test_a_stage_over_several_tasks_mixes_their_records(tmp_path: Path) -> None:
    # VRFT-Aug's warm start on a grounding base: grading and grounding records in one permuted order, so a
    # new answer format is learned without losing the other (grading SFT alone lost every box answer).
    from services.data.manifest import Manifest
    from services.data.records import Record

    grounding = write_records(tmp_path / "data", n_train=4, n_val=0).records
    grading = tuple(Record(id=f"grade-{i}", image="img.png", width=32, height=32, task="grading",
                           phrase="Grade it.",
                           grade=i % 4, max_grade=3) for i in range(4))
    manifest = Manifest(tmp_path / "data" / "manifest.jsonl", grounding + grading)
    tree = {"name": "mixed", "model": {"path": "unused"}, "data": {"manifest": "unused"},
            "stages": [{"name": "warm", "kind": "sft", "steps": 1, "task": ["grounding", "grading"]}]}
    cfg = RunConfig.model_validate(tree)
    assert cfg.stages[0].tasks == ("grounding", "grading")
    order = stage_sampler(manifest, cfg, 0).take(8)
    assert sorted(r.id for r in order) == sorted(r.id for r in grounding + grading)
    only = RunConfig.model_validate({**tree, "stages": [{**tree["stages"][0], "task": "grading"}]})
    assert {r.task for r in stage_sampler(manifest, only, 0).take(4)} == {"grading"}
    for bad, message in ((["grading", "grading"], "each task once"), ([], "empty list"),
                         (["grounding", "nonsense"], "'nonsense' is not a task"),
                         ([["grading"]], "is not a task"),
                         (None, "None is not a task")):
        with pytest.raises(ValidationError, match=message) as err:
            RunConfig.model_validate({**tree, "stages": [{**tree["stages"][0], "task": bad}]})
        on_task = [e for e in err.value.errors() if e["loc"][:3] == ("stages", 0, "task")]
        assert len(on_task) == 1  # one line, not one per branch of the union


def test_single_box_stages_skip_negatives_and_multi_box_stages_train_them(tmp_path: Path) -> None:
    from services.data.manifest import Manifest
    from services.data.records import Record

    positives = write_records(tmp_path / "data", n_train=3, n_val=0).records
    negatives = tuple(Record(id=f"neg-{i}", image="img.png", width=32, height=32, phrase="a nodule")
                      for i in range(2))
    manifest = Manifest(tmp_path / "data" / "manifest.jsonl", positives + negatives)
    tree = {"name": "neg", "model": {"path": "unused"}, "data": {"manifest": "unused"},
            "stages": [{"name": "warm", "kind": "sft", "steps": 1}]}
    single = stage_sampler(manifest, RunConfig.model_validate(tree), 0)
    assert sorted(r.id for r in single.items) == sorted(r.id for r in positives)
    multi = RunConfig.model_validate({**tree, "stages": [{**tree["stages"][0], "multi_box": True}]})
    assert len(stage_sampler(manifest, multi, 0).items) == 5
