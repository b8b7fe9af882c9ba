"""Answer parsing: lenient in what it accepts, strict in what it returns, never raises on model text.

Expected format (VLM-R1): `<think>...</think><answer>{"bbox_2d": [x1, y1, x2, y2]}</answer>`.
Accepted inside `<answer>`: a JSON object, a bare list, a list under another key, ints/floats mixed,
commas or spaces; the first list of exactly four numbers is the box. Full-width punctuation, as models trained
on Chinese text write it (`[120，260，300，410]`, `【...】`, `［...］`, full-width digits), reads as its ASCII
counterpart (`FULLWIDTH`). Qwen-VL's native grounding answer
`(x1,y1),(x2,y2)` (Qwen-VL/Qwen2-VL papers' box format, with or without `<|box_start|>`/`<|box_end|>`) is a
box too, in the same model convention: whichever of the two forms comes first wins. Classification answers are
a label
(`{"label": "..."}`, a JSON string, or plain text); grading answers a non-negative integer grade.
Without an `<answer>` block there is no answer (VLM-R1 scores such completions 0 as well).

Several boxes or none (`parse_box_list`, issue 31): a JSON list of `{"bbox_2d": [...]}` objects, possibly
empty (`[]`: "not present"), as Qwen2.5-VL and Qwen3-VL answer natively; a single object, a bare box or
Qwen's corners stay valid (a list of one). A list whose member is not a box is no answer, with a reason.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Literal

from rewards.boxes import clip_box
from rewards.frames import Box, ImageFrame

Task = Literal["grounding", "classification", "grading"]

# Possessive whitespace (`\s*+`) everywhere: nothing after it can start with whitespace, so it loses no
# match, and it keeps every pattern linear on long runs of spaces (a greedy `\s*\}?\s*` was quadratic).
_WS_ANSWER = re.compile(r"\s*+<answer>")
_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_SEP = r"(?:\s*+,\s*+|\s++)"
_BOX = re.compile(r"\[\s*+" + _SEP.join([_NUM] * 4) + r"\s*+\]")
_POINT = r"\(\s*+" + _NUM + r"\s*+,\s*+" + _NUM + r"\s*+\)"
_CORNERS = re.compile(_POINT + r"\s*+,?\s*+" + _POINT)  # Qwen's native (x1,y1),(x2,y2)
_FIRST_NUM = re.compile(_NUM)
# Fastest path for the batch scorer: the exact VLM-R1 format in one match. The think text may not contain
# '<', so it ends at the first tag and the box found is the one `split_completion` + `box_numbers` find.
FAST_GROUNDING = re.compile(
    r"\s*+<think>([^<]*+)</think>\s*+<answer>\s*+(?:\{\s*+\"bbox_2d\"\s*+:\s*+)?\[\s*+"
    + _SEP.join([_NUM] * 4)
    + r"\s*+\]\s*+\}?\s*+</answer>\s*+"
)
# Full-width and CJK punctuation read as ASCII inside a box (str.translate: one linear pass). Brackets:
# ［］ (U+FF3B/D), 【】 (U+3010/1), 〔〕 (U+3014/5); separators: ， (U+FF0C), 、 (U+3001), ； (U+FF1B);
# ： (U+FF1A) for `"bbox_2d"：[...]`; （） for Qwen's corners; full-width digits, sign, point and space.
FULLWIDTH = str.maketrans({
    "［": "[", "］": "]", "【": "[", "】": "]", "〔": "[", "〕": "]", "（": "(", "）": ")", "｛": "{", "｝": "}",  # noqa: E501
    "，": ",", "、": ",", "；": ",", "：": ":", "＂": '"', "．": ".", "－": "-", "＋": "+", "\u3000": " ",
    **{chr(0xFF10 + d): str(d) for d in range(10)},
})
MAX_GRADE = 1000  # grades are small ordinal labels; anything larger is noise, not an answer
MAX_LABEL_CHARS = 200


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    """What a completion says.

    box: (x1, y1, x2, y2) in the frame's model convention, clipped to the image, x1 < x2 and y1 < y2
    (grounding); label: stripped answer label (classification); grade: integer in [0, 1000] (grading).
    think: the reasoning text (`<think>` content, else the text outside the answer block).
    format_ok: both tag pairs present, in order, and the payload parsed (r_format = 1).
    """

    think: str
    format_ok: bool
    box: Box | None = None
    label: str | None = None
    grade: int | None = None
    boxes: tuple[Box, ...] | None = None  # parse_answer(multi_box=True): every box, () for "not present"


@dataclass(frozen=True, slots=True)
class BoxList:
    """A grounding answer read as a set: `boxes` (raw, model convention, unclipped) or None with a `reason`
    (what is wrong, for logs and tests)."""

    boxes: tuple[Box, ...] | None
    reason: str | None = None


def split_completion(text: str) -> tuple[str, str | None, bool]:
    """(think, answer or None, tags_ok): the two blocks of a completion, and whether the format is exact."""
    exact = _exact_format(text)
    if exact is not None:
        return exact[0], exact[1], True
    a = _block(text, "<answer>", "</answer>")
    t = _block(text, "<think>", "</think>")
    # Reasoning without tags still counts as reasoning for the recitation reward.
    untagged = text if a is None else text[: a[0]] + text[a[1] :]
    think = untagged if t is None else text[t[0] + 7 : t[1] - 8]
    return think, None if a is None else text[a[0] + 8 : a[1] - 9], False


def _exact_format(text: str) -> tuple[str, str] | None:
    """(think, answer) if `text` is `<think>...</think> <answer>...</answer>` up to outer whitespace.

    Think ends at the first `</think>` that is followed by `<answer>`; the answer runs to the final
    `</answer>`. Written with str.find (linear), not a lazy regex, which was quadratic on text full of tags.
    """
    body = text.strip()
    if not (body.startswith("<think>") and body.endswith("</answer>")):
        return None
    answer_end = len(body) - 9
    pos = 7
    while True:
        close = body.find("</think>", pos)
        if close < 0:
            return None
        m = _WS_ANSWER.match(body, close + 8)
        if m is not None and m.end() <= answer_end:
            return body[7:close], body[m.end() : answer_end]
        pos = close + 1


def _block(text: str, open_tag: str, close_tag: str) -> tuple[int, int] | None:
    """(start, end) of the first `open_tag ... close_tag` block, or None.

    str.find instead of a lazy regex: linear even for text full of unclosed tags (the regex was quadratic).
    """
    start = text.find(open_tag)
    if start < 0:
        return None
    end = text.find(close_tag, start + len(open_tag))
    return None if end < 0 else (start, end + len(close_tag))


def box_numbers(answer: str) -> Box | None:
    """The first list of exactly four finite numbers, or pair of corner points `(x1,y1),(x2,y2)`, in
    `answer` (full-width punctuation read as ASCII, `FULLWIDTH`), unclipped, or None."""
    answer = answer.translate(FULLWIDTH)
    listed, corners = _BOX.search(answer), _CORNERS.search(answer)
    m = listed if corners is None or (listed is not None and listed.start() < corners.start()) else corners
    if m is None:
        return None
    a, b, c, d = m.groups()
    return finite_box(float(a), float(b), float(c), float(d))


def finite_box(x1: float, y1: float, x2: float, y2: float) -> Box | None:
    """The box if all four numbers are finite (a literal like 1e999 parses to inf), else None."""
    isfinite = math.isfinite
    if isfinite(x1) and isfinite(y1) and isfinite(x2) and isfinite(y2):
        return x1, y1, x2, y2
    return None


def clip_answer_box(box: Box, frame: ImageFrame | None) -> Box | None:
    """Clip to the image in the model's convention; None unless x1 < x2 and y1 < y2 afterwards.

    Corners given in the wrong order are rejected, not repaired: the reward should not do the model's work.
    """
    x1, y1, x2, y2 = box if frame is None else clip_box(box, *frame.model_extent)
    if x1 < x2 and y1 < y2:
        return x1, y1, x2, y2
    return None


MAX_BOXES = 100  # more boxes than any finding has regions: a degenerate answer, not a set


def parse_box_list(answer: str) -> BoxList:
    """Every box of a grounding answer, raw (model convention, unclipped), or None with the reason.

    A JSON list (read up to its end; text after it is ignored) is a set: each member an object with
    `bbox_2d` or a bare list of four finite numbers, `[]` the empty set. Anything else is read as today:
    the first box (`box_numbers`) is a set of one. A list that opens with an object but is not valid JSON,
    or holds a member that is not a box, is no answer (a format failure), and `reason` says which.

    >>> parse_box_list('[{"bbox_2d": [1, 2, 30, 40]}, {"bbox_2d": [50, 5, 90, 45]}]').boxes
    ((1.0, 2.0, 30.0, 40.0), (50.0, 5.0, 90.0, 45.0))
    >>> parse_box_list("[]").boxes, parse_box_list('[{"bbox_2d": [1, 2, 3]}]').reason
    ((), 'list member 0 is not a box: each member needs "bbox_2d": [x1, y1, x2, y2], four finite numbers')
    """
    text = answer.translate(FULLWIDTH).strip()
    if text.startswith("["):
        try:
            value, _ = _DECODER.raw_decode(text)
        except (ValueError, RecursionError):  # not JSON: a bare box in loose form, or a broken list
            value = None
        if isinstance(value, list) and not _four_numbers(value):
            return _members(value)
        if value is None and _LIST_OF_OBJECTS.match(text):
            return BoxList(None, 'the answer opens a list of objects that is not valid JSON; '
                                 'write [{"bbox_2d": [x1, y1, x2, y2]}, ...] or [] for none')
    box = box_numbers(text)
    return BoxList((box,)) if box is not None else BoxList(None, "no box [x1, y1, x2, y2] in the answer")


_DECODER = json.JSONDecoder()
_LIST_OF_OBJECTS = re.compile(r"\[\s*+\{")


def _four_numbers(value: object) -> Box | None:
    if not (isinstance(value, list) and len(value) == 4):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    return finite_box(float(value[0]), float(value[1]), float(value[2]), float(value[3]))


def _members(value: list[object]) -> BoxList:
    if len(value) > MAX_BOXES:
        return BoxList(None, f"the list holds {len(value)} boxes, more than {MAX_BOXES}")
    boxes = []
    for i, member in enumerate(value):
        box = _four_numbers(member.get("bbox_2d") if isinstance(member, dict) else member)
        if box is None:
            return BoxList(None, f'list member {i} is not a box: each member needs "bbox_2d": '
                                 "[x1, y1, x2, y2], four finite numbers")
        boxes.append(box)
    return BoxList(tuple(boxes))


def grounding_set(answer: str, frame: ImageFrame | None) -> BoxList:
    """`parse_box_list`, each box clipped to the image in the model's convention (`clip_answer_box`); a member
    with no area left (outside the image, or corners swapped) makes the whole answer a format failure, as a
    single such box is today."""
    listed = parse_box_list(answer)
    if listed.boxes is None:
        return listed
    clipped = []
    for i, raw in enumerate(listed.boxes):
        box = clip_answer_box(raw, frame)
        if box is None:
            return BoxList(None, f"box {i} {list(raw)} has no area inside the image (outside it, or x1 >= x2 "
                                 "or y1 >= y2)")
        clipped.append(box)
    return BoxList(tuple(clipped))


def parse_label(answer: str) -> str | None:
    """A classification label: `{"label": ...}` (or the only string value), a JSON string, or plain text."""
    text = answer.strip()
    if text[:1] in ('{', '"'):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):  # not JSON after all: fall back to plain text
            value = None
        if isinstance(value, dict):
            strings = [v for v in value.values() if isinstance(v, str)]
            picked = value.get("label")
            text = picked if isinstance(picked, str) else (strings[0] if len(strings) == 1 else "")
        elif isinstance(value, str):
            text = value
    text = text.strip().strip('"').strip()
    return text if 0 < len(text) <= MAX_LABEL_CHARS else None


def parse_grade(answer: str, max_grade: int | None = None) -> int | None:
    """An ordinal grade: `{"grade": n}` or the first number in the text, if a whole number in [0, max_grade]
    (the question's scale; 1000 when unknown). A number off the scale is no answer: it earns no format
    reward and counts as unparsable in evaluation, rather than as a large but finite error.

    >>> parse_grade('{"grade": 2}', max_grade=3), parse_grade("grade 20", max_grade=3)
    (2, None)
    """
    text = answer.strip()
    value: object = None
    if text[:1] == "{":
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            value = obj.get("grade")
    if value is None:
        m = _FIRST_NUM.search(text)
        value = None if m is None else float(m.group(1))
    if isinstance(value, str):
        m = _FIRST_NUM.fullmatch(value.strip())
        value = None if m is None else float(m.group(1))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    top = MAX_GRADE if max_grade is None else max_grade
    if not (math.isfinite(value) and float(value).is_integer() and 0 <= value <= top):
        return None
    return int(value)


def parse_answer(text: str, task: Task = "grounding", frame: ImageFrame | None = None,
                 max_grade: int | None = None, multi_box: bool = False) -> ParsedAnswer | None:
    """Parse one completion; None when it has no usable answer for `task`. Never raises on model text.
    `max_grade`: the top of a grading question's scale (`parse_grade`). `multi_box`: a grounding answer
    is a set (`grounding_set`): `boxes` holds every box (() for "not present") and `box` the first or None.

    With a `frame`, a box is clipped to the image in the model's convention (`frame.model_extent`);
    without one it is only checked for order. Convert it with `rewards.to_original` before IoU.

    >>> frame = ImageFrame(1000.0, 500.0, 560.0, 280.0, "input_pixels")
    >>> parsed = parse_answer('<think>left base</think><answer>{"bbox_2d": [10, 20.5, 300, 400]}</answer>',
    ...                       frame=frame)
    >>> parsed.think, parsed.format_ok, parsed.box, parsed.boxes
    ('left base', True, (10.0, 20.5, 300.0, 280.0), None)
    >>> parse_answer("<answer>[30, 40, 10, 20]</answer>") is None  # corners swapped: no box
    True
    """
    if not isinstance(text, str):
        return None
    think, answer, tags_ok = split_completion(text)
    if answer is None:
        return None
    match task:
        case "grounding" if multi_box:
            found = grounding_set(answer, frame)
            if found.boxes is None:
                return None
            first = found.boxes[0] if found.boxes else None
            return ParsedAnswer(think, tags_ok, box=first, boxes=found.boxes)
        case "grounding":
            raw = box_numbers(answer)
            box = None if raw is None else clip_answer_box(raw, frame)
            return None if box is None else ParsedAnswer(think, tags_ok, box=box)
        case "classification":
            label = parse_label(answer)
            return None if label is None else ParsedAnswer(think, tags_ok, label=label)
        case "grading":
            grade = parse_grade(answer, max_grade)
            return None if grade is None else ParsedAnswer(think, tags_ok, grade=grade)
    raise ValueError(f"unknown task {task!r}; use 'grounding', 'classification' or 'grading'")
