"""The training service end to end on CPU: 2 rollout workers (vLLM), the reward actor, a 2-rank DeepSpeed
learner, SFT then GRPO, checkpoints, and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.config import RunConfig
from services.metrics import read_metrics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.data.synth import make_spec, write_dataset

    out = tmp_path_factory.mktemp("data")
    spec = make_spec("demo", splits={"train": 24, "val": 4, "test": 0})
    return write_dataset(spec, out, seed=0, manifest_name="manifest.jsonl")


def _config(model: Path, manifest: Path, out: Path, **over: Any) -> RunConfig:
    tree: dict[str, Any] = {
        "name": "it", "seed": 0, "output_dir": str(out),
        "model": {"path": str(model), "family": "qwen2_5_vl"},
        "data": {"manifest": str(manifest)},
        "stages": [{"name": "warmup", "kind": "sft", "steps": 2, "prompts_per_step": 4, "lr": 1e-3},
                   {"name": "grounding", "kind": "grpo", "steps": 3, "prompts_per_step": 2, "refill_cap": 1}],
        "rollout": {"num_workers": 2, "group_size": 4, "cpus_per_worker": 0.25, "max_model_len": 512,
                    "sampling": {"temperature": 1.0, "max_new_tokens": 12}},
        "learner": {"num_ranks": 2, "cpus_per_rank": 0.25, "micro_batch_size": 4, "lr": 1e-3},
        "reward": {"accuracy": "raw_iou"},
        "eval": {"every": 0, "max_samples": 4, "overlays": 2},
        "checkpoint": {"every": 3, "keep": 3},
    }
    tree.update(over)
    return RunConfig.model_validate(tree)


def test_grpo_steps_push_each_adapter_to_every_worker(ray_local: None, tiny_model_dir: Path, demo_data: Path,
                                                      tmp_path: Path) -> None:
    from services import train_loop

    cfg = _config(tiny_model_dir, demo_data, tmp_path)
    rows: list[dict[str, Any]] = []
    run_dir = train_loop.run(cfg, on_step=lambda step, row: rows.append({"step": step, **row}))

    assert [r["stage"] for r in rows] == ["warmup"] * 2 + ["grounding"] * 3
    grpo = [r for r in rows if r["stage"] == "grounding"]
    # Each GRPO step pushes version v+1 after the step; the next step's groups were all sampled by it.
    for before, after in zip(grpo, grpo[1:], strict=False):
        assert after["batch/adapter_version_min"] == after["batch/adapter_version_max"] == before["adapter_version"]
    assert all(r["batch/adapter_version_lag"] == 0 for r in grpo)
    assert all(r["rollout/workers"] == 2 for r in rows)

    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert "eval/A@0.5" in metrics[0] and "eval/A@0.5" in metrics[-1]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "plots" / "reward.png").is_file()
    assert json.loads((run_dir / "resolved_config.json").read_text())["name"] == "it"
    assert list((run_dir / "samples").glob("step-*/*.png"))
