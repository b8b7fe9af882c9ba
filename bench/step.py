"""Per-phase time of a GRPO step on the demo config, synchronous and overlapped, and the orchestration
overhead.

Runs a shortened demo (`deploy/configs/demo.yaml`: same base, data, batch and G, few steps, no evaluation
or checkpoint in between) on the embedded Ray twice, with the CPU threads that fit each schedule:
- staleness 0 (`max_staleness=0`): generate, then learn; the phase that runs gets both cores
  (`rollout.torch_threads=2`, `learner.torch_threads=2`);
- staleness 1: the pool generates batch t+1 with adapter v while the learner takes step t; the cores are
  split (one thread each).
Reads each run's `timeline.jsonl` (every phase's interval, driver and producer threads) and reports the
median step, the phases, and the orchestration overhead: the share of a step's wall time in which no
generate, reward-scoring or learner interval is running (`busy_share`). Draws the phases over time of both
runs (bench/results/step_timeline.png). Writes bench/results/step.json.
Usage: python -m bench.step [--grpo-steps N] [--cores N] [--overlap-threads R,L] [--only 0|1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import machine

WORK = ("generate", "reward", "learner")  # the phases that do the step's work; the rest is orchestration
COLOURS = {"generate": "tab:blue", "reward": "tab:orange", "learner": "tab:green", "sync": "tab:red",
           "wait": "lightgrey", "eval": "tab:purple"}


def busy_share(start: float, end: float, spans: Sequence[Sequence[Any]]) -> float:
    """The fraction of [start, end] covered by at least one span of a work phase (any lane), intervals
    clipped to the window and merged."""
    cuts = sorted((max(s[2], start), min(s[3], end)) for s in spans if s[1] in WORK
                  and s[3] > start and s[2] < end)
    covered, reach = 0.0, start
    for lo, hi in cuts:
        lo = max(lo, reach)
        if hi > lo:
            covered, reach = covered + hi - lo, hi
    return covered / max(end - start, 1e-9)


def run(name: str, staleness: int, threads: tuple[int, int], steps: int) -> dict[str, Any]:
    """One shortened demo; returns its steady-state steps (the first and the final-evaluation step left
    out)."""
    from services.data.jsonl import jsonl_values
    from services.training.demo import demo
    from services.training.metrics import read_metrics

    run_dir = Path("runs") / name
    shutil.rmtree(run_dir, ignore_errors=True)
    demo([f"name={name}", f"stages.0.steps={steps}", "eval.every=0", "eval.max_samples=8",
          "checkpoint.every=0",
          f"max_staleness={staleness}", f"rollout.torch_threads={threads[0]}",
          f"learner.torch_threads={threads[1]}"])
    rows = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
    lines = jsonl_values(run_dir / "timeline.jsonl")
    steady = [t for t in lines[1:] if "time/eval_s" not in rows[t["step"]]]
    step_s = [t["end"] - t["start"] for t in steady]
    overhead = [1.0 - busy_share(t["start"], t["end"], [s for x in lines for s in x["spans"]])
                for t in steady]
    phases = {p: statistics.median(rows[t["step"]].get(f"time/{p}_s", 0.0) for t in steady)
              for p in ("wait", "generate", "reward", "learner", "sync")}
    return {"max_staleness": staleness, "rollout_torch_threads": threads[0],
            "learner_torch_threads": threads[1],
            "steps": len(steady), "step_s": statistics.median(step_s), "steps_s": step_s,
            "phases_s": phases, "orchestration_overhead": statistics.median(overhead),
            "staleness": [rows[t["step"]].get("batch/staleness") for t in steady], "timeline": lines}


def draw(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Phases over time, one panel per run, lanes: the driver thread and the producer (generation) thread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 1.8 * len(results) + 0.6), sharex=True)
    for ax, (name, r) in zip(axes, results.items(), strict=True):
        origin = r["timeline"][1]["start"]  # from the first steady step, for a few steps
        until = origin + sum(r["steps_s"][:4])
        for line in r["timeline"]:
            for lane, phase, t0, t1 in line["spans"]:
                if t1 < origin or t0 > until:
                    continue
                y = 1 if lane == "driver" else 0
                ax.broken_barh([(t0 - origin, t1 - t0)], (y - 0.35, 0.7), color=COLOURS.get(phase, "black"))
            if origin <= line["end"] <= until:
                ax.axvline(line["end"] - origin, color="black", lw=0.6, ls=":")
        ax.set_yticks([0, 1], ["producer", "driver"])
        ax.set_title(f"{name}: median step {r['step_s']:.2f} s, overhead {r['orchestration_overhead']:.1%}",
                     fontsize=9, loc="left")
        ax.set_xlim(0, until - origin)
    axes[-1].set_xlabel("seconds (dotted: step ends)")
    fig.legend(handles=[Patch(color=c, label=p) for p, c in COLOURS.items()], loc="upper right", ncol=6,
               fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grpo-steps", type=int, default=8)
    parser.add_argument("--cores", type=int, default=2,
                        help="threads of the phase that runs alone (staleness 0)")
    parser.add_argument("--overlap-threads", default=None, help="ROLLOUT,LEARNER threads with staleness 1 "
                        "(default: the cores split in half)")
    parser.add_argument("--only", choices=("0", "1"), default=None, help="run one schedule (writes nothing)")
    args = parser.parse_args()
    record = machine.start()
    half = max(args.cores // 2, 1)
    split = tuple(int(x) for x in args.overlap_threads.split(",")) if args.overlap_threads else (half, half)
    plan = {"staleness 0": ("bench-step-0", 0, (args.cores, args.cores)),
            "staleness 1": ("bench-step-1", 1, split)}
    results = {k: run(*v, args.grpo_steps) for k, v in plan.items() if args.only in (None, k[-1])}
    print(f"{'run':12s} {'step s':>7s} {'wait':>6s} {'generate':>9s} {'reward':>7s} {'learner':>8s} "
          f"{'sync':>6s} {'overhead':>9s}")
    for name, r in results.items():
        p = r["phases_s"]
        print(f"{name:12s} {r['step_s']:7.2f} {p['wait']:6.2f} {p['generate']:9.2f} {p['reward']:7.3f} "
              f"{p['learner']:8.2f} {p['sync']:6.2f} {r['orchestration_overhead']:9.1%}")
    if args.only:
        return
    speedup = results["staleness 0"]["step_s"] / results["staleness 1"]["step_s"]
    print(f"overlap: {speedup:.2f}x the synchronous step rate (orchestration overhead target < 5 %)")
    picture = machine.results_path("step_timeline", suffix=".png")
    draw(results, picture)
    out: dict[str,
              Any] = {"config": "deploy/configs/demo.yaml (shortened: no eval or checkpoint between steps)",
                           "overhead": "share of the step with no generate, reward or learner interval "
                                       "running",
                           "speedup_overlap": speedup, "picture": str(picture),
                           **{k: {x: y for x, y in r.items() if x != "timeline"} for k, r in results.items()},
                           "machine": machine.finish(record)}
    print(f"wrote {machine.write_json(out, machine.results_path('step'))} and {picture}")


if __name__ == "__main__":
    main()
