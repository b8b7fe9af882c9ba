"""The arms x seeds harness's pure half: config trees per arm, run summaries, spread over seeds, tables."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.studies.arms import (
    Arm,
    Study,
    aggregate,
    arm_tree,
    compare,
    fmt,
    markdown_table,
    spread,
    summarise,
    tree_key,
    warm_tree,
)
from services.config import RunConfig

BASE = {"name": "b", "model": {"path": "m"}, "data": {"manifest": "d.jsonl"},
        "stages": [{"name": "warm", "kind": "sft", "steps": 5}, {"name": "g", "kind": "grpo", "steps": 3},
                   {"name": "h", "kind": "grpo", "steps": 3}]}
STUDY = Study("s", "c.yaml", (), seeds=(0,), warm_stages=("warm",), common=("stages.1.steps=2",))


def test_warm_and_arm_trees() -> None:
    arm = Arm("x", ("stages.0.kind=sft",), stages=("g",), warm=("learner.adapter=lora",))
    warm = warm_tree(BASE, STUDY, arm, seed=3)
    assert [s["name"] for s in warm["stages"]] == ["warm"]
    assert warm["seed"] == 3 and warm["learner"]["adapter"] == "lora"
    seeds = RunConfig.model_validate(warm)
    assert (seeds.learner.seed, seeds.learner.mlae.seed, seeds.rollout.seed) == (3, 3, 3)
    assert warm["eval"]["at_start"] is False
    tree = arm_tree(BASE, STUDY, arm, seed=3, init_from="ck")
    # common uses base indices, arm its own
    assert tree["stages"] == [{"name": "g", "kind": "sft", "steps": 2}]
    assert tree["init_from"] == "ck" and tree["learner"]["adapter"] == "lora"
    default = arm_tree(BASE, STUDY, Arm("y"), seed=0, init_from="ck")
    assert [s["name"] for s in default["stages"]] == ["g", "h"]
    assert BASE["stages"][1]["steps"] == 3  # the base tree is never changed
    assert tree_key(warm) == tree_key(warm_tree(BASE, STUDY, arm,
                                                seed=3)) != tree_key(warm_tree(BASE, STUDY, arm, 4))
    with pytest.raises(ValueError, match="not in the base config"):
        arm_tree(BASE, STUDY, Arm("z", stages=("nope",)), seed=0, init_from="ck")


def test_summarise_weights_zero_variance_by_groups_and_takes_last_eval() -> None:
    rows = [{"step": 0, "stage": "g"},
            {"step": 1, "time/step_s": 2.0, "batch/groups_seen": 4, "batch/zero_variance_fraction": 0.5,
             "tau/value": 0.3, "tau/version": 0, "reward/acc": 0.1},
            {"step": 2, "time/step_s": 4.0, "batch/groups_seen": 12, "batch/zero_variance_fraction": 0.25,
             "tau/value": 0.45, "tau/version": 1, "reward/acc": 0.2, "eval/A@0.5": 10.0,
             "eval/<0.5%/mIoU": 0.1}]
    s = summarise(rows, ("eval/A@0.5", "eval/mIoU"))
    assert s["zero_variance_fraction"] == pytest.approx((0.5 * 4 + 0.25 * 12) / 16)  # 5 of 16 groups
    assert s["tau_final"] == 0.45 and s["tau_raises"] == 1 and s["grpo_steps"] == 2
    assert s["final"] == {"eval/A@0.5": 10.0, "eval/<0.5%/mIoU": 0.1}
    assert s["headline"] == {"eval/A@0.5": 10.0, "eval/mIoU": None}
    assert s["path"]["tau"] == [0.3, 0.45] and s["step_s_median"] == 3.0


def test_spread_and_aggregate() -> None:
    cell = spread([1.0, 2.0, 4.0, None])
    assert cell["mean"] == pytest.approx(7 / 3) and cell["n"] == 3
    assert cell["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                   + (4 - 7 / 3) ** 2) / 2))
    assert spread([5.0])["std"] == 0.0 and spread([])["mean"] is None
    runs = [{"final": {"eval/A@0.5": 10.0}, "zero_variance_fraction": 0.5, "tau_final": 0.3, "tau_raises": 0,
             "extra": {"expert_cos_abs": 0.2}},
            {"final": {"eval/A@0.5": 20.0}, "zero_variance_fraction": 0.7, "tau_final": 0.45, "tau_raises": 1,
             "extra": {"expert_cos_abs": 0.4}}]
    agg = aggregate(runs)
    assert agg["eval/A@0.5"]["mean"] == 15.0 and agg["expert_cos_abs"]["mean"] == pytest.approx(0.3)
    assert fmt(agg["eval/A@0.5"]) == "15.0 ± 7.1" and fmt(spread([0.25]), 2) == "0.25" and fmt(None) == "-"
    table = markdown_table([("a", agg)], [("A@0.5", "eval/A@0.5", 1), ("tau", "tau_final", 2)])
    assert table.splitlines()[2] == "| a | 15.0 ± 7.1 | 0.38 ± 0.11 |"


def test_compare_within_spread() -> None:
    old = {"aggregate": {"a": {"m": {"mean": 10.0, "std": 2.0}, "n": {"mean": None}}}}
    assert compare(old, {"aggregate": {"a": {"m": {"mean": 11.5, "std": 0.0}}}}, ["m", "n"], 0.0) == []
    assert compare(old, {"aggregate": {"a": {"m": {"mean": 13.0, "std": 0.0}}}}, ["m"], 0.0) != []
    assert compare(old, {"aggregate": {"a": {"m": {"mean": 13.0, "std": 0.0}}}}, ["m"], 3.0) == []
    assert compare(old, {"aggregate": {}}, ["m"], 1.0) == ["a m: 10.0 vs None"]


def test_sft_only_key_ignores_sampling_temperature() -> None:
    sft = {"stages": [{"name": "w", "kind": "sft"}],
           "rollout": {"sampling": {"temperature": 0.3, "max_new_tokens": 64}}}
    hot = {**sft, "rollout": {"sampling": {"temperature": 0.9, "max_new_tokens": 64}}}
    longer = {**sft, "rollout": {"sampling": {"temperature": 0.3, "max_new_tokens": 32}}}
    assert tree_key(sft) == tree_key(hot) != tree_key(longer)
    grpo = {**sft, "stages": [{"name": "g", "kind": "grpo"}]}
    assert tree_key(grpo) != tree_key({**hot, "stages": grpo["stages"]})


def test_every_shipped_study_builds_valid_run_configs() -> None:
    """Each arm x seed of the committed studies validates as a RunConfig (a study whose arms name a stage or
    field its config no longer has fails here, not an hour into a run)."""
    import yaml

    from bench.studies import medloc_ablation, mlae_vs_lora, vrft_aug

    studies = (medloc_ablation.study("all"), medloc_ablation.study("ablations", (0,)),
               mlae_vs_lora.study((0, 1)),
               vrft_aug.study((0,)))
    for study in studies:
        base = yaml.safe_load(Path(study.config).read_text())
        for seed in study.seeds:
            for arm in study.arms:
                if study.warm_stages:
                    assert RunConfig.model_validate(warm_tree(base, study, arm, seed)).stages
                if arm.train:
                    start = "warm/checkpoint" if study.warm_stages else None
                    cfg = RunConfig.model_validate(arm_tree(base, study, arm, seed, init_from=start))
                    assert cfg.seed == seed and cfg.stages


def test_size_bucket_metrics_split_a_studys_own_set_and_refuse_targets_outside_it() -> None:
    from bench.studies.arms import size_bucket_metrics

    ious = {"a": 0.9, "b": 0.4, "c": 0.6, "d": 0.2}
    areas = {"a": 0.11, "b": 0.14, "c": 0.16, "d": 0.19}
    out = size_bucket_metrics(ious, areas, (0.10, 0.15, 0.20))
    assert out["eval/10-15%/n"] == 2 and out["eval/10-15%/A@0.5"] == 50.0
    assert out["eval/15-20%/A@0.5"] == 50.0 and math.isclose(out["eval/15-20%/mIoU"], 0.4)
    assert math.isclose(out["eval/10-15%/A@0.5_se"], 100 * math.sqrt(0.25 / 2))
    with pytest.raises(ValueError, match="outside the study's size edges"):
        size_bucket_metrics({**ious, "e": 0.5}, {**areas, "e": 0.25}, (0.10, 0.15, 0.20))


def test_pooled_change_averages_seeds_and_combines_their_errors() -> None:
    from bench.studies.arms import pooled_change

    mean, se = pooled_change([(2.0, 1.0), (4.0, 1.0), (0.0, 2.0)])
    assert mean == 2.0 and math.isclose(se, math.sqrt(6.0) / 3)
    with pytest.raises(ValueError, match="no seeds"):
        pooled_change([])


def test_a_finished_arm_run_is_kept_and_a_changed_one_is_not(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted study resumes from its finished arms: a run directory whose bench_run.json carries the
    config's key is reused (no Ray, no training); a config that changed since is run again."""
    import json

    from bench.studies import runner

    tree = {**BASE, "name": "r"}
    run_dir = tmp_path / "arm-s0"
    run_dir.mkdir()
    (run_dir / runner.FINISHED).write_text(json.dumps({"key": tree_key(tree), "wall_s": 12.5}))
    assert runner.train(tree, run_dir) == 12.5
    started = []
    # what train_loop.run leaves: the directory
    def run(cfg: RunConfig, run_dir: Path, start: object) -> None:
        run_dir.mkdir(parents=True)
        started.append(cfg.name)

    monkeypatch.setattr("services.training.train_loop.run", run)
    runner.train({**tree, "seed": 1}, run_dir)
    assert started == ["r"] and json.loads((run_dir / runner.FINISHED).read_text())["key"] != tree_key(tree)


