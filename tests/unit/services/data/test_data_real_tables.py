"""Converters on the real published tables (NIH, RSNA, VinDr-CXR) shipped inside the torchxrayvision wheel.

`tools/setup_env.sh` downloads the wheel (without installing it) into .venv/fixtures/; the CSVs are read
straight out of its zip. Expected values are recomputed from the raw rows by an independent loop.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

from services.data.converters import ConvertOptions, convert
from services.data.converters.vindr import fuse

ROOT = Path(__file__).resolve().parents[4]
WHEELS = sorted((ROOT / ".venv" / "fixtures").glob("torchxrayvision-1.5.7-*.whl"))


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not WHEELS:
        pytest.skip("torchxrayvision wheel absent from .venv/fixtures (run tools/setup_env.sh to fetch it)")
    out = tmp_path_factory.mktemp("xrv")
    with zipfile.ZipFile(WHEELS[0]) as zf:
        for name in ("BBox_List_2017.csv.gz", "vinbigdata-train.csv.gz",
                     "kaggle_stage_2_train_labels.csv.zip"):
            (out / name).write_bytes(zf.read(f"torchxrayvision/data/{name}"))
    return out


def _rows(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    else:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            raw = zf.read(zf.namelist()[0])
    return list(csv.reader(io.StringIO(raw.decode())))


def test_nih_one_record_per_image_finding_with_table_boxes(tables: Path, tmp_path: Path) -> None:
    result = convert("nih", tables / "BBox_List_2017.csv.gz", tmp_path)
    rows = _rows(tables / "BBox_List_2017.csv.gz")
    assert rows[0][:3] == ["Image Index", "Finding Label", "Bbox [x"]  # the broken header, as published
    expected: dict[tuple[str, str], list[tuple[float, ...]]] = defaultdict(list)
    for image, label, x, y, w, h, *_ in rows[1:]:
        expected[(image, label)].append((float(x), float(y), float(x) + float(w), float(y) + float(h)))
    got = {(r.image.removeprefix("images/"), str(r.meta.attributes["nih_label"])): list(r.boxes)
           for r in result.records}
    assert len(result.records) == len(expected) == 984
    assert got == expected
    first = next(r for r in result.records if r.id == "nih:00013118_008.png:atelectasis")
    # row 1: x=225.084745762712 w=86.7796610169491 -> x2=311.8644067796611; y=547.019216763771
    # h=79.1864406779661
    assert first.boxes[0] == pytest.approx((225.084745762712, 547.019216763771, 311.8644067796611,
                                            626.2056574417371))
    assert (first.width, first.height, first.knowledge_key) == (1024, 1024, "cxr/atelectasis")
    assert {r.phrase for r in result.records} >= {"pleural effusion", "nodule", "infiltrate"}
    # one patient never spans two splits
    splits: dict[str, set[str]] = defaultdict(set)
    for r in result.records:
        splits[str(r.meta.attributes["patient_id"])].add(r.split)
    assert all(len(s) == 1 for s in splits.values())


def test_rsna_groups_boxes_and_skips_negatives(tables: Path, tmp_path: Path) -> None:
    result = convert("rsna", tables / "kaggle_stage_2_train_labels.csv.zip", tmp_path)
    rows = _rows(tables / "kaggle_stage_2_train_labels.csv.zip")[1:]
    positives: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    negatives = set()
    for pid, x, y, w, h, target in rows:
        if target == "1":
            positives[pid].append((float(x), float(y), float(x) + float(w), float(y) + float(h)))
        else:
            negatives.add(pid)
    assert len(result.records) == len(positives)
    assert result.notes["negatives"] == len(negatives - positives.keys())
    assert {r.id.removeprefix("rsna:"): list(r.boxes) for r in result.records} == positives
    assert max(len(r.boxes) for r in result.records) == 4  # up to four boxes per patient in this table
    assert all(r.image.endswith(".dcm") and r.width == 1024 for r in result.records)


def test_vindr_fuses_radiologists_and_skips_no_finding(tables: Path, tmp_path: Path) -> None:
    result = convert("vindr", tables / "vinbigdata-train.csv.gz", tmp_path)
    rows = _rows(tables / "vinbigdata-train.csv.gz")
    header, body = rows[0], rows[1:]
    assert header == ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    with_box = {r[0] for r in body if r[1] != "No finding"}
    assert result.notes["negatives"] == len({r[0] for r in body} - with_box)
    pairs = {(r[0], r[1]) for r in body if r[1] != "No finding"}
    assert len(result.records) == len(pairs)  # min_votes 1 keeps every (image, class)
    assert all(r.width is None for r in result.records)  # no DICOMs here: sizes stay unknown
    # Every fused box lies inside the hull of that (image, class)'s raw boxes.
    raw: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for r in body:
        if r[1] != "No finding":
            raw[(r[0], r[1])].append([float(v) for v in r[4:8]])
    for rec in result.records[:2000]:
        boxes = raw[(rec.id.split(":")[1], str(rec.meta.attributes["vindr_class"]))]
        assert len(rec.boxes) <= len(boxes)
        for b in rec.boxes:
            assert min(x[0] for x in boxes) <= b[0] and b[2] <= max(x[2] for x in boxes)
    strict = convert("vindr", tables / "vinbigdata-train.csv.gz", tmp_path, ConvertOptions(min_votes=2))
    assert 0 < len(strict.records) < len(result.records)


def test_fuse_by_hand() -> None:
    a = ((0.0, 0.0, 10.0, 10.0), "R1")
    b = ((1.0, 1.0, 11.0, 11.0), "R2")  # IoU with a = 81 / 119 = 0.68 -> same finding
    c = ((50.0, 50.0, 60.0, 60.0), "R3")  # disjoint -> its own cluster
    fused = fuse([a, b, c], iou=0.4, min_votes=1)
    assert fused == [((0.5, 0.5, 10.5, 10.5), ["R1", "R2"]), ((50.0, 50.0, 60.0, 60.0), ["R3"])]
    assert fuse([a, b, c], iou=0.4, min_votes=2) == [((0.5, 0.5, 10.5, 10.5), ["R1", "R2"])]
