"""Run checkpoints: `runs/<name>/checkpoints/step-N/`, written under a temporary name, fsynced, marked
`COMPLETE` and renamed when complete, so a crash mid-write (a killed driver, a dead learner rank, a lost
node) never leaves a checkpoint that looks whole: `--resume` takes the newest complete one and the debris
of an unfinished write is removed by the next write (README, "Reliability").

Contents: `learner/` (DeepSpeed state of every rank, RNG), `adapter/` (the exported PEFT LoRA adapter),
`reward_state.json` (the MedLoc-R1 window, tau and history), `driver_state.json` (stage, step, adapter
version, sampler positions, RNG states).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from learner import durable

COMPLETE_MARK = "COMPLETE"


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def write_checkpoint(run_dir: Path, step: int, fill: Callable[[Path], None], keep: int) -> Path:
    """Create `step-N` atomically: `fill(tmp_dir)` writes the parts, then the mark, then the rename; older
    checkpoints beyond `keep` go (renamed away first, so none is ever seen half deleted)."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for debris in root.glob(".*step-*"):  # .tmp-step-N, .old-step-N, .step-N.old: left by a killed write
        shutil.rmtree(debris)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    tmp.mkdir()
    fill(tmp)
    (tmp / COMPLETE_MARK).write_text(f"{step}\n")
    durable.replace_dir(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        gone = old.with_name(f".old-{old.name}")
        old.rename(gone)
        durable.fsync_dir(root)
        shutil.rmtree(gone)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if p.name.removeprefix("step-").isdigit()
            and (p / COMPLETE_MARK).is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("step-")))


def latest_checkpoint(run_dir: Path) -> Path:
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint to resume from; "
                                f"set checkpoint.every > 0 so a run writes them")
    return found[-1]


def rng_state() -> dict[str, Any]:
    """Python and numpy global RNG states of the driver (torch is the learner's, saved by it)."""
    return {"python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))


def write_json(path: Path, obj: Any) -> None:
    """Inside a checkpoint's temporary directory (fsynced with it before the rename)."""
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_default) + "\n")


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer | np.floating):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to a checkpoint JSON")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def run_adapter(run_dir: Path, step: int | None) -> tuple[Path, str]:
    """The adapter directory of a run and its label: checkpoint `step`, else the final `adapter/`, else the
    latest complete checkpoint's (`medground eval` and `medground export` pick the same one)."""
    if step is not None:
        return run_dir / "checkpoints" / f"step-{step}" / "adapter", f"step-{step}"
    if (run_dir / "adapter").is_dir():
        return run_dir / "adapter", "final"
    try:
        latest = latest_checkpoint(run_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir} has no adapter/ and no checkpoint yet; train first") from None
    return latest / "adapter", latest.name
