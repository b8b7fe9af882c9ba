"""VRFT-Aug's perception-driven refinement on real components (slow tier; the same stage switch against
fakes: tests/unit/services/test_train_loop.py): a classification GRPO stage continues from the grounding
stage's adapter (the version keeps counting) and is scored with label rewards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from run_configs import run_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_curriculum_grounding_then_classification(lend_pool: Callable[..., Any], tiny_model_dir: Path,
                                                  tmp_path: Path) -> None:
    from services.data.synth import make_spec, write_dataset
    from services.training import train_loop

    manifest = write_dataset(make_spec("demo", splits={"train": 8, "val": 2, "test": 0},
                                       tasks=["grounding", "classification"]),
                             tmp_path / "data", seed=0, manifest_name="manifest.jsonl")
    cfg = run_config(tiny_model_dir, manifest, tmp_path / "runs", **{
        "stages": [{"name": "ground", "kind": "grpo", "steps": 1, "prompts_per_step": 2, "refill_cap": 0},
                   {"name": "classify", "kind": "grpo", "steps": 1, "prompts_per_step": 2, "refill_cap": 0,
                    "task": "classification"}],
        "learner": {"num_ranks": 1, "cpus_per_rank": 0.25, "micro_batch_size": 4},
        "eval": {"every": 0, "max_samples": 4, "overlays": 0}, "checkpoint": {"every": 0}})
    rows: list[dict[str, Any]] = []
    train_loop.run(cfg, on_step=lambda step, row: rows.append(row), start=lend_pool)
    assert [r["stage"] for r in rows] == ["ground", "classify"]
    # the classification stage sampled with the adapter the grounding stage pushed
    assert rows[1]["batch/adapter_version_min"] == rows[0]["adapter_version"] >= 1
    assert rows[1]["adapter_version"] == rows[0]["adapter_version"] + 1
    assert "eval/cls/accuracy" in rows[1] and "eval/A@0.5" in rows[1]  # the held-out split mixes both tasks
