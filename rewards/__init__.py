"""rewards: pure scoring for medground (boxes, frames, parsing, reward terms, the MedLoc-R1 schedule).

boxes.py (IoU, best IoU over several truths, clipping, the box of a mask), frames.py (coordinate frames and
the one conversion to original pixels), parse.py (model text -> box, label or grade), terms.py (recitation
BLEU, MFRS, label match), scoring.py (RewardTarget, the vectorised batch scorer), aggregate.py (how the terms
combine: the weighted sum or GDPO's normalize_then_sum), extra_terms.py (reward terms a user adds:
ScoredCompletion, loading and checking them), matching.py (the set reward: Hungarian matching, F1 at tau,
mean matched IoU) and set_scoring.py (its batch columns), schedule.py (the MedLoc-R1 threshold schedule),
scorer.py
(RewardScorer: scoring plus the schedule's state), config.py (RewardConfig, ExtraTerm, ScheduleConfig),
trl_reward.py (a TRL GRPOTrainer reward function), actor.py (the Ray actor; the only file
that imports ray). The maths and its sources: docs/algorithms.md.

Usable on its own, for example as a plain reward function:

>>> from rewards import ImageFrame, RewardConfig, RewardScorer, RewardTarget
>>> frame = ImageFrame.for_image(width=512, height=512, convention="input_pixels")  # model sees 504 x 504
>>> target = RewardTarget("grounding", boxes=((100.0, 100.0, 200.0, 200.0),), frame=frame)
>>> scorer = RewardScorer(RewardConfig(w_recite=0.0))
>>> batch = scorer.score_batch([(['<think>right base</think><answer>{"bbox_2d": [98, 98, 197, 197]}</answer>',
...                               'I think it is [1, 2, 3, 4]'], target)], step=0)
>>> # [98, 98, 197, 197] * 512/504 = [99.56, 99.56, 200.13, 200.13] px: IoU 100^2 / 100.57^2 = 0.989
>>> [(round(b.iou, 3), b.r_acc, b.format_ok, b.total) for b in batch.groups[0]]
[(0.989, 1.0, True, 1.5), (0.0, 0.0, False, 0.0)]
>>> batch.schedule.tau, batch.schedule.stats.window_len
(0.3, 1)

No Ray here: the actor lives in `rewards.actor` and is imported only by the code that starts it.
"""
from rewards.boxes import best_iou, clip_box, iou, iou_pairs, mask_box, max_iou
from rewards.config import ExtraTerm, RewardConfig, ScheduleConfig
from rewards.extra_terms import RewardTermError, ScoredCompletion
from rewards.frames import Box, ImageFrame, from_original, smart_resize, to_original
from rewards.matching import match_boxes, set_accuracy, set_iou
from rewards.parse import ParsedAnswer, parse_answer
from rewards.schedule import RaiseRecord, ScheduleStats, ThresholdSchedule
from rewards.scorer import RewardScorer, ScoredBatch
from rewards.scoring import (
    RewardBreakdown,
    RewardColumns,
    RewardTarget,
    ScheduleSnapshot,
    score_columns,
    score_group,
    score_groups,
)
from rewards.terms import grade_reward, label_match, recitation
from rewards.trl_reward import MedgroundReward

__all__ = [
    "Box",
    "ExtraTerm",
    "ImageFrame",
    "MedgroundReward",
    "ParsedAnswer",
    "RaiseRecord",
    "RewardBreakdown",
    "RewardColumns",
    "RewardConfig",
    "RewardScorer",
    "RewardTarget",
    "RewardTermError",
    "ScheduleConfig",
    "ScheduleSnapshot",
    "ScheduleStats",
    "ScoredBatch",
    "ScoredCompletion",
    "ThresholdSchedule",
    "best_iou",
    "clip_box",
    "from_original",
    "grade_reward",
    "iou",
    "iou_pairs",
    "label_match",
    "mask_box",
    "match_boxes",
    "max_iou",
    "parse_answer",
    "recitation",
    "score_columns",
    "score_group",
    "score_groups",
    "set_accuracy",
    "set_iou",
    "smart_resize",
    "to_original",
]
