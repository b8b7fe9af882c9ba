"""The run configuration: one typed, frozen tree composed from each package's own section.

Hyperparameters come from a YAML file (`deploy/configs/*.yaml`) plus `--set a.b=value` overrides; the
cluster address, storage and secrets come from `MEDGROUND_*` environment variables, never from YAML.
Errors name the field, the broken rule and the fix (`ConfigError`).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from learner.config import LOSS_PRESETS, LearnerConfig
from rewards.config import RewardConfig
from rollout.config import RolloutConfig


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfigError(ValueError):
    """A configuration that cannot run; the message says which field, why, and how to fix it."""


class ModelConfig(_Strict):
    path: str = Field(..., description="Directory of the base model (HF format); `medground init-model` makes one.")
    family: Literal["qwen2_5_vl", "qwen2_vl", "qwen3_vl"] = Field(
        "qwen2_5_vl", description="The model's family, which must match model_type in the model's config.json "
        "(checked when a run starts): qwen2_5_vl answers in input pixels (28 px cells), qwen2_vl in 0..1000 "
        "(28 px cells), qwen3_vl in 0..1000 (32 px cells). `medground init-model` builds this family when "
        "the path holds no model yet.")
    base: str | None = Field(
        None, description="A base recipe (deploy/configs/bases/*.yaml, services/pretrain.py): `model.path` is then "
        "the pretrained CPU base that recipe builds -- built when the path is missing or was built from another "
        "recipe, reused otherwise. None: model.path is used as it is (or a random small model is built there).")


class DataConfig(_Strict):
    manifest: str = Field(..., description="JSONL or Parquet manifest of records (`medground data synth` writes one).")
    train_split: str = Field("train", description="Split name used for training prompts.")
    eval_split: str = Field("val", description="Held-out split used for evaluation.")
    on_bad_record: Literal["skip", "fail"] = Field("fail", description="Skip bad records (counted) or stop.")
    knowledge_dir: str = Field("deploy/knowledge", description="Folder of prior-knowledge YAML files (VRFT-Aug).")


TaskName = Literal["grounding", "classification", "grading"]
TASK_NAMES = ("grounding", "classification", "grading")


class StageConfig(_Strict):
    """One stage of a run: SFT warm start or GRPO, with its own data, reward mix and length."""

    name: str = Field(..., min_length=1, description="Stage name, used in metrics and checkpoint paths.")
    kind: Literal["sft", "grpo"] = Field(..., description="Supervised warm start or GRPO.")
    steps: int = Field(..., ge=1, description="Optimiser steps in this stage.")
    prompts_per_step: int = Field(8, ge=1, description="Prompt groups per GRPO step (batch size for SFT).")
    task: TaskName | list[TaskName] = Field(
        "grounding", description="Records used: one task, or a list whose records are mixed in one permuted "
        "order (an SFT warm start that teaches a new answer format without losing another: on a grounding "
        "base, grading SFT alone replaced every box answer with a grade, docs/RESULTS.md, VRFT-Aug).")
    train_split: str | None = Field(None, description="Manifest split this stage trains on (default: the run's "
                                    "data.train_split); the records also match the stage's task.")
    reward: RewardConfig | None = Field(None, description="Overrides the run's reward mix for this stage.")
    lr: float | None = Field(None, gt=0.0, description="Overrides learner.lr for this stage.")
    refill_cap: int = Field(2, ge=0, description="GRPO dynamic sampling: extra generation rounds to replace "
                            "zero-variance groups (0: keep the batch as sampled, zero-variance groups dropped).")
    drop_zero_variance: bool = Field(True, description="Drop groups whose task rewards (accuracy, format, grade) "
                                     "are all equal (advantage 0, no signal); false keeps them, as TRL's GRPOTrainer "
                                     "does (equal-work benchmarks).")
    carry_optimizer: bool = Field(False, description="Keep the optimiser's moments from the previous stage (or "
                                  "init_from); by default every stage starts a fresh AdamW, as TRL and verl start RL.")

    @field_validator("task", mode="before")
    @classmethod
    def _known_tasks(cls, value: Any) -> Any:
        """One line per mistake (pydantic would name both branches of the union)."""
        if isinstance(value, list) and not value:
            raise ValueError("an empty list names no records; give one task or a list such as [grounding, grading]")
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or item not in TASK_NAMES:
                raise ValueError(f"{item!r} is not a task; use {', '.join(TASK_NAMES)} (one, or a list of them)")
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"{value} must name each task once (one task, or a list such as [grounding, grading])")
        return value

    @property
    def tasks(self) -> tuple[str, ...]:
        """The stage's tasks as a tuple (one for a single `task`)."""
        return (self.task,) if isinstance(self.task, str) else tuple(self.task)


