"""Pure parts of the driver: prompt order, reference answers, seeds, checkpoint layout, eval metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rollout.images import ImageFrame
from services import checkpointing as ckpt
from services.data.records import Record
from services.evaluation.metrics import (
    grading_metrics,
    grounding_metrics,
    grounding_report,
    paired_change,
    paired_changes,
)
from services.targets import SFT_THINK, reference_answer
from services.training.producer import sampling_seed
from services.training.sampler import PromptSampler


def test_sampler_is_a_seeded_permutation_per_epoch_and_resumes_exactly() -> None:
    a = PromptSampler(tuple(range(5)), seed=3)
    first = a.take(5)
    assert sorted(first) == [0, 1, 2, 3, 4]  # one epoch visits every item once
    b = PromptSampler(tuple(range(5)), seed=3)
    b.take(3)
    state = json.loads(json.dumps(b.state_dict()))
    c = PromptSampler(tuple(range(5)), seed=3)
    c.load_state_dict(state)
    assert c.take(4) == b.take(4)  # crosses the epoch boundary identically
    with pytest.raises(ValueError, match="resume with the same data"):
        PromptSampler(tuple(range(6)), seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="no records"):
        PromptSampler((), seed=0)


def test_reference_answer_uses_the_models_coordinate_convention() -> None:
    record = Record(id="r", image="x.png", width=200, height=100, phrase="a nodule",
                    boxes=((20.0, 10.0, 60.0, 50.0),))
    # Qwen2.5-VL: input pixels. The 200x100 image was resized to 112x56: x scale 0.56, y scale 0.56.
    pixels = reference_answer(record, ImageFrame(200, 100, 112, 56, "input_pixels"))
    assert pixels == f'<think>{SFT_THINK}</think><answer>{{"bbox_2d": [11, 6, 34, 28]}}</answer>'
    # Qwen2-VL: 0..1000 of the image: x1 = 20/200*1000 = 100, y1 = 10/100*1000 = 100, x2 = 300, y2 = 500.
    norm = reference_answer(record, ImageFrame(200, 100, 112, 56, "norm1000"))
    assert norm.endswith('{"bbox_2d": [100, 100, 300, 500]}</answer>')


def test_sampling_seeds_differ_per_slot_and_repeat_per_run() -> None:
    seeds = {sampling_seed(0, step, refill, i) for step in range(3) for refill in range(2) for i in range(4)}
    assert len(seeds) == 24
    assert sampling_seed(7, 5, 0, 1) == sampling_seed(7, 5, 0, 1)


def test_checkpoints_are_complete_or_absent(tmp_path: Path) -> None:
    def fill(d: Path) -> None:
        (d / "part").write_text("x")

    for step in (1, 2, 3):
        ckpt.write_checkpoint(tmp_path, step, fill, keep=2)
    (tmp_path / "checkpoints" / "step-9").mkdir()  # a half-written one (no COMPLETE mark) is ignored
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-2", "step-3"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-3"
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.every"):
        ckpt.latest_checkpoint(tmp_path / "empty")


def test_grounding_metrics_by_hand() -> None:
    # IoUs 0.9, 0.6, 0.3, 0 (unparsed): A@0.5 = 2/4, A@0.8 = 1/4, mIoU = 1.8/4 = 0.45;
    # pseudo-mAP = mean over t in .50..95 of the share >= t: 0.9 passes .50-.90 (9), 0.6 passes
    # .50/.55/.60 (3) -> (9 + 3) / (4 * 10) = 30 %.
    m = grounding_metrics([0.9, 0.6, 0.3, 0.0], [True, True, True, False])
    assert m["A@0.5"] == 50.0 and m["A@0.8"] == 25.0
    assert m["mIoU"] == pytest.approx(0.45)
    assert m["pseudo_mAP"] == pytest.approx(30.0)
    assert m["parse_fail_pct"] == 25.0
    report = grounding_report([0.9, 0.6], [True, True], [0.001, 0.05])
    assert set(report) == {"all", "<0.5%", "2-10%"}


def test_grading_metrics_count_unparsed_as_worst() -> None:
    # truth grades 1, 2, 0 span 0..2 -> an unparsed answer costs 2; errors 0, 1, 2 -> mean 1; accuracy 1/3.
    m = grading_metrics([1, 3, None], [1, 2, 0])
    assert m["accuracy"] == pytest.approx(100 / 3)
    assert m["mean_abs_grade_error"] == pytest.approx(1.0)


def test_evaluation_counts_a_grade_off_the_scale_as_unparsable() -> None:
    # "grade 20" on a 0-3 question is garbage, not an error of 19: the record's max_grade bounds the answer.
    from rollout.contracts import Completion, RolloutGroup
    from services.evaluation.heldout import _prediction, report

    def predict(answer: str, grade: int) -> object:
        record = Record(id=f"r{answer}", image="x.png", task="grading",
                        phrase="Grade it from 0 to 3.", grade=grade,
                        max_grade=3, width=8, height=8)
        group = RolloutGroup(prompt_id=record.id, task="grading",
                             completions=(Completion(f"<think>t</think><answer>{answer}</answer>", (5,), (-1.0,),  # noqa: E501
                                                     "stop"),),
                             prompt_token_ids=np.arange(3), frame=ImageFrame(8, 8, 8, 8, "input_pixels"),
                             injected_knowledge=None, adapter_version=0,
                             pixel_values=np.zeros((4, 6), np.float32),
                             image_grid_thw=np.array([[1, 2, 2]]), mm_token_type_ids=np.zeros(3, np.int64))
        return _prediction(record, group)

    preds = [predict("grade 20", 1), predict('{"grade": 3}', 3), predict("0", 0)]
    assert [p.grade for p in preds] == [None, 3, 0]  # type: ignore[attr-defined]
    m = report(preds)  # type: ignore[arg-type]
    assert m["eval/grade/parse_fail_pct"] == pytest.approx(100 / 3)
    # worst error 3 - 0 = 3 for the garbage, / 3
    assert m["eval/grade/mean_abs_grade_error"] == pytest.approx(1.0)


def test_paired_change_takes_the_error_from_per_image_differences() -> None:

    before = [0.2, 0.6, 0.55, 0.1]  # A@0.5: 50 %; mIoU 0.3625
    after = [0.6, 0.4, 0.55, 0.1]   # image 1 crosses 0.5, image 2 falls below it: A@0.5 still 50 %
    mean, se = paired_change(before, after, 0.5)
    assert mean == 0.0 and math.isclose(se, 100 * math.sqrt(2 / 3) / 2)  # differences +100, -100, 0, 0
    mean, se = paired_change(before, after, None)
    assert math.isclose(mean, 0.05) and math.isclose(se, float(np.std([0.4, -0.2, 0, 0], ddof=1)) / 2)
    with pytest.raises(ValueError, match="same >= 2 images"):
        paired_change([0.1, 0.2], [0.1], 0.5)


def test_paired_changes_align_images_by_id_and_refuse_other_images() -> None:
    before = {"b": 0.6, "a": 0.2, "c": 0.55, "d": 0.1}
    after = {"a": 0.6, "b": 0.4, "c": 0.55, "d": 0.1}  # the same images in another order
    changes = paired_changes(before, after)
    assert list(changes) == ["A@0.3", "A@0.5", "A@0.8", "mIoU"]
    # by id: a 0.2 -> 0.6, b 0.6 -> 0.4, c and d unchanged -- the pairs of the test above
    assert changes["A@0.5"] == paired_change([0.2, 0.6, 0.55, 0.1], [0.6, 0.4, 0.55, 0.1], 0.5)
    assert math.isclose(changes["mIoU"][0], 0.05)
    with pytest.raises(ValueError, match=r"different held-out images \(4 and 3, 3 shared\)"):
        paired_changes(before, {"a": 0.6, "b": 0.4, "c": 0.5})


def test_sampled_accuracy_is_pass_at_1_and_pass_at_k_over_images() -> None:
    """Three images, k = 4 samples each (IoUs by hand):
    image a: 0.9, 0.6, 0.2, 0.0 -> at 0.5: 2/4 right; at 0.8: 1/4; at 0.3: 2/4; any at 0.5: yes
    image b: 0.4, 0.4, 0.4, 0.4 -> at 0.5: 0/4; at 0.3: 4/4; any at 0.5: no
    image c: 0.0, 0.0, 0.0, 0.55 -> at 0.5: 1/4; at 0.3: 1/4; any at 0.5: yes
    pass@1 at 0.5 = mean(0.5, 0, 0.25) = 25 %; pass@4 at 0.5 = 2/3 = 66.7 %; pass@1 at 0.3 = mean(.5, 1, .25)
    = 58.3 %; mIoU = mean of all twelve = (1.7 + 1.6 + 0.55) / 12 = 0.3208."""
    from services.evaluation.metrics import paired_sampled_changes, sampled_metrics

    ious = [[0.9, 0.6, 0.2, 0.0], [0.4, 0.4, 0.4, 0.4], [0.0, 0.0, 0.0, 0.55]]
    m = sampled_metrics(ious)
    assert (m["n"], m["k"]) == (3, 4)
    assert m["A@0.5"] == pytest.approx(25.0) and m["pass@k/A@0.5"] == pytest.approx(200 / 3)
    assert m["A@0.3"] == pytest.approx(175 / 3) and m["A@0.8"] == pytest.approx(25 / 3)
    assert m["mIoU"] == pytest.approx(3.85 / 12)
    # SE over images: per-image pass@1 at 0.5 is (0.5, 0, 0.25): std (ddof 1) 0.25, / sqrt(3), in percent
    assert m["A@0.5_se"] == pytest.approx(100 * 0.25 / 3 ** 0.5)
    # the obvious loop agrees on random input
    rng = np.random.default_rng(0)
    big = rng.random((50, 6))
    loop = 100 * sum(sum(v >= 0.5 for v in row) / 6 for row in big) / 50
    assert sampled_metrics(big.tolist())["A@0.5"] == pytest.approx(loop)
    assert sampled_metrics(big.tolist())["pass@k/A@0.5"] == pytest.approx(100 * np.mean([any(r >= 0.5) for r in big]))  # noqa: E501
    # paired: the same draws before and after; image b's samples all move to 0.6 (+100 points at 0.5 for b)
    before = {"a": ious[0], "b": ious[1], "c": ious[2]}
    after = {**before, "b": [0.6] * 4}
    mean, se = paired_sampled_changes(before, after)["A@0.5"]
    # diffs (0, 100, 0): std 57.7 / sqrt 3
    assert mean == pytest.approx(100 / 3) and se == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="different held-out images"):
        paired_sampled_changes(before, {"a": ious[0], "b": ious[1]})


def test_multi_box_reference_answers_list_every_box_and_say_none_for_a_negative() -> None:
    two = Record(id="r", image="x.png", width=200, height=100, phrase="effusions",
                 boxes=((20.0, 10.0, 60.0, 50.0), (100.0, 10.0, 140.0, 50.0)))
    frame = ImageFrame(200, 100, 112, 56, "input_pixels")  # scale 0.56 on both axes
    assert reference_answer(two, frame, multi_box=True).endswith(
        '<answer>[{"bbox_2d": [11, 6, 34, 28]}, {"bbox_2d": [56, 6, 78, 28]}]</answer>')
    negative = Record(id="n", image="x.png", width=200, height=100, phrase="effusions")
    assert reference_answer(negative, frame, multi_box=True).endswith("<answer>[]</answer>")
    with pytest.raises(ValueError, match="multi_box: true"):
        reference_answer(negative, frame)
    # The single-box target of a two-box record is its first box, as before.
    assert reference_answer(two, frame).endswith('<answer>{"bbox_2d": [11, 6, 34, 28]}</answer>')
