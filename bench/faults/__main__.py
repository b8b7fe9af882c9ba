"""Faults survived with nothing lost (issue 21): for each fault, the time to detect it, the time to recover
(or to stop cleanly), the requests lost (must be 0) and the steps that must be run again.

Real components on this machine, the tiny Qwen2.5-VL model: vLLM rollout workers, the reward actor, the
DeepSpeed learner, `medground train` processes, and for the lost node a two-node Ray cluster (a head and a
second `ray start --address` node on this machine). Requests lost: requests unanswered, or answered
differently from the same call without the fault (every request carries its own sampling seed, so the
answers must be identical); for the driver kills: the resumed run's rewards, tau and loss against the
uninterrupted run's. The faults: bench/faults/actors.py (inside one driver) and processes.py (a node, the
driver itself); the process, cluster and input helpers are shared with the fault tests
(tests/integration/test_faults_*.py).

Writes bench/results/faults.json with the machine. Usage: python -m bench.faults [--only NAME ...]
(`make bench-faults`; ~15 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import machine
from bench.faults.rows import Row, table

OUT = machine.results_path("faults")
WORK = Path("runs") / "bench" / "faults"
NAMES = ("rollout", "reward", "learner", "node", "driver")


def _inputs() -> tuple[Path, Path, dict[str, Path]]:
    """The tiny model, a synthetic data set and three adapters (two of rank 8, one of rank 16)."""
    from bench.faults.inputs import make_lora_adapter
    from services.data.synth import make_spec, write_dataset
    from services.models.tiny import build_model_dir

    model = WORK / "tiny-qwen2_5_vl"
    if not (model / "config.json").is_file():
        build_model_dir(model, "qwen2_5_vl", "tiny", seed=0)
    manifest = WORK / "data" / "manifest.jsonl"
    if not manifest.is_file():
        write_dataset(make_spec("demo", splits={"train": 24, "val": 4, "test": 0}), manifest.parent, seed=0,
                      manifest_name=manifest.name)
    adapters = {name: WORK / "adapters" / name for name in ("v1", "v2", "r16")}
    if not (adapters["v1"] / "adapter_config.json").is_file():
        make_lora_adapter(model, adapters["v1"], seed=1)
        make_lora_adapter(model, adapters["v2"], seed=2)
        make_lora_adapter(model, adapters["r16"], seed=3, rank=16)  # refused: the engines' max_lora_rank is 8
    return model, manifest, adapters


def main(argv: list[str] | None = None) -> Row:
    import logging

    import ray

    from bench.faults.actors import learner_rank, reward_hang, rollout_faults
    from bench.faults.processes import driver_kills, lost_node

    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=NAMES, default=list(NAMES), help="which faults to run")
    parser.add_argument("--rows-out", type=Path, help=argparse.SUPPRESS)  # the lost-node child's rows
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    started, record = time.time(), machine.start()
    model, manifest, adapters = _inputs()
    rows: list[Row] = []
    if {"rollout", "reward", "learner"} & set(args.only):
        temp = machine.start_ray()
        try:
            if "rollout" in args.only:
                rows += rollout_faults(model, adapters)
            if "reward" in args.only:
                rows.append(reward_hang())
            if "learner" in args.only:
                rows.append(learner_rank(model, manifest, WORK))
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
    if "node" in args.only and args.only != ["node"]:
        # its own process: a process keeps the auth token of the first Ray it joined, so after the local
        # Ray above it cannot join the two-node cluster's
        out = WORK / "node_rows.json"
        subprocess.run([sys.executable, "-m", "bench.faults", "--only", "node", "--rows-out", str(out)],
                       check=True)
        rows += json.loads(out.read_text())
    elif "node" in args.only:
        rows.append(lost_node(model))
        if args.rows_out is not None:
            args.rows_out.write_text(json.dumps(rows))
            return {"rows": rows}
    if "driver" in args.only:
        rows += driver_kills(model, manifest, WORK / "driver")
    hung = next((r for r in rows if r["fault"] == "rollout worker hung"), None)
    result: Row = {
        "description": __doc__.split("\n\n")[0].replace("\n", " "), "rows": rows, "table": table(rows),
        "acceptance": {"requests_lost_all_zero": all(r["requests_lost"] == 0 for r in rows),
                       "hung_worker_detected_within_deadline_plus_10s": None if hung is None
                       else hung["within_deadline_plus_10s"]},
        "wall_s": time.time() - started, "machine": machine.finish(record)}
    machine.write_json(result, OUT)
    print(result["table"])
    print(f"wrote {OUT} ({result['wall_s'] / 60:.1f} min; {machine.describe(record)})")
    return result


if __name__ == "__main__":
    main()
