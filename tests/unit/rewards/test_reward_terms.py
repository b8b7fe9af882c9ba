"""How reward terms combine (sum, GDPO's normalize_then_sum) and the terms a user adds (reward.extra_terms):
hand-computed values, a loop written from the definition, G = 2 and G = 1 groups, the example term in
deploy/examples, and one-line errors for every way a user's term can fail."""

from __future__ import annotations

import itertools
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from deploy.examples.box_terms import oversized_box_penalty
from rewards import (
    ImageFrame,
    RewardConfig,
    RewardScorer,
    RewardTarget,
    RewardTermError,
    ScheduleSnapshot,
    ScoredCompletion,
)
from rewards.aggregate import group_standardise, normalize_then_sum
from rewards.extra_terms import load_term, term_values
from rewards.scoring import score_columns

EPS = 1e-4
FRAME = ImageFrame(200.0, 200.0, 200.0, 200.0, "input_pixels")
GT = RewardTarget("grounding", boxes=((0.0, 0.0, 100.0, 100.0),), frame=FRAME)
SPEC = "deploy.examples.box_terms:oversized_box_penalty"


def _cfg(**fields: Any) -> RewardConfig:
    return RewardConfig.model_validate({"w_recite": 0.0, **fields})


def answer(box: str, think: str = "look") -> str:
    return f"<think>{think}</think><answer>{{\"bbox_2d\": {box}}}</answer>"


def test_group_standardise_hand_computed_and_g_2() -> None:
    # Group 0 (G = 3): 1, 0, 0: mean 1/3, unbiased var (4/9 + 1/9 + 1/9) / 2 = 1/3, std 0.57735.
    # Group 1 (G = 2): 0, 1: mean 0.5, std sqrt(0.5) = 0.70711. Group 2 (G = 1): no spread, 0.
    out = group_standardise(np.array([1.0, 0.0, 0.0, 0.0, 1.0, 7.0]), np.array([0, 3, 5, 6]), EPS)
    s3, s2 = math.sqrt(1 / 3) + EPS, math.sqrt(0.5) + EPS
    assert out.tolist() == pytest.approx([2 / 3 / s3, -1 / 3 / s3, -1 / 3 / s3, -0.5 / s2, 0.5 / s2, 0.0])
    assert group_standardise(np.array([0.4, 0.4]), np.array([0, 2]), EPS).tolist() == [0.0, 0.0]  # equal: 0


def _loop(terms: list[list[float]], weights: list[float], offsets: list[int], eps: float) -> list[float]:
    """GDPO from its definition in Python floats: per group and term, (r - mean) / (stdev + eps), then the
    weighted sum."""
    out = [0.0] * len(terms)
    for lo, hi in itertools.pairwise(offsets):
        for k, w in enumerate(weights):
            col = [terms[i][k] for i in range(lo, hi)]
            if len(col) < 2:
                continue
            mean, sd = statistics.fmean(col), statistics.stdev(col)
            for i in range(lo, hi):
                out[i] += w * (terms[i][k] - mean) / (sd + eps)
    return out


def test_normalize_then_sum_matches_loop() -> None:
    rng = np.random.default_rng(0)
    offsets = np.array([0, 4, 6, 7, 11])  # G = 4, 2, 1, 4
    terms = rng.random((11, 3))
    terms[7:11, 1] = 1.0  # a saturated term in the last group
    weights = np.array([1.0, 0.5, -0.5])
    got = normalize_then_sum(terms, weights, offsets, EPS)
    want = _loop(terms.tolist(), weights.tolist(), offsets.tolist(), EPS)
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="one weight per column"):
        normalize_then_sum(terms, weights[:2], offsets, EPS)


def test_score_columns_normalize_then_sum_hand_computed() -> None:
    # acc (tau 0.6) 1, 0, 0 and format 1, 1, 0: z_acc = (2/3, -1/3, -1/3) / s, z_fmt = (1/3, 1/3, -2/3) / s,
    # s = sqrt(1/3) + 1e-4; total = z_acc + 0.5 z_fmt. The weighted sum stays 1.5, 0.5, 0 (reward/total).
    texts = [answer("[0, 0, 100, 100]"), answer("[0, 0, 50, 100]"), "no answer"]
    cfg = _cfg(aggregation="normalize_then_sum")
    cols = score_columns([(texts, GT)], ScheduleSnapshot(0.6, 0), cfg)
    s = math.sqrt(1 / 3) + EPS
    want = [(2 / 3 + 0.5 / 3) / s, (-1 / 3 + 0.5 / 3) / s, (-1 / 3 - 1 / 3) / s]
    assert cols.total.tolist() == pytest.approx(want)
    assert cols.weighted.tolist() == pytest.approx([1.5, 0.5, 0.0])
    assert cols.task.tolist() == cols.weighted.tolist()
    plain = score_columns([(texts, GT)], ScheduleSnapshot(0.6, 0), RewardConfig(w_recite=0.0))
    assert plain.total.tolist() == plain.weighted.tolist() == [1.5, 0.5, 0.0]


