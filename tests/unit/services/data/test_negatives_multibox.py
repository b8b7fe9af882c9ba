"""Issue 31 acceptance: converters keep every box of a finding, and with `--negatives keep` write the
negatives as records with no box (VinDr: a "No finding" image is asked about every class that has a
positive record in the conversion). Fixtures in the published formats; expected boxes by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from services.cli import app
from services.data import load_manifest
from services.data.converters import ConvertOptions, convert

VINDR = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
imgA,Nodule/Mass,8,R1,100,100,200,200
imgA,Nodule/Mass,8,R2,110,100,210,200
imgA,Nodule/Mass,8,R3,105,105,205,205
imgA,Pleural effusion,10,R1,500,600,700,800
imgA,Pleural effusion,10,R1,50,600,250,800
imgA,Pleural effusion,10,R2,510,610,710,810
imgA,Pleural effusion,10,R3,60,610,260,810
imgB,No finding,14,R1,,,,
imgB,No finding,14,R2,,,,
imgB,No finding,14,R3,,,,
"""

RSNA = """patientId,x,y,width,height,Target
p-two,100,150,200,300,1
p-two,600,160,210,290,1
p-none,,,,,0
"""


def _mean(*boxes: tuple[float, float, float, float]) -> tuple[float, ...]:
    return tuple(sum(b[i] for b in boxes) / len(boxes) for i in range(4))


def test_vindr_three_readers_two_findings_and_a_no_finding_image(tmp_path: Path) -> None:
    table = tmp_path / "train.csv"
    table.write_text(VINDR)
    result = convert("vindr", table, tmp_path / "out", ConvertOptions(negatives="keep"))
    by_id = {r.id: r for r in result.records}
    assert sorted(by_id) == ["vindr:imgA:nodule-mass", "vindr:imgA:pleural-effusion",
                             "vindr:imgB:nodule-mass", "vindr:imgB:pleural-effusion"]
    # Nodule: the three readers' boxes overlap (IoU >= 0.4): one box, their mean = (105, 101.67, 205, 201.67).
    assert by_id["vindr:imgA:nodule-mass"].boxes == (_mean((100, 100, 200, 200), (110, 100, 210, 200),
                                                           (105, 105, 205, 205)),)
    # Effusion, bilateral: R1 and R2 on the image's right half, R1 and R3 on its left half: two fused boxes.
    effusion = by_id["vindr:imgA:pleural-effusion"]
    assert effusion.boxes == (_mean((500, 600, 700, 800), (510, 610, 710, 810)),
                              _mean((50, 600, 250, 800), (60, 610, 260, 810)))
    assert effusion.meta.attributes["votes"] == [2, 2]
    # The "No finding" image asks both classes' questions, with their phrases and knowledge, and no box.
    for cls, key in (("nodule/mass", "cxr/nodule-mass"), ("pleural effusion", "cxr/pleural-effusion")):
        rec = by_id[f"vindr:imgB:{key.split('/')[1]}"]
        assert rec.boxes == () and rec.is_negative and rec.phrase == cls and rec.knowledge_key == key
    assert result.notes["negatives"] == 1 and result.notes["negative records"] == 2
    # Default: negatives skipped, as before.
    skipped = convert("vindr", table, tmp_path / "out", ConvertOptions())
    assert [r.id for r in skipped.records] == ["vindr:imgA:nodule-mass", "vindr:imgA:pleural-effusion"]


