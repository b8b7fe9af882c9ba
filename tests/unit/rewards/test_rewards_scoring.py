"""Reward terms and totals: hand-computed values per mode, batch semantics of the scorer, the TRL adapter."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import (
    ImageFrame,
    MedgroundReward,
    RewardConfig,
    RewardScorer,
    RewardTarget,
    ScheduleConfig,
    ScheduleSnapshot,
    grade_reward,
    label_match,
    recitation,
    score_group,
)

FRAME = ImageFrame(200.0, 100.0, 400.0, 200.0, "input_pixels")  # model coords are 2x original
GT = RewardTarget("grounding", boxes=((10.0, 10.0, 50.0, 50.0), (100.0, 0.0, 200.0, 100.0)), frame=FRAME)


def answer(box: str, think: str = "look") -> str:
    return f"<think>{think}</think><answer>{{\"bbox_2d\": {box}}}</answer>"


def test_grounding_totals_by_mode() -> None:
    texts = [
        answer("[20, 20, 100, 100]"),  # original (10,10,50,50): IoU 1 with the first box
        answer("[20, 20, 60, 100]"),  # original (10,10,30,50): 20x40 = 800 of 1600 -> IoU 0.5
        answer("[200, 0, 300, 200]"),  # original (100,0,150,100): 5000 of 10000 -> IoU 0.5 (second box)
        "[20, 20, 100, 100]",  # no answer block: IoU 0, format 0
        "<answer>[20, 20, 100, 100]</answer>",  # box ok, no think: format 0, IoU 1
    ]
    cfg = RewardConfig(w_recite=0.0)  # w_acc 1, w_format 0.5
    out = score_group(texts, GT, ScheduleSnapshot(0.6, 3), cfg)
    assert [b.iou for b in out] == pytest.approx([1.0, 0.5, 0.5, 0.0, 1.0])
    assert [b.r_acc for b in out] == [1.0, 0.0, 0.0, 0.0, 1.0]  # IoU >= 0.6
    assert [b.total for b in out] == pytest.approx([1.5, 0.5, 0.5, 0.0, 1.0])  # r_acc + 0.5 * format
    assert out[0].pred_box == pytest.approx((10.0, 10.0, 50.0, 50.0)) and out[3].pred_box is None
    assert all(b.tau == 0.6 and b.tau_version == 3 for b in out)
    raw = score_group(texts, GT, ScheduleSnapshot(None, 0), cfg.model_copy(update={"accuracy": "raw_iou"}))
    assert [b.r_acc for b in raw] == pytest.approx([1.0, 0.5, 0.5, 0.0, 1.0]) and raw[0].tau is None
    # IoU exactly at tau counts: >= (0.5 >= 0.5).
    assert [b.r_acc for b in score_group(texts, GT, ScheduleSnapshot(0.5, 0),
                                         cfg)] == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_norm1000_frame() -> None:
    frame = ImageFrame(200.0, 100.0, 400.0, 200.0, "norm1000")
    target = RewardTarget("grounding", boxes=((10.0, 10.0, 50.0, 50.0),), frame=frame)
    # (50, 100, 250, 500) in 0..1000 units -> (10, 10, 50, 50) px of a 200 x 100 image.
    [b] = score_group([answer("[50, 100, 250, 500]")], target, ScheduleSnapshot(0.5, 0),
                      RewardConfig(w_recite=0.0))
    assert b.iou == pytest.approx(1.0)


def test_terms_hand_values() -> None:
    assert [grade_reward(g, 2) for g in (2, 3, 0, None)] == [1.0, 0.25, 0.0625, 0.0]  # 2^(-2d), d = 0, 1, 2
    # 1/(2(d^2+1)): d=1 -> 1/4, d=2 -> 1/10, d=3 -> 1/20; d=0 -> 1.
    assert [grade_reward(g, 0, "inverse_square") for g in (0, 1, 2, 3)] == [1.0, 0.25, 0.1, 0.05]
    assert label_match("Pleural  Effusion.", "pleural effusion") == 1.0
    assert label_match("Pleural  Effusion.", "pleural effusion", "exact") == 0.0
    assert recitation("nodules are round opacities", "nodules are round opacities") == pytest.approx(1.0)
    assert recitation("left lower lobe", "nodules are round opacities") == 0.0
    assert recitation("", "anything") == 0.0


def test_recitation_measures_the_quote_not_the_thinks_length() -> None:
    # BLEU's brevity penalty would score a short think near 0 whether it quotes or not (0.007 vs 0.00005 for
    # the two thinks below against this knowledge): without it, quoting is what moves the score.
    knowledge = ("A frontal radiograph shows air-filled lungs as dark fields crossed by ribs, with the "
                 "bright heart, mediastinum and spine between them; an abnormality is a region that is "
                 "brighter or darker than the lung around it.")
    quoting = recitation("A frontal radiograph shows air-filled lungs as dark. left lung, upper "
                         "zone.", knowledge)
    own = recitation("left lung, upper zone.", knowledge)
    assert quoting > 0.4 and own < 0.2
    assert recitation(knowledge, knowledge) == pytest.approx(1.0)


def test_classification_grading_and_recitation() -> None:
    know = "a pneumothorax appears as a dark rim of air without lung markings"
    cls = RewardTarget("classification", label="Pneumothorax", knowledge=know)
    cfg = RewardConfig()  # w_format 0.5, w_recite -0.5, w_grade 1
    good, recited, wrong = score_group([
        "<think>rim of air at the apex</think><answer>pneumothorax</answer>",
        f"<think>{know}</think><answer>pneumothorax</answer>",
        "<think>x</think><answer>effusion</answer>",
    ], cls, ScheduleSnapshot(0.3, 0), cfg)
    assert good.r_grade == 1.0 and wrong.r_grade == 0.0 and recited.r_recite == pytest.approx(1.0)
    assert recited.total == pytest.approx(1.0 + 0.5 - 0.5)  # match + format - full recitation
    # task: total without recitation
    assert recited.task == pytest.approx(1.5) and good.task == pytest.approx(1.5)
    assert good.total == pytest.approx(1.5 - 0.5 * good.r_recite) and 0.0 <= good.r_recite < 0.5
    assert good.r_acc == 0.0 and good.iou == 0.0
    grd = RewardTarget("grading", grade=3)
    out = score_group(["<think>t</think><answer>2</answer>", "<answer>3</answer>"], grd,
                      ScheduleSnapshot(0.3, 0), cfg)
    assert [b.r_grade for b in out] == [0.25, 1.0] and [b.r_format for b in out] == [1.0, 0.0]
    # "5" is off the 0-3 scale: no answer, no format reward
    scaled = RewardTarget("grading", grade=3, max_grade=3)
    out = score_group(["<think>t</think><answer>5</answer>", "<think>t</think><answer>3</answer>"], scaled,
                      ScheduleSnapshot(0.3, 0), cfg)
    assert [b.r_grade for b in out] == [0.0, 1.0] and [b.r_format for b in out] == [0.0, 1.0]


def test_target_validation() -> None:
    with pytest.raises(ValueError, match="frame"):
        RewardTarget("grounding", boxes=((0.0, 0.0, 1.0, 1.0),))
    with pytest.raises(ValueError, match="x1 < x2"):
        RewardTarget("grounding", boxes=((5.0, 0.0, 1.0, 1.0),), frame=FRAME)
    with pytest.raises(ValueError, match="grade"):
        RewardTarget("grading", grade=-1)
    with pytest.raises(ValueError, match="max_grade"):
        RewardTarget("grading", grade=3, max_grade=2)
    scaled = RewardTarget("grading", grade=1, max_grade=3)
    assert RewardTarget.from_dict(json.loads(json.dumps(scaled.to_dict()))) == scaled
    assert RewardTarget.from_dict(json.loads(json.dumps(GT.to_dict()))) == GT


frames = st.builds(ImageFrame, st.integers(8, 4000).map(float), st.integers(8, 4000).map(float),
                   st.integers(1, 50).map(lambda k: 28.0 * k), st.integers(1, 50).map(lambda k: 28.0 * k),
                   st.sampled_from(["input_pixels", "norm1000"]))
weights = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.text(max_size=60) | st.builds(answer, st.lists(st.floats(allow_nan=True), min_size=4,
                                                                       max_size=4).map(str)),
                      min_size=1, max_size=5),
       frame=frames, w=st.tuples(weights, weights, weights, weights),
       mode=st.sampled_from(["medloc", "fixed", "raw_iou", "stepped"]), know=st.text(max_size=30))
def test_total_is_finite(texts: list[str], frame: ImageFrame, w: tuple[float, ...], mode: str,
                         know: str) -> None:
    cfg = RewardConfig(accuracy=mode, w_acc=w[0], w_format=w[1], w_recite=w[2], w_grade=w[3])  # type: ignore[arg-type]
    target = RewardTarget("grounding", boxes=((0.0, 0.0, 4.0, 4.0),), frame=frame, knowledge=know)
    batch = RewardScorer(cfg).score_batch([(texts, target)], step=0, progress=0.5)
    for b in batch.groups[0]:
        assert math.isfinite(b.total) and 0.0 <= b.iou <= 1.0 and 0.0 <= b.r_recite <= 1.0


def test_batch_scored_under_start_snapshot_then_observed() -> None:
    # Window 2; each group of 2 perfect answers (IoU 1): after the 2nd group the window is full and all three
    # conditions hold (r_bar 1, sigma 0, margin 1 - 0.3), so tau rises to 0.45 *during* the batch; the newest
    # entry is kept, the 3rd group fills the window again (margin 1 - 0.45) and tau rises to 0.60.
    cfg = RewardConfig(w_recite=0.0, schedule=ScheduleConfig(window=2))
    scorer = RewardScorer(cfg)
    group = ([answer("[20, 20, 100, 100]")] * 2, GT)
    batch = scorer.score_batch([group, group, group], step=7)
    assert {b.tau for g in batch.groups for b in g} == {0.3}  # all scored under the start snapshot
    assert batch.scored_under.version == 0 and batch.schedule.tau == 0.6 and batch.schedule.version == 2
    assert [(r.step, r.old_tau, r.new_tau) for r in batch.raises] == [(7, 0.3, 0.45), (7, 0.45, 0.6)]
    # A refill round of the same step is scored under the step's first snapshot, not the raised tau.
    # It is still observed: window full again (margin 1 - 0.6), so tau rises to 0.70 for the next step.
    refill = scorer.score_batch([group], step=7, under=batch.scored_under)
    assert refill.groups[0][0].tau == 0.3 and refill.scored_under == batch.scored_under
    nxt = scorer.score_batch([group], step=8)
    assert nxt.groups[0][0].tau == 0.7 and nxt.groups[0][0].tau_version == 3
    # Non-grounding groups never feed the window.
    before = scorer.schedule.stats().window_len
    scorer.score_batch([(["<answer>x</answer>"], RewardTarget("classification", label="x"))])
    assert scorer.schedule.stats().window_len == before


def test_other_modes_do_not_touch_the_schedule() -> None:
    stepped = RewardScorer(RewardConfig(accuracy="stepped"))
    # Default stages (0, .3), (.2, .45), (.4, .6), (.6, .7), (.8, .8): progress 0.5 is stage 2.
    assert (stepped.snapshot(0.5).tau, stepped.snapshot(0.5).version) == (0.6, 2)
    assert stepped.snapshot(1.0).tau == 0.8 and stepped.snapshot(0.0).tau == 0.3
    fixed = RewardScorer(RewardConfig(accuracy="fixed"))
    fixed.score_batch([([answer("[20, 20, 100, 100]")] * 2, GT)] * 40)
    assert fixed.schedule.stats().window_len == 0 and fixed.snapshot().tau == 0.5
    with pytest.raises(ValueError, match="progress"):
        stepped.snapshot(1.5)


def test_scorer_state_round_trip() -> None:
    cfg = RewardConfig(w_recite=0.0, schedule=ScheduleConfig(window=3))
    a, b = RewardScorer(cfg), RewardScorer(cfg)
    group = ([answer("[20, 20, 100, 100]"), answer("[20, 20, 60, 100]")], GT)
    a.score_batch([group, group])
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(3):
        out_a, out_b = a.score_batch([group] * 2), b.score_batch([group] * 2)
        assert (out_a.groups == out_b.groups and out_a.schedule == out_b.schedule
                and out_a.raises == out_b.raises)
    assert a.schedule.version == b.schedule.version > 0
    with pytest.raises(ValueError, match="format"):
        b.load_state_dict({"format": 99})


def test_trl_adapter_groups_and_scores() -> None:
    reward = MedgroundReward(RewardConfig(w_recite=0.0, schedule=ScheduleConfig(window=2)))
    tgt = GT.to_dict()
    other = RewardTarget("grading", grade=1).to_dict()
    prompts = [[{"role": "user", "content": "find it"}]] * 2 + [[{"role": "user", "content": "grade it"}]] * 2
    completions = [[{"role": "assistant", "content": answer("[20, 20, 100, 100]")}],
                   [{"role": "assistant", "content": [{"type": "text",
                                                       "text": answer("[20, 20, 60, 100]")}]}],
                   [{"role": "assistant", "content": "<think>t</think><answer>1</answer>"}],
                   "<answer>2</answer>"]
    logged: list[tuple[str, float]] = []
    state = SimpleNamespace(global_step=3, max_steps=10)
    out = reward(prompts=prompts, completions=completions, completion_ids=[[1]] * 4,
                 reward_target=[tgt, tgt, other, other], trainer_state=state,
                 log_metric=lambda k, v: logged.append((k, v)))
    # IoU 1 and IoU 0.5 both clear tau 0.3 -> 1 + 0.5 each; exact grade with format -> 1 + 0.5;
    # grade off by one (2^-2 = 0.25) without think tags (format 0) -> 0.25.
    assert out == pytest.approx([1.5, 1.5, 1.5, 0.25])
    assert reward.__name__ == "medground_reward" and logged == [("medground/tau", 0.3)]
    assert reward.last_batch is not None and len(reward.last_batch.groups) == 2
    assert reward.scorer.schedule.stats().window_len == 1  # one grounding group entered the window
    with pytest.raises(ValueError, match="reward_target"):
        reward(prompts=prompts, completions=completions)


def test_empty_batch_and_empty_group() -> None:
    scorer = RewardScorer(RewardConfig(w_recite=0.0))
    assert scorer.score_batch([]).groups == [] and scorer.score_batch([]).columns.offsets.tolist() == [0]
    out = scorer.score_batch([([], GT), ([answer("[20, 20, 100, 100]")], GT)])
    assert [len(g) for g in out.groups] == [0, 1] and out.groups[1][0].iou == pytest.approx(1.0)
    assert scorer.schedule.stats().window_len == 1  # the empty group is not a window entry
