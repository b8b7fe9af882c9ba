"""Study plots from a result (`bench.studies.runner.write_study` and the studies' own): small PNGs under
bench/results/, `<prefix>_*.png`."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

from bench.studies.arms import Row, bucket_name
from services.data.records import SIZE_BUCKETS

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_study(result: Row, prefix: Path) -> list[Path]:
    """tau path and zero-variance fraction per GRPO step (every seed, one colour per arm), and the final
    A@0.5 / mIoU per size bucket (bars: mean over seeds). Small PNGs: `<prefix>_*.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    runs: dict[str, list[Row]] = result["runs"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=80)
    for i, (name, rows) in enumerate(runs.items()):
        c = colours[i % len(colours)]
        for j, r in enumerate(rows):
            label = name if j == 0 else None
            if r["path"]["tau"]:
                axes[0].plot(r["path"]["tau"], color=c, alpha=0.8, label=label)
            if r["path"]["zero_variance"]:
                axes[1].plot(r["path"]["zero_variance"], color=c, alpha=0.8, label=label)
    axes[0].set(title="tau (accuracy threshold)", xlabel="GRPO step")
    axes[1].set(title="zero-variance group fraction", xlabel="GRPO step")
    axes[1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    path = Path(f"{prefix}_paths.png")
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    edges = result.get("size_edges") or []
    buckets = ["all", *([bucket_name(lo, hi) for lo, hi in itertools.pairwise(edges)] if edges
                        else [name for name, _, _ in SIZE_BUCKETS])]
    aggs: dict[str, Row] = result["aggregate"]
    if any(f"eval/{b}/mIoU" in agg for agg in aggs.values() for b in buckets[1:]):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=80)
        width = 0.8 / max(len(aggs), 1)
        for i, (name, agg) in enumerate(aggs.items()):
            for ax, metric in zip(axes, ("A@0.5", "mIoU"), strict=True):
                keys = [f"eval/{metric}" if b == "all" else f"eval/{b}/{metric}" for b in buckets]
                vals = [(agg.get(k) or {}).get("mean") or 0.0 for k in keys]
                errs = [(agg.get(k) or {}).get("std") or 0.0 for k in keys]
                ax.bar([x + i * width for x in range(len(buckets))], vals, width, yerr=errs,
                       color=colours[i % len(colours)], label=name)
        for ax, metric in zip(axes, ("A@0.5 (%)", "mIoU"), strict=True):
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(buckets))], buckets, fontsize=7)
            ax.set(title=f"held-out {metric} by target size")
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        path = Path(f"{prefix}_buckets.png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _mean_curve(rows: list[Row], key: str) -> tuple[list[float], list[float]]:
    """(steps, mean over seeds) of `key` along the runs' evaluations (`path.eval`), steps every run has."""
    by_step: dict[float, list[float]] = {}
    for r in rows:
        for point in r["path"].get("eval", []):
            if point.get(key) is not None and point.get("step") is not None:
                by_step.setdefault(point["step"], []).append(point[key])
    steps = sorted(s for s, v in by_step.items() if len(v) == len(rows))
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def _plot_step_mean(ax: Axes, paths: list[list[float | None]], colour: str, label: str) -> None:
    """The mean over seeds of per-step values (the steps every run has); nothing when no run has a whole
    path (a step without the value, e.g. a row that logged none, leaves its run out)."""
    whole = [[float(v) for v in p] for p in paths if p and None not in p]  # type: ignore[arg-type]
    if whole:
        n = min(len(p) for p in whole)
        ax.plot([sum(p[s] for p in whole) / len(whole) for s in range(n)], color=colour, label=label)


def plot_learning_curves(result: Row, prefix: Path, base: str = "base") -> list[Path]:
    """Held-out greedy and sampled A@0.5 against the step per arm (mean over seeds; trained arms start at
    the `base` arm's value, step 0; an arm whose rows say `curve_split` is drawn dashed, that split named),
    beside the mean sampled IoU of each GRPO step on its fresh training images (`path.reward_iou`), and the
    zero-variance group fraction per GRPO step per arm (mean over seeds): `<prefix>_curves.png`,
    `<prefix>_zero_variance.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[Row]] = result["runs"]
    start = result["aggregate"].get(base, {})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), dpi=80)
    for i, (name, rows) in enumerate(runs.items()):
        if name == base or not rows:
            continue
        _plot_step_mean(axes[2], [r["path"].get("reward_iou") or [] for r in rows], colours[i % len(colours)],
                        name)
        split = rows[0].get("curve_split")
        for ax, key in zip(axes[:2], ("eval/A@0.5", "eval/sampled/A@0.5"), strict=True):
            steps, means = _mean_curve(rows, key)
            first = (start.get(key) or {}).get("mean")
            if first is not None and split is None:
                steps, means = [0, *steps], [first, *means]
            ax.plot(steps, means, marker="o", color=colours[i % len(colours)],
                    linestyle="--" if split else "-", label=f"{name} ({split})" if split else name)
    for ax, what in zip(axes[:2], ("greedy", "sampled pass@1"), strict=True):
        ax.set(title=f"held-out A@0.5, {what} (%)", xlabel="step")
    axes[2].set(title="sampled IoU on each step's fresh images", xlabel="GRPO step")
    axes[1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    curves = Path(f"{prefix}_curves.png")
    fig.savefig(curves)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    for i, (name, rows) in enumerate(runs.items()):
        _plot_step_mean(ax, [r["path"]["zero_variance"] for r in rows], colours[i % len(colours)], name)
    ax.set(title="zero-variance group fraction (mean over seeds)", xlabel="GRPO step", ylim=(0, 1))
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    zero = Path(f"{prefix}_zero_variance.png")
    fig.savefig(zero)
    plt.close(fig)
    return [curves, zero]
