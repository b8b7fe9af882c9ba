"""The run's state across processes and time: the driver's own state, the adapter version workers serve,
checkpoints (written, restored, written on a stop), the final adapter, and the failure text that names the
checkpoint to resume from (README, "Reliability"; the layout on disk: services/checkpointing.py)."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learner.export import LoraArtefact
from services import checkpointing as ckpt

if TYPE_CHECKING:
    from services.training.seams import RunHandles


@dataclass
class DriverState:
    """Everything the driver needs to continue exactly (with the learner's and reward's own state)."""

    stage_index: int = 0
    step_in_stage: int = 0
    global_step: int = 0
    adapter_version: int = 0  # the version rollout workers serve; the only adapter version in the system
    samplers: dict[str, dict[str, Any]] = field(default_factory=dict)
    reward_state: dict[str, Any] | None = None
    last_eval: float | None = None  # the latest held-out A@0.5 (status and progress bar)


class RunFailed(RuntimeError):
    """A run stopped on an error; the message names the step, the last complete checkpoint and how to
    resume."""


class StopRequested(Exception):
    """Raised by an `on_step` callback between steps (SIGTERM or Ctrl-C, services/training/launch.py): the run
    checkpoints the step it has just finished, then stops with RunFailed naming it."""


def publish_adapter(h: RunHandles, state: DriverState) -> int:
    """Export adapter v+1 from the learner (one object-store transfer), make it live on every worker and
    return v+1 (now `state.adapter_version`)."""
    version = state.adapter_version + 1
    h.pool.load_adapter(version, h.learner.export(version))
    state.adapter_version = version
    return version


def restore_adapter(h: RunHandles, checkpoint: Path, version: int) -> None:
    """On resume: the checkpoint's adapter (the version workers served when it was written) goes live."""
    if version > 0:
        h.pool.load_adapter(version, LoraArtefact.load(checkpoint / "adapter", version=version))


def write_checkpoint(h: RunHandles, state: DriverState) -> Path:
    """`checkpoints/step-N/`: the learner's state, the adapter workers serve (written once, by the learner,
    as `state.adapter_version`), the reward schedule and the driver's state."""
    def fill(d: Path) -> None:
        h.learner.save_checkpoint(d / "learner", d / "adapter" if state.adapter_version > 0 else None,
                                  state.adapter_version)
        driver = asdict(state)
        ckpt.write_json(d / "reward_state.json", driver.pop("reward_state"))
        ckpt.write_json(d / "driver_state.json", {**driver, "rng": ckpt.rng_state()})
    return ckpt.write_checkpoint(h.run_dir, state.global_step, fill, h.cfg.checkpoint.keep)


def save_on_stop(h: RunHandles, state: DriverState) -> Exception | None:
    """A stopped run's final checkpoint (unless this step has one); the error when it cannot be written."""
    if f"step-{state.global_step}" in {c.name for c in ckpt.list_checkpoints(h.run_dir)}:
        return None
    try:
        write_checkpoint(h, state)
    except Exception as exc:  # reported in RunFailed's message in place of the stop request
        return exc
    return None


def restore_state(run_dir: Path) -> tuple[DriverState, Path]:
    """The driver's state and RNG from the newest complete checkpoint, and that checkpoint."""
    checkpoint = ckpt.latest_checkpoint(run_dir)
    raw = ckpt.read_json(checkpoint / "driver_state.json")
    ckpt.set_rng_state(raw.pop("rng"))
    return DriverState(**raw, reward_state=ckpt.read_json(checkpoint / "reward_state.json")), checkpoint


def write_final(h: RunHandles) -> None:
    """`adapter/`: a copy of the last checkpoint's (every run ends with a checkpoint), sent to the trackers
    with logging.log_adapter; and the plots."""
    last = ckpt.latest_checkpoint(h.run_dir) / "adapter"
    if last.is_dir():
        shutil.rmtree(h.run_dir / "adapter", ignore_errors=True)
        shutil.copytree(last, h.run_dir / "adapter")
        h.writer.artifact(h.run_dir / "adapter", "adapter", "adapter")
    h.writer.plot()


def failure_message(run_dir: Path, state: DriverState, exc: BaseException) -> str:
    done = ckpt.list_checkpoints(run_dir)
    where = (f"the last complete checkpoint is {done[-1]}; continue with: medground train --resume {run_dir}"
             if done
             else "no checkpoint was written yet (checkpoint.every > 0 writes them); start the run again")
    return f"run {run_dir.name} stopped after step {state.global_step} ({type(exc).__name__}: {exc}); {where}"
