"""The run config: every shipped file validates; unknown keys and bad values get a message with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from learner.config import LearnerConfig
from rollout.config import RolloutConfig
from services.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    load_config,
    load_run_config,
    write_resolved,
)

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "deploy" / "configs").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    assert CONFIGS, "deploy/configs/ must hold at least the demo config"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates_and_resumes_as_itself(path: Path) -> None:
    cfg = load_config(path)  # raises ConfigError naming the field when a shipped file is broken
    # a resumed run re-reads its resolved_config.json: the dump must validate back to the same tree
    assert RunConfig.model_validate(json.loads(json.dumps(cfg.model_dump(mode="json")))) == cfg


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


MINIMAL = """
model: {path: m}
data: {manifest: d.jsonl}
stages: [{name: s, kind: grpo, steps: 2}]
"""


def test_unknown_key_names_nearest_valid_key(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "learner: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "learner.lrr: unknown key; did you mean 'lr'?" in str(err.value)


def test_unknown_nested_key_inside_list_item(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL.replace("steps: 2}", "steps: 2, prompts_per_stp: 3}"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "stages.0.prompts_per_stp: unknown key; did you mean 'prompts_per_step'?" in str(err.value)


def test_bad_value_and_missing_field_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {manifest: d.jsonl}\nstages: [{name: s, kind: grpo, steps: 0}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "model: required field is missing" in msg
    assert "stages.0.steps: Input should be greater than or equal to 1" in msg
    assert "  stages: " not in msg  # the list fails only because of its item, which has its own line


def test_overrides_apply_to_nested_fields_and_list_items(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL), ["learner.lr=1e-5", "stages.0.steps=7",
                                                  "reward.schedule.window=12", "rollout.engine=hf"])
    assert cfg.learner.lr == 1e-5
    assert cfg.stages[0].steps == 7
    assert cfg.reward.schedule.window == 12
    assert cfg.rollout.engine == "hf"


def test_override_syntax_errors_are_explained() -> None:
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        apply_overrides({}, ["learner.lr"])
    with pytest.raises(ConfigError, match="must be an index"):
        apply_overrides({"stages": [{}]}, ["stages.first.steps=3"])
    with pytest.raises(ConfigError, match=r"index 5 is past the end of a list of 1 \(valid: 0..0\)"):
        apply_overrides({"stages": [{}]}, ["stages.5.steps=3"])


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL))
    with pytest.raises(Exception, match="frozen"):
        cfg.learner.lr = 3.0  # type: ignore[misc]


def test_duplicate_stage_names_rejected(tmp_path: Path) -> None:
    text = MINIMAL.replace("stages: [{name: s, kind: grpo, steps: 2}]",
                          "stages: [{name: s, kind: sft, steps: 2}, {name: s, kind: grpo, steps: 2}]")
    with pytest.raises(ConfigError, match="stage names must be unique"):
        load_config(_write(tmp_path, text))


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, MINIMAL), ["seed=3"])
    out = write_resolved(cfg, tmp_path / "run")
    again = RunConfig.model_validate(json.loads(out.read_text()))
    assert again == cfg
    assert json.loads(out.read_text())["learner"]["grpo"]["beta"] == 0.04  # defaults are written too


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory; name a YAML run config in it"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize(("override", "match"), [
    ("rollout.group_size=1", "group_size=1 with GRPO stages"),
    ("rollout.sampling.temperature=0", "greedy"),
    ("rollout.sampling.top_p=0.9", "top_p=0.9 with GRPO stages"),
])
def test_grpo_stages_refuse_settings_that_cannot_learn(tmp_path: Path, override: str, match: str) -> None:
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=match) as refused:
        load_config(path, [override])
    # one line naming the rule, not the whole section the validator received
    assert str(refused.value).splitlines()[1].startswith("  config: ") and "{" not in str(refused.value)
    # the same settings are fine for a run without GRPO (SFT, or evaluation-only settings)
    sft = _write(tmp_path, MINIMAL.replace("kind: grpo", "kind: sft"))
    assert load_config(sft, [override]).stages[0].kind == "sft"


def test_the_run_seed_drives_every_seed_unless_one_is_set(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    cfg = load_config(path, ["seed=7"])
    assert (cfg.learner.seed, cfg.learner.mlae.seed, cfg.rollout.seed) == (7, 7, 7)
    own = load_config(path, ["seed=7", "learner.mlae.seed=2", "rollout.seed=5"])
    assert (own.learner.seed, own.learner.mlae.seed, own.rollout.seed) == (7, 2, 5)
    # sections given as models (benchmarks, tests) derive the same way, keeping what they set
    built = RunConfig.model_validate({**yaml.safe_load(MINIMAL), "seed": 4,
                                      "learner": LearnerConfig(lr=1e-3), "rollout": RolloutConfig(seed=9)})
    assert (built.learner.seed, built.learner.mlae.seed, built.rollout.seed,
            built.learner.lr) == (4, 4, 9, 1e-3)
    assert json.loads(write_resolved(cfg, tmp_path / "run").read_text())["learner"]["mlae"]["seed"] == 7


def test_pool_fields_and_staleness_live_where_they_act(tmp_path: Path) -> None:
    """The engine's fields are `rollout` (rollout/), the pool's are `pool` (services/), staleness is the
    driver's: a config of an older release is read with each moved key at its new place and one warning
    per key; a key set at both places is refused."""
    old = MINIMAL + "rollout: {num_workers: 2, call_timeout_s: 9, max_staleness: 1, group_size: 4}\n"
    with pytest.warns(FutureWarning) as caught:
        cfg = load_config(_write(tmp_path, old))
    assert (cfg.pool.num_workers, cfg.pool.call_timeout_s, cfg.max_staleness,
            cfg.rollout.group_size) == (2, 9, 1, 4)
    notes = sorted(str(w.message).split(": ", 1)[1] for w in caught)
    assert notes == ["rollout.call_timeout_s is now pool.call_timeout_s: read it there (update the config)",
                     "rollout.max_staleness is now max_staleness: read it there (update the config)",
                     "rollout.num_workers is now pool.num_workers: read it there (update the config)"]
    with pytest.raises(ConfigError, match=r"rollout.num_workers and pool.num_workers are both set"):
        load_config(_write(tmp_path, MINIMAL + "rollout: {num_workers: 2}\npool: {num_workers: 3}\n"))
    # a run directory written before the move still resumes, evaluates and serves
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    tree = json.loads(json.dumps(RunConfig.model_validate(yaml.safe_load(MINIMAL)).model_dump(mode="json")))
    tree["rollout"]["num_workers"] = tree.pop("pool")["num_workers"]
    (run_dir / "resolved_config.json").write_text(json.dumps(tree))
    with pytest.warns(FutureWarning, match="rollout.num_workers is now pool.num_workers"):
        assert load_run_config(run_dir).pool.num_workers == 1


@pytest.mark.parametrize(("override", "match"), [
    ("max_staleness=1", None),
    ("learner.kept_versions=1", None),
    ("max_staleness=1 "
     "learner.kept_versions=1", r"max_staleness=1 .* learner.kept_versions=1 keeps too few .* "
                                                r"set learner.kept_versions=2"),
    ("rollout.tensor_parallel_size=2 pool.gpus_per_worker=1",
     r"rollout.tensor_parallel_size=2 needs pool.gpus_per_worker=2 \(one GPU per shard\), got 1"),
])
def test_rules_across_sections_name_both_fields(tmp_path: Path, override: str, match: str | None) -> None:
    path = _write(tmp_path, MINIMAL)
    if match is None:
        load_config(path, override.split())
    else:
        with pytest.raises(ConfigError, match=match):
            load_config(path, override.split())


def test_dr_grpo_length_is_the_completion_budget_unless_set(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    cfg = load_config(path, ["learner.grpo.loss=dr_grpo", "rollout.sampling.max_new_tokens=96"])
    assert (cfg.learner.grpo.aggregation, cfg.learner.grpo.constant_length) == ("dr_grpo", 96)
    assert load_config(path, ["learner.grpo.aggregation=dr_grpo"]).learner.grpo.constant_length == 64
    own = load_config(path, ["learner.grpo.loss=dr_grpo", "learner.grpo.constant_length=200"])
    assert own.learner.grpo.constant_length == 200
    # the resolved dump (what --show prints and a resume reads) holds the expansion and validates to itself
    dumped = json.loads(write_resolved(cfg, tmp_path / "run").read_text())["learner"]["grpo"]
    assert (dumped["scale_rewards"], dumped["constant_length"]) == ("none", 96)
    assert RunConfig.model_validate(json.loads(json.dumps(cfg.model_dump(mode="json")))) == cfg


@pytest.mark.parametrize(("overrides", "match"), [
    (["learner.grpo.loss=gspo", "learner.grpo.rollout_correction=token_truncate"],
     "GSPO replaces token-level"),
    (["learner.grpo.loss=gspo", "learner.grpo.aggregation=dapo"], "set aggregation=grpo"),
    (["learner.grpo.rollout_correction_low=0.5"], "drops tokens in the mask modes only"),
    (["learner.grpo.constant_length=32"], "only dr_grpo divides by it"),
])
def test_objective_contradictions_are_one_line(tmp_path: Path, overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as refused:
        load_config(_write(tmp_path, MINIMAL), overrides)
    lines = str(refused.value).splitlines()
    assert len(lines) == 2 and lines[1].startswith("  learner.grpo: ") and "{" not in lines[1]


def test_an_extra_term_that_does_not_import_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "reward: {extra_terms: [{fn: 'no_such_pkg_xyz.terms:f', name: a}]}\n")
    with pytest.raises(ConfigError, match="does not import") as refused:
        load_config(path)
    lines = str(refused.value).splitlines()
    assert len(lines) == 2 and lines[1].startswith("  reward.extra_terms.0: ")
    assert "no_such_pkg_xyz" in lines[1]
    ok = load_config(path, ["reward.extra_terms.0.fn=deploy.examples.box_terms:oversized_box_penalty"])
    assert ok.reward.extra_terms[0].name == "a"
