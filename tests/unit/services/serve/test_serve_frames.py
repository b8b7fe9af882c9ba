"""The Serve app's answer -> box path is evaluation's (`grounding_answer`): hand-computed conversions into
original pixels for both conventions, clipping in the model frame, and answers without a box."""

from __future__ import annotations

import pytest

from rollout.images import ImageFrame
from services.evaluation import grounding_answer

ANSWER = '<think>t</think><answer>{"bbox_2d": [14, 21, 42, 49]}</answer>'


def test_input_pixels_scale_by_original_over_input() -> None:
    # 300x170 image seen as 140x84: x scales by 300/140, y by 170/84.
    # 14*300/140 = 30, 21*170/84 = 42.5, 42*300/140 = 90, 49*170/84 = 99.1666...
    frame = ImageFrame(300, 170, 140, 84, "input_pixels")
    parsed, box = grounding_answer(ANSWER, frame)
    assert parsed is not None and parsed.format_ok and parsed.box == (14.0, 21.0, 42.0, 49.0)
    assert box == pytest.approx((30.0, 42.5, 90.0, 99.16666667))


def test_norm1000_scales_by_original_over_1000() -> None:
    # 0..1000 units on a 300x170 image: 100 -> 30, 200 -> 34, 500 -> 150, 600 -> 102.
    frame = ImageFrame(300, 170, 140, 84, "norm1000")
    _, box = grounding_answer("<answer>[100, 200, 500, 600]</answer>", frame)
    assert box == pytest.approx((30.0, 34.0, 150.0, 102.0))


def test_boxes_are_clipped_in_the_model_frame_before_conversion() -> None:
    # x2 = 500 lies outside the 140-pixel-wide input: clipped to 140, i.e. the image's right edge (300).
    frame = ImageFrame(300, 170, 140, 84, "input_pixels")
    _, box = grounding_answer("<answer>[14, 21, 500, 49]</answer>", frame)
    assert box is not None and box[2] == pytest.approx(300.0)


@pytest.mark.parametrize("text", ["", "no answer", "<answer>[3, 4, 1, 2]</answer>",
                                  "<answer>[1, 2, 3]</answer>"])
def test_no_usable_box_is_none(text: str) -> None:
    assert grounding_answer(text, ImageFrame(300, 170, 140, 84, "input_pixels"))[1] is None
