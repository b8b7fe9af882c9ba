"""Does a fresh study run match the committed one within the seeds' spread?

    python -m bench.studies.check bench/results/medloc_ablation_conditions.json /tmp/fresh.json [--abs-tol 3]

Compares every arm's headline metrics (the study's table columns present in both) and exits 1 on a
mismatch. With one seed the spread is 0, so `--abs-tol` (in the metric's units: percent points for A@t,
IoU for mIoU) sets the allowance; with deterministic sampling the figures repeat up to CPU float noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.studies.arms import compare

KEYS = ("eval/A@0.5", "eval/A@0.8", "eval/pseudo_mAP", "eval/mIoU", "eval/grade/accuracy",
        "eval/grade/mean_abs_grade_error", "zero_variance_fraction", "tau_final")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("committed", type=Path)
    parser.add_argument("fresh", type=Path)
    parser.add_argument("--abs-tol", type=float, default=0.0,
                        help="smallest allowed difference (metric units)")
    parser.add_argument("--out", type=Path,
                        help="also write the verdict as JSON (to commit next to the results)")
    args = parser.parse_args()
    old, new = json.loads(args.committed.read_text()), json.loads(args.fresh.read_text())
    bad = compare(old, new, KEYS, args.abs_tol)
    for line in bad:
        print("MISMATCH", line)
    verdict = "match within the seeds' spread" if not bad else f"{len(bad)} cells differ"
    print(verdict)
    if args.out:
        args.out.write_text(json.dumps({
            "committed": str(args.committed), "fresh": str(args.fresh), "abs_tol": args.abs_tol,
            "keys": list(KEYS),
            "verdict": verdict, "mismatches": bad,
            "fresh_wall_s_total": new.get("wall_s_total"), "freshload_before": load_before(new),
        }, indent=1) + "\n")
    return 1 if bad else 0


def load_before(result: dict[str, object]) -> object:
    """The load average at a study's start: in its machine record (bench/machine.py), or at the top level
    in results written before that record existed (where `machine` was a one-line string)."""
    record = result.get("machine")
    return record.get("load_before") if isinstance(record, dict) else result.get("loadavg_1_5_15")


if __name__ == "__main__":
    sys.exit(main())
