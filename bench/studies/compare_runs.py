"""Two training runs on the same held-out images, side by side: start and end held-out metrics with their
standard errors, each run's paired start-to-end change, the paired end-to-end difference between the runs,
and the training reward per step (a before/after figure for a change to training behaviour, or a parity
check such as `max_staleness` 0 vs 1 on the demo config).

Usage: python -m bench.studies.compare_runs RUN_A RUN_B --labels A,B --out bench/results/NAME
Writes NAME.json and NAME.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DIGITS = {"A@0.3": 1, "A@0.5": 1, "A@0.8": 1, "mIoU": 3}  # the metrics of eval_metrics.PAIRED_METRICS
CURVES = ("reward/acc", "reward/iou", "tau/value")


def held_out(run: Path) -> tuple[int, dict[str, float], dict[str, float]]:
    """A run's last evaluated step and the per-image IoUs (by record id) of its first and last evaluation."""
    from services.evaluation import eval_files, read_ious

    if not run.is_dir():
        raise SystemExit(f"{run} is not a run directory (it does not exist); pass runs/<name> of a finished "
                         "run")
    files = eval_files(run)
    if len(files) < 2:
        raise SystemExit(f"{run} has {len(files)} held-out evaluation(s); a comparison needs its start and "
                         "end")
    return int(files[-1].stem.removeprefix("step-")), read_ious(files[0]), read_ious(files[-1])


def compare(runs: dict[str, Path]) -> dict[str, Any]:
    from services.evaluation.metrics import grounding_metrics, paired_changes

    out: dict[str, Any] = {"runs": {}}
    ends: dict[str, dict[str, float]] = {}
    for label, run in runs.items():
        last, before, after = held_out(run)
        if before.keys() != after.keys():
            raise SystemExit(f"{run}: the start and end evaluations cover different images")
        start, end = (grounding_metrics(list(x.values()), [True] * len(x)) for x in (before, after))
        row: dict[str, Any] = {"run": str(run), "held_out_images": len(before), "steps": last}
        for name, (mean, se) in paired_changes(before, after).items():
            row[name] = {"start": start[name], "start_se": start[f"{name}_se"], "end": end[name],
                         "end_se": end[f"{name}_se"], "change": mean, "change_se": se}
        out["runs"][label] = row
        ends[label] = after
    (a, b) = list(runs)
    if ends[a].keys() != ends[b].keys():
        raise SystemExit("the two runs were evaluated on different held-out images")
    out[f"{b} - {a} at the end (paired)"] = {
        name: {"difference": mean, "se": se} for name, (mean, se) in paired_changes(ends[a], ends[b]).items()}
    return out


def draw(runs: dict[str, Path], result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from services.training.metrics import read_metrics

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for label, run in runs.items():
        rows = [r for r in read_metrics(run / "metrics.jsonl") if "reward/acc" in r]
        for ax, key in zip(axes[:2], CURVES[:2], strict=True):
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=label, lw=1)
            ax.set_title(f"training {key}", fontsize=9)
    names = ["A@0.3", "A@0.5", "A@0.8"]
    width = 0.8 / (2 * len(runs))
    for k, (label, row) in enumerate(result["runs"].items()):
        for j, when in enumerate(("start", "end")):
            x = [i + (2 * k + j) * width for i in range(len(names))]
            axes[2].bar(x, [row[n][when] for n in names], width, yerr=[row[n][f"{when}_se"] for n in names],
                        label=f"{label} {when}", alpha=0.55 if when == "start" else 0.95)
    axes[2].set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    axes[2].set_title("held-out accuracy (%), ± 1 SE", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs=2, type=Path)
    parser.add_argument("--labels", default="A,B")
    parser.add_argument("--out", type=Path, required=True, help="path without suffix")
    args = parser.parse_args()
    labels = args.labels.split(",")
    if len(labels) != 2:
        parser.error(f"--labels needs two names separated by a comma, got {args.labels!r}")
    runs = dict(zip(labels, args.runs, strict=True))
    try:
        result = compare(runs)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    for label, row in result["runs"].items():
        print(f"{label} ({row['run']}, {row['held_out_images']} held-out images, {row['steps']} steps)")
        for name, d in DIGITS.items():
            m = row[name]
            print(f"  {name:6s} {m['start']:.{d}f} ± {m['start_se']:.{d}f} -> {m['end']:.{d}f} ± "
                  f"{m['end_se']:.{d}f}   change {m['change']:+.{d}f} ± {m['change_se']:.{d}f} (paired)")
    key = next(k for k in result if k.endswith("(paired)"))
    print(key + ": " + ", ".join(f"{n} {v['difference']:+.3g} ± {v['se']:.2g}" for n,
                                 v in result[key].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    draw(runs, result, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