def test_rsna_two_box_patient_and_target_0_patient(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text(RSNA)
    result = convert("rsna", table, tmp_path / "out", ConvertOptions(negatives="keep"))
    by_id = {r.id: r for r in result.records}
    assert sorted(by_id) == ["rsna:p-none", "rsna:p-two"]
    # xywh -> xyxy: (100, 150, 100 + 200, 150 + 300), (600, 160, 600 + 210, 160 + 290)
    assert by_id["rsna:p-two"].boxes == ((100.0, 150.0, 300.0, 450.0), (600.0, 160.0, 810.0, 450.0))
    none = by_id["rsna:p-none"]
    assert none.boxes == () and none.phrase == by_id["rsna:p-two"].phrase
    assert (none.width, none.height) == (1024, 1024)
    assert [r.id for r in convert("rsna", table, tmp_path / "out").records] == ["rsna:p-two"]


def test_cli_keeps_negatives_and_inspect_counts_them(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text(RSNA)
    out = tmp_path / "out" / "manifest.jsonl"
    command = ["data", "convert", "--format", "rsna", str(table), str(out), "--negatives"]
    run = CliRunner().invoke(app, [*command, "keep"])
    assert run.exit_code == 0, run.output
    assert sum(r.is_negative for r in load_manifest(out).records) == 1
    bad = CliRunner().invoke(app, [*command, "maybe"])
    assert bad.exit_code == 1 and "--negatives 'maybe' must be skip or keep" in bad.output


def test_masks_box_each_component_when_asked_and_keep_normal_images(tmp_path: Path) -> None:
    (tmp_path / "in" / "images").mkdir(parents=True)
    (tmp_path / "in" / "masks").mkdir()
    for name in ("two", "normal"):
        Image.new("RGB", (60, 40)).save(tmp_path / "in" / "images" / f"{name}.png")
    m = np.zeros((40, 60), np.uint8)
    m[5:10, 20:31] = 255  # component 1: box (20, 5, 31, 10)
    m[30:35, 2:6] = 255  # component 2: box (2, 30, 6, 35)
    Image.fromarray(m).save(tmp_path / "in" / "masks" / "two_mask.png")
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "in" / "masks" / "normal_mask.png")
    union = convert("masks", tmp_path / "in", tmp_path / "out", ConvertOptions())
    assert [r.boxes for r in union.records] == [((2.0, 5.0, 31.0, 35.0),)]  # one box around both, as before
    options = ConvertOptions(components="each", negatives="keep")
    each = convert("masks", tmp_path / "in", tmp_path / "out", options)
    assert {r.id: r.boxes for r in each.records} == {
        "mask:two": ((20.0, 5.0, 31.0, 10.0), (2.0, 30.0, 6.0, 35.0)), "mask:normal": ()}


def test_synth_multibox_draws_0_to_3_lesions_with_normals_and_inspect_counts_them(tmp_path: Path) -> None:
    from collections import Counter

    from rewards import iou
    from services.data.inspect import NEGATIVES, count
    from services.data.synth import make_spec, write_dataset

    spec = make_spec("multibox", splits={"train": 60, "val": 8})
    records = load_manifest(write_dataset(spec, tmp_path / "a", seed=3)).records
    again = load_manifest(write_dataset(spec, tmp_path / "b", seed=3)).records
    assert records == again  # reproducible
    assert (tmp_path / "a" / "images" / "train" / "00007.png").read_bytes() == \
        (tmp_path / "b" / "images" / "train" / "00007.png").read_bytes()
    sizes = Counter(len(r.boxes) for r in records)
    assert set(sizes) == {0, 1, 2, 3} and 0.1 < sizes[0] / len(records) < 0.45  # normal_fraction 0.25
    for r in records:
        assert r.phrase.startswith("every ") and r.task == "grounding"
        assert all(iou(a, b) == 0.0 for i, a in enumerate(r.boxes) for b in r.boxes[i + 1:])
    cells = count(records).cells
    negatives = sum(r.is_negative for r in records if r.split == "train")
    assert cells[("grounding", "train", NEGATIVES)] == negatives
    assert NEGATIVES in count(records).table().splitlines()[0]


def test_manifests_keep_negatives_and_every_box(tmp_path: Path) -> None:
    from services.data import write_manifest
    from services.data.records import Record

    records = (Record(id="neg", image="x.png", width=10, height=10, phrase="every mass"),
               Record(id="two", image="x.png", width=10, height=10, phrase="every mass",
                      boxes=((1.0, 1.0, 3.0, 3.0), (4.0, 4.0, 6.0, 6.0))))
    for suffix in ("jsonl", "parquet"):
        assert load_manifest(write_manifest(records, tmp_path / f"m.{suffix}")).records == records
