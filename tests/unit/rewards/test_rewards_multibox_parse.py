"""Zero, one or many boxes as the grounding answer (issue 31): the list parser, its reasons, the prompt
sentence of a multi-box stage, and single-box parsing and prompts unchanged."""

from __future__ import annotations

import pytest
from PIL import Image

from rewards import ImageFrame, parse_answer
from rewards.parse import MAX_BOXES, grounding_set, parse_box_list
from rollout.contracts import RolloutRequest
from rollout.prompts import build_prompt, user_text

FRAME = ImageFrame(200.0, 100.0, 200.0, 100.0, "input_pixels")


@pytest.mark.parametrize(("answer", "boxes"), [
    ("[]", ()),
    ("  [ ]  trailing words", ()),
    ('[{"bbox_2d": [1, 2, 30, 40]}]', ((1.0, 2.0, 30.0, 40.0),)),
    ('[{"bbox_2d": [1, 2, 30, 40], "label": "effusion"}, {"bbox_2d": [50.5, 5, 90, 45]}]',
     ((1.0, 2.0, 30.0, 40.0), (50.5, 5.0, 90.0, 45.0))),
    ("[[1, 2, 30, 40], [50, 5, 90, 45]]", ((1.0, 2.0, 30.0, 40.0), (50.0, 5.0, 90.0, 45.0))),
    # The single-object forms stay valid: a set of one.
    ('{"bbox_2d": [1, 2, 30, 40]}', ((1.0, 2.0, 30.0, 40.0),)),
    ("[1, 2, 30, 40]", ((1.0, 2.0, 30.0, 40.0),)),
    ("[1 2 30 40]", ((1.0, 2.0, 30.0, 40.0),)),
    ("(1,2),(30,40)", ((1.0, 2.0, 30.0, 40.0),)),
    ("［｛＂bbox_2d＂：［１，２，３０，４０］｝］", ((1.0, 2.0, 30.0, 40.0),)),  # full-width list
])
def test_lists_and_single_forms_parse_to_sets(answer: str, boxes: tuple[tuple[float, ...], ...]) -> None:
    assert parse_box_list(answer).boxes == boxes


@pytest.mark.parametrize(("answer", "reason"), [
    ('[{"bbox_2d": [1, 2, 30, 40]}, {"bbox_2d": [5, 6, 7]}]', "list member 1 is not a box"),
    ('[{"bbox_2d": [1, 2, 30, 40]}, {"box": [5, 6, 7, 8]}]', "list member 1 is not a box"),
    ('[{"bbox_2d": [1, 2, 30, 40]}, "left"]', "list member 1 is not a box"),
    ('[{"bbox_2d": [1, 2, true, 40]}]', "list member 0 is not a box"),
    ('[{"bbox_2d": [1, 2, 30, 40]}, {"bbox_2d": [5, 6', "not valid JSON"),
    ("nothing here", "no box"),
    ("[" + ", ".join(["[1, 2, 3, 4]"] * (MAX_BOXES + 1)) + "]", "more than 100"),
])
def test_a_list_with_an_unparsable_member_is_a_format_failure_with_a_reason(answer: str, reason: str) -> None:
    parsed = parse_box_list(answer)
    assert parsed.boxes is None and parsed.reason is not None and reason in parsed.reason
    assert parse_answer(f"<think>t</think><answer>{answer}</answer>", frame=FRAME, multi_box=True) is None


def test_members_are_clipped_and_one_outside_the_image_fails_the_answer() -> None:
    assert grounding_set('[{"bbox_2d": [-5, 2, 30, 400]}]', FRAME).boxes == ((0.0, 2.0, 30.0, 100.0),)
    outside = grounding_set('[{"bbox_2d": [1, 2, 30, 40]}, {"bbox_2d": [300, 10, 350, 20]}]', FRAME)
    assert outside.boxes is None and outside.reason is not None and "box 1" in outside.reason


def test_parse_answer_multi_box_gives_every_box_and_the_empty_set() -> None:
    two = parse_answer('<think>t</think><answer>[{"bbox_2d": [1, 2, 30, 40]}, {"bbox_2d": [50, 5, 90, 45]}]'
                       "</answer>", frame=FRAME, multi_box=True)
    assert two is not None and two.format_ok and two.box == (1.0, 2.0, 30.0, 40.0) and two.boxes is not None
    assert len(two.boxes) == 2
    empty = parse_answer("<think>t</think><answer>[]</answer>", frame=FRAME, multi_box=True)
    assert empty is not None and empty.format_ok and empty.boxes == () and empty.box is None


def test_single_box_parsing_is_unchanged() -> None:
    # Without multi_box the first box wins, as before, and an empty list is no answer.
    text = '<think>t</think><answer>[{"bbox_2d": [1, 2, 30, 40]}, {"bbox_2d": [50, 5, 90, 45]}]</answer>'
    single = parse_answer(text, frame=FRAME)
    assert single is not None and single.box == (1.0, 2.0, 30.0, 40.0) and single.boxes is None
    assert parse_answer("<think>t</think><answer>[]</answer>", frame=FRAME) is None


def test_the_prompt_names_the_list_form_only_in_a_multi_box_stage() -> None:
    single = user_text("Locate the mass.", "grounding", "input_pixels", None)
    assert single == user_text("Locate the mass.", "grounding", "input_pixels", None, multi_box=False)
    assert single.endswith('Give the box as {"bbox_2d": [x1, y1, x2, y2]} in pixels of this image.')
    multi = user_text("Locate the mass.", "grounding", "norm1000", None, multi_box=True)
    assert '[{"bbox_2d": [x1, y1, x2, y2]}, ...]' in multi and "or [] if it is not present" in multi
    assert "0-1000 normalised" in multi
    request = RolloutRequest("p", Image.new("RGB", (8, 8)), "Locate the mass.", multi_box=True)
    assert "or [] if it is not present" in build_prompt(request, "input_pixels", None, False).user_text
    # Other tasks ignore the switch.
    assert user_text("Which grade?", "grading", "input_pixels", None, multi_box=True) == user_text(
        "Which grade?", "grading", "input_pixels", None)
