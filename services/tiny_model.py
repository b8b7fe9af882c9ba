"""Build small random Qwen2-VL / Qwen2.5-VL models from configs, with an offline tokenizer.

Nothing can be downloaded here, so every model used on CPU (tests, demo, benchmarks) is made by this
module: seeded random weights, a byte-level BPE tokenizer trained in under a second on text shaped like
our prompts and answers (Qwen's own pre-tokenizer, so digits are single tokens), the Qwen special tokens,
a Qwen-VL chat template, and the image processor's config. transformers' Auto classes and vLLM load the
directory as they would a released checkpoint.

Sizes: `tiny` (~0.7M parameters, < 5 MB, for tests) and `small` (a few million, CPU-trainable, for the
demo). Attention head size is 32 in both: vLLM's CPU attention needs at least 32.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Family = Literal["qwen2_5_vl", "qwen2_vl"]
Size = Literal["tiny", "small"]

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
# Model-side vision tokens: a random model can emit them, and they break the next forward pass, so
# generation suppresses them (rollout engines read this list from the tokenizer).
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Dims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vocab: int


DIMS: dict[Size, Dims] = {
    "tiny": Dims(hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256, vision_hidden=64,
                 vision_depth=2, vision_heads=2, vocab=1024),
    "small": Dims(hidden=256, layers=4, heads=8, kv_heads=2, intermediate=512, vision_hidden=128,
                  vision_depth=2, vision_heads=4, vocab=1024),
}
HEAD_DIM = 32
MROPE_SECTION = [4, 6, 6]  # temporal, height, width halves of the rotary dims: sums to HEAD_DIM / 2


def _corpus(seed: int) -> list[str]:
    """Text shaped like what the model reads and writes (our prompt templates, the synthetic phrase
    grammar, the shipped knowledge, think/answer blocks with boxes), so BPE merges cover it and a
    completion stays short in tokens."""
    from rollout.prompts import FORMAT_INSTRUCTION, task_instruction

    rng = random.Random(seed)
    findings = ["nodule", "mass", "consolidation", "pleural effusion", "apical pneumothorax", "opacity",
                "cardiomegaly", "atelectasis", "infiltrate", "lesion", "calcification", "fracture"]
    sizes = ["tiny", "small", "moderate", "large"]
    sides, zones = ["left", "right"], ["upper", "middle", "lower"]
    fixed = [FORMAT_INSTRUCTION, *(task_instruction(t, c) for t in ("grounding", "classification", "grading")
                                   for c in ("input_pixels", "norm1000"))]
    knowledge_dir = Path(__file__).resolve().parents[1] / "deploy" / "knowledge"
    if knowledge_dir.is_dir():
        from rollout.knowledge import load_knowledge

        kb = load_knowledge(knowledge_dir)
        fixed += [kb.text(key) for key in sorted(kb.entries)]
    lines = []
    for i in range(4000):
        finding = rng.choice(findings)
        phrase = (f"{rng.choice(sizes)} {finding} in the {rng.choice(sides)} {rng.choice(zones)} zone"
                  if i % 2 else f"{rng.choice(sizes)} {rng.choice(sides)} {finding}")
        x1, x2 = sorted(rng.sample(range(0, 1000 if i % 3 == 0 else 112), 2))
        y1, y2 = sorted(rng.sample(range(0, 1000 if i % 3 == 0 else 112), 2))
        answer = json.dumps({"bbox_2d": [x1, y1, x2, y2]}) if i % 5 else json.dumps({"grade": rng.randint(0, 3)})
        lines.append(f"{phrase} <think>{phrase}</think><answer>{answer}</answer>")
        lines.append(f"Prior knowledge: {fixed[i % len(fixed)]}\n{phrase} {FORMAT_INSTRUCTION}")
    return lines


def build_tokenizer(vocab_size: int, seed: int = 0):  # -> transformers.Qwen2Tokenizer
    """A byte-level BPE with Qwen2's pre-tokenizer (single-digit numbers), trained offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"])
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    qwen = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, errors="replace")
    qwen.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True) for t in SPECIAL_TOKENS[1:]]})
    qwen.chat_template = CHAT_TEMPLATE
    return qwen


def _model_config(family: Family, d: Dims, vocab: int, ids: dict[str, int]):
    text = dict(vocab_size=vocab, hidden_size=d.hidden, intermediate_size=d.intermediate,
                num_hidden_layers=d.layers, num_attention_heads=d.heads, num_key_value_heads=d.kv_heads,
                max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": MROPE_SECTION},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    special = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                   vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(depth=d.vision_depth, hidden_size=d.vision_hidden, intermediate_size=2 * d.vision_hidden,
                      num_heads=d.vision_heads, out_hidden_size=d.hidden, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=112, fullatt_block_indexes=[d.vision_depth - 1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special)
    from transformers import Qwen2VLConfig

    vision = dict(depth=d.vision_depth, embed_dim=d.vision_hidden, hidden_size=d.hidden, mlp_ratio=2,
                  num_heads=d.vision_heads, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, **special)


def build_model_dir(out: str | Path, family: Family = "qwen2_5_vl", size: Size = "tiny", seed: int = 0,
                    min_pixels: int = 56 * 56, max_pixels: int = 112 * 112) -> Path:
    """Write a loadable model directory (weights, tokenizer, processor, chat template) and return it."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dims = DIMS[size]
    tokenizer = build_tokenizer(dims.vocab, seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = _model_config(family, dims, len(tokenizer), ids)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
        do_sample=False)
    model.save_pretrained(out, safe_serialization=True)

    size_kw = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image_processor = Qwen2VLImageProcessor(size=size_kw, patch_size=14, merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(size=size_kw, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor_cls = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    (out / "medground_model.json").write_text(json.dumps(
        {"family": family, "size": size, "seed": seed, "built_by": "medground init-model"}, indent=2) + "\n")
    return out


def parameter_count(model_dir: str | Path) -> int:
    """Number of stored parameters (all safetensors shards of the directory)."""
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open has no items()
                total += math.prod(st.get_slice(name).get_shape())
    return total
