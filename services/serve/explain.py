"""Why an answer has no box, in one sentence for the page and the API (`no_box_reason`).

The parser (rewards/parse.py) returns None for every failure alike, which is right for a reward; a person
looking at a scan needs to know whether the model wrote no box, a malformed one, or one outside the image.
A multi-box model may also answer `[]`: a valid answer ("not present"), said as such, not as a failure.
"""

from __future__ import annotations

from rewards.parse import box_numbers, grounding_set, parse_box_list, split_completion
from rollout.images import ImageFrame
from services.convert import reward_frame

NOT_PRESENT = "the model answered that the finding is not present (an empty list [])"


def no_box_reason(text: str, frame: ImageFrame, multi_box: bool = False) -> str:
    """The reason the answer `text` gave no box (call it only then); `frame` is the prompt's. `multi_box`:
    the answer was read as a list (`rewards.parse.grounding_set`), whose reason names a malformed member,
    and a valid `[]` is `NOT_PRESENT`."""
    _, answer, _ = split_completion(text)
    if answer is None:
        return "unparsable: the answer has no <answer>...</answer> block"
    if multi_box:
        listed = parse_box_list(answer)
        if listed.boxes is None:  # not a list of boxes: the reason names the member or the syntax
            return f"unparsable: {listed.reason}"
        found = grounding_set(answer, reward_frame(frame))
        return NOT_PRESENT if found.boxes is not None else f"{found.reason}; the image is {_extent(frame)}"
    raw = box_numbers(answer)
    if raw is None:
        return "unparsable: the <answer> block holds no box [x1, y1, x2, y2] of four finite numbers"
    x1, y1, x2, y2 = raw
    shown = "[" + ", ".join(f"{v:g}" for v in raw) + "]"
    if not (x1 < x2 and y1 < y2):
        return f"the box {shown} is empty or its corners are swapped (needs x1 < x2 and y1 < y2)"
    return f"the box {shown} lies outside the image ({_extent(frame)})"


def _extent(frame: ImageFrame) -> str:
    if frame.convention == "norm1000":
        return "0..1000 normalised units"
    return f"the {frame.input_width}x{frame.input_height} pixels the model saw"
