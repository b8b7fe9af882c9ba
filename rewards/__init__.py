"""rewards: pure scoring for medground (boxes, frames, parsing, reward terms, the MedLoc-R1 schedule).

No Ray here: the actor lives in `rewards.actor` and is imported only by the code that starts it.
"""

from rewards.boxes import iou, iou_pairs, max_iou
from rewards.config import RewardConfig, ScheduleConfig
from rewards.frames import Box, ImageFrame, from_original, smart_resize, to_original
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
    "Box", "ImageFrame", "MedgroundReward", "ParsedAnswer", "RaiseRecord", "RewardBreakdown", "RewardColumns", "RewardConfig",
    "RewardScorer", "RewardTarget", "ScheduleConfig", "ScheduleSnapshot", "ScheduleStats", "ScoredBatch",
    "ThresholdSchedule", "from_original", "grade_reward", "iou", "iou_pairs", "label_match", "max_iou",
    "parse_answer", "recitation", "score_columns", "score_group", "score_groups", "smart_resize", "to_original",
]
