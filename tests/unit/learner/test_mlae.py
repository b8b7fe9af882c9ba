"""MLAE on PEFT: equality with the exported LoRA, masks in training, PEFT mechanisms, checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.config import MLAEConfig
from learner.export import export_lora
from learner.mlae import ExpertScale, apply_mlae, load_mlae, mlae_layers, save_mlae

ALL_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _base(model_dir: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)


def _mlae(model_dir: Path, cfg: MLAEConfig, seed: int = 0) -> torch.nn.Module:
    """An MLAE model whose B and lambda are random (B starts at zero, which would hide every difference)."""
    torch.manual_seed(seed)
    model = apply_mlae(_base(model_dir), cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(seed))  # [B=2, L=16]


def _lora_from(artefact_dir: Path, model_dir: Path) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(_base(model_dir), str(artefact_dir)).eval()


@pytest.mark.parametrize("cfg", [
    MLAEConfig(),
    MLAEConfig(mask="mixed", fixed_p=0.4, layerwise="increasing", target_modules=ALL_PROJ),
    MLAEConfig(mask="fixed", fixed_p=0.5, rank=4, alpha=2.0, layerwise="decreasing"),
], ids=["stochastic", "mixed-mlp-increasing", "fixed-decreasing"])
def test_eval_logits_equal_base_plus_exported_lora(tiny_model_dir: Path, tmp_path: Path,
                                                   cfg: MLAEConfig) -> None:
    model = _mlae(tiny_model_dir, cfg).eval()
    with torch.no_grad():
        mlae_logits = model(input_ids=_ids()).logits                         # [2, 16, V]
    artefact = export_lora(model, version=1)
    assert artefact.peft_config["r"] == artefact.peft_config["lora_alpha"] == cfg.rank  # scaling 1
    lora = _lora_from(artefact.save(tmp_path / "v1"), tiny_model_dir)
    with torch.no_grad():
        lora_logits = lora(input_ids=_ids()).logits
        base_logits = _base(tiny_model_dir)(input_ids=_ids()).logits
    assert (mlae_logits - lora_logits).abs().max().item() <= 1e-5
    assert (mlae_logits - base_logits).abs().max().item() > 1e-2  # the adapter does change the output


def test_only_language_model_adapters_train_and_lambda_stays_fp32(tiny_model_dir: Path) -> None:
    model = apply_mlae(_base(tiny_model_dir, torch.bfloat16), MLAEConfig(target_modules=ALL_PROJ))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".language_model." in n and ".lora_" in n for n in trainable)
    # 2 layers x 7 projections, each with lora_A, lora_B and lambda.
    assert len(trainable) == 2 * 7 * 3
    scales = [m for m in model.modules() if isinstance(m, ExpertScale)]
    assert scales and all(s.weight.dtype == torch.float32 for s in scales)
    assert all(torch.all(s.weight == 1.0) for s in scales)  # initialised to alpha (default 1)
    model.train()
    model(input_ids=_ids()).logits.float().square().mean().backward()
    assert all(s.weight.grad is not None and s.weight.grad.dtype == torch.float32 for s in scales)


def test_dropped_expert_gets_exactly_zero_gradient(tiny_model_dir: Path) -> None:
    model = _mlae(tiny_model_dir, MLAEConfig(p=0.5)).train()
    masks: dict[str, torch.Tensor] = {}
    for name, layer in mlae_layers(model).items():
        layer.lora_mlae_scale["default"].register_forward_hook(
            lambda _m, args, _out, name=name: masks.__setitem__(name, args[0].detach().clone()))
    torch.manual_seed(3)
    model(input_ids=_ids()).logits.square().mean().backward()
    dropped = kept = 0
    for name, layer in mlae_layers(model).items():
        off = masks[name] == 0                                               # [r]
        grads = (layer.lora_mlae_scale["default"].weight.grad,                # [r]
                 layer.lora_A["default"].weight.grad,                         # [r, in]: row i is expert i
                 layer.lora_B["default"].weight.grad.T)                       # [r, out]: column i of B
        for g in grads:
            assert torch.all(g[off] == 0), f"{name}: a dropped expert received gradient"
            assert torch.all(g[~off].abs().reshape(int((~off).sum()), -1).amax(-1) > 0)
        dropped += int(off.sum())
        kept += int((~off).sum())
    assert dropped > 0 and kept > 0  # 8 layers x 8 experts at p = 0.5: both occur (P(none dropped) = 2^-64)


def test_mask_is_shared_by_the_batch_and_fresh_per_call(tiny_model_dir: Path) -> None:
    model = _mlae(tiny_model_dir, MLAEConfig(p=0.5)).train()
    ids = _ids()
    torch.manual_seed(5)
    with torch.no_grad():
        both = model(input_ids=ids).logits
    torch.manual_seed(5)
    with torch.no_grad():
        first = model(input_ids=ids[:1]).logits
    # Same seed, same draws: row 0 of the batch sees the mask it sees alone (one mask per call, not per row).
    assert torch.allclose(both[:1], first, atol=1e-5)
    with torch.no_grad():
        again = model(input_ids=ids[:1]).logits
    assert not torch.allclose(first, again, atol=1e-4)  # the next call draws new masks


def test_p_zero_equals_lora_with_per_rank_scales_in_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _mlae(tiny_model_dir, MLAEConfig(p=0.0)).train()
    lora = _lora_from(export_lora(model, 0).save(tmp_path / "v0"), tiny_model_dir).train()
    with torch.no_grad():
        diff = (model(input_ids=_ids()).logits - lora(input_ids=_ids()).logits).abs().max().item()
    assert diff <= 1e-5


def test_disable_adapter_merge_and_save_load_round_trip(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = MLAEConfig(mask="mixed", fixed_p=0.3, target_modules=ALL_PROJ)
    model = _mlae(tiny_model_dir, cfg).eval()
    with torch.no_grad():
        logits = model(input_ids=_ids()).logits
        with model.disable_adapter():
            off = model(input_ids=_ids()).logits
        base = _base(tiny_model_dir)(input_ids=_ids()).logits
    assert torch.equal(off, base)

    save_mlae(model, tmp_path / "ckpt")
    reloaded = load_mlae(_base(tiny_model_dir), tmp_path / "ckpt").eval()
    assert reloaded.mlae_config == cfg
    with torch.no_grad():
        assert (reloaded(input_ids=_ids()).logits - logits).abs().max().item() <= 1e-6
        merged = reloaded.merge_and_unload()
        # W + dW rounds differently from W x + dW x (fp32 eps ~1e-7 times weight sums ~1e2): looser bound.
        assert (merged(input_ids=_ids()).logits - logits).abs().max().item() <= 1e-4


def test_load_mlae_rejects_plain_lora_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _mlae(tiny_model_dir, MLAEConfig())
    export_lora(model, 0).save(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="not an MLAE adapter"):
        load_mlae(_base(tiny_model_dir), tmp_path / "plain")


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_recomputes_with_the_same_mask(tiny_model_dir: Path, reentrant: bool) -> None:
    def grads(checkpointing: bool, seed: int) -> torch.Tensor:
        model = _mlae(tiny_model_dir, MLAEConfig(p=0.5, target_modules=ALL_PROJ)).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            model.enable_input_require_grads()
        torch.manual_seed(seed)
        model(input_ids=_ids()).logits.square().mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])

    plain = grads(False, seed=11)
    # A recompute that drew fresh masks would pair activations of one mask with gradients of another.
    assert torch.allclose(grads(True, seed=11), plain, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(grads(False, seed=12), plain, atol=1e-6, rtol=1e-4)  # masks matter
