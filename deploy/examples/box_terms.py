"""An example reward term (`reward.extra_terms`, docs/algorithms.md "Reward terms you add"): a penalty on
boxes far larger than the finding. A box that covers the whole lung field overlaps a small nodule a little
and can still clear a low IoU threshold early in the MedLoc-R1 schedule; this term makes the cheap answer
cost something on its own.

Use it in a run config (the module must import where the run starts and in the reward actor; from the
repository root `deploy.examples.box_terms` does):

    reward:
      extra_terms:
        - {fn: "deploy.examples.box_terms:oversized_box_penalty", weight: 0.5, name: oversized_box}
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rewards.extra_terms import ScoredCompletion
from rewards.scoring import RewardTarget

FREE_RATIO = 2.0  # a box up to twice the true box's area costs nothing
FULL_RATIO = 4.0  # from four times the area on, the full penalty of -1


def _area(box: tuple[float, float, float, float]) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def oversized_box_penalty(completions: Sequence[ScoredCompletion],
                          targets: Sequence[RewardTarget]) -> list[float]:
    """Per completion: 0 when the answer box's area is at most 2x the largest true box's, -1 from 4x on,
    linear in log2 of the area ratio between (-0.5 at 2.83x); 0 for answers without a box and for tasks
    other than grounding (the format and accuracy terms already score those)."""
    out = []
    for c, t in zip(completions, targets, strict=True):
        if c.task != "grounding" or c.box is None or not t.boxes:
            out.append(0.0)
            continue
        ratio = max(_area(c.box), 1e-12) / max(_area(b) for b in t.boxes)  # a parsed box has area > 0
        span = math.log2(FULL_RATIO) - math.log2(FREE_RATIO)
        out.append(-min(1.0, max(0.0, (math.log2(ratio) - math.log2(FREE_RATIO)) / span)))
    return out
