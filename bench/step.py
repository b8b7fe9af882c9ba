"""Per-phase time of a training step on the demo config, and the orchestration overhead.

Runs a shortened demo (`deploy/configs/demo.yaml` with few steps, same model, data, batch and G) on the
embedded Ray, then reads the run's metrics: generate, reward, learner, sync (adapter export + hot-load)
and everything else. Orchestration overhead = (step - generate - reward scoring - learner) / step.
Writes bench/results/step.json. Usage: python -m bench.step [--grpo-steps N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

from bench import _machine as machine

PHASES = ("time/generate_s", "time/reward_s", "time/learner_s", "time/sync_s", "time/other_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grpo-steps", type=int, default=6)
    args = parser.parse_args()
    from services.launch import demo
    from services.metrics import read_metrics

    record = machine.start()
    run_dir = Path("runs") / "bench-step"
    shutil.rmtree(run_dir, ignore_errors=True)
    demo(["name=bench-step", f"stages.0.steps={args.grpo_steps}",
          "eval.every=0", "eval.max_samples=8", "checkpoint.every=0"])
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "time/step_s" in r]
    result: dict[str, object] = {"config": "deploy/configs/demo.yaml (shortened)"}
    print(f"{'stage':10s} {'phase':18s} {'median s':>9s} {'share':>7s}")
    for stage in dict.fromkeys(r["stage"] for r in rows):
        steps = [r for r in rows if r["stage"] == stage and "eval/A@0.5" not in r][1:]  # skip the first (warm-up)
        if not steps:
            continue
        total = statistics.median(r["time/step_s"] for r in steps)
        med = {p: statistics.median(r.get(p, 0.0) for r in steps) for p in PHASES}
        overhead = statistics.median(
            (r["time/step_s"] - r.get("time/generate_s", 0.0) - r.get("time/reward_s", 0.0)
             - r.get("time/learner_s", 0.0)) / r["time/step_s"] for r in steps)
        for p in PHASES:
            print(f"{stage:10s} {p:18s} {med[p]:9.3f} {med[p] / total:7.1%}")
        print(f"{stage:10s} {'step':18s} {total:9.3f}   orchestration overhead {overhead:.1%} (target < 10 %)")
        result[stage] = {"steps": len(steps), "step_s": total, "phases_s": med, "orchestration_overhead": overhead}
    result["machine"] = machine.finish(record)
    print(f"wrote {machine.write_json(result, machine.results_path('step'))}")


if __name__ == "__main__":
    main()
