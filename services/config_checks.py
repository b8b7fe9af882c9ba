"""The config's error type, pydantic's errors explained field by field (`explain`: the field, the rule,
the fix, "did you mean" for an unknown key), and checks of `--set` overrides that validation alone cannot make
(services/config.py applies them).

- Type: YAML reads `true` as a bool and pydantic's lax mode turns it into 1 for an int field (and 1.0 for a
  float); `override_type_errors` refuses a bool where a number is expected and a number where a bool is.
- Shadowing: a stage's own field wins over the run's (`stages[i].lr` over `learner.lr`, `stages[i].reward`
  over `reward`, `stages[i].train_split` over `data.train_split`). The override is kept as given (no
  silent rewriting of the stage) and `shadowed_overrides` says which stage ignores it and the `--set`
  that reaches it; the CLI prints these notes on stderr.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration that cannot run; the message says which field, why, and how to fix it."""


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
            lines.append(f"  {dotted}: required field is missing; add it to the YAML or pass --set "
                         f"{dotted}=...")
        elif isinstance(err.get("input"), dict):
            # a rule across several fields (a model validator): its message names them; the input is a section
            lines.append(f"  {dotted or 'config'}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {dotted}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError("\n".join(lines))


# run-level field (dotted prefix) -> the stage field that overrides it for that stage
STAGE_SHADOWS: dict[str, str] = {"learner.lr": "lr", "reward": "reward", "data.train_split": "train_split"}


def _leaf_types(annotation: Any) -> set[Any]:
    """The concrete types an annotation admits (unions unpacked; a Literal gives its values' types)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(annotation)}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_leaf_types(a) for a in typing.get_args(annotation)))
    if origin is typing.Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    return {origin or annotation}


def _annotation_at(model: type[BaseModel], path: list[str]) -> Any:
    """The annotation of the field at `path` (list indices skipped), or None when it leaves the models."""
    current: Any = model
    annotation: Any = None
    for part in path:
        if part.isdigit():
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        current = next((t for t in _leaf_types(annotation)
                        if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if current is None and typing.get_origin(annotation) in (list, tuple):
            args = typing.get_args(annotation)
            current = next((t for t in args if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return annotation


def override_type_errors(model: type[BaseModel], overrides: list[str]) -> list[str]:
    """One message per override whose value is a bool for a numeric field or a number for a bool field.

    >>> from services.config import RunConfig
    >>> override_type_errors(RunConfig, ["eval.every=true"])[0].split(";")[0]
    "override 'eval.every=true': eval.every takes a number, got the bool true"
    """
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            continue  # parse_override names this one
        value = yaml.safe_load(raw) if raw.strip() else ""
        path = key.strip().split(".")
        annotation = _annotation_at(model, path)
        if annotation is None:
            continue
        allowed = _leaf_types(annotation)
        if Any in allowed:
            continue
        numeric = bool(allowed & {int, float})
        name, given = key.strip(), raw.strip()
        if isinstance(value, bool) and bool not in allowed and numeric:
            problems.append(f"override {item!r}: {name} takes a number, got the bool {given}; "
                            f"write a number, e.g. --set {name}=1")
        elif bool in allowed and not numeric and type(value) in (int, float):
            problems.append(f"override {item!r}: {name} is true or false, got the number {given}; "
                            f"write --set {name}=true or =false")
    return problems


def shadowed_overrides(stages: list[Any], overrides: list[str]) -> list[str]:
    """Notes for overrides of a run-level field that a stage's own field replaces, with the `--set` to use."""
    notes = []
    for item in overrides:
        key, _, raw = item.partition("=")
        key = key.strip()
        for run_field, stage_field in STAGE_SHADOWS.items():
            if not (key == run_field or key.startswith(run_field + ".")):
                continue
            for i, stage in enumerate(stages):
                own = getattr(stage, stage_field, None)
                if own is None:
                    continue
                shown = own if not isinstance(own, BaseModel) else "its own reward section"
                target = f"stages.{i}.{stage_field}{key.removeprefix(run_field)}"
                notes.append(f"note: --set {item} does not reach stage {stage.name!r}, whose {stage_field} "
                             f"({shown}) wins; to change it there: --set {target}={raw.strip()}")
    return notes


def preset_notes(cfg: Any) -> list[str]:
    """A note when fields that define the named loss preset are set to other values (a resolved config given
    a new `loss`, or a field overridden on purpose): the run trains that mix, not the preset as published."""
    grpo = cfg.learner.grpo
    departures = grpo.preset_departures()
    if not departures:
        return []
    given = ", ".join(f"{k}={v}" for k, (v, _) in departures.items())
    preset = ", ".join(f"{k}={p}" for k, (_, p) in departures.items())
    return [f"note: learner.grpo.loss={grpo.loss}, but {given} are set explicitly and win over the "
            f"preset's {preset}; the run trains that mix (remove them, or --set them, to train {grpo.loss} "
            "as published)"]


def stage_reward_notes(cfg: Any, overrides: list[str]) -> list[str]:
    """A note for `--set stages.N.reward.X=...`: a stage's reward section replaces the run's whole section, so
    the fields it does not set take their defaults, not the run's; names the fields that differ."""
    notes = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        parts = key.split(".")
        if len(parts) < 4 or parts[0] != "stages" or parts[2] != "reward" or not parts[1].isdigit():
            continue
        i = int(parts[1])
        if i >= len(cfg.stages) or cfg.stages[i].reward is None:
            continue
        own, run = cfg.stages[i].reward.model_dump(), cfg.reward.model_dump()
        differ = [k for k in run if k != parts[3] and own.get(k) != run[k]]
        if differ:
            notes.append(f"note: --set {item} gives stage {cfg.stages[i].name!r} its own reward section, "
                         f"which replaces the run's: {', '.join(differ)} take their defaults there, not the "
                         f"run's values; set them under stages.{i}.reward too if the run's were meant")
    return notes
