"""Why an answer has no usable box, in one sentence for the page and the API (`no_box_reason`).

The parser (rewards/parse.py) returns None for every failure alike, which is right for a reward; a person
looking at a scan needs to know whether the model wrote no box, a malformed one, or one outside the image.
"""

from __future__ import annotations

from rewards.parse import box_numbers, split_completion
from rollout.images import ImageFrame


def no_box_reason(text: str, frame: ImageFrame) -> str:
    """The reason `grounding_answer` found no box in `text` (call it only then); `frame` is the prompt's."""
    _, answer, _ = split_completion(text)
    if answer is None:
        return "unparsable: the answer has no <answer>...</answer> block"
    raw = box_numbers(answer)
    if raw is None:
        return "unparsable: the <answer> block holds no box [x1, y1, x2, y2] of four finite numbers"
    x1, y1, x2, y2 = raw
    shown = "[" + ", ".join(f"{v:g}" for v in raw) + "]"
    if not (x1 < x2 and y1 < y2):
        return f"the box {shown} is empty or its corners are swapped (needs x1 < x2 and y1 < y2)"
    if frame.convention == "norm1000":
        extent = "0..1000 normalised units"
    else:
        extent = f"the {frame.input_width}x{frame.input_height} pixels the model saw"
    return f"the box {shown} lies outside the image ({extent})"
