"""Run metrics: one JSON line per step in `metrics.jsonl`, the same scalars in TensorBoard, PNG plots, and
the step's row itself, built here only (verl's `metric_utils`: free functions of what the step made).

A metric row is a flat dict of floats/ints/strings keyed like `reward/total`, `tau/value`,
`time/generate_s`, `eval/A@0.5`; plots are drawn from the JSONL file, so they can be redrawn for any run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from learner import durable
from learner.batch import StepMetrics
from services.cluster.control import JobStatus
from services.data.jsonl import BadLine, read_jsonl
from services.training.trackers import Kind, Status, TensorBoardTracker, Trackers, numeric

if TYPE_CHECKING:
    from services.training.producer import GroupSelection
    from services.training.run_state import DriverState
    from services.training.seams import RunHandles

PLOTS: dict[str, tuple[str, ...]] = {
    "reward": ("reward/total", "reward/acc", "reward/format"),
    "tau": ("tau/value",),
    "accuracy": ("eval/A@0.5", "eval/A@0.8", "eval/pseudo_mAP"),
    "miou": ("eval/mIoU",),
    "zero_variance": ("batch/zero_variance_fraction",),
    "phase_times": ("time/generate_s", "time/reward_s", "time/learner_s", "time/sync_s", "time/other_s"),
    "loss": ("learner/loss",),
}


class PhaseTimer:
    """Wall seconds of a step's named phases (verl's `marked_timer`): `with timer.phase("generate"): ...`.

    A phase entered again (a refill round) accumulates. `row()` gives `time/<phase>_s` for each phase,
    `time/step_s` since the timer was made, and `time/other_s`, the part of the step no phase covered.
    `spans` keeps each phase's interval as `[lane, phase, start, end]` in Unix seconds, so the timers of
    two threads (the driver and the overlapped producer) line up on one timeline (`timeline.jsonl`).
    """

    def __init__(self, lane: str = "driver") -> None:
        self.lane = lane
        self.seconds: dict[str, float] = {}
        self.spans: list[list[Any]] = []
        self.started = time.time()
        self._start = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t, wall = time.perf_counter(), time.time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
            self.spans.append([self.lane, name, wall, wall + time.perf_counter() - t])

    def row(self) -> dict[str, float]:
        total = time.perf_counter() - self._start
        out = {f"time/{name}_s": s for name, s in self.seconds.items()}
        return out | {"time/step_s": total, "time/other_s": max(total - sum(self.seconds.values()), 0.0)}


# -------------------------------------------------------------------------------------------------------
# The step's row.


def batch_row(sel: GroupSelection, version: int) -> dict[str, Any]:
    """A GRPO batch's reward, tau, batch and rollout metrics; `version` is the learner's adapter version when
    it trained on this batch. `tau/scored_under` is the threshold every round was scored under, `tau/value`
    the schedule's after observing them (they differ on a step that raised tau)."""
    cat = {k: np.concatenate([getattr(c, k) for c in sel.columns])
           for k in ("weighted", "r_acc", "r_format", "r_recite", "r_grade", "iou")}
    cat |= {k: np.concatenate([c.extra[k] for c in sel.columns]) for k in sel.columns[0].extra}
    # reward/total: the weighted sum of the terms, whatever reward.aggregation combines for the advantage;
    # reward/<name>: a user's term (reward.extra_terms)
    row: dict[str, Any] = {"reward/" + ("total" if k == "weighted" else k.removeprefix("r_")): float(v.mean())
                           for k, v in cat.items()}
    assert sel.schedule is not None and sel.tau is not None
    row |= {"tau/value": sel.schedule.tau, "tau/version": sel.schedule.version,
            "tau/scored_under": sel.tau.tau, "tau/scored_under_version": sel.tau.version}
    if sel.schedule.stats is not None:
        row |= {f"tau/{k}": v for k, v in asdict(sel.schedule.stats).items()
                if k not in ("tau", "version") and isinstance(v, int | float)}
    completions = [c for g in sel.seen for c in g.completions]
    gen_s = max(sel.timer.seconds.get("generate", 0.0), 1e-9)
    versions = [g.adapter_version for g in sel.seen]
    return row | {
        "batch/groups_seen": len(sel.seen), "batch/groups_kept": len(sel.kept),
        "batch/zero_variance_fraction": sel.zero_variance / max(len(sel.seen), 1),
        "batch/staleness": float(np.mean([version - k.group.adapter_version for k in sel.kept]))
        if sel.kept else 0.0,  # adapter versions between the sampling policy and the learner's
        "batch/adapter_version_min": min(versions), "batch/adapter_version_max": max(versions),
        "rollout/workers_serving": len(sel.serving),
        "rollout/serving_serials": ",".join(map(str, sel.serving)),
        "rollout/completions_per_s": len(completions) / gen_s,
        "rollout/tokens_per_s": sum(len(c.token_ids) for c in completions) / gen_s,
        "rollout/prompt_tokens": sum(len(g.prompt_token_ids) for g in sel.seen),
        "rollout/completion_tokens": sum(len(c.token_ids) for c in completions),
        "rollout/truncated_fraction": sum(c.finish_reason == "length" for c in completions)
        / max(len(completions), 1),
        **{f"time/{k}_s": v for k, v in sel.timer.seconds.items()}}  # when it was made, maybe overlapped


