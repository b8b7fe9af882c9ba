"""Zero, one or many boxes end to end on real components (issue 31): on synthetic images with 0-3 lesions
(normals included), an SFT warm start on list answers (`[]` for the normals), then GRPO with the set reward
through the shared vLLM pool and a DeepSpeed learner, evaluated with the set metrics. The reward, parsing
and metrics are checked by value in tests/unit; this checks that the pieces run together."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from run_configs import run_config

pytestmark = pytest.mark.integration


def test_sft_then_grpo_on_multi_lesion_data_with_normals(lend_pool: Callable[..., Any], tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    from services.data import load_manifest
    from services.data.synth import make_spec, write_dataset
    from services.evaluation import eval_files
    from services.training import train_loop

    spec = make_spec("multibox", splits={"train": 8, "val": 4, "test": 0})
    manifest = write_dataset(spec, tmp_path / "data", seed=0, manifest_name="manifest.jsonl")
    records = load_manifest(manifest).records
    assert any(r.is_negative for r in records) and any(len(r.boxes) >= 2 for r in records)
    cfg = run_config(tiny_model_dir, manifest, tmp_path / "runs", **{
        "stages": [{"name": "warmup", "kind": "sft", "steps": 1, "prompts_per_step": 8, "lr": 1e-3,
                    "multi_box": True},
                   {"name": "sets", "kind": "grpo", "steps": 1, "prompts_per_step": 2, "refill_cap": 0,
                    "drop_zero_variance": False, "multi_box": True}],
        "reward": {"boxes": "set", "accuracy": "medloc", "w_recite": 0.0},
        "learner": {"num_ranks": 1, "cpus_per_rank": 0.25, "micro_batch_size": 4, "lr": 1e-3},
        "eval": {"every": 0, "max_samples": 4, "overlays": 2, "samples": 1}, "checkpoint": {"every": 0}})
    rows: list[dict[str, Any]] = []
    run_dir = train_loop.run(cfg, on_step=lambda step, row: rows.append(row), start=lend_pool)
    assert [r["stage"] for r in rows] == ["warmup", "sets"]
    assert rows[0]["learner/loss"] > 0.0  # SFT on list answers, the normals' `[]` among them (all 8 records)
    # the GRPO step ran (12-token completions of a random model rarely parse: its advantages may all be 0)
    assert "learner/loss" in rows[1] and rows[1]["adapter_version"] == 2
    assert 0.0 <= rows[1]["reward/acc"] <= 1.0
    assert rows[-1]["eval/sets/n"] == 4
    assert "eval/sets/miss_rate" in rows[-1] or "eval/sets/fp_rate" in rows[-1]
    lines = [json.loads(x) for x in eval_files(run_dir)[-1].read_text().splitlines()]
    assert len(lines) == 4 and all("sampled_iou" in x for x in lines)
    assert len(list((run_dir / "samples").glob("step-*/*.png"))) == 4
