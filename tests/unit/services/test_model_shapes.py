"""Real model shapes: the configs `init-model --shape` writes have the released checkpoints' parameter counts,
depth truncation keeps the widths, LoRA bytes computed from shapes match an exported adapter, and a run
whose model.family disagrees with its model directory is refused with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from services.cli import app
from services.config import ConfigError, RunConfig
from services.models.shapes import REAL, lora_bytes, small_shape, truncated
from services.models.tiny import SPECIAL_TOKENS, model_config, resolve_shape
from services.training.launch import check_family

IDS = {t: 151643 + i for i, t in enumerate(SPECIAL_TOKENS)}  # the released special-token ids

# Parameter counts of the released checkpoints (their model cards: 3.75B, 8.29B, 2.13B, 4.44B, 8.77B); the
# Qwen2.5-VL ones are exact to the parameter.
RELEASED = {"qwen2_5_vl_3b": 3_754_622_976, "qwen2_5_vl_7b": 8_292_166_656, "qwen3_vl_2b": 2.13e9,
            "qwen3_vl_4b": 4.44e9, "qwen3_vl_8b": 8.77e9}


def _meta_model(shape_name: str, layers: int | None = None):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):  # shapes only: no memory, no init
        return AutoModelForImageTextToText.from_config(model_config(truncated(REAL[shape_name], layers), IDS))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(REAL))
def test_real_shapes_have_the_released_parameter_counts(name: str) -> None:
    model = _meta_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(RELEASED[name], rel=5e-3 if name.startswith("qwen3") else 0)
    text = model.config.text_config
    assert text.hidden_size // text.num_attention_heads == 128 or text.head_dim == 128
    assert model.config.model_type == REAL[name].family  # type: ignore[index]


def test_truncation_keeps_widths_and_module_names() -> None:
    full, cut = _meta_model("qwen2_5_vl_3b"), _meta_model("qwen2_5_vl_3b", layers=2)
    shapes = {n: p.shape for n, p in cut.named_parameters()}
    assert all(full.get_parameter(n).shape == s for n, s in shapes.items())  # every kept tensor as released
    assert cut.config.text_config.num_hidden_layers == 2
    shape = truncated(REAL["qwen2_5_vl_3b"], 2, 2)
    assert shape.vision_special == (1,)  # no full-attention block left below 2: the last one becomes one
    assert truncated(REAL["qwen3_vl_4b"], vision_layers=12).vision_special == (5, 11)
    with pytest.raises(ValueError, match="between 1 and the shape's 36 text layers"):
        truncated(REAL["qwen2_5_vl_3b"], 37)


def test_lora_bytes_from_shapes_match_a_real_adapter() -> None:
    from peft import LoraConfig, get_peft_model

    from learner.mlae import language_model_targets
    from rollout.images import FAMILIES

    model = _meta_model("qwen2_5_vl_7b", layers=1)
    targets = language_model_targets(model, FAMILIES["qwen2_5_vl"].lora_modules)
    peft_model = get_peft_model(model, LoraConfig(r=16, target_modules=targets))
    values = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert values * 4 == lora_bytes(truncated(REAL["qwen2_5_vl_7b"], 1), 16)
    # at the real depth: 28 layers x one layer's adapter
    assert lora_bytes(REAL["qwen2_5_vl_7b"], 16) == 28 * values * 4


def test_tokenizer_choice_follows_the_shape() -> None:
    assert resolve_shape(shape="qwen3_vl_2b")[1] == "qwen"
    assert resolve_shape("qwen3_vl", "tiny")[1] == "bpe"
    shape, kind = resolve_shape("qwen3_vl", "tiny", tokenizer="qwen")
    assert kind == "qwen" and shape.vocab == 151936 and shape.hidden == small_shape("qwen3_vl", "tiny").hidden
    with pytest.raises(ValueError, match="use --tokenizer qwen"):
        resolve_shape(shape="qwen2_5_vl_3b", tokenizer="bpe")


def test_init_model_options_name_the_fix(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in ((["--tiny", "--shape", "qwen3_vl_4b"], "not both"),
                          (["--shape", "qwen9_vl"], "choose one of qwen2_5_vl_3b"),
                          (["--shape", "qwen3_vl_4b", "--family", "qwen2_vl"], "drop --family"),
                          (["--tiny", "--family", "qwen4"], "qwen2_5_vl, qwen2_vl or qwen3_vl"),
                          (["--shape", "qwen3_vl_2b", "--layers", "0"], "--layers 0 must be between 1")):
        result = runner.invoke(app, ["init-model", str(tmp_path / "m"), *args])
        assert result.exit_code == 1 and message in result.output, (args, result.output)


def test_run_refuses_a_model_of_another_family(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    tree = {"model": {"path": str(tmp_path), "family": "qwen2_5_vl"}, "data": {"manifest": "m.jsonl"},
            "stages": [{"name": "s", "kind": "sft", "steps": 1}]}
    with pytest.raises(ConfigError, match=r"set model\.family: qwen3_vl"):
        check_family(RunConfig.model_validate(tree))
    tree["model"]["family"] = "qwen3_vl"  # type: ignore[index]
    check_family(RunConfig.model_validate(tree))
    tree["model"]["path"] = str(tmp_path / "not-built")  # type: ignore[index]
    check_family(RunConfig.model_validate(tree))  # nothing to compare yet


def test_the_tiny_tokenizer_corpus_reads_the_shipped_knowledge() -> None:
    """The tiny BPE is trained on the knowledge texts of this checkout: a moved module that lost the path
    would silently build another tokenizer (and another demo base)."""
    from services.models.tiny import KNOWLEDGE_DIR

    assert KNOWLEDGE_DIR.is_dir() and sorted(p.name for p in KNOWLEDGE_DIR.glob("*.yaml"))
