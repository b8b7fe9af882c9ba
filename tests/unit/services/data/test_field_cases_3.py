"""Field cases, round 3 (tests/fixtures/field_3/, README there): photos stored sideways with an EXIF
orientation, Enhanced CT/MR functional groups, boxes in another frame than the file they point at, JSON Lines
with U+2028/U+0085 inside strings, full-width punctuation in answers. One test per case file, each right
value computed independently of the code under test, then the kinds found around it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import rewards
from services.cli import app
from services.data import load_manifest, write_manifest
from services.data.converters import ConvertOptions, convert
from services.data.jsonl import jsonl_values
from services.data.records import Record

CASES = Path(__file__).resolve().parents[3] / "fixtures" / "field_3"
runner = CliRunner()


# ---- unicode_separators.jsonl: JSON Lines are split at newline bytes only ------------------------------

def test_jsonl_with_unicode_line_separators_in_strings_keeps_every_record(tmp_path: Path) -> None:
    """U+2028 (line 2) and U+0085 (line 3) are valid raw inside JSON strings; str.splitlines splits there."""
    raw = (CASES / "unicode_separators.jsonl").read_bytes()
    assert raw.count(b"\n") == 3 and "\u2028".encode() in raw and "\u0085".encode() in raw
    for on_bad in ("fail", "skip"):
        result = convert("vlm-r1", CASES / "unicode_separators.jsonl", tmp_path,
                         ConvertOptions(on_bad_record=on_bad))  # type: ignore[arg-type]
        assert [r.id for r in result.records] == ["vlmr1:1", "vlmr1:2", "vlmr1:3"] and not result.skipped
        assert result.records[1].phrase == "Locate the left\u2028pleural effusion"
        assert result.records[2].phrase == "Locate the \u00e9panchement\u0085gauche"
        assert [r.boxes for r in result.records] == [((1, 2, 10, 12),), ((3, 4, 20, 22),), ((5, 6, 30, 32),)]


def test_every_jsonl_reader_splits_at_newlines_only(tmp_path: Path) -> None:
    """Manifests (written with ensure_ascii=False, so the separator is stored raw), metrics.jsonl, eval files."""
    from services.evaluation import read_ious
    from services.metrics import read_metrics

    phrase = "left\u2028upper\u0085lobe\u2029nodule\x1cx"
    records = [Record(id=f"r{i}", image="a.png", width=8, height=8, phrase=phrase, boxes=((1, 1, 4, 4),))
               for i in range(3)]
    manifest = write_manifest(records, tmp_path / "m.jsonl")
    assert "\u2028".encode() in manifest.read_bytes()
    assert [r.phrase for r in load_manifest(manifest).records] == [phrase] * 3
    rows = [{"step": i, "note": phrase} for i in range(3)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text, encoding="utf-8")
    assert read_metrics(tmp_path / "metrics.jsonl") == rows
    assert jsonl_values(tmp_path / "metrics.jsonl") == rows
    preds = [{"id": f"r{i}", "text": phrase, "iou": 0.5, "truth": [[1, 1, 4, 4]]} for i in range(3)]
    (tmp_path / "step-1.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    assert read_ious(tmp_path / "step-1.jsonl") == {"r0": 0.5, "r1": 0.5, "r2": 0.5}


def test_a_bad_jsonl_line_is_named_by_its_newline_count(tmp_path: Path) -> None:
    """Line numbers count newline bytes (blank lines included), so the editor shows the line the error names."""
    path = tmp_path / "m.jsonl"
    good = json.dumps({"id": "a", "image": "a.png", "phrase": "x\u2028y", "boxes": [[1, 1, 2, 2]]}, ensure_ascii=False)
    path.write_bytes((good + "\n\n" + '{"id": "b",\n').encode() + b"\xff\xfe\n")
    with pytest.raises(Exception, match=r"line 3: json: not valid JSON"):
        load_manifest(path)
    loaded = load_manifest(path, on_bad_record="skip")
    assert [r.id for r in loaded.records] == ["a"]
    assert [(b.line, b.field) for b in loaded.skipped] == [(3, "json"), (4, "json")]
    assert "not UTF-8" in loaded.skipped[1].reason


# ---- answers.json: full-width punctuation ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["fullwidth_commas", "fullwidth_brackets"])
def test_fullwidth_punctuation_in_an_answer_is_the_box(name: str) -> None:
    text = json.loads((CASES / "answers.json").read_text(encoding="utf-8"))[name]
    frame = rewards.ImageFrame(1000.0, 1000.0, 1000.0, 1000.0, "norm1000")
    parsed = rewards.parse_answer(text, "grounding", frame)
    assert parsed is not None and parsed.format_ok and parsed.box == (120.0, 260.0, 300.0, 410.0)
    # the batch scorer (fast regex, then the slow path) pays the same IoU 1
    target = rewards.RewardTarget("grounding", boxes=((120.0, 260.0, 300.0, 410.0),), frame=frame)
    (scored,) = rewards.score_group([text], target, rewards.ScheduleSnapshot(0.5, 0),
                                    rewards.RewardConfig(w_recite=0.0))
    assert scored.iou == pytest.approx(1.0) and scored.r_format == 1.0
