"""The canonical record and manifests (JSONL, Parquet): validation, bad-record policy, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.data import ManifestError, Record, load_manifest, size_bucket, write_manifest
from services.data.records import xywh_to_xyxy


def _rec(**kw: object) -> Record:
    base: dict[str, object] = {"id": "a", "image": "img.png", "width": 100, "height": 80,
                               "phrase": "small nodule", "boxes": [[10, 10, 20, 30]]}
    return Record.model_validate(base | kw)


def test_record_rules() -> None:
    assert _rec().boxes == ((10.0, 10.0, 20.0, 30.0),)
    with pytest.raises(ValueError, match="x1 < x2"):
        _rec(boxes=[[20, 10, 10, 30]])
    with pytest.raises(ValueError, match="extends past the 100x80 image"):
        _rec(boxes=[[10, 10, 20, 81]])
    assert _rec(boxes=[]).is_negative and not _rec().is_negative  # issue 31: a grounding record with no box
    assert not _rec(task="classification", boxes=[], label="nodule").is_negative
    with pytest.raises(ValueError, match="not one of choices"):
        _rec(task="classification", boxes=[], label="cat", choices=["nodule", "mass"])
    with pytest.raises(ValueError, match="exceeds max_grade"):
        _rec(task="grading", boxes=[], grade=4, max_grade=3)
    with pytest.raises(ValueError, match="lower case"):
        _rec(knowledge_key="CXR/Nodule")
    # Unknown size: boxes are only checked for order and sign.
    assert _rec(width=None, height=None, boxes=[[0, 0, 5000, 5000]]).relative_area() is None


def test_relative_area_and_buckets() -> None:
    # largest box 10 x 20 = 200 px over 100 x 80 = 8000 px -> 0.025
    assert _rec(boxes=[[0, 0, 5, 5], [10, 10, 20, 30]]).relative_area() == pytest.approx(0.025)
    assert [size_bucket(a) for a in (0.001, 0.005, 0.05, 0.5)] == ["<0.5%", "0.5-2%", "2-10%", ">10%"]
    assert xywh_to_xyxy(1.5, 2, 3, 4) == (1.5, 2.0, 4.5, 6.0)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    recs = [_rec(id="a"), _rec(id="b", task="grading", boxes=[], grade=2, max_grade=3, split="val"),
            _rec(id="c", task="classification", boxes=[], label="mass", choices=["mass", "nodule"],
                 meta={"pixel_spacing_mm": [0.14, 0.14], "attributes": {"side": "left"}})]
    path = write_manifest(recs, tmp_path / f"m{suffix}")
    lines: list[str] = []
    loaded = load_manifest(path, report=lines.append)
    assert list(loaded.records) == recs
    assert lines == [f"{path}: 3 records loaded, 0 skipped"]
    assert loaded.select(split="val")[0].id == "b"
    assert loaded.image_path(recs[0]) == tmp_path / "img.png"


def test_bad_records_fail_or_skip(tmp_path: Path) -> None:
    good = json.dumps(_rec().model_dump(mode="json"))
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join([
        good,
        good,  # line 2: duplicate id
        '{"id": "x", "image": "i.png", "phrase": "p", "boxes": [[5, 5, 1, 1]]}',  # line 3: bad box
        "{not json",  # line 4
        '{"id": "y", "image": "i.png", "phrase": "p", "boxes": [[1, 1, 2, 2]], "colour": 3}',  # line 5
    ]) + "\n")
    with pytest.raises(ManifestError, match=r"line 2: id: duplicate id 'a' \(first on line 1\)"):
        load_manifest(path, "fail")
    lines: list[str] = []
    loaded = load_manifest(path, "skip", report=lines.append)
    assert [r.id for r in loaded.records] == ["a"]
    assert [(b.line, b.field) for b in loaded.skipped] == [(2, "id"), (3, "boxes"),
                                                           (4, "json"), (5, "colour")]
    assert "x1 < x2" in loaded.skipped[1].reason
    assert lines[-1] == f"{path}: 1 records loaded, 4 skipped"


def test_missing_and_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "m.csv").write_text("x")
    with pytest.raises(ManifestError, match=r"\.jsonl or \.parquet"):
        load_manifest(tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="unique"):
        write_manifest([_rec(), _rec()], tmp_path / "d.jsonl")


def test_with_sizes_reads_headers(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (64, 48)).save(tmp_path / "img.png")
    path = write_manifest([_rec(width=None, height=None, boxes=[[1, 1, 10, 10]])], tmp_path / "m.jsonl")
    filled = load_manifest(path, report=lambda _: None).with_sizes()
    assert (filled.records[0].width, filled.records[0].height) == (64, 48)
    path = write_manifest([_rec(width=None, height=None, boxes=[[1, 1, 100, 10]])], tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="extends past the 64x48 image"):
        load_manifest(path, report=lambda _: None).with_sizes()


def test_data_layer_imports_without_heavy_packages() -> None:
    """Records, manifests, synth, converters and inspect import with none of torch, pyarrow, pydicom
    loaded."""
    import subprocess
    import sys

    code = ("import sys, services.data, services.data.synth, services.data.converters, "
            "services.data.inspect; print(sorted(m for m in ('torch', 'pyarrow', 'pydicom', 'nibabel', "
            "'nrrd', 'ray', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[4])
    assert out.stdout.strip() == "[]"
