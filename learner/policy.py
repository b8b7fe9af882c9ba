"""The trained policy: a frozen Qwen-VL base with an adapter on the language model's projections.

One function, ``build_policy``, decides which adapter (MLAE or plain PEFT LoRA, the baseline) so the
engine, the benchmark and tests build the same thing. The vision tower is never adapted: vLLM applies
LoRA to the language model only (docs/algorithms.md, "MLAE").
"""

from __future__ import annotations

from pathlib import Path

import torch

from learner.config import LearnerConfig


# -> PeftModel
def build_policy(model_dir: str | Path, cfg: LearnerConfig, dtype: torch.dtype = torch.float32):
    """Load the base model from ``model_dir`` (frozen) and wrap it with the configured adapter.

    The adapter's initialisation is seeded by ``cfg.seed`` so every rank starts from identical weights.
    """
    import peft
    from transformers import AutoModelForImageTextToText

    from learner.mlae import apply_mlae, language_model_targets

    base = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=dtype)
    base.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    match cfg.adapter:
        case "mlae":
            model = apply_mlae(base, cfg.mlae)
        case "lora":
            lora = peft.LoraConfig(r=cfg.mlae.rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                   target_modules=language_model_targets(base, cfg.mlae.target_modules))
            model = peft.get_peft_model(base, lora)
    if cfg.gradient_checkpointing:
        # use_reentrant=False keeps gradients flowing into the adapter although the base inputs are frozen.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
