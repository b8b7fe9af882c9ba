"""LoRA export: the artefact's files, key names, config, and plain-LoRA models exported as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from learner.config import MLAEConfig
from learner.export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraArtefact, export_lora
from learner.mlae import apply_mlae


def _base(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)


def test_artefact_keys_config_and_round_trip(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = apply_mlae(_base(tiny_model_dir), MLAEConfig(rank=4))
    artefact = export_lora(model, version=7)
    # 2 layers x 4 attention projections x (A, B).
    assert len(artefact.tensors) == 16
    key = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    assert artefact.tensors[key].shape == (4, 128)  # (r, in)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in artefact.tensors)  # no lambda
    cfg = artefact.peft_config
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"]) == ("LORA", 4, 4)
    assert sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]

    out = artefact.save(tmp_path / "v7")
    assert (out / ADAPTER_WEIGHTS).is_file()
    assert json.loads((out / ADAPTER_CONFIG).read_text()) == cfg
    back = LoraArtefact.load(out)
    assert back.version == 7 and back.peft_config == cfg
    assert all(torch.equal(back.tensors[k], v) for k, v in artefact.tensors.items())
    assert LoraArtefact.load(out, version=9).version == 9
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter"):
        LoraArtefact.load(tmp_path)


def test_export_unwraps_a_deepspeed_or_ddp_style_wrapper(tiny_model_dir: Path) -> None:
    class Wrapper(torch.nn.Module):  # DeepSpeedEngine and DDP hold the model as `.module`
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    model = apply_mlae(_base(tiny_model_dir), MLAEConfig())
    direct, wrapped = export_lora(model, 1), export_lora(Wrapper(model), 1)
    assert wrapped.tensors.keys() == direct.tensors.keys() and wrapped.peft_config == direct.peft_config


def test_mlp_adapter_names_full_paths_so_the_vision_mlp_stays_untouched(tiny_model_dir: Path) -> None:
    model = apply_mlae(_base(tiny_model_dir), MLAEConfig(target_modules=("q_proj", "gate_proj")))
    targets = export_lora(model, 0).peft_config["target_modules"]
    # The vision blocks also have mlp.gate_proj, so short names would reach them on load.
    assert sorted(targets) == [f"model.language_model.layers.{i}.{m}" for i in (0, 1)
                               for m in ("mlp.gate_proj", "self_attn.q_proj")]


def test_plain_lora_exports_with_its_scaling_folded_into_b(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    lora = get_peft_model(_base(tiny_model_dir), LoraConfig(r=4, lora_alpha=16,
                                                            target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for p in lora.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    lora.eval()
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    artefact = export_lora(lora, 2)
    assert artefact.peft_config["lora_alpha"] == 4  # scaling 16/4 = 4 moved into B, scaling now 4/4 = 1
    reloaded = PeftModel.from_pretrained(_base(tiny_model_dir), str(artefact.save(tmp_path / "v2"))).eval()
    with torch.no_grad():
        diff = (lora(input_ids=ids).logits - reloaded(input_ids=ids).logits).abs().max().item()
    assert diff <= 1e-5


def test_export_names_the_fix_for_a_model_without_adapters(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="apply_mlae or get_peft_model"):
        export_lora(_base(tiny_model_dir), 0)
