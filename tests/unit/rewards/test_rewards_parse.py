"""Answer parsing: accepted variants, strict results, never raises, scalar parse equals the batch path."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import (
    ImageFrame,
    RewardConfig,
    RewardTarget,
    ScheduleSnapshot,
    parse_answer,
    score_group,
    to_original,
)

FRAME = ImageFrame(1000.0, 500.0, 560.0, 280.0, "input_pixels")


@pytest.mark.parametrize(
    ("text", "box", "format_ok"),
    [
        ('<think>a</think><answer>{"bbox_2d": [10, 20, 30, 40]}</answer>', (10, 20, 30, 40), True),
        ("\n<think>a</think>\n<answer>[10.5, 20, 30.25, 40]</answer>\n", (10.5, 20, 30.25, 40), True),
        ("<think>a</think><answer>[10 20 30 40]</answer>", (10, 20, 30, 40), True),
        ('<think>a</think><answer>{"box": [1e1, 2E1, 30., .4e2]}</answer>', (10, 20, 30, 40), True),
        ('<think>a</think><answer>[{"bbox_2d": [10, 20, 30, 40], "label": "x"}]</answer>',
         (10, 20, 30, 40), True),
        ('<answer>{"bbox_2d": [10, 20, 30, 40]}</answer>', (10, 20, 30, 40), False),  # no think: format 0
        ("<answer>[10,20,30,40]</answer><think>late</think>", (10, 20, 30, 40), False),  # wrong order
        # clipped to 560x280
        ('<think>a</think><answer>[-5, 20, 600, 300]</answer>', (0, 20, 560, 280), True),
        # full-width punctuation (models trained on Chinese text): read as ASCII
        ('<think>a</think><answer>{"bbox_2d"：［１０，２０，３０，４０］}</answer>', (10, 20, 30, 40), True),
        ("<think>a</think><answer>【10、20、30、40】</answer>", (10, 20, 30, 40), True),
        ("<think>a</think><answer>（10，20），（30，40）</answer>", (10, 20, 30, 40), True),
    ],
)
def test_accepted(text: str, box: tuple[float, ...], format_ok: bool) -> None:
    parsed = parse_answer(text, "grounding", FRAME)
    assert parsed is not None
    assert parsed.box == pytest.approx(box) and parsed.format_ok is format_ok


@pytest.mark.parametrize(
    "text",
    [
        "", "no tags at all [1, 2, 3, 4]", "<think>a</think>", "<answer>[1, 2, 3]</answer>",
        "<answer>[1, 2, 3, 4, 5]</answer>", "<answer>[30, 40, 10, 20]</answer>",  # corners swapped
        "<answer>[600, 300, 700, 400]</answer>",  # entirely outside the 560x280 input: empty after clipping
        "<answer>[1, 2, 3, 1e999]</answer>", "<answer>[a, b, c, d]</answer>",
    ],
)
def test_rejected(text: str) -> None:
    assert parse_answer(text, "grounding", FRAME) is None


def test_labels_and_grades() -> None:
    cls = parse_answer('<think>t</think><answer>{"label": "Pleural effusion"}</answer>', "classification")
    assert cls is not None and cls.label == "Pleural effusion" and cls.format_ok
    assert parse_answer("<think>t</think><answer> nodule </answer>", "classification").label == "nodule"  # type: ignore[union-attr]
    assert parse_answer('<think>t</think><answer>"mass"</answer>', "classification").label == "mass"  # type: ignore[union-attr]
    assert parse_answer("<think>t</think><answer>  </answer>", "classification") is None
    for text, grade in [('{"grade": 3}', 3), ("KL grade 2", 2), ('{"grade": "4"}', 4), ("2.0", 2)]:
        got = parse_answer(f"<think>t</think><answer>{text}</answer>", "grading")
        assert got is not None and got.grade == grade
    for bad in ["2.5", "-1", "none", '{"grade": true}', "5000"]:
        assert parse_answer(f"<think>t</think><answer>{bad}</answer>", "grading") is None


def test_a_grade_off_the_questions_scale_is_no_answer() -> None:
    # A garbled answer such as "grade 20" on a 0-3 scale must not count as a finite error of 17 (the
    # VRFT-Aug bench once scored it so); on the scale, the top grade still parses.
    assert parse_answer("<think>t</think><answer>grade 20</answer>", "grading", max_grade=3) is None
    assert parse_answer('<think>t</think><answer>{"grade": 4}</answer>', "grading", max_grade=3) is None
    top = parse_answer('<think>t</think><answer>{"grade": 3}</answer>', "grading", max_grade=3)
    assert top is not None and top.grade == 3
    assert parse_answer("<think>t</think><answer>20</answer>", "grading").grade == 20  # type: ignore[union-attr]


def test_think_text_without_tags_is_what_was_written() -> None:
    parsed = parse_answer("opacity in the left lung <answer>[1,2,3,4]</answer>", "grounding", FRAME)
    assert parsed is not None and parsed.think == "opacity in the left lung "


tags = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "[", "]", ",", " ", "{",
                        "}", '"bbox_2d":'])
numbers = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(repr))
model_text = st.lists(st.one_of(tags, numbers, st.text(max_size=8)), max_size=30).map("".join)
frames = st.builds(ImageFrame, st.integers(8, 4000).map(float), st.integers(8, 4000).map(float),
                   st.integers(1, 50).map(lambda k: 28.0 * k), st.integers(1, 50).map(lambda k: 28.0 * k),
                   st.sampled_from(["input_pixels", "norm1000"]))


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(model_text, st.text()), frame=frames,
       task=st.sampled_from(["grounding", "classification", "grading"]))
def test_never_raises_and_returns_valid_boxes(text: str, frame: ImageFrame, task: str) -> None:
    parsed = parse_answer(text, task, frame)  # type: ignore[arg-type]
    if parsed is None or task != "grounding":
        return
    assert parsed.box is not None
    x1, y1, x2, y2 = parsed.box
    w, h = frame.model_extent
    assert 0.0 <= x1 < x2 <= w and 0.0 <= y1 < y2 <= h
    ox1, oy1, ox2, oy2 = to_original(parsed.box, frame)
    assert 0.0 <= ox1 < ox2 <= frame.original_width * (1 + 1e-12)
    assert 0.0 <= oy1 < oy2 <= frame.original_height * (1 + 1e-12)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.one_of(model_text, st.just('<think>x</think><answer>[10, 20, 300, 200]</answer>')),
                      min_size=1, max_size=6), frame=frames)
def test_batch_path_equals_parse_answer(texts: list[str], frame: ImageFrame) -> None:
    target = RewardTarget("grounding", boxes=((0.0, 0.0, 5.0, 5.0),), frame=frame)
    out = score_group(texts, target, ScheduleSnapshot(0.5, 0), RewardConfig(w_recite=0.0))
    for text, b in zip(texts, out, strict=True):
        parsed = parse_answer(text, "grounding", frame)
        assert b.pred_box == (None if parsed is None else to_original(parsed.box, frame))  # type: ignore[arg-type]
        assert b.format_ok == (parsed is not None and parsed.format_ok)


def test_fast_and_slow_paths_agree_on_tricky_texts() -> None:
    texts = [
        '<think>a</think><answer>{"bbox_2d": [10, 20, 300, 200]}</answer>',  # fast path
        '<think>a < b</think><answer>{"bbox_2d": [10, 20, 300, 200]}</answer>',  # '<' in think: slow path
        # first list wins
        "<think>a</think><answer>[5,6,7,8]</answer></think><answer>[10,20,300,200]</answer>",
        '<think>a</think><answer>{"bbox_2d": [10, 20, 300, 1e999]}</answer>',  # inf: no box
        '<think>a</think><answer>{"bbox_2d": [10 20 300 200]}</answer>  ',
    ]
    target = RewardTarget("grounding", boxes=((0.0, 0.0, 5.0, 5.0),), frame=FRAME)
    out = score_group(texts, target, ScheduleSnapshot(0.5, 0), RewardConfig(w_recite=0.0))
    parsed = [parse_answer(t, "grounding", FRAME) for t in texts]
    assert [b.pred_box for b in out] == [None if p is None else to_original(p.box, FRAME) for p in parsed]  # type: ignore[arg-type]
    assert parsed[2] is not None and parsed[2].box == (5.0, 6.0, 7.0, 8.0) and parsed[3] is None


# Texts that made earlier regexes quadratic, as functions of a length n (the defaults below are the sizes
# that took 0.6-2 s then).
ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "trailing_spaces": lambda n: "<think>a</think><answer>[1,2,3,4]" + " " * n + "x",  # greedy `\s*\}?\s*`
    "open_tags": lambda n: "<think>" + "<answer>" * (n // 10),  # lazy `<answer>(.*?)</answer>` search
    "think_ends": lambda n: "<think>" + "</think>x" * (n // 4) + "<answer>[1,2,3,4]</answer>",
    "long_list": lambda n: "<answer>[" + "1 " * (n // 2) + "</answer>",
    "fullwidth_list": lambda n: "<answer>【" + "１，" * (n // 2) + "</answer>",  # read as ASCII first
}


def _parse_all(text: str) -> list[object]:
    out: list[object] = [parse_answer(text, task, FRAME) for task in ("grounding", "classification", "grading")]  # type: ignore[arg-type]  # noqa: E501
    out += score_group([text] * 4, RewardTarget("grounding", boxes=((0.0, 0.0, 5.0, 5.0),), frame=FRAME),
                       ScheduleSnapshot(0.5, 0), RewardConfig(w_recite=0.0))
    return out


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_text_is_scored_without_error(name: str) -> None:
    out = _parse_all(ADVERSARIAL[name](20000))
    assert len(out) == 3 + 4 and all(b.total in (0.0, 0.5, 1.0, 1.5) for b in out[3:])  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_text_costs_time_linear_in_its_length(name: str) -> None:
    """8x the text must cost about 8x the time (a quadratic regex: 64x). Timing, so in `make test-slow`:
    on a shared machine one slow sample can swing a ratio; the best of 5 keeps it honest."""
    def best(n: int) -> float:
        text, times = ADVERSARIAL[name](n), []
        for _ in range(5):
            t0 = time.perf_counter()
            _parse_all(text)
            times.append(time.perf_counter() - t0)
        return min(times)

    assert best(160_000) / best(20_000) < 24  # linear ~8, quadratic ~64