def test_a_study_result_is_written_as_json_and_markdown_and_printed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """runner's tail without Ray: two arms x two seeds become the JSON (aggregates over seeds), the Markdown
    (the study's table, the paired table) and the printout (the study's table first, then the paired one)."""
    import json

    from bench import machine
    from bench.studies import runner

    monkeypatch.setattr(machine, "RESULTS", tmp_path)
    monkeypatch.setattr(runner, "plot_study", lambda result, prefix: [])
    pooled = {"A@0.3": (0.0, 0.0), "A@0.5": (1.5, 0.5), "A@0.8": (0.0, 0.0), "mIoU": (0.01, 0.002)}
    monkeypatch.setattr(runner, "_paired", lambda study, per_arm,
                        ref: {"b": {"per_seed": {}, "pooled": pooled}})
    study = Study("s", "x.yaml", (Arm("a"), Arm("b")), seeds=(0, 1), warm_stages=(), paired_against=("a",))
    session = runner.Session({}, study, {}, per_arm={
        "a": [{"final": {"eval/A@0.5": 40.0}, "wall_s": 1.0}, {"final": {"eval/A@0.5": 44.0}, "wall_s": 2.0}],
        "b": [{"final": {"eval/A@0.5": 50.0}, "wall_s": 3.0}, {"final": {"eval/A@0.5": 50.0},
                                                               "wall_s": 4.0}]})
    record = machine.finish(machine.start())
    result = runner.study_result(session, "what it measures", ["a deviation"], 120.0, record)
    runner.write_study(result, "s_out", [("A@0.5", "eval/A@0.5", 1)])

    written = json.loads((tmp_path / "s_out.json").read_text())
    assert written["aggregate"]["a"]["eval/A@0.5"]["mean"] == 42.0  # (40 + 44) / 2
    assert written["wall_s_per_arm_run"] == {"a": [1.0, 2.0], "b": [3.0, 4.0]}
    md = (tmp_path / "s_out.md").read_text()
    # a: mean (40 + 44) / 2 = 42, sample std sqrt((2^2 + 2^2) / 1) = 2.83
    assert "| a | 42.0 ± 2.8 |" in md and "- a deviation" in md and "| b | +0.0 ± 0.0 | +1.5 ± 0.5 |" in md
    printed = capsys.readouterr().out
    assert printed.startswith("| arm | A@0.5 |") and "| arm - a |" in printed and "wrote" in printed