class EvalConfig(_Strict):
    every: int = Field(0, ge=0, description="Evaluate every K steps (0: only at the start and the end).")
    max_samples: int = Field(64, ge=1, description="Held-out records per evaluation (greedy decoding).")
    at_start: bool = Field(True, description="Evaluate before the first step (benchmarks whose arms share one "
                           "warm start evaluate it once and switch this off).")
    overlays: int = Field(8, ge=0, description="Prediction overlay images written to samples/ per evaluation.")


class CheckpointConfig(_Strict):
    every: int = Field(0, ge=0, description="Checkpoint every K steps (0: only at the end).")
    keep: int = Field(2, ge=1, description="Most recent checkpoints kept on disk.")


class RunConfig(_Strict):
    name: str = Field("run", min_length=1, description="Run name: runs/<name>/ and the control actor's name.")
    seed: int = Field(0, description="The run's one seed: prompt order, each request's sampling seed, and (unless "
                      "set) learner.seed, learner.mlae.seed and rollout.seed, which default to it.")
    output_dir: str = Field("runs", description="Parent directory of run directories.")
    model: ModelConfig
    data: DataConfig
    stages: tuple[StageConfig, ...] = Field(..., min_length=1, description="Stages run in order.")
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    learner: LearnerConfig = LearnerConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    init_from: str | None = Field(
        None, description="A checkpoint directory (runs/NAME/checkpoints/step-N) whose learner state (adapter, RNG; "
        "optimiser moments only with the first stage's carry_optimizer) this run starts from, its stages from step 0 "
        "(e.g. GRPO arms sharing one SFT warm start). The learner must match the run that wrote it (adapter kind, "
        "rank, num_ranks). Ignored on resume.")

    @model_validator(mode="before")
    @classmethod
    def _derive_seeds(cls, data: Any) -> Any:
        """learner.seed, learner.mlae.seed and rollout.seed default to the run's `seed`; one set explicitly
        overrides it for that part alone (and `resolved_config.json` records every value)."""
        if not isinstance(data, dict) or not isinstance(data.get("seed", 0), int):
            return data  # pydantic reports the malformed tree or seed
        seed = data.get("seed", 0)
        learner = _seeded(data.get("learner"), seed)
        if isinstance(learner, dict):
            learner["mlae"] = _seeded(learner.get("mlae"), seed)
        elif isinstance(learner, LearnerConfig):
            learner = learner.model_copy(update={"mlae": _seeded(learner.mlae, seed)})
        return {**data, "learner": learner, "rollout": _seeded(data.get("rollout"), seed)}

    @model_validator(mode="before")
    @classmethod
    def _dr_grpo_length(cls, data: Any) -> Any:
        """dr_grpo's constant normaliser defaults to the completion-length budget,
        rollout.sampling.max_new_tokens (Dr. GRPO's MAX_TOKENS), filled here so `validate-config --show` and
        resolved_config.json show it."""
        if not isinstance(data, dict) or not isinstance(data.get("learner"), dict):
            return data
        learner: dict[str, Any] = data["learner"]
        grpo = learner.get("grpo")
        if not isinstance(grpo, dict) or grpo.get("constant_length") is not None:
            return data
        preset = LOSS_PRESETS.get(grpo.get("loss", "grpo"), {})
        if grpo.get("aggregation", preset.get("aggregation")) != "dr_grpo":
            return data
        try:
            rollout = data.get("rollout")
            length = (rollout if isinstance(rollout, RolloutConfig)
                      else RolloutConfig.model_validate(rollout or {})).sampling.max_new_tokens
        except ValidationError:
            return data  # pydantic reports the rollout section's own errors
        return {**data, "learner": {**learner, "grpo": {**grpo, "constant_length": length}}}

    @model_validator(mode="after")
    def _unique_stage_names(self) -> RunConfig:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique, repeated: {dupes}; rename the stages")
        return self

    @model_validator(mode="after")
    def _grpo_can_learn(self) -> RunConfig:
        """GRPO needs a group to compare and a distribution to take log-probs of; refuse what would validate
        and then skip every step (G = 1, greedy) or train on a distribution the learner cannot recompute."""
        grpo = [s.name for s in self.stages if s.kind == "grpo"]
        if not grpo:
            return self
        r = self.rollout
        if r.group_size < 2:
            raise ValueError(f"rollout.group_size={r.group_size} with GRPO stages {grpo}: group-relative "
                             "advantages need at least 2 completions per prompt (the paper uses 8); set "
                             "rollout.group_size=8")
        if r.sampling.temperature <= 0.0:
            raise ValueError(f"rollout.sampling.temperature=0 (greedy) with GRPO stages {grpo}: every completion "
                             "of a group would be the same, so no group carries a gradient; set a temperature "
                             "> 0 (the paper uses 0.9)")
        if r.sampling.top_p < 1.0:
            raise ValueError(f"rollout.sampling.top_p={r.sampling.top_p} with GRPO stages {grpo}: top-p truncates "
                             "the sampled distribution, which the learner's log-probs do not mirror; keep "
                             "rollout.sampling.top_p=1.0 for training (evaluation decodes greedily anyway)")
        return self


