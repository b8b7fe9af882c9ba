"""`python -m bench`: which names it runs, and that `--all` takes only the quick benchmarks."""

from __future__ import annotations

import importlib.util

from bench.__main__ import LONG, available


def test_every_name_is_a_runnable_module_and_the_tools_are_not_names() -> None:
    modules = available()
    for module in modules.values():
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        package = spec.submodule_search_locations is not None
        assert not package or importlib.util.find_spec(f"{module}.__main__"), module
    assert {"rewards", "faults", "medloc_ablation", "mlae_vs_lora", "vrft_aug"} <= set(modules)
    assert modules["faults"] == "bench.faults" and modules["vrft_aug"] == "bench.studies.vrft_aug"
    # shared code and tools that need arguments measure nothing on their own (`--all` once ran compare_runs)
    assert not {"machine", "runner", "arms", "check", "compare_runs", "_turns", "studies"} & set(modules)


def test_all_leaves_out_the_studies_and_the_long_benchmarks() -> None:
    quick = [n for n, m in available().items() if n not in LONG and not m.startswith("bench.studies.")]
    assert set(quick) == {"mlae", "rewards", "rollout", "serve_load", "sparsity", "step"}