def learner_row(m: StepMetrics | None) -> dict[str, Any]:
    """The learner's step metrics as `learner/*` (`learner/skipped` 1 when no group reached it)."""
    if m is None:
        return {"learner/skipped": 1}
    row = {f"learner/{k}": v for k, v in asdict(m).items() if k != "seconds" and v is not None}
    return row | {"learner/skipped": 0}


def run_row(h: RunHandles, state: DriverState, stage: str, timer: PhaseTimer,
            *faults: dict[str, int]) -> dict[str, Any]:
    """What every step logs: where the run is, the pool's size, the phase seconds, the fault counts (summed
    over the dicts given: the batch's generation, the rest of the step)."""
    counts: dict[str, int] = {}
    for part in faults:
        for key, n in part.items():
            counts[key] = counts.get(key, 0) + n
    return {"stage": stage, "stage_step": state.step_in_stage, "adapter_version": state.adapter_version,
            "rollout/workers": h.pool.size, "rollout/workers_live": h.pool.live_count(),
            **timer.row(), **counts}


def status_from(h: RunHandles, state: DriverState, row: dict[str, Any]) -> JobStatus:
    """What `medground status` shows (the control actor stamps the time): the tau the last step was scored
    under, its throughput and the workers that served it."""
    return JobStatus(step=state.global_step, total_steps=sum(s.steps for s in h.cfg.stages),
                     stage=row.get("stage"),
                     tau=row.get("tau/scored_under"), tau_version=row.get("tau/scored_under_version"),
                     reward=row.get("reward/total"), adapter_version=state.adapter_version,
                     staleness=row.get("batch/staleness"), rollout_workers=h.pool.size,
                     rollout_workers_live=row.get("rollout/workers_live", h.pool.live_count()),
                     rollout_workers_serving=row.get("rollout/workers_serving"),
                     completions_per_s=row.get("rollout/completions_per_s"),
                     tokens_per_s=row.get("rollout/tokens_per_s"), step_seconds=row.get("time/step_s"),
                     last_eval_a50=state.last_eval, run_dir=str(h.run_dir))


# -------------------------------------------------------------------------------------------------------
# Writing and drawing.


