"""Converters on hand-made fixtures of formats that cannot be had offline (credentialed or download-only).

Each fixture follows the published format its converter's docstring names; expected boxes carry
their arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from services.cli import app
from services.data import load_manifest
from services.data.converters import ConvertError, ConvertOptions, convert
from services.data.medvolume import read_volume


def test_ms_cxr_merges_rows_of_one_phrase(tmp_path: Path) -> None:
    csv = tmp_path / "MS_CXR_Local_Alignment_v1.0.0.csv"
    csv.write_text(
        "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\nd1,Pneumonia,bilateral "
        "opacities,files/p10/p10000032/s5/d1.jpg,100,200,300,400,2539,3050\nd1,Pneumonia,bilateral "
        "opacities,files/p10/p10000032/s5/d1.jpg,1500,220,280,390,2539,3050\nd1,Cardiomegaly,enlarged "
        "heart,files/p10/p10000032/s5/d1.jpg,900,1500,1000,800,2539,3050\nd2,Pneumothorax,small left apical "
        "pneumothorax,files/p11/p11000001/s7/d2.jpg,2400,100,200,300,2539,3050\n"
    )
    result = convert("ms-cxr", csv, tmp_path, ConvertOptions(image_root="mimic"))
    by_phrase = {r.phrase: r for r in result.records}
    assert len(result.records) == 3 and result.notes["merged boxes"] == 1
    # xywh (100, 200, 300, 400) -> (100, 200, 400, 600); (1500, 220, 280, 390) -> (1500, 220, 1780, 610)
    assert by_phrase["bilateral opacities"].boxes == ((100, 200, 400, 600), (1500, 220, 1780, 610))
    # 2400 + 200 = 2600 > 2539: clipped to the image width
    assert by_phrase["small left apical pneumothorax"].boxes == ((2400, 100, 2539, 400),)
    assert by_phrase["enlarged heart"].knowledge_key == "cxr/cardiomegaly"
    assert by_phrase["enlarged heart"].image == "mimic/files/p10/p10000032/s5/d1.jpg"
    assert by_phrase["enlarged heart"].split == by_phrase["bilateral opacities"].split  # same patient


def test_vlm_r1_json_and_jsonl(tmp_path: Path) -> None:
    Image.new("L", (640, 480)).save(tmp_path / "a.png")
    rec_json = tmp_path / "rec.json"
    rec_json.write_text(json.dumps([
        {"image": "a.png", "problem": "Please ground: left pleural effusion.", "solution": [10, 20, 300, 400],
         "normalized_solution": [15, 41, 468, 833]},
        {"image": "missing.png", "problem": "nodule", "solution": [5, 5, 50, 60]},
    ]))
    result = convert("vlm-r1", rec_json, tmp_path)
    a, b = result.records
    assert a.boxes == ((10, 20, 300, 400),) and (a.width, a.height) == (640, 480)  # size read from a.png
    assert b.width is None and b.phrase == "nodule"
    jsonl = tmp_path / "rec.jsonl"
    jsonl.write_text(json.dumps({"id": 3, "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>Where is the mass?"},
        {"from": "gpt", "value": "[12, 14, 99.5, 120]"}]}) + "\n")
    (only,) = convert("vlm-r1", jsonl, tmp_path).records
    assert only.phrase == "Where is the mass?" and only.boxes == ((12, 14, 99.5, 120),)
    jsonl.write_text(json.dumps({"image": "a.png",
                                 "conversations": [{"from": "human", "value": "x"}]}) + "\n")
    with pytest.raises(ConvertError, match="line 1"):
        convert("vlm-r1", jsonl, tmp_path)


def test_coco(tmp_path: Path) -> None:
    doc = {"images": [{"id": 1, "file_name": "x.png", "width": 100, "height": 50}],
           "categories": [{"id": 7, "name": "polyp"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10], "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 7, "bbox": [90, 40, 20, 20]},
                           {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "iscrowd": 1}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    (rec,) = convert("coco", path, tmp_path, ConvertOptions(modality="endoscopy")).records
    # (10, 5, 20, 10) -> (10, 5, 30, 15); (90, 40, 20, 20) -> (90, 40, 110, 60) clipped to (90, 40, 100, 50)
    assert rec.boxes == ((10, 5, 30, 15), (90, 40, 100, 50))
    assert rec.knowledge_key == "endoscopy/polyp"


def test_png_masks(tmp_path: Path) -> None:
    (tmp_path / "in" / "images").mkdir(parents=True)
    (tmp_path / "in" / "masks").mkdir()
    Image.new("RGB", (60, 40)).save(tmp_path / "in" / "images" / "case (1).png")
    Image.new("RGB", (60, 40)).save(tmp_path / "in" / "images" / "case (2).png")
    m = np.zeros((40, 60), np.uint8)
    m[5:10, 20:31] = 255  # rows 5..9, cols 20..30 -> box (20, 5, 31, 10)
    Image.fromarray(m).save(tmp_path / "in" / "masks" / "case (1)_mask.png")
    m2 = np.zeros((40, 60), np.uint8)
    m2[20:22, 0:3] = 255
    Image.fromarray(m2).save(tmp_path / "in" / "masks" / "case (1)_mask_1.png")
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "in" / "masks" / "case (2)_mask.png")
    result = convert("masks", tmp_path / "in", tmp_path / "out",
                     ConvertOptions(finding="lesion", modality="us"))
    (rec,) = result.records
    assert rec.boxes == ((20, 5, 31, 10), (0, 20, 3, 22)) and result.notes["empty masks"] == 1
    assert Path(rec.image).is_absolute() and rec.knowledge_key == "us/lesion"


def _write_pair(folder: Path, name: str, space: str, lesion_side: str) -> None:
    """A 40 x 30 x 6 volume whose lesion sits in the patient's `lesion_side`, written in NRRD `space`."""
    data = np.zeros((40, 30, 6), np.int16)  # LPS+ order: x -> patient left
    label = np.zeros_like(data, dtype=np.uint8)
    xs = slice(28, 34) if lesion_side == "left" else slice(4, 10)
    label[xs, 10:14, 2:4] = 1
    label[xs, 10:12, 4] = 1  # slice 4 has a smaller cross-section, so "max" picks 2 or 3
    data[label > 0] = 500
    spacing = np.diag([0.7, 0.8, 5.0])
    if space == "right-anterior-superior":  # the same anatomy stored in RAS order: flip x and y
        data, label = data[::-1, ::-1], label[::-1, ::-1]
    header = {"space": space, "space directions": spacing, "space origin": np.zeros(3)}
    nrrd.write(str(folder / f"{name}_image.nrrd"), np.ascontiguousarray(data), header)
    nrrd.write(str(folder / f"{name}_label.nrrd"), np.ascontiguousarray(label), header)


