"""Weights & Biases as a run's tracker (logging.trackers: [wandb]). The run lives under RUN_DIR/wandb/, named
after the run directory, with the resolved config as its config; each numeric metric at its step (keys as
in metrics.jsonl); files under the run's files; model directories as `model` artefacts. WANDB_MODE=offline
writes it with no network (`wandb sync RUN_DIR/wandb/offline-run-*` uploads it later). Imported only when a
config names wandb.

Privacy: W&B's console capture is off (the driver's log lines would otherwise be uploaded), and so are its
system-statistics sampler, its code saving and its host/git metadata.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.training.trackers import Status, TrackerUnreachable, one_line

if TYPE_CHECKING:
    from services.config import RunConfig


class WandbTracker:
    """One W&B run (services/training/trackers.py: Tracker)."""

    name, remote = "wandb", True

    def __init__(self, run: Any, where: str, label: str) -> None:
        self.run, self.where, self.label = run, where, label

    @classmethod
    def open(cls, cfg: RunConfig, run_dir: Path, saved: dict[str, Any] | None, attach: bool) -> WandbTracker:
        """Continue the run whose id trackers.json keeps, else start one with a new id."""
        import wandb

        w = cfg.logging.wandb
        settings = wandb.Settings(console="off", save_code=False, disable_git=True, x_disable_stats=True,
                                  x_disable_meta=True, silent=True)
        offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun")
        place = f"offline, {run_dir / 'wandb'}" if offline else settings.base_url
        where = f"project {w.project} ({place})"
        try:
            run = wandb.init(project=w.project, entity=w.entity, name=run_dir.name, dir=str(run_dir),
                             id=(saved or {}).get("run_id") or uuid.uuid4().hex[:12], resume="allow",
                             config=None if attach else cfg.model_dump(mode="json"), reinit="create_new",
                             settings=settings)
        except Exception as exc:  # no API key, no network, a refused project: one line
            raise TrackerUnreachable(
                f"W&B {where} cannot be reached ({one_line(exc)}); log in (WANDB_API_KEY), fix "
                "logging.wandb, run with WANDB_MODE=offline, or set logging.on_tracker_error=warn to train "
                "without it") from None
        return cls(run, where, run_dir.name)

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        """History at `step`; a step behind the run's (`medground eval` of an earlier checkpoint, which W&B
        would drop) goes to the run's summary instead."""
        if step < self.run.step:
            self.run.summary.update(dict(values))
        else:
            self.run.log(dict(values), step=step)

    def artifact(self, path: Path, folder: str) -> None:
        """Each file under the run's files at `folder/<its path under path>`."""
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        base = path if path.is_dir() else path.parent
        for f in files:  # W&B keeps a file at its path relative to base_path
            root = base.parents[len(Path(folder).parts) - 1] if folder else base
            self.run.save(str(f), base_path=str(root), policy="now")

    def model(self, path: Path, folder: str) -> None:
        import wandb

        art = wandb.Artifact(re.sub(r"[^\w.-]", "_", f"{self.label}-{folder}"), type="model",
                             description=f"{folder} of medground run {self.label}")
        if path.is_dir():
            art.add_dir(str(path))
        else:
            art.add_file(str(path))
        self.run.log_artifact(art)

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run.id}

    def close(self, status: Status | None) -> None:
        self.run.finish(exit_code=0 if status in (None, "FINISHED") else 1)
