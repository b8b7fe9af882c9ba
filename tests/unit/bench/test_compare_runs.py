"""bench/studies/compare_runs.py: start/end metrics, paired changes and the paired end difference of two
runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.studies.compare_runs import compare


def _run(root: Path, start: list[float], end: list[float]) -> Path:
    for step, ious in ((0, start), (30, end)):
        rows = [{"id": f"img-{i}", "text": "", "box": [0, 0, 1, 1] if iou > 0 else None,
                 "iou": iou, "label": None,
                 "grade": None, "truth": [[0, 0, 1, 1]]} for i, iou in enumerate(ious)]
        rows.append({"id": "cls-0", "text": "", "box": None, "iou": None, "label": "x", "grade": None,
                     "truth": "effusion"})  # a classification record: not a grounding sample
        (root / "eval").mkdir(parents=True, exist_ok=True)
        (root / "eval" / f"step-{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_paired_changes_and_the_paired_difference_between_runs(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", [0.6, 0.4, 0.0, 0.9], [0.6, 0.6, 0.4, 0.9])
    b = _run(tmp_path / "b", [0.6, 0.4, 0.0, 0.9], [0.2, 0.6, 0.6, 0.9])
    out = compare({"A": a, "B": b})
    ra = out["runs"]["A"]
    assert ra["held_out_images"] == 4 and ra["steps"] == 30
    # A@0.5: start 2/4 = 50 %, end 3/4 = 75 %; per-image differences 0, +100, 0, 0 -> +25 ± 100/2/sqrt(4) = 25
    assert (ra["A@0.5"]["start"], ra["A@0.5"]["end"], ra["A@0.5"]["change"]) == (50.0, 75.0, 25.0)
    assert ra["A@0.5"]["change_se"] == pytest.approx(25.0)
    assert ra["A@0.5"]["start_se"] == pytest.approx(25.0)  # 100 sqrt(0.5 * 0.5 / 4)
    # B - A at the end, per image: mIoU -0.4, 0, +0.2, 0 -> mean -0.05
    diff = out["B - A at the end (paired)"]
    assert diff["mIoU"]["difference"] == pytest.approx(-0.05)
    assert diff["A@0.5"]["difference"] == 0.0  # B loses image 0 and gains image 2


def test_runs_on_different_images_are_refused(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", [0.5, 0.5], [0.5, 0.5])
    b = _run(tmp_path / "b", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    with pytest.raises(SystemExit, match="different held-out images"):
        compare({"A": a, "B": b})


def test_a_missing_run_and_a_corrupt_predictions_file_are_named(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", [0.5, 0.5], [0.5, 0.5])
    with pytest.raises(SystemExit, match="does not exist"):
        compare({"A": a, "B": tmp_path / "missing"})
    (a / "eval" / "step-30.jsonl").write_text('{"id": "img-0", "iou": 0.5, "truth": [[0, 0, 1, 1]]}\n{"id": ')
    with pytest.raises(ValueError, match=r"step-30.jsonl line 2 is not a prediction row"):
        compare({"A": a, "B": a})