def test_volumes_follow_patient_orientation(tmp_path: Path) -> None:
    src = tmp_path / "vols"
    src.mkdir()
    _write_pair(src, "lps_left", "left-posterior-superior", "left")
    _write_pair(src, "ras_left", "right-anterior-superior", "left")
    _write_pair(src, "lps_right", "left-posterior-superior", "right")
    # NIfTI: affine in RAS; an identity affine means array x runs to the patient's Right.
    data = np.zeros((40, 30, 6), np.int16)
    label = np.zeros((40, 30, 6), np.uint8)
    label[30:36, 10:14, 1:3] = 1  # array x 30..35 with x -> Right: the patient's right side
    data[label > 0] = 300
    nib.save(nib.Nifti1Image(data, np.eye(4)), src / "nii_right_image.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), src / "nii_right_label.nii.gz")
    result = convert("volumes", src, tmp_path / "out", ConvertOptions(finding="nodule", modality="ct"))
    sides = {str(r.meta.attributes["volume"]): r.meta.attributes["side"] for r in result.records}
    assert sides == {"lps_left": "left", "ras_left": "left", "lps_right": "right", "nii_right": "right"}
    lps = next(r for r in result.records if r.meta.attributes["volume"] == "lps_left")
    ras = next(r for r in result.records if r.meta.attributes["volume"] == "ras_left")
    # LPS x 28..33 -> columns 28..33 (box x 28..34); y 10..13 -> rows 10..13 (box y 10..14)
    assert lps.boxes == ras.boxes == ((28.0, 10.0, 34.0, 14.0),)
    assert lps.meta.attributes["slice"] in (2, 3) and lps.phrase == "nodule on the patient's left side"
    assert lps.meta.pixel_spacing_mm == pytest.approx((0.8, 0.7))
    assert (lps.width, lps.height) == (40, 30)
    with Image.open(tmp_path / "out" / lps.image) as img:
        px = np.asarray(img)
    assert px[10:14, 28:34].mean() > px[0:5, 0:5].mean() + 100  # the lesion is where the box says
    every = convert("volumes", src, tmp_path / "all", ConvertOptions(slice="all"))
    assert sum(r.meta.attributes["volume"] == "lps_left" for r in every.records) == 3  # slices 2, 3, 4
    assert read_volume(src / "ras_left_image.nrrd").spacing == pytest.approx((0.7, 0.8, 5.0))


def test_medmnist_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    npz = tmp_path / "retinamnist.npz"
    np.savez(npz, train_images=rng.integers(0, 255, (5, 28, 28, 3), dtype=np.uint8),
             train_labels=np.array([[0], [4], [2], [1], [3]]),
             test_images=rng.integers(0, 255, (2, 28, 28, 3), dtype=np.uint8),
             test_labels=np.array([[1], [0]]))
    graded = convert("medmnist", npz, tmp_path / "g", ConvertOptions(task="grading"))
    assert [r.grade for r in graded.records] == [0, 4, 2, 1, 3, 1, 0] and graded.records[0].max_grade == 4
    names = ("none", "mild", "moderate", "severe", "proliferative")
    labelled = convert("medmnist", npz, tmp_path / "c", ConvertOptions(labels=names))
    assert labelled.records[1].label == "proliferative" and labelled.records[1].choices == names
    assert (tmp_path / "c" / labelled.records[0].image).is_file()
    np.savez(npz, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros((2, 14), np.uint8))
    with pytest.raises(ConvertError, match="multi-label"):
        convert("medmnist", npz, tmp_path / "m")


def test_cli_convert_and_errors(tmp_path: Path) -> None:
    csv = tmp_path / "BBox_List_2017.csv"
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Nodule,10.5,20,5,6\n")
    runner = CliRunner()
    out = tmp_path / "m.parquet"
    result = runner.invoke(app, ["data", "convert", "--format", "nih", str(csv), str(out)])
    assert result.exit_code == 0, result.output
    (rec,) = load_manifest(out, report=lambda _: None).records
    assert rec.boxes == ((10.5, 20.0, 15.5, 26.0),)  # 10.5 + 5 = 15.5, 20 + 6 = 26
    bad = runner.invoke(app, ["data", "convert", "--format", "nope", str(csv), str(out)])
    assert bad.exit_code == 1 and "unknown format 'nope'" in bad.output
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Nodule,ten,20,5,6\n")
    bad = runner.invoke(app, ["data", "convert", "--format", "nih", str(csv), str(out)])
    assert bad.exit_code == 1 and "row 2: x: holds 'ten', not a number" in bad.output