def test_normalize_then_sum_g_2_with_recitation() -> None:
    # G = 2, acc 0 / 1 and BLEU 0.002 / 0.001 at w_recite -0.5: z_acc = -+0.5 / (0.70711 + 1e-4);
    # z_rec = +-0.0005 / (7.0711e-4 + 1e-4) = +-0.61977: a 0.001 BLEU spread weighs like half the accuracy.
    terms = np.array([[0.0, 0.002], [1.0, 0.001]])
    got = normalize_then_sum(terms, np.array([1.0, -0.5]), np.array([0, 2]), EPS)
    z_acc, z_rec = 0.5 / (math.sqrt(0.5) + EPS), 0.0005 / (math.sqrt(5e-7) + EPS)
    assert got.tolist() == pytest.approx([-z_acc - 0.5 * z_rec, z_acc + 0.5 * z_rec])


def _completion(box: tuple[float, float, float, float] | None, task: str = "grounding") -> ScoredCompletion:
    return ScoredCompletion("t", "", task, 0, box is not None, box, 0.0, 0.0, 0.0)  # type: ignore[arg-type]


def test_example_term_hand_computed() -> None:
    # The truth is 100 x 100 (area 1e4): area ratios 1, 2, 2.83, 4 and 16 -> 0, 0, -0.5, -1, -1 (capped).
    side = {1.0: 100.0, 2.0: 100 * math.sqrt(2), 2.83: 100 * 2 ** 0.75, 4.0: 200.0, 16.0: 400.0}
    rows = [_completion((0.0, 0.0, s, s)) for s in side.values()] + [_completion(None)]
    label = RewardTarget("classification", label="effusion")
    got = oversized_box_penalty([*rows, _completion((0, 0, 400, 400), "classification")], [GT] * 6 + [label])
    assert got == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0, 0.0, 0.0], abs=1e-9)


def test_extra_term_through_the_scorer() -> None:
    # Box (0, 0, 200, 200) on a 100 x 100 truth: IoU 0.25, format 1, penalty -1; weight 0.5: 0.5 - 0.5.
    cfg = _cfg(extra_terms=[{"fn": SPEC, "weight": 0.5, "name": "oversized"}])
    texts = [answer("[0, 0, 100, 100]"), answer("[0, 0, 200, 200]"), "no answer"]
    cols = RewardScorer(cfg).score_batch([(texts, GT)], under=ScheduleSnapshot(0.6, 0)).columns
    assert cols.extra["oversized"].tolist() == pytest.approx([0.0, -1.0, 0.0])
    assert cols.weighted.tolist() == pytest.approx([1.5, 0.0, 0.0])
    assert cols.task.tolist() == pytest.approx([1.5, 0.5, 0.0])  # a shaping term unless `task: true`
    as_task = cfg.model_copy(update={"extra_terms": (cfg.extra_terms[0].model_copy(update={"task": True}),)})
    assert score_columns([(texts, GT)], ScheduleSnapshot(0.6, 0), as_task).task.tolist() == pytest.approx(
        [1.5, 0.0, 0.0])


def test_a_term_sees_the_parsed_columns() -> None:
    import unit_user_terms

    label = RewardTarget("classification", label="effusion")
    texts = [answer("[0, 0, 100, 100]", think="round"), "no answer"]
    groups = [(texts, GT), (["<think>x</think><answer>effusion</answer>"], label)]
    cfg = _cfg(extra_terms=[{"fn": "unit_user_terms:record", "name": "rec"},
                            {"fn": "unit_user_terms:think_length", "name": "think_len"}])
    cols = score_columns(groups, ScheduleSnapshot(0.6, 0), cfg)
    [(c0, t0), (c1, t1), (c2, t2)] = unit_user_terms.SEEN
    box = (0.0, 0.0, 100.0, 100.0)
    assert c0 == ScoredCompletion(texts[0], "round", "grounding", 0, True, box, 1.0, 1.0, 0.0)
    assert (c1.think, c1.format_ok, c1.box, c1.iou, c1.group) == ("no answer", False, None, 0.0, 0)
    assert (c2.task, c2.group, c2.r_grade, c2.format_ok) == ("classification", 1, 1.0, True)
    assert (t0, t1, t2) == (GT, GT, label)
    # "round": 5 characters / 100; untagged text counts as reasoning: "no answer" is 9 characters
    assert cols.extra["think_len"].tolist() == pytest.approx([0.05, 0.09, 0.01])
    assert list(cols.extra) == ["rec", "think_len"]
    assert score_columns(groups, ScheduleSnapshot(0.6, 0), RewardConfig(w_recite=0.0)).extra == {}