def _seeded(section: Any, seed: int) -> Any:
    """A config section (absent, a mapping or a model) with `seed` filled in unless it sets its own."""
    if section is None:
        return {"seed": seed}
    if isinstance(section, dict):
        return {"seed": seed, **section}
    if isinstance(section, BaseModel) and "seed" not in section.model_fields_set:
        return section.model_copy(update={"seed": seed})
    return section


# ---------------------------------------------------------------------------------------------------------
# Loading, overrides and error messages.


def parse_override(item: str) -> tuple[list[str], Any]:
    """`learner.lr=1e-5` -> (["learner", "lr"], 1e-5); the value is parsed as YAML (numbers, lists, bools)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not KEY=VALUE; write it like --set learner.lr=1e-5")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `tree` with each `a.b.c=value` applied; list items are addressed by index."""
    out: dict[str, Any] = json.loads(json.dumps(tree))
    for item in overrides:
        path, value = parse_override(item)
        node: Any = out
        for part in path[:-1]:
            node = node[_index(part, item, node)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[_index(path[-1], item, node)] = value
        else:
            node[path[-1]] = value
    return out


def _index(part: str, item: str, items: list[Any]) -> int:
    if not part.isdigit():
        raise ConfigError(f"override {item!r}: {part!r} addresses a list, so it must be an index like 0")
    if int(part) >= len(items):
        raise ConfigError(f"override {item!r}: index {part} is past the end of a list of {len(items)} "
                          f"(valid: 0..{len(items) - 1}); add the item to the YAML to override it")
    return int(part)


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The valid field names of the model reached by following `loc` (the parent of an unknown key)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def explain(error: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    """Turn pydantic's errors into one message naming each field, the rule and the fix."""
    lines = [f"invalid configuration in {source}:"]
    errors = error.errors()
    locs = [tuple(e["loc"]) for e in errors]
    for err in errors:
        loc = tuple(err["loc"])
        if any(len(other) > len(loc) and other[:len(loc)] == loc for other in locs):
            continue  # a section failing only because of a field inside it, which has its own line
        dotted = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys here: {', '.join(valid)}"
            lines.append(f"  {dotted}: unknown key; {hint}")
        elif err["type"] == "missing":
            lines.append(f"  {dotted}: required field is missing; add it to the YAML or pass --set {dotted}=...")
        elif isinstance(err.get("input"), dict):
            # a rule across several fields (a model validator): its message names them; the input is a section
            lines.append(f"  {dotted or 'config'}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {dotted}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError("\n".join(lines))


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply `--set` overrides, validate, and return the frozen tree."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; name a YAML run config in it (e.g. {path / 'demo.yaml'})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; the shipped ones are in deploy/configs/")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, found {type(tree).__name__}")
    tree = apply_overrides(tree, overrides or [])
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise explain(exc, RunConfig, str(path)) from None


def write_resolved(config: RunConfig, run_dir: str | Path) -> Path:
    """Write `resolved_config.json` (every field, defaults included) into the run directory."""
    out = Path(run_dir) / "resolved_config.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    return out
