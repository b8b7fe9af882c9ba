"""bench/studies/objectives.py without training: its 9 arms expand to the run configs the study claims (the
loss preset's fields, the correction, the reward aggregation, the common budget), and its per-run statistics
read a run's metrics as documented."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from bench.studies import objectives
from bench.studies.arms import arm_tree
from services.config import RunConfig


def configs(seed: int = 0) -> dict[str, RunConfig]:
    study = objectives.study((seed,), steps=7, images=30, samples=3)
    base = yaml.safe_load(Path(study.config).read_text())
    return {arm.name: RunConfig.model_validate(arm_tree(base, study, arm, seed, init_from=None))
            for arm in study.arms}


def test_the_nine_arms_expand_to_the_claimed_objectives() -> None:
    cfgs = configs()
    assert list(cfgs) == ["grpo", "grpo_seqmask", "dapo", "dapo_seqmask", "dr_grpo",
                          "dr_grpo_seqmask", "gspo",
                          "gspo_seqmask", "grpo_nts"]
    # (aggregation, scale_rewards, ratio_level, eps_low, eps_high) of each preset, from the papers
    claimed = {"grpo": ("grpo", "group", "token", 0.2, 0.2), "dapo": ("dapo", "group", "token", 0.2, 0.2),
               "dr_grpo": ("dr_grpo", "none", "token", 0.2, 0.2),
               "gspo": ("grpo", "group", "sequence", 3e-4, 4e-4)}
    for name, cfg in cfgs.items():
        g = cfg.learner.grpo
        loss = name.removesuffix("_seqmask").removesuffix("_nts")
        assert g.loss == loss, name
        assert (g.aggregation, g.scale_rewards, g.ratio_level, g.eps_low, g.eps_high) == claimed[loss], name
        assert g.rollout_correction == ("sequence_mask" if name.endswith("_seqmask") else "none"), name
        assert g.rollout_correction_cap == 3.0 and g.beta == 0.04, name
        assert cfg.reward.aggregation == ("normalize_then_sum" if name == "grpo_nts" else "sum"), name
        assert g.constant_length == (cfg.rollout.sampling.max_new_tokens if loss == "dr_grpo" else None), name


def test_every_arm_runs_the_same_budget_prompts_and_evaluation() -> None:
    for seed in (0, 2):
        cfgs = configs(seed)
        shared = {(c.seed, c.stages[0].steps, c.stages[0].prompts_per_step, c.stages[0].refill_cap,
                   c.eval.max_samples, c.eval.samples, c.eval.at_start, c.rollout.sampling.temperature,
                   c.data.manifest, c.model.path, c.init_from) for c in cfgs.values()}
        assert shared == {(seed, 7, 4, 0, 30, 3, False, 0.6, "data/bench-medloc/manifest.jsonl",
                           "models/base-study", None)}


def test_run_statistics_reads_kl_correction_and_step_time() -> None:
    rows = [{"time/step_s": 10.0, "time/learner_s": 5.0, "learner/kl": 0.0, "learner/clip_fraction": 0.0,
             "learner/correction_ratio_mean": 1.0, "learner/correction_ratio_min": 0.9,
             "learner/correction_ratio_max": 1.1, "learner/correction_token_fraction": 0.0,
             "learner/correction_sequence_fraction": 0.0, "learner/correction_kl": 1e-6},
            {"eval/A@0.5": 50.0},
            *({"time/step_s": 2.0 + i, "time/learner_s": 1.0, "learner/kl": 0.01 * i,
               "learner/clip_fraction": 0.1,
               "learner/correction_ratio_mean": 1.0, "learner/correction_ratio_min": 0.8 + 0.01 * i,
               "learner/correction_ratio_max": 3.5, "learner/correction_token_fraction": 0.25,
               "learner/correction_sequence_fraction": 0.5, "learner/correction_kl": 3e-6}
              for i in range(1, 4)),
            {"time/step_s": 30.0, "time/eval_s": 27.0, "time/learner_s": 1.0, "learner/kl": 0.05,
             "learner/clip_fraction": 0.1}]
    out = objectives.run_statistics(rows)
    assert math.isclose(out["kl_mean"], (0.0 + 0.01 + 0.02 + 0.03 + 0.05) / 5)
    assert out["kl_final"] == 0.05  # last quarter of 5 steps: the last one
    assert out["step_s"] == 3.5  # median of 3, 4, 5 and 30 - 27 (the first step left out)
    assert out["learner_s"] == 1.0
    assert math.isclose(out["correction_ratio_min"], 0.81) and out["correction_ratio_max"] == 3.5
    assert math.isclose(out["correction_token_fraction"], 0.75 / 4)
    off = objectives.run_statistics([{"time/step_s": 1.0, "learner/kl": 0.1}])
    assert off["correction_ratio_mean"] is None and off["correction_kl"] is None and off["step_s"] == 1.0
    with pytest.raises(ValueError, match="no GRPO step"):
        objectives.run_statistics([{"eval/A@0.5": 1.0}])


def test_a_subset_of_arms_keeps_the_reference_and_refuses_unknown_names() -> None:
    assert [a.name for a in objectives.study((0,), only=["gspo"]).arms] == ["grpo", "gspo"]
    with pytest.raises(ValueError, match=r"\['gspo_mis'\]: not arms"):
        objectives.study((0,), only=["gspo_mis"])
