"""Run metrics: one JSON line per step in `metrics.jsonl`, the same scalars in TensorBoard, PNG plots.

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
from pathlib import Path
from typing import Any

from learner import durable
from services.data.jsonl import BadLine, read_jsonl

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


class MetricsWriter:
    """Append-only metric log of a run directory (JSONL + TensorBoard)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, plots: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.plots = plots
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.timeline = self.run_dir / "timeline.jsonl"
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows written after the checkpoint's step (and a row torn by a crash) so the log has
        no duplicates; the file is replaced atomically, so a crash here leaves the old one."""
        for path in (self.path, self.timeline):
            if path.exists():
                rows = [r for r in read_metrics(path) if int(r.get("step", -1)) <= step]
                durable.write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def log(self, step: int, row: dict[str, Any]) -> None:
        """Append one row, on disk before the step's checkpoint can name it (fsync)."""
        clean = {"step": step, **{k: _jsonable(v) for k, v in row.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(clean, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def log_timeline(self, step: int, start: float, spans: Iterable[Sequence[Any]]) -> None:
        """Append the step's phase intervals to `timeline.jsonl`: `{"step", "start", "end", "spans": [[lane,
        phase, start, end], ...]}` in Unix seconds (the overlapped producer's spans may start in an earlier
        step's window). `bench/step` draws it; a diagnostic, so not fsynced."""
        line = {"step": step, "start": start, "end": time.time(), "spans": [list(s) for s in spans]}
        with self.timeline.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def plot(self) -> list[Path]:
        """The run's PNG plots from metrics.jsonl (none when made with plots=False)."""
        return plot_run(self.run_dir) if self.plots else []

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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
            raise ValueError(f"{path} line {number} is not a JSON metrics row ({value.reason}); fix or remove it")
    return rows


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
        series = {k: _series(rows, k) for k in keys}
        series = {k: v for k, v in series.items() if v[0]}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        for key in keys:  # reference lines: the always-centre box on the same held-out records
            base = next((r[k] for r in rows for k in [key.replace("eval/", "baseline/centre/")] if k in r), None)
            if isinstance(base, int | float):
                ax.axhline(base, linestyle="--", linewidth=1, color="grey", label=f"centre box {key[5:]}")
        for boundary, stage in _stage_starts(rows):
            ax.axvline(boundary, color="grey", linestyle=":", linewidth=1)
            ax.text(boundary, ax.get_ylim()[1], f" {stage}", fontsize=7, va="top", color="grey")
        ax.set_xlabel("step")
        ax.set_title(f"{run_dir.name}: {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


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
