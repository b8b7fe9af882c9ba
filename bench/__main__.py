"""Run benchmarks: `python -m bench --all` or `python -m bench rewards sparsity ...`.

Each benchmark is its own module (`bench/<name>.py`) that prints a table and writes
`bench/results/<name>.json`; they run one after another, never side by side (2-core machines).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"__init__", "__main__", "check"}  # check compares two study results; it measures nothing
# Training studies (arms x seeds, 15 min to 2 h on 2 cores), vs_trl (~10 min, needs the `bench` extra),
# shapes (real-width models, ~15 min and up to ~10 GB), faults (~15 min of runs, clusters and kills) and
# learner (its 3B-cut case: ~7 min and ~19 GB): run by name or their make targets, not by --all.
STUDIES = {"medloc_ablation", "mlae_vs_lora", "vrft_aug", "vs_trl", "shapes", "faults", "learner"}


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in SKIP and not p.stem.startswith("_"))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(available())}")
    parser.add_argument("--all", action="store_true", help=f"run every benchmark but the studies {sorted(STUDIES)}")
    args = parser.parse_args()
    names = [n for n in available() if n not in STUDIES] if args.all else args.names
    unknown = sorted(set(names) - set(available()))
    if unknown or not names:
        parser.error(f"unknown or no benchmarks {unknown}; choose from {', '.join(available())} or --all")
    failed = []
    for name in names:
        start = time.perf_counter()
        print(f"== bench.{name}", flush=True)
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        print(f"== bench.{name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
