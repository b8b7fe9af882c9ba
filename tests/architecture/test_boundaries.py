"""Package boundaries: pure modules import with ray, vllm and deepspeed unavailable; import-linter holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# The Ray edges: the only modules of the three packages that import ray at module level. Everything else,
# the engines included (they import vllm, deepspeed or transformers inside the functions that need them),
# must import on a machine without ray, vllm and deepspeed.
RAY_EDGES = {"rewards.actor", "rollout.worker", "learner.worker"}


def _pure_modules() -> list[str]:
    mods = []
    for pkg in ("rewards", "rollout", "learner"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            if mod not in RAY_EDGES:
                mods.append(mod)
    return mods


# `sys.modules[name] = None` is how Python spells "not installed": `import name` raises ImportError
# and `importlib.util.find_spec(name)` returns None, so libraries that probe for optional packages
# (transformers probes deepspeed) behave exactly as on a machine without them.
BLOCKER = """
import sys
for name in ('ray', 'vllm', 'deepspeed'):
    sys.modules[name] = None
import importlib
for mod in sys.argv[1:]:
    importlib.import_module(mod)
print('ok')
"""


def test_pure_modules_import_without_ray_vllm_deepspeed() -> None:
    mods = _pure_modules()
    assert {"rewards", "rollout.engine_vllm", "learner.engine", "learner.checkpoint"} <= set(mods)
    assert {f"{p.parent.name}.{p.stem}"
            for p in ROOT.glob("*/*.py")} >= RAY_EDGES, "an edge module was renamed"
    proc = subprocess.run([sys.executable, "-c", BLOCKER, *mods], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_rewards_package_import_is_light() -> None:
    """`import rewards` must not pull torch either: users import it in plain reward scripts."""
    code = "import sys, rewards; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("tool", ["lint-imports"])
def test_import_linter_contracts_hold(tool: str) -> None:
    exe = Path(sys.executable).parent / tool
    proc = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