class MetricsWriter:
    """Append-only metric log of a run directory (metrics.jsonl), the one place a row is written; each row
    then goes to the run's trackers (TensorBoard by default, MLflow, W&B: services/training/trackers.py)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, plots: bool = True,
                 trackers: Trackers | None = None) -> None:
        """`trackers`: the run's (open_trackers); else TensorBoard alone, or none with tensorboard=False."""
        self.run_dir = Path(run_dir)
        self.plots = plots
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.timeline = self.run_dir / "timeline.jsonl"
        if trackers is None:
            trackers = Trackers([TensorBoardTracker(self.run_dir / "tensorboard")] if tensorboard else [],
                                run_dir=self.run_dir)
        self.trackers = trackers

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows written after the checkpoint's step (and a row torn by a crash) so the log has
        no duplicates; the file is replaced atomically, so a crash here leaves the old one. The rows a
        tracker never received are queued for it."""
        for path in (self.path, self.timeline):
            if path.exists():
                rows = [r for r in read_metrics(path) if int(r.get("step", -1)) <= step]
                durable.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
                if path == self.path:
                    self.trackers.backfill((int(r["step"]), numeric(r)) for r in rows)

    def log(self, step: int, row: dict[str, Any]) -> None:
        """Append one row, on disk before the step's checkpoint can name it (fsync), then send it to the
        trackers. With a remote tracker the row also counts their failed deliveries since the last row
        (`tracker/failures`, retried) and what waits for them (`tracker/pending`)."""
        clean = {"step": step, **{k: _jsonable(v) for k, v in row.items()}, **self.trackers.counts()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.trackers.row(step, numeric(clean))

    def artifact(self, path: Path, kind: Kind, folder: str | None = None) -> bool:
        """Send a file of the run to its trackers if `kind` may leave the machine (logging.log_*)."""
        return self.trackers.artifact(path, kind, folder)

    def log_timeline(self, step: int, start: float, spans: Iterable[Sequence[Any]]) -> None:
        """Append the step's phase intervals to `timeline.jsonl`: `{"step", "start", "end", "spans": [[lane,
        phase, start, end], ...]}` in Unix seconds (the overlapped producer's spans may start in an earlier
        step's window). `bench/step` draws it; a diagnostic, so not fsynced."""
        line = {"step": step, "start": start, "end": time.time(), "spans": [list(s) for s in spans]}
        with self.timeline.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def plot(self) -> list[Path]:
        """The run's PNG plots from metrics.jsonl (none when made with plots=False), sent to the trackers."""
        if not self.plots:
            return []
        written = plot_run(self.run_dir)
        if written:
            self.artifact(self.run_dir / "plots", "plots")
        return written

    def close(self, status: Status | None = "FINISHED") -> None:
        """End the trackers' runs (once) with `status`: FINISHED, FAILED or KILLED (a stop request)."""
        trackers, self.trackers = self.trackers, Trackers([])
        trackers.close(status)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a last line cut short by a crash mid-append is left out (a resume
    rewrites the file without it), any other bad line is an error."""
    lines = list(read_jsonl(path))  # split at newline bytes only (services/data/jsonl.py)
    rows = []
    for k, (number, value) in enumerate(lines, start=1):
        if not isinstance(value, BadLine):
            rows.append(value)
        elif k < len(lines):
            raise ValueError(f"{path} line {number} is not a JSON metrics row ({value.reason}); fix or "
                             "remove it")
    return rows


# y-axis label (with its unit) of each plot; the x axis is always the optimiser step.
Y_LABELS: dict[str, str] = {
    "reward": "mean reward per completion (unitless)",
    "tau": "IoU threshold tau (0-1)",
    "accuracy": "held-out accuracy (%)",
    "miou": "held-out mean IoU (0-1)",
    "zero_variance": "zero-variance groups (fraction, 0-1)",
    "phase_times": "seconds per step (s)",
    "loss": "GRPO loss per token (unitless)",
}
X_LABEL = "optimiser step (SFT and GRPO stages counted together)"
# Reference lines exist only for held-out metrics: `eval/<m>` is compared with `baseline/centre/<m>`, the
# always-centre box on the same records (services/evaluation/heldout.centre_box_baseline).
BASELINE_PREFIX = ("eval/", "baseline/centre/")
_BASELINE_STYLES = ("--", "-.", ":")


def baseline_key(key: str) -> str | None:
    """The reference metric of a plotted key, or None: 'eval/A@0.5' -> 'baseline/centre/A@0.5'; a key outside
    `eval/` has no baseline (the old lookup returned the key itself and drew its first value as a line)."""
    prefix, base = BASELINE_PREFIX
    return base + key.removeprefix(prefix) if key.startswith(prefix) else None


def plot_run(run_dir: str | Path, plots: dict[str, tuple[str, ...]] = PLOTS) -> list[Path]:
    """Draw one PNG per plot group from metrics.jsonl into `plots/`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, keys in plots.items():
        fig = draw_plot(rows, name, keys, run_dir.name)
        if fig is None:
            continue
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def draw_plot(rows: list[dict[str, Any]], name: str, keys: Sequence[str], run_name: str) -> Any:
    """One plot group as a matplotlib Figure (None when no key has data): a line per key, and for each `eval/`
    key with a baseline in `rows` a horizontal reference line in the key's colour, its own dash pattern and
    the label 'always-centre box: <metric>'; stage boundaries as dotted verticals; axis labels with units."""
    import matplotlib.pyplot as plt

    series = {k: _series(rows, k) for k in keys}
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    styles = iter(_BASELINE_STYLES * len(keys))
    for key, (xs, ys) in series.items():
        (line,) = ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        ref = baseline_key(key)
        base = next((r[ref] for r in rows if ref is not None and ref in r), None)
        if isinstance(base, int | float) and not isinstance(base, bool):
            ax.axhline(base, linestyle=next(styles), linewidth=1.2, color=line.get_color(), alpha=0.8,
                       label=f"always-centre box: {key.removeprefix(BASELINE_PREFIX[0])}")
    for boundary, stage in _stage_starts(rows):
        ax.axvline(boundary, color="grey", linestyle=":", linewidth=1)
        ax.text(boundary, ax.get_ylim()[1], f" {stage}", fontsize=7, va="top", color="grey")
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABELS.get(name, name), fontsize=8)
    ax.set_title(f"{run_name}: {name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def _stage_starts(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    starts, last = [], None
    for r in rows:
        stage = r.get("stage")
        if stage is not None and stage != last:
            starts.append((int(r["step"]), str(stage)))
            last = stage
    return starts
