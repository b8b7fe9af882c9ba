"""The run configuration: one typed, frozen tree composed from each package's own section.

Hyperparameters come from a YAML file (`deploy/configs/*.yaml`) plus `--set a.b=value` overrides; the
cluster address, storage and secrets come from `MEDGROUND_*` environment variables, never from YAML.
Errors name the field, the broken rule and the fix (`ConfigError`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from learner.config import LOSS_PRESETS, LearnerConfig
from rewards.config import RewardConfig
from rollout.config import RolloutConfig
from services.config_checks import ConfigError, explain, override_type_errors
from services.logging_config import LoggingConfig


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PoolConfig(_Strict):
    """The rollout pool (services' RolloutPool): how many engines run, where, what each reserves, and when a
    worker counts as lost (README, "Reliability"). What each engine samples is `rollout` (RolloutConfig)."""

    num_workers: int = Field(1, ge=1,
                             description="Rollout workers in the pool (resizable while a run is live).")
    resize_wait_s: float = Field(
        0.0, ge=0.0,
        description="Seconds the driver waits, after `medground scale rollout` adds workers, for them to be "
                    "up before the next step (0: carry on; each joins once its engine is up with the "
                    "current adapter). Waiting fixes the step a resize lands on; not waiting keeps the "
                    "learner busy while a new engine (or node) starts.")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="Ray CPUs reserved per worker.")
    gpus_per_worker: float = Field(0.0, ge=0.0, description="Ray GPUs per worker (0 on CPU machines).")
    max_attempts: int = Field(3, ge=1,
                              description="Tries per request when rollout workers die or hang mid-call.")
    call_timeout_s: float = Field(
        60.0, gt=0.0,
        description="Generation deadline in seconds per request (G completions): a worker that has not "
                    "answered a shard of k requests within k * call_timeout_s of starting it is killed and "
                    "replaced, and the shard goes to the other workers (a hung engine, a stopped process, a "
                    "lost node). Raise it for long completions or slow models; one request's G completions "
                    "must fit in it with room to spare.")
    load_timeout_s: float = Field(
        120.0, gt=0.0,
        description="Adapter load deadline in seconds: a worker that has not switched to a new "
        "adapter by then is killed and replaced (its replacement starts on that adapter).")
    start_timeout_s: float = Field(
        900.0, gt=0.0,
        description="Seconds a call waits for at least one worker to be up (engine started, adapter loaded) "
                    "when none is, e.g. after every worker was replaced; then it stops with an error naming "
                    "the cause.")
    scheduling: Literal["default", "spread"] = Field(
        "default",
        description="Where Ray places workers: default (Ray's choice, packs small clusters) or spread "
                    "(across nodes, so a lost node costs as few workers as possible; replacements go to "
                    "surviving nodes).")


# Keys that moved to the section where they act (0.2): a config that still has them at the old place is read
# with them at the new one, and a warning names the move (resolved configs of older runs keep working).
MOVED_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {
    **{("rollout", k): ("pool", k) for k in PoolConfig.model_fields},
    ("rollout", "max_staleness"): ("max_staleness",),
}


def migrate_moved_keys(tree: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`tree` with every key of MOVED_KEYS at its new place, and one note per key moved. A key set at both
    places is a contradiction: ConfigError naming both."""
    out: dict[str, Any] = json.loads(json.dumps(tree, default=str))
    notes: list[str] = []
    for old, new in MOVED_KEYS.items():
        parent = out.get(old[0])
        if not isinstance(parent, dict) or old[1] not in parent:
            continue
        value = parent.pop(old[1])
        target = out
        for part in new[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                return out, notes  # a malformed section: validation names it
        if new[-1] in target:
            raise ConfigError(f"{'.'.join(old)} and {'.'.join(new)} are both set; {'.'.join(old)} moved to "
                              f"{'.'.join(new)}: keep only {'.'.join(new)}")
        target[new[-1]] = value
        notes.append(f"{'.'.join(old)} is now {'.'.join(new)}: read it there (update the config)")
    return out, notes


class ModelConfig(_Strict):
    path: str = Field(...,
                      description="Directory of the base model (HF format); `medground init-model` makes "
                                  "one.")
    family: Literal["qwen2_5_vl", "qwen2_vl", "qwen3_vl"] = Field(
        "qwen2_5_vl",
        description="The model's family, which must match model_type in the model's config.json "
        "(checked when a run starts): qwen2_5_vl answers in input pixels (28 px cells), qwen2_vl in 0..1000 "
        "(28 px cells), qwen3_vl in 0..1000 (32 px cells). `medground init-model` builds this family when "
        "the path holds no model yet.")
    base: str | None = Field(
        None,
        description="A base recipe (deploy/configs/bases/*.yaml, services/models/pretrain.py): `model.path` "
                    "is then the pretrained CPU base that recipe builds -- built when the path is missing "
                    "or was built from another recipe, reused otherwise. None: model.path is used as it is "
                    "(or a random small model is built there).")


class DataConfig(_Strict):
    manifest: str = Field(...,
                          description="JSONL or Parquet manifest of records (`medground data synth` writes "
                                      "one).")
    train_split: str = Field("train", description="Split name used for training prompts.")
    eval_split: str = Field("val", description="Held-out split used for evaluation.")
    on_bad_record: Literal["skip", "fail"] = Field("fail", description="Skip bad records (counted) or stop.")
    knowledge_dir: str = Field("deploy/knowledge",
                               description="Folder of prior-knowledge YAML files (VRFT-Aug).")


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
    train_split: str | None = Field(None,
                                    description="Manifest split this stage trains on (default: the run's "
                                    "data.train_split); the records also match the stage's task.")
    reward: RewardConfig | None = Field(None, description="Overrides the run's reward mix for this stage.")
    lr: float | None = Field(None, gt=0.0, description="Overrides learner.lr for this stage.")
    refill_cap: int = Field(2, ge=0, description="GRPO dynamic sampling: extra generation rounds to replace "
                                                 "zero-variance groups (0: keep the batch as sampled, "
                                                 "zero-variance groups dropped).")
    drop_zero_variance: bool = Field(True,
                                     description="Drop groups whose task rewards (accuracy, format, grade) "
                                                 "are all equal (advantage 0, no signal); false keeps them, "
                                                 "as TRL's GRPOTrainer does (equal-work benchmarks).")
    multi_box: bool = Field(False, description="Grounding answers are sets (issue 31): the prompt asks "
                            "for a list of boxes, [] when the finding is absent; SFT targets list every box; "
                            "the stage also trains on negative records (no box), which single-box stages "
                            "skip. Pair it with reward.boxes: set to score the set; off: one box, as before.")
    carry_optimizer: bool = Field(False,
                                  description="Keep the optimiser's moments from the previous stage (or "
                                              "init_from); by default every stage starts a fresh AdamW, as "
                                              "TRL and verl start RL.")

    @field_validator("task", mode="before")
    @classmethod
    def _known_tasks(cls, value: Any) -> Any:
        """One line per mistake (pydantic would name both branches of the union)."""
        if isinstance(value, list) and not value:
            raise ValueError("an empty list names no records; give one task or a list such as [grounding, "
                             "grading]")
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or item not in TASK_NAMES:
                raise ValueError(f"{item!r} is not a task; use {', '.join(TASK_NAMES)} (one, or a list of "
                                 "them)")
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"{value} must name each task once (one task, or a list such as [grounding, "
                             "grading])")
        return value

    @property
    def tasks(self) -> tuple[str, ...]:
        """The stage's tasks as a tuple (one for a single `task`)."""
        return (self.task,) if isinstance(self.task, str) else tuple(self.task)


class EvalConfig(_Strict):
    every: int = Field(0, ge=0, description="Evaluate every K steps (0: only at the start and the end).")
    max_samples: int = Field(64, ge=1, description="Held-out records per evaluation (greedy decoding).")
    at_start: bool = Field(True,
                           description="Evaluate before the first step (benchmarks whose arms share one "
                           "warm start evaluate it once and switch this off).")
    overlays: int = Field(8, ge=0,
                          description="Prediction overlay images written to samples/ per evaluation.")
    samples: int = Field(4, ge=0,
                         description="k: completions sampled per held-out grounding image beside the greedy "
                                     "answer, for pass@1 (mean accuracy over the k) and pass@k (any of k) "
                                     "at IoU 0.3/0.5/0.8 (`eval/sampled/...`); 0 evaluates greedy only. "
                                     "Each costs about one greedy answer.")
    sample_temperature: float | None = Field(
        None, gt=0.0,
        description="Temperature of the sampled evaluation (default: rollout.sampling.temperature, "
        "what GRPO samples at); top-p and the length cap are rollout.sampling's.")


class CheckpointConfig(_Strict):
    every: int = Field(0, ge=0, description="Checkpoint every K steps (0: only at the end).")
    keep: int = Field(2, ge=1, description="Most recent checkpoints kept on disk.")


class RunConfig(_Strict):
    name: str = Field("run", min_length=1, description="Run name: runs/<name>/ and the control actor's name.")
    seed: int = Field(0,
                      description="The run's one seed: prompt order, each request's sampling seed, and "
                                  "(unless set) learner.seed, learner.mlae.seed and rollout.seed, which "
                                  "default to it.")
    output_dir: str = Field("runs", description="Parent directory of run directories.")
    model: ModelConfig
    data: DataConfig
    stages: tuple[StageConfig, ...] = Field(..., min_length=1, description="Stages run in order.")
    rollout: RolloutConfig = RolloutConfig()
    pool: PoolConfig = PoolConfig()
    max_staleness: int = Field(
        0, ge=0, le=1,
        description="Adapter versions a GRPO batch may lag the learner (the driver's schedule): 0 generates "
                    "each batch with the adapter just pushed (synchronous); 1 generates the next batch with "
                    "adapter v while the learner takes its step (overlapped generation; the ratio is then "
                    "taken against v, which the learner keeps: learner.kept_versions >= max_staleness + 1). "
                    "Steps that evaluate or checkpoint drain the pipeline, so resume stays exact.")
    reward: RewardConfig = RewardConfig()
    learner: LearnerConfig = LearnerConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = Field(
        LoggingConfig(), description="Experiment trackers (TensorBoard, MLflow, W&B), what they may receive, "
        "and samples of completions (services/logging_config.py).")
    init_from: str | None = Field(
        None,
        description="A checkpoint directory (runs/NAME/checkpoints/step-N) whose learner state (adapter, "
                    "RNG; optimiser moments only with the first stage's carry_optimizer) this run starts "
                    "from, its stages from step 0 (e.g. GRPO arms sharing one SFT warm start). The learner "
                    "must match the run that wrote it (adapter kind, rank, num_ranks). Ignored on resume.")

    def lr_of(self, stage: StageConfig) -> float:
        """The learning rate `stage` trains at: its own `lr`, else learner.lr."""
        return self.learner.lr if stage.lr is None else stage.lr

    def reward_of(self, stage: StageConfig) -> RewardConfig:
        """The reward mix `stage` is scored with: its own `reward`, else the run's."""
        return self.reward if stage.reward is None else stage.reward

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
    def _sections_agree(self) -> RunConfig:
        """Rules across sections: each names both fields and the fix."""
        r, p = self.rollout, self.pool
        if r.tensor_parallel_size > 1 and p.gpus_per_worker != r.tensor_parallel_size:
            raise ValueError(f"rollout.tensor_parallel_size={r.tensor_parallel_size} needs "
                             f"pool.gpus_per_worker={r.tensor_parallel_size} (one GPU per shard), got "
                             f"{p.gpus_per_worker}")
        if self.learner.kept_versions < self.max_staleness + 1:
            raise ValueError(f"max_staleness={self.max_staleness} trains on batches sampled by the adapter "
                             f"{self.max_staleness} version(s) back, but learner.kept_versions="
                             f"{self.learner.kept_versions} keeps too few to take their ratio; set "
                             f"learner.kept_versions={self.max_staleness + 1}")
        return self

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
            raise ValueError(f"rollout.sampling.temperature=0 (greedy) with GRPO stages {grpo}: every "
                             "completion of a group would be the same, so no group carries a gradient; set "
                             "a temperature > 0 (the paper uses 0.9)")
        if r.sampling.top_p < 1.0:
            raise ValueError(f"rollout.sampling.top_p={r.sampling.top_p} with GRPO stages {grpo}: top-p "
                             "truncates the sampled distribution, which the learner's log-probs do not "
                             "mirror; keep rollout.sampling.top_p=1.0 for training (evaluation decodes "
                             "greedily anyway)")
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
    problems = override_type_errors(RunConfig, overrides or [])
    if problems:
        raise ConfigError("\n".join(problems))
    return validate_tree(apply_overrides(tree, overrides or []), str(path))


def validate_tree(tree: dict[str, Any], source: str) -> RunConfig:
    """Validate a config tree (a YAML's, or a run's resolved_config.json): moved keys are read at their new
    place with a warning each (FutureWarning, shown once), errors become one ConfigError."""
    tree, notes = migrate_moved_keys(tree)
    for note in notes:
        warnings.warn(f"{source}: {note}", FutureWarning, stacklevel=3)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise explain(exc, RunConfig, source) from None


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config a run was started with (`RUN_DIR/resolved_config.json`): what resume, eval, export and
    serve read. Written by an older release, its moved keys are read at their new place."""
    resolved = Path(run_dir) / "resolved_config.json"
    if not resolved.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no resolved_config.json); give runs/NAME")
    try:
        tree = json.loads(resolved.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{resolved} is damaged ({exc}); `medground train` writes it whole: restore it "
                          f"from a copy, or use another run") from None
    return validate_tree(tree, str(resolved))


def write_resolved(config: RunConfig, run_dir: str | Path) -> Path:
    """Write `resolved_config.json` (every field, defaults included) into the run directory."""
    out = Path(run_dir) / "resolved_config.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    return out
