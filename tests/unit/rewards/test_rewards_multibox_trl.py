"""The TRL reward adapter with set targets (issue 31): negatives and multi-box targets survive the dataset
column's JSON form, score as the scorer scores them, and single-box targets score as before."""

from __future__ import annotations

import json

from rewards import ImageFrame, MedgroundReward, RewardConfig, RewardTarget, ScheduleSnapshot, score_columns

FRAME = ImageFrame(200.0, 100.0, 200.0, 100.0, "input_pixels")
TWO = RewardTarget("grounding", boxes=((10.0, 10.0, 40.0, 40.0), (120.0, 20.0, 180.0, 80.0)), frame=FRAME)
NEG = RewardTarget("grounding", boxes=(), frame=FRAME)
ONE = RewardTarget("grounding", boxes=((10.0, 10.0, 40.0, 40.0),), frame=FRAME)


def _answer(boxes: list[list[int]]) -> str:
    return "<think>t</think><answer>" + json.dumps([{"bbox_2d": b} for b in boxes]) + "</answer>"


def test_trl_adapter_scores_sets_from_the_json_column() -> None:
    completions = [_answer([[10, 10, 40, 40]]), _answer([[10, 10, 40, 40], [120, 20, 180, 80]]),
                   _answer([]), _answer([[0, 0, 9, 9]])]
    targets = [TWO, TWO, NEG, NEG]
    column = [json.loads(json.dumps(t.to_dict())) for t in targets]  # as a datasets column holds it
    assert RewardTarget.from_dict(column[2]) == NEG
    config = RewardConfig(w_recite=0.0, boxes="set", accuracy="fixed", fixed_tau=0.5)
    got = MedgroundReward(config)(prompts=["p", "p", "q", "q"], completions=completions, reward_target=column)
    # TWO: one of two boxes -> F1 2/3, both -> 1; NEG: [] -> 1, a box -> 0; plus the format term 0.5 each
    assert got == [2 / 3 + 0.5, 1.5, 1.5, 0.5]


def test_trl_adapter_single_box_targets_score_as_the_scorer_did() -> None:
    completions = [_answer([[10, 10, 40, 40]]),
                   '<think>t</think><answer>{"bbox_2d": [12, 12, 40, 40]}</answer>',
                   "no answer", "<answer>[15, 15, 60, 60]</answer>"]
    for config in (RewardConfig(w_recite=0.0, accuracy="fixed"), RewardConfig(w_recite=0.0, accuracy="fixed",
                                                                               boxes="set")):
        got = MedgroundReward(config)(prompts=["p"] * 4, completions=completions,
                                      reward_target=[ONE.to_dict()] * 4)
        plain = score_columns([(completions, ONE)], ScheduleSnapshot(0.5, 0),
                              RewardConfig(w_recite=0.0, accuracy="fixed"))
        assert got == plain.total.tolist()
