"""Configs of the integration tests' shared engines (conftest.py): the run config of the tests that train on
the shared rollout pool (`lend_pool`: every such run has exactly this rollout section and knowledge, which
the pool was started with), and the engine-level tests' vLLM engine (`shared_vllm_core`). Not collected (no
test_ prefix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.config import RunConfig

# What the shared pool runs: 2 vLLM workers of the tiny Qwen2.5-VL, G = 4, short completions at T = 1.
ROLLOUT: dict[str, Any] = {"group_size": 4, "max_model_len": 512,
                           "sampling": {"temperature": 1.0, "max_new_tokens": 12}}
POOL: dict[str, Any] = {"num_workers": 2, "cpus_per_worker": 0.25}

# The engine-level tests' vLLM engine. Its core runs in a child process: in-process it would bind this pytest
# process's threads to cores and freeze vLLM's settings, which slows and breaks later engines of the session
# (worker actors, each a process of its own, use the in-process default).
ENGINE: dict[str, Any] = {"max_model_len": 512, "engine_in_process": False}
# The knowledge entry that `bench.faults.inputs.requests(..., knowledge=True)` asks for.
KNOWLEDGE_YAML = """\
version: 1
entries:
  chest_xray/nodule:
    modality: chest x-ray
    finding: nodule
    appearance: A small round well defined opacity.
    location: the upper lung zones
"""


def run_config(model: Path, manifest: Path, out: Path, **over: Any) -> RunConfig:
    """A short SFT + GRPO run on the shared pool's rollout section; `over` replaces top-level sections."""
    tree: dict[str, Any] = {
        "name": "it", "seed": 0, "output_dir": str(out),
        "model": {"path": str(model), "family": "qwen2_5_vl"},
        "data": {"manifest": str(manifest)},
        "stages": [{"name": "warmup", "kind": "sft", "steps": 2, "prompts_per_step": 4, "lr": 1e-3},
                   {"name": "grounding", "kind": "grpo", "steps": 3, "prompts_per_step": 2, "refill_cap": 1}],
        "rollout": ROLLOUT, "pool": POOL,
        "learner": {"num_ranks": 2, "cpus_per_rank": 0.25, "micro_batch_size": 4, "lr": 1e-3},
        "reward": {"accuracy": "raw_iou"},
        "eval": {"every": 0, "max_samples": 4, "overlays": 2},
        "checkpoint": {"every": 3, "keep": 3},
    }
    tree.update(over)
    return RunConfig.model_validate(tree)
