"""`medground export RUN --merged OUT`: a run's adapter merged into the base weights, as a plain model.

LoRA decoding costs extra matrix products per token, and deployment tools (other serving stacks,
quantisers, model registries) expect a standard checkpoint. The learner exports every adapter as a plain
scaling-1 LoRA (learner/export.py: MLAE's B diag(lambda) A is already folded), so merging is PEFT's
`merge_and_unload`: W' = W + B A on each adapted language-model projection, everything else (vision
tower, embeddings, norms) unchanged. The output directory holds the merged weights in the base's dtype,
the base's tokenizer, processor, chat template and generation config, and `medground_model.json` naming
the run, step and adapter version it came from; transformers and vLLM load it without LoRA.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from services.config import load_run_config

# Files of a model directory that describe how to read and prompt the model rather than its weights.
PROCESSING_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                    "special_tokens_map.json",
                    "added_tokens.json", "chat_template.jinja", "chat_template.json", "processor_config.json",
                    "preprocessor_config.json", "video_preprocessor_config.json", "generation_config.json")


def export_merged(run_dir: Path, out: Path, step: int | None = None) -> dict[str, Any]:
    """Merge the run's adapter (checkpoint `step`, else the final one, else the latest checkpoint's) into
    its base model and write a standard model directory to `out`; returns what was written."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from learner.export import LoraArtefact
    from services.checkpointing import run_adapter

    cfg = load_run_config(run_dir)
    adapter, label = run_adapter(run_dir, step)
    artefact = LoraArtefact.load(adapter)  # names a missing file, and gives the version
    base_dir = Path(cfg.model.path)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory for the merged model")
    if out.resolve() == base_dir.resolve():
        raise ValueError(f"--merged {out} is the base model directory; write the merged model elsewhere")
    base_config = json.loads((base_dir / "config.json").read_text())
    text = base_config.get("text_config", base_config)
    stored = str(text.get("dtype") or base_config.get("dtype") or base_config.get("torch_dtype") or "float32")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[stored]
    # Merge in float32 whatever the stored dtype, then store as the base was stored.
    model = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
    merged.to(dtype).save_pretrained(out, safe_serialization=True)
    for name in PROCESSING_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out / name)
    info = {"merged_from": {"run": str(run_dir.resolve()), "checkpoint": label,
                            "adapter": str(adapter.resolve()),
                            "adapter_version": artefact.version, "base_model": str(base_dir.resolve())},
            "dtype": stored, "built_by": "medground export --merged"}
    built = base_dir / "medground_model.json"
    if built.is_file():
        info = {**json.loads(built.read_text()), **info}
    (out / "medground_model.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
