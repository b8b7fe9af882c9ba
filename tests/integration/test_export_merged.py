"""`medground export RUN --merged OUT`: the merged model gives the same greedy answers as the base model with
the run's adapter, in transformers and in vLLM (without LoRA), through the rollout worker that eval and
serve use; and it is a plain model directory (no adapter files, the base's tokenizer and processor)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench.faults.inputs import requests
from rollout.config import RolloutConfig, SamplingConfig
from rollout.core import RolloutWorkerCore
from rollout.engines import AdapterSpec
from services.cli import app

pytestmark = pytest.mark.integration
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=16)
ALL_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose final adapter is a trained-looking MLAE adapter on attention and MLP."""
    from transformers import AutoModelForImageTextToText

    from learner.config import MLAEConfig
    from learner.export import export_lora
    from learner.mlae import apply_mlae

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = apply_mlae(AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32),
                       MLAEConfig(target_modules=ALL_PROJ))
    with torch.no_grad():  # B starts at zero and would change nothing
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    export_lora(model.eval(), version=4).save(run / "adapter")
    (run / "resolved_config.json").write_text(json.dumps({
        "model": {"path": str(tiny_model_dir)}, "data": {"manifest": "unused.jsonl"},
        "stages": [{"name": "g", "kind": "grpo", "steps": 1}]}))
    return run


@pytest.fixture(scope="module")
def merged_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "model"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--merged", str(out)])
    assert result.exit_code == 0, result.output
    assert "adapter v4 (final)" in result.output
    return out


def _answers(model_dir: Path, engine: str,
             adapter: Path | None) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    core = RolloutWorkerCore(model_dir, RolloutConfig(engine=engine, max_model_len=512,  # type: ignore[arg-type]
                                                      engine_in_process=False))
    try:
        if adapter is not None:
            core.load_adapter(AdapterSpec(4, str(adapter)))
        groups = core.generate(requests(3), n=1, sampling=GREEDY)
    finally:
        core.close()
    return [(g.completions[0].token_ids, g.completions[0].logprobs) for g in groups]


def test_merged_directory_is_a_plain_model(merged_dir: Path, tiny_model_dir: Path) -> None:
    names = {p.name for p in merged_dir.iterdir()}
    assert "model.safetensors" in names and "adapter_config.json" not in names
    assert {"tokenizer.json", "chat_template.jinja", "processor_config.json",
            "generation_config.json"} <= names
    info = json.loads((merged_dir / "medground_model.json").read_text())
    assert info["merged_from"]["adapter_version"] == 4 and info["family"] == "qwen2_5_vl"
    assert json.loads((merged_dir / "config.json").read_text())["model_type"] == "qwen2_5_vl"


# transformers proves the weights equal the adapter path's; vLLM loading the merged directory (a plain model
# directory, as every engine test loads) is the slow tier's: its two engine starts cost ~40 s.
@pytest.mark.parametrize("engine", ["hf", pytest.param("vllm", marks=pytest.mark.slow)])
def test_merged_greedy_answers_equal_the_adapter_path(engine: str, merged_dir: Path, run_dir: Path,
                                                      tiny_model_dir: Path) -> None:
    with_adapter = _answers(tiny_model_dir, engine, run_dir / "adapter")
    merged = _answers(merged_dir, engine, None)
    for (tokens_a, logp_a), (tokens_m, logp_m) in zip(with_adapter, merged, strict=True):
        assert tokens_m == tokens_a
        np.testing.assert_allclose(logp_m, logp_a, atol=1e-4)
    if engine == "hf":  # the adapter is really in the merged weights (one engine suffices: vLLM costs ~20 s)
        base = _answers(tiny_model_dir, engine, None)
        assert [t for t, _ in base] != [t for t, _ in merged]


def test_export_refuses_to_overwrite(run_dir: Path, merged_dir: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(run_dir), "--merged", str(merged_dir)])
    assert result.exit_code == 1 and "not empty" in result.output
    missing = CliRunner().invoke(app, ["export", str(run_dir / "nope"), "--merged", str(run_dir / "m2")])
    assert missing.exit_code == 1 and "not a run directory" in missing.output
