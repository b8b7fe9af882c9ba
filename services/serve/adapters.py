"""Which LoRA adapter to serve: the latest complete checkpoint of a watched run, or a directory named by an
operator. Pure file reading; the replica decides when to look (services/serve/core.py).

A checkpoint counts only once its `COMPLETE` mark exists (services/checkpointing.py writes it last, under a
temporary name, then renames), so a half-written adapter is never picked up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from learner.adapter_files import VERSION_FILE
from rollout.engines import AdapterSpec
from services.checkpointing import list_checkpoints


@dataclass(frozen=True)
class AdapterSource:
    """A servable adapter: its version (from `medground_adapter.json`), its directory, and the checkpoint
    step it came from (None when named directly)."""

    version: int
    path: str
    step: int | None = None

    def spec(self) -> AdapterSpec:
        return AdapterSpec(version=self.version, path=self.path)


class AdapterError(ValueError):
    """A directory that is not a servable adapter; the message says which file is missing and what to pass."""


def read_adapter(path: str | Path, step: int | None = None) -> AdapterSource:
    """The adapter in `path` (a PEFT LoRA dir written by the learner's export), or AdapterError."""
    path = Path(path)
    if (path / "adapter").is_dir() and not (path / "adapter_config.json").is_file():
        path = path / "adapter"  # a checkpoint dir or a run dir's final adapter: step into it
    for needed in ("adapter_config.json", "adapter_model.safetensors", VERSION_FILE):
        if not (path / needed).is_file():
            raise AdapterError(f"{path} is not a servable adapter: {needed} is missing; pass a PEFT LoRA "
                               f"directory written by medground (runs/<name>/checkpoints/step-N/adapter)")
    try:
        version = int(json.loads((path / VERSION_FILE).read_text())["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"{path / VERSION_FILE} does not hold {{\"version\": N}} ({exc})") from None
    if version < 1:
        raise AdapterError(f"{path / VERSION_FILE}: adapter version must be >= 1, got {version}")
    return AdapterSource(version=version, path=str(path.resolve()), step=step)


def latest_adapter(run_dir: str | Path) -> AdapterSource | None:
    """The adapter of the run's newest complete checkpoint that has one, or None."""
    for checkpoint in reversed(list_checkpoints(Path(run_dir))):
        if (checkpoint / "adapter" / "adapter_config.json").is_file():
            return read_adapter(checkpoint / "adapter", step=int(checkpoint.name.removeprefix("step-")))
    return None
