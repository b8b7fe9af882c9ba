"""bench/studies/medloc_sparse.py without training (issue 28): each arm's config tree expands to the fields
the study claims, the SFT equal-data arm reads exactly the images its seed's GRPO arms read, the best epoch
is the first with the highest val A@0.5, the after-hook merges the forgetting and KL keys, and the by-arm
summary reads a hand-made result as documented."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.studies import medloc_sparse as ms
from bench.studies import runner
from bench.studies.arms import AfterRun, Arm, Study, arm_tree
from services.config import RunConfig
from services.data.manifest import load_manifest, write_manifest
from services.data.records import Record
from services.training.sampler import PromptSampler, stage_sampler


def base_tree() -> dict[str, Any]:
    return yaml.safe_load(Path(ms.CONFIG).read_text())


def configs(seed: int = 0, **knobs: Any) -> dict[str, RunConfig]:
    study = ms.study((seed,), **knobs)
    return {arm.name: RunConfig.model_validate(arm_tree(base_tree(), study, arm, seed, init_from=None))
            for arm in study.arms if arm.train}


def test_every_arm_expands_to_its_reward_refill_and_plain_lora() -> None:
    cfgs = configs(seed=1)
    assert list(cfgs) == ["schedule", "fixed_0.5", "raw_iou", "fixed_0.5_refill", "sft_equal_data",
                          "sft_equal_time"]
    for name, cfg in cfgs.items():
        assert cfg.learner.adapter == "lora" and cfg.learner.mlae.rank == 16, name
        assert cfg.rollout.sampling.temperature == 1.0 and cfg.seed == 1, name  # the gate's T
        assert (cfg.eval.max_samples, cfg.eval.at_start, cfg.init_from) == (300, False, None), name
        assert cfg.data.manifest == "data/bench-medloc-sparse/manifest.jsonl", name
        assert cfg.reward.schedule.window == 16 and cfg.stages[0].lr == 0.0005, name
        assert (cfg.reward.w_recite, cfg.reward.w_format, cfg.learner.grpo.beta) == (0.0, 0.0, 0.04), name
    grpo = {n: c for n, c in cfgs.items() if c.stages[0].kind == "grpo"}
    assert {n: (c.reward.accuracy, c.stages[0].refill_cap, c.stages[0].drop_zero_variance)
            for n, c in grpo.items()} == {
        "schedule": ("medloc", 0, False), "fixed_0.5": ("fixed", 0, False), "raw_iou": ("raw_iou", 0, False),
        "fixed_0.5_refill": ("fixed", 2, True)}  # the paper's baselines keep zero-variance groups
    assert cfgs["fixed_0.5"].reward.fixed_tau == cfgs["fixed_0.5_refill"].reward.fixed_tau == 0.5
    for c in grpo.values():  # 24 x 8 prompts, G = 8, checkpointed at 12 and 24, evaluated (sampled too) at 24
        assert (c.stages[0].steps, c.stages[0].prompts_per_step, c.rollout.group_size) == (24, 8, 8)
        assert (c.eval.every, c.checkpoint.every, c.eval.samples, c.data.eval_split) == (24, 12, 2, "test")
    sft = cfgs["sft_equal_data"]  # 4 epochs of 192 images at batch 16: 12 steps an epoch, val after each
    assert (sft.stages[0].kind, sft.stages[0].steps, sft.stages[0].prompts_per_step) == ("sft", 48, 16)
    assert sft.stages[0].train_split == "seen192-s1" and sft.data.eval_split == "val"
    assert (sft.eval.every, sft.eval.samples, sft.checkpoint.every, sft.checkpoint.keep) == (12, 0, 12, 4)
    timed = cfgs["sft_equal_time"]
    assert (timed.stages[0].kind, timed.stages[0].prompts_per_step, timed.eval.every) == ("sft", 16, 0)
    assert timed.stages[0].train_split is None
    arms = {a.name: a for a in ms.study().arms}
    assert arms["sft_equal_time"].equal_time_as == "schedule" and not arms["base"].train
    order = [(seed, a.name) for seed, a in runner.run_order(ms.study())]
    assert [n for seed, n in order if seed == 0] == list(arms)  # seed 0 runs every arm, SFT time last
    assert ("sft_equal_time" in {n for seed, n in order if seed > 0}, len(order)) == (False, 7 * 3 - 2)


def test_knobs_band_temperature_and_bad_input() -> None:
    cfg = configs(steps=4, images=20, band=(0.01, 0.02), temperature=0.9)["sft_equal_data"]
    assert cfg.data.manifest == "data/bench-medloc-sparse-0.01-0.02/manifest.jsonl"
    assert cfg.rollout.sampling.temperature == 0.9 and cfg.eval.max_samples == 20
    assert (cfg.stages[0].steps, cfg.eval.every, cfg.stages[0].train_split) == (8, 2, "seen32-s0")
    assert ms.study(only=["schedule"]).paired_against == ()
    assert ms.study(only=["schedule", "fixed_0.5", "base"]).paired_against == ("fixed_0.5", "base")
    with pytest.raises(ValueError, match="even number"):
        ms.study(steps=3)
    with pytest.raises(ValueError, match="not arms"):
        ms.study(only=["nope"])
    with pytest.raises(ValueError, match="name schedule too"):
        ms.study(only=["sft_equal_time"])
    with pytest.raises(ValueError, match="--images 301"):
        ms.study(images=301)


def _train_records(n: int) -> list[Record]:
    return [Record(id=f"r{i}", image=f"images/train/{i:05d}.png", width=112, height=112, split="train",
                   phrase="mass", boxes=((1.0, 1.0, 9.0, 9.0),)) for i in range(n)]


def test_the_sft_arm_reads_exactly_the_images_grpo_read(tmp_path: Path) -> None:
    path = write_manifest(_train_records(600), tmp_path / "manifest.jsonl")
    study = ms.study((0, 1), steps=4)
    schedule = ms.GRPO_ARMS[0]
    ms.add_seen_splits(path, base_tree(), study, schedule)
    ms.add_seen_splits(path, base_tree(), study, schedule)  # a second call adds nothing
    manifest = load_manifest(path)
    assert len(manifest.records) == 600 + 2 * 32
    sft_arm = next(a for a in study.arms if a.name == "sft_equal_data")
    lists = {}
    for seed in (0, 1):
        for arm in (a for a in study.arms if a.train and a.name != "sft_equal_data"
                    and not a.equal_time_as and a.name != "fixed_0.5_refill"):
            cfg = RunConfig.model_validate(arm_tree(base_tree(), study, arm, seed, None))
            sampler = stage_sampler(manifest, cfg, 0)  # what the driver's producer takes, step by step
            grpo = [r.image for _ in range(4) for r in sampler.take(cfg.stages[0].prompts_per_step)]
            lists.setdefault(seed, grpo)
            assert grpo == lists[seed], arm.name  # every GRPO arm without refill reads one list
        sft = RunConfig.model_validate(arm_tree(base_tree(), study, sft_arm, seed, None))
        split = manifest.select(split=sft.stages[0].train_split)
        assert [r.image for r in split] == lists[seed]  # the same images, in GRPO's order
        read = stage_sampler(manifest, sft, 0).take(sft.stages[0].steps * sft.stages[0].prompts_per_step)
        assert Counter(r.image for r in read) == Counter({image: 4 for image in lists[seed]})  # 4 epochs
    assert lists[0] != lists[1]


def test_best_epoch_is_the_highest_val_a50_earliest_on_ties() -> None:
    rows = [{"step": 12, "eval/A@0.5": 30.0}, {"step": 13, "learner/loss": 1.0},
            {"step": 24, "eval/A@0.5": 41.0}, {"step": 36, "eval/A@0.5": 41.0},
            {"step": 48, "eval/A@0.5": 40.0}]
    assert ms.best_step(rows) == 24
    assert ms.best_step([{"step": 12, "eval/A@0.5": 5.0}]) == 12
    with pytest.raises(ValueError, match=r"no eval/A@0\.5"):
        ms.best_step([{"step": 1, "learner/loss": 1.0}])


def test_reading_counts_prompts_and_distinct_images() -> None:
    grpo = [{"step": s, "time/step_s": 1.0, "batch/groups_seen": g} for s, g in ((1, 8), (2, 16), (3, 24))]
    assert ms.reading(grpo, {"stages": [{"prompts_per_step": 8}]}, 600) == {"prompts_read": 48,
                                                                             "labeled_images": 48}
    sft = [{"step": s, "time/step_s": 1.0} for s in range(1, 49)]
    assert ms.reading(sft, {"stages": [{"prompts_per_step": 16}]}, 192) == {"prompts_read": 768,
                                                                             "labeled_images": 192}
    sampler = PromptSampler(tuple(range(192)), seed=3)  # the claim: min(read, split) distinct
    assert len(set(sampler.take(768))) == 192 and len(set(PromptSampler(tuple(range(600)), 3).take(48))) == 48


class FakeEvaluate:
    def __init__(self, tmp: Path) -> None:
        self.tmp, self.calls = tmp, []

    def __call__(self, step: int | None, split: str, samples: int | None) -> tuple[dict[str, Any], Path]:
        self.calls.append((step, split, samples))
        report = {"eval/A@0.5": 10.0 if split == "forget" else 55.0, "eval/sampled/A@0.5": 9.0,
                  "eval/mIoU": 0.4, "eval/2-10%/A@0.5": 1.0, "eval/sampled/pass@k/A@0.5": 20.0}
        return report, self.tmp / f"{step}-{split}.jsonl"


@pytest.fixture
def fake_kl(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def kl_from_base(run_dir: Path, **kw: Any) -> dict[str, float]:
        calls.append({"run_dir": run_dir, **kw})
        return {"kl_nats_per_completion": 0.25, "kl_nats_per_completion_se": 0.05, "kl_nats_per_token": 0.01,
                "completions": 200, "images": 100, "temperature": 1.0}

    monkeypatch.setitem(sys.modules, "services.evaluation.kl",
                        types.SimpleNamespace(kl_from_base=kl_from_base))
    monkeypatch.setattr(ms, "split_size", lambda tree: 600)
    return calls


def test_the_after_hook_merges_forgetting_and_kl(tmp_path: Path, fake_kl: list[dict[str, Any]]) -> None:
    tree = {"stages": [{"prompts_per_step": 8}]}
    rows = ({"step": 12, "time/step_s": 1.0, "batch/groups_seen": 8, "eval/A@0.5": 40.0},
            {"step": 24, "time/step_s": 1.0, "batch/groups_seen": 12, "eval/A@0.5": 45.0})
    evaluate = FakeEvaluate(tmp_path)
    out = ms.after(AfterRun(Arm("schedule"), 2, tmp_path, rows, tree, evaluate))
    assert evaluate.calls == [(24, "forget", ms.EVAL_SAMPLES)]
    assert out["forget/A@0.5"] == 10.0 and out["forget/sampled/A@0.5"] == 9.0 and out["forget/mIoU"] == 0.4
    assert "forget/2-10%/A@0.5" not in out and "forget/sampled/pass@k/A@0.5" not in out
    assert out["forget_predictions"] == str(tmp_path / "24-forget.jsonl")
    assert out["kl_from_base"]["kl_nats_per_completion"] == 0.25
    assert fake_kl == [{"run_dir": tmp_path, "step": 24, "images": 100, "samples": 2, "seed": 2,
                        "split": "test"}]
    assert (out["prompts_read"], out["labeled_images"], out["reported_step"]) == (20, 20, 24)
    assert "final" not in out  # a GRPO arm reports its last evaluation (the runner's summary)


def test_the_sft_arm_reports_its_best_epoch_on_test(tmp_path: Path, fake_kl: list[dict[str, Any]]) -> None:
    rows = tuple({"step": s, "time/step_s": 1.0, **({"eval/A@0.5": a} if a is not None else {})}
                 for s, a in ((11, None), (12, 20.0), (24, 31.0), (36, 31.0), (48, 25.0)))
    evaluate = FakeEvaluate(tmp_path)
    out = ms.after(AfterRun(Arm("sft_equal_data"), 0, tmp_path, rows, {"stages": [{"prompts_per_step": 16}]},
                            evaluate))
    assert evaluate.calls == [(24, "test", ms.EVAL_SAMPLES), (24, "forget", ms.EVAL_SAMPLES)]
    assert out["final"]["eval/A@0.5"] == 55.0 and out["headline"]["eval/A@0.5"] == 55.0
    assert out["final_predictions"] == str(tmp_path / "24-test.jsonl") and out["final_step"] == 24
    assert out["curve_split"] == "val" and fake_kl[0]["step"] == 24
    assert (out["prompts_read"], out["labeled_images"]) == (80, 80)


def test_the_base_gets_forgetting_but_no_kl(tmp_path: Path, fake_kl: list[dict[str, Any]]) -> None:
    evaluate = FakeEvaluate(tmp_path)
    out = ms.after(AfterRun(Arm("base", train=False), 0, tmp_path, (), {}, evaluate))
    assert evaluate.calls == [(None, "forget", ms.EVAL_SAMPLES)] and fake_kl == []
    assert out["forget/A@0.5"] == 10.0 and "kl_from_base" not in out and out["prompts_read"] == 0


def test_the_runner_merges_the_hook_row_of_an_untrained_arm(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def evaluate_model(base: Any, study: Any, seed: int, run_dir: Path,
                       split: str | None = None) -> tuple[dict[str, Any], Path]:
        seen.append(split)
        return {"eval/A@0.5": 50.0 if split is None else 70.0}, run_dir / f"{split}.jsonl"

    def hook(run: AfterRun) -> dict[str, Any]:
        report, path = run.evaluate(None, "forget", 4)
        return {"forget/A@0.5": report["eval/A@0.5"], "forget_predictions": str(path), "seed_seen": run.seed}

    monkeypatch.setattr(runner, "_evaluate_model", evaluate_model)
    base = Arm("base", train=False)
    study = Study("s", "c.yaml", (base,), seeds=(3,), warm_stages=(), after=hook)
    session = runner.Session({"seed": 0}, study, {})
    row = runner._untrained_row(session, base, 3, tmp_path, None, {"wall_s": 0.0})
    assert seen == [None, "forget"]
    assert row["final"]["eval/A@0.5"] == 50.0 and row["forget/A@0.5"] == 70.0 and row["seed_seen"] == 3
    assert row["forget_predictions"] == str(tmp_path / "forget.jsonl")


def _predictions(path: Path, ious: list[float], sampled: list[list[float]]) -> str:
    path.write_text("".join(json.dumps({"id": f"r{i}", "iou": v, "truth": [[0, 0, 1, 1]], "sampled_iou": s})
                            + "\n" for i, (v, s) in enumerate(zip(ious, sampled, strict=True))))
    return str(path)


def test_paired_on_reads_the_rows_own_prediction_files(tmp_path: Path) -> None:
    base = _predictions(tmp_path / "a.jsonl", [0.2, 0.6, 0.9, 0.4], [[0.2, 0.6]] * 4)
    arm = _predictions(tmp_path / "b.jsonl", [0.6, 0.6, 0.9, 0.2], [[0.6, 0.6]] * 4)
    per_arm = {"base": [{"seed": 0, "forget_predictions": base, "run_dir": str(tmp_path)}],
               "x": [{"seed": 0, "forget_predictions": arm, "run_dir": str(tmp_path)}]}
    out = runner.paired_on(per_arm, "base", "forget_predictions")
    # A@0.5 per image: base 0,1,1,0 -> arm 1,1,1,0: +25 points; sampled pass@1: 50 % -> 100 %
    assert out["x"]["pooled"]["A@0.5"][0] == pytest.approx(25.0)
    assert out["x"]["sampled"]["pooled"]["A@0.5"][0] == pytest.approx(50.0)
    one_seed = {"base": [*per_arm["base"], {**per_arm["base"][0], "seed": 1}], "x": per_arm["x"]}
    assert runner.paired_on(one_seed, "base", "forget_predictions")["x"]["per_seed"].keys() == {"0"}
    assert runner.paired_on({"base": per_arm["base"], "x": [{**per_arm["x"][0], "seed": 5}]}, "base",
                            "forget_predictions") == {}  # an arm on seeds the reference lacks pairs on none
    with pytest.raises(FileNotFoundError, match="no forget_predictions"):
        runner.paired_on({"base": [{"seed": 0, "run_dir": str(tmp_path)}], "x": per_arm["x"]}, "base",
                         "forget_predictions")


def _cell(mean: float) -> dict[str, Any]:
    return {"mean": mean, "std": 0.0, "min": mean, "max": mean, "n": 1}


def _entry(greedy: float, sampled: float) -> dict[str, Any]:
    pooled = {m: (greedy, 1.0) for m in ms.CHANGES}
    return {"per_seed": {"0": {m: (greedy, 1.0) for m in ms.CHANGES}}, "pooled": pooled,
            "sampled": {"per_seed": {"0": {m: (sampled, 2.0) for m in ms.CHANGES}},
                        "pooled": {m: (sampled, 2.0) for m in ms.CHANGES}}}


def test_by_arm_summary_on_a_hand_made_result() -> None:
    def run(seed: int, kl: float | None, raises: int | None, a50: float) -> dict[str, Any]:
        return {"seed": seed, "final": {"eval/A@0.5": a50, "eval/sampled/A@0.5": a50 - 10},
                "forget/A@0.5": 70.0 + seed,
                "path": {"zero_variance": [0.6, 0.4], "tau": [0.3, 0.5], "eval": []},
                "tau_raises": raises, "kl_final": 0.001, "labeled_images": 192, "prompts_read": 192,
                "kl_from_base": None if kl is None else {"kl_nats_per_completion": kl}}

    result = {
        "runs": {"base": [run(0, None, None, 20.0), run(1, None, None, 22.0)],
                 "schedule": [run(0, 0.2, 2, 30.0), run(1, 0.4, 3, 34.0)]},
        "aggregate": {"base": {"eval/A@0.5": _cell(21.0)}, "schedule": {"eval/A@0.5": _cell(32.0),
                                                                       "eval/sampled/A@0.5": _cell(22.0)}},
        "paired": {"base": {"schedule": _entry(11.0, 5.0)}},
        "paired_forget": {"base": {"schedule": _entry(-3.0, -1.0)}},
    }
    out = ms.by_arm(result)
    s = out["schedule"]
    assert s["greedy"]["A@0.5"]["mean"] == 32.0 and s["sampled"]["A@0.5"]["mean"] == 22.0
    assert s["vs_base"]["greedy"]["A@0.5"] == [11.0, 1.0] and s["vs_base"]["sampled"]["A@0.5"] == [5.0, 2.0]
    assert s["vs_base"]["A@0.5_per_seed"] == {"0": [11.0, 1.0]}
    assert s["vs_fixed_0.5"] is None and s["vs_sft_equal_data"] is None  # arms that did not run
    assert s["forgetting"]["vs_base"]["greedy"]["A@0.5"] == [-3.0, 1.0]
    assert s["forgetting"]["forget"]["A@0.5"]["mean"] == 70.5  # (70 + 71) / 2
    assert s["kl_from_base_nats"]["mean"] == pytest.approx(0.3) and s["kl_from_base_nats"]["n"] == 2
    assert s["tau_raises_per_seed"] == [2, 3] and s["labeled_images_per_seed"] == [192, 192]
    assert s["zero_variance_fraction"]["n"] == 0  # the runner's whole-run fraction, absent here
    assert s["runs"][1]["greedy"]["A@0.5"] == 34.0 and s["runs"][1]["zero_variance_fraction"] == [0.6, 0.4]
    assert s["runs"][1]["forget"] == {"A@0.5": 71.0} and s["runs"][0]["tau"] == [0.3, 0.5]
    assert "vs_base" not in out["base"] and out["base"]["kl_from_base_nats"]["n"] == 0
    md = "\n".join(ms.summary_markdown(out))
    assert ("| schedule | 32.0 | 22.0 | - | - | - | - | 70.5 | -3.0 ± 1.0 | 0.3000 | [2, 3] | [192, 192] |"
            in md)


def test_learning_curves_draw_each_arm_and_the_fresh_image_iou(tmp_path: Path) -> None:
    from bench.studies.plots import plot_learning_curves

    def run(seed: int, a50: float) -> dict[str, Any]:
        point = {"step": 24, "eval/A@0.5": a50, "eval/sampled/A@0.5": a50 / 2}
        return {"seed": seed, "path": {"zero_variance": [0.5, 0.25], "reward_iou": [0.2, 0.3 + seed / 10],
                                       "eval": [point]}}

    result = {"runs": {"base": [{"seed": 0, "path": {"zero_variance": [], "eval": []}}],
                       "schedule": [run(0, 40.0), run(1, 44.0)],
                       "sft_equal_time": [{"seed": 0, "path": {"zero_variance": [], "reward_iou": [None],
                                                               "eval": []}, "curve_split": "val"}]},
              "aggregate": {"base": {"eval/A@0.5": _cell(30.0), "eval/sampled/A@0.5": _cell(15.0)}}}
    written = plot_learning_curves(result, tmp_path / "s")
    assert [p.name for p in written] == ["s_curves.png", "s_zero_variance.png"]
    assert all(p.stat().st_size > 1000 for p in written)
