"""Run benchmarks: `python -m bench --all` or `python -m bench rewards sparsity ...`.

Each benchmark is its own module (`bench/<name>.py`, or a package `bench/<name>/` with a `__main__.py`) that
prints a table and writes `bench/results/<name>.json`; they run one after another, never side by side
(2-core machines). A study (`bench/studies/<name>.py`) runs by its name too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = {"__init__", "__main__", "machine"}  # bench/'s own code, not a benchmark
TOOLS = {"__init__", "runner", "arms", "check", "compare_runs"}  # the studies' framework and tools
# Training studies (arms x seeds, 15 min to 2 h on 2 cores), vs_trl (~10 min, needs the `bench` extra),
# shapes (real-width models, ~15 min and up to ~10 GB), faults (~15 min of runs, clusters and kills) and
# sparse_gate (builds a pretrained base when missing), learner (its 3B-cut case: ~7 min and ~19 GB) and
# serve_latency (needs the demo's model or run: `make demo` first): run by name or their make targets, not by
# --all.
LONG = {"vs_trl", "shapes", "faults", "sparse_gate", "learner", "serve_latency"}


def available() -> dict[str, str]:
    """Every runnable name and its module: the benchmarks, then the studies."""
    found = {p.stem: f"bench.{p.stem}" for p in HERE.glob("*.py")
             if p.stem not in SHARED and not p.stem.startswith("_")}
    found |= {p.parent.name: f"bench.{p.parent.name}" for p in HERE.glob("*/__main__.py")}
    studies = {p.stem: f"bench.studies.{p.stem}" for p in (HERE / "studies").glob("*.py")
               if p.stem not in TOOLS}
    return dict(sorted(found.items())) | dict(sorted(studies.items()))


def main() -> int:
    modules = available()
    quick = [n for n, m in modules.items() if n not in LONG and not m.startswith("bench.studies.")]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks or studies to run: {', '.join(modules)}")
    parser.add_argument("--all", action="store_true", help=f"run the quick benchmarks: {', '.join(quick)}")
    args = parser.parse_args()
    names = quick if args.all else args.names
    unknown = sorted(set(names) - set(modules))
    if unknown or not names:
        parser.error(f"unknown or no benchmarks {unknown}; choose from {', '.join(modules)} or --all")
    failed = []
    for name in names:
        start = time.perf_counter()
        print(f"== {modules[name]}", flush=True)
        code = subprocess.call([sys.executable, "-m", modules[name]])
        print(f"== {modules[name]}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