@pytest.mark.parametrize(("fn", "message"), [
    (lambda c, t: 1 / 0, "term 'x' \\(m:f\\) raised ZeroDivisionError: division by zero on a batch of 3"),
    (lambda c, t: [0.0, 1.0], "returned 2 values for 3 completions"),
    (lambda c, t: [0.0, None, 1.0], "returned None for row 1 \\(group 0, task grounding\\)"),
    (lambda c, t: [0.0, 1.0, float("nan")], "returned nan for row 2"),
    (lambda c, t: [math.inf, 1.0, 0.0], "returned inf for row 0"),
    (lambda c, t: ["0.5", 1.0, 0.0], "returned '0.5' for row 0"),
    (lambda c, t: [True, 1.0, 0.0], "returned True for row 0"),
    (lambda c, t: 3.0, "returned a float, not a list of 3 numbers"),
])
def test_a_failing_term_stops_with_one_line(fn: object, message: str) -> None:
    rows = [_completion(None)] * 3
    with pytest.raises(RewardTermError, match=message) as err:
        term_values("x", "m:f", fn, rows, [GT] * 3)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    ok = term_values("x", "m:f", lambda c, t: [0, 1.5, np.float32(2.0)], rows, [GT] * 3)
    assert ok.tolist() == [0.0, 1.5, 2.0]


def test_a_nan_term_stops_the_scorer() -> None:
    cfg = _cfg(extra_terms=[{"fn": "unit_user_terms:nan_on_the_second_row", "name": "bad"}])
    batch = [([answer("[0, 0, 100, 100]"), "x"], GT)]
    with pytest.raises(RewardTermError,
                       match=r"'bad' \(unit_user_terms:nan_on_the_\w+\) returned nan for row 1"):
        RewardScorer(cfg).score_batch(batch, under=ScheduleSnapshot(0.6, 0))


@pytest.mark.parametrize(("spec", "message"), [
    ("unit_user_terms.think_length", "is not 'package.module:function'"),
    ("no_such_module_xyz:f", "does not import \\(ModuleNotFoundError: No module named 'no_such_\\w+'\\)"),
    ("unit_user_terms:missing", "has no 'missing'"),
    ("unit_user_terms:NOT_A_FUNCTION", "is an object of type int, not a function"),
    ("unit_user_terms:one_argument", "cannot take the two positional arguments"),
    ("unit_user_terms:keyword_targets", "cannot take the two positional arguments"),
])
def test_load_term_refuses_with_one_line(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        load_term(spec)
    assert "\n" not in str(err.value)
    assert load_term("unit_user_terms:think_length").__name__ == "think_length"


def test_reward_config_checks_the_terms() -> None:
    def cfg(*terms: dict[str, object]) -> RewardConfig:
        return RewardConfig.model_validate({"extra_terms": list(terms)})

    assert cfg({"fn": SPEC, "name": "big_box"}).extra_terms[0].weight == 1.0
    for terms, message in [
        (({"fn": "nope_xyz:f", "name": "a"},), "does not import"),
        (({"fn": SPEC, "name": "format"},), "is a built-in reward column"),
        (({"fn": SPEC, "name": "Big Box"},), "String should match pattern"),
        (({"fn": SPEC, "name": "a"}, {"fn": SPEC, "name": "a"}), "repeat one"),
    ]:
        with pytest.raises(ValidationError, match=message) as err:
            cfg(*terms)
        assert len(err.value.errors()) == 1


def test_load_term_reads_the_working_directory_and_reports_an_exit_at_import(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the `medground` console script does not put the working directory on sys.path (`python -m` does); the
    # reward actor's PYTHONPATH does, so the console entry puts it there before validate-config runs
    from services.cli.main import working_directory_on_path

    (tmp_path / "lab_terms_cwd.py").write_text("def f(completions, targets):\n"
                                               "    return [0.0] * len(targets)\n")
    (tmp_path / "lab_terms_exit.py").write_text("raise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    working_directory_on_path()  # what `medground` (services.cli:main) does first
    assert load_term("lab_terms_cwd:f").__name__ == "f"
    with pytest.raises(ValueError, match="does not import \\(SystemExit: 3\\)"):
        load_term("lab_terms_exit:f")
