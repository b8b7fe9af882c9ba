"""Field cases, round 2: each kind of fault users met with real datasets, rebuilt here as a generated file
(no patient data) and turned into the right value or the named error. One test per case file, then the
kinds found while reading the code. Training (the rollout request), eval (overlays) and Serve (upload
decoding) are checked alike where a case is about reading an image.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_files import dataset, palette, ramp, to_bytes, write
from PIL import Image
from typer.testing import CliRunner

import rewards
from services.cli import app
from services.data import load_manifest
from services.data.medimage import MedicalImageError, read_image
from services.data.records import Record

runner = CliRunner()


def _three_readers(path: Path, tmp_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image as training (rollout request), eval (overlay) and Serve (upload) read it."""
    from services.convert import rollout_request
    from services.data.manifest import Manifest
    from services.evaluation import Prediction, write_overlays
    from services.serve.config import Limits
    from services.serve.validate import decode_image

    width, height = read_image(path).size
    record = Record(id="case", image=str(path), width=width, height=height, phrase="nodule",
                    boxes=((1, 1, 5, 5),))
    trained = np.asarray(rollout_request(record, path).image.convert("L"))
    (overlay,) = write_overlays([Prediction(record, "", None, 0.0)],
                                Manifest(tmp_path / "m.jsonl", (record,)),
                                tmp_path / "overlays", limit=1)
    scale = max(1, 256 // max(width, height))
    shown = np.asarray(Image.open(overlay).convert("L"))[::scale, ::scale]
    served = np.asarray(decode_image(path.read_bytes(), Limits(min_image_side=8)).image.convert("L"))
    return trained, shown, served


def test_empty_rescale_tags_read_alike_in_training_eval_and_serve(tmp_path: Path) -> None:
    """dicom/empty_rescale.dcm: Rescale Intercept/Slope present but empty. An empty tag is absent."""
    ds = dataset(ramp(16, 16, 200, 1200))
    ds.RescaleIntercept, ds.RescaleSlope = None, None
    path = write(tmp_path / "empty_rescale.dcm", ds)
    reference = read_image(write(tmp_path / "plain.dcm", dataset(ramp(16, 16, 200, 1200)))).pixels
    trained, shown, served = _three_readers(path, tmp_path)
    for pixels in (trained, served):
        assert np.array_equal(pixels, reference)
    assert np.array_equal(shown[6:, 6:], reference[6:, 6:])  # away from the drawn boxes and the IoU text


def test_missing_transfer_syntax_is_read_with_the_detected_encoding(tmp_path: Path) -> None:
    """dicom/no_transfer_syntax.dcm: file meta without (0002,0010); the body is explicit VR little endian."""
    path = write(tmp_path / "no_ts.dcm", dataset(ramp(16, 16, 200, 1200)), without_transfer_syntax=True)
    reference = read_image(to_bytes(dataset(ramp(16, 16, 200, 1200)))).pixels
    trained, _, served = _three_readers(path, tmp_path)
    assert np.array_equal(trained, reference) and np.array_equal(served, reference)


def test_palette_colour_is_rgb_through_the_palette(tmp_path: Path) -> None:
    """dicom/palette_color.dcm: indices into a colour table, not grey levels."""
    ds = dataset(np.arange(0, 256, 8, dtype=np.uint8)[None].repeat(32, 0), photometric="PALETTE COLOR",
                 bits_allocated=8, modality="US")
    palette(ds, (np.arange(256) * 257, np.full(256, 32896), (255 - np.arange(256)) * 257))
    rgb = read_image(write(tmp_path / "palette.dcm", ds)).pixels
    # index 8 -> (8 * 257, 32896, 247 * 257) / 65535 * 255 = (8, 128, 247); never the grey index 8
    assert rgb.shape == (32, 32, 3) and rgb[0, 1].tolist() == [8, 128, 247]


def _nifti(folder: Path, codes: int) -> None:
    """A 16 x 12 x 6 volume, RAS+ voxel axes, lesion at low x (the patient's left half)."""
    folder.mkdir(parents=True)
    data = np.zeros((16, 12, 6), np.int16)
    label = np.zeros((16, 12, 6), np.uint8)
    label[1:5, 3:7, 2:4] = 1
    data[label > 0] = 400
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    for name, array in (("case_image", data), ("case_label", label)):
        img = nib.Nifti1Image(array, affine)
        img.set_qform(affine, code=codes)
        img.set_sform(affine, code=codes)
        nib.save(img, folder / f"{name}.nii.gz")


def test_nifti_without_orientation_codes_is_refused(tmp_path: Path) -> None:
    """nifti/nocodes/: qform_code = sform_code = 0, left and right unknown; nifti/ras/ is the same with
    codes."""
    _nifti(tmp_path / "nocodes", codes=0)
    _nifti(tmp_path / "ras", codes=1)
    refused = runner.invoke(app, ["data", "convert", "--format", "volumes", str(tmp_path / "nocodes"),
                                  str(tmp_path / "out1" / "m.jsonl")])
    assert refused.exit_code == 1 and "qform_code and sform_code are both 0" in refused.output
    assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) == 1
    done = runner.invoke(app, ["data", "convert", "--format", "volumes", str(tmp_path / "ras"),
                               str(tmp_path / "out2" / "m.jsonl")])
    assert done.exit_code == 0, done.output
    (record,) = load_manifest(tmp_path / "out2" / "m.jsonl").records
    # RAS x index 1..4 of 16 -> LPS index 11..14: the image's right half, the patient's left (radiological)
    assert record.boxes == ((11.0, 5.0, 15.0, 9.0),) and "left" in record.phrase


def test_rsna_with_dicom_images_converts_and_draws_its_contact_sheet(tmp_path: Path) -> None:
    """rsna/: `data convert --format rsna` then `data inspect` on a manifest of DICOM paths."""
    (tmp_path / "stage_2_train_images").mkdir()
    stored = ramp(128, 128, 0, 255).astype(np.uint8)
    write(tmp_path / "stage_2_train_images" / "00000000-phantom.dcm", dataset(stored, bits_allocated=8))
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\n00000000-phantom,20.0,30.0,40.0,40.0,1\n00000001-negative,,,,,0\n")
    converted = runner.invoke(app, ["data", "convert", "--format", "rsna",
                                    str(tmp_path / "stage_2_train_labels.csv"),
                                    str(tmp_path / "manifest.jsonl")])
    assert converted.exit_code == 0, converted.output
    (record,) = load_manifest(tmp_path / "manifest.jsonl").records
    assert (record.width, record.height) == (128, 128)  # from the DICOM, not the published set's 1024
    inspected = runner.invoke(app, ["data", "inspect", str(tmp_path / "manifest.jsonl")])
    assert inspected.exit_code == 0, inspected.output
    sheet = np.asarray(Image.open(tmp_path / "manifest_sheet.png").convert("RGB")).astype(int)
    # 128 px image on a 224 px tile (scale 1.75): the ramp is drawn, dark at the left, bright at the right
    assert sheet[100, 5].max() < 40 and sheet[100, 215].min() > 200
    # the box (20, 30, 60, 70) * 1.75 -> left edge at x = 35, rows 52..122, in red
    assert sheet[90, 35].tolist()[0] > 200 and sheet[90, 35].tolist()[1] < 80


def test_coco_without_image_sizes_reads_them_from_the_image(tmp_path: Path) -> None:
    """coco/no_image_size.json: images without width/height (and, likewise, other optional fields)."""
    doc = {"images": [{"id": 1, "file_name": "case_001.png"}, {"id": 2, "file_name": "case_002.png"}],
           "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40]},
                           {"id": 11, "image_id": 2, "category_id": 1,  # no bbox: from the polygon
                            "segmentation": [[5, 6, 25, 6, 25, 16, 5, 16]]}],
           "categories": [{"id": 1, "name": "nodule"}]}
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    Image.new("L", (64, 80)).save(tmp_path / "case_001.png")
    result = runner.invoke(app, ["data", "convert", "--format", "coco", str(tmp_path / "coco.json"),
                                 str(tmp_path / "manifest.jsonl")])
    assert result.exit_code == 0, result.output
    first, second = load_manifest(tmp_path / "manifest.jsonl").records
    assert (first.width, first.height, first.boxes) == (64, 80, ((10, 20, 40, 60),))  # xywh -> xyxy
    # read before training
    assert (second.width, second.height, second.boxes) == (None, None, ((5, 6, 25, 16),))
    doc["images"][0].pop("file_name")
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    bad = runner.invoke(app, ["data", "convert", "--format", "coco", str(tmp_path / "bad.json"),
                              str(tmp_path / "bad.jsonl")])
    assert bad.exit_code == 1 and "images[0]: file_name: is missing" in bad.output
    skipped = runner.invoke(app, ["data", "convert", "--format", "coco", "--on-bad-record", "skip",
                                  str(tmp_path / "bad.json"), str(tmp_path / "skip.jsonl")])
    # image 1 is skipped, and so its annotation (no image to point at); image 2's record remains
    assert skipped.exit_code == 0, skipped.output
    assert "skipped (file_name) 1" in skipped.output and "skipped (image_id) 1" in skipped.output
    assert [r.id for r in load_manifest(tmp_path / "skip.jsonl").records] == ["coco:2:nodule"]


def test_masks_storing_the_lesion_as_1_or_a_palette_index(tmp_path: Path) -> None:
    """masks/: label masks with the lesion as 1 (not 255); palette PNG masks are the same kind; a mask set
    that yields nothing exits 1 with the counts."""
    (tmp_path / "in" / "images").mkdir(parents=True)
    (tmp_path / "in" / "masks").mkdir()
    for name in ("lung_001", "lung_002"):
        Image.new("L", (64, 64), 40).save(tmp_path / "in" / "images" / f"{name}.png")
    ones = np.zeros((64, 64), np.uint8)
    ones[20:40, 10:30] = 1  # rows 20..39, cols 10..29 -> box (10, 20, 30, 40)
    Image.fromarray(ones).save(tmp_path / "in" / "masks" / "lung_001_mask.png")
    indexed = Image.fromarray(ones).convert("P")
    indexed.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    indexed.save(tmp_path / "in" / "masks" / "lung_002_mask.png")
    done = runner.invoke(app, ["data", "convert", "--format", "masks", str(tmp_path / "in"),
                               str(tmp_path / "m.jsonl")])
    assert done.exit_code == 0, done.output
    assert [r.boxes for r in load_manifest(tmp_path / "m.jsonl").records] == [((10, 20, 30, 40),)] * 2
    for name in ("lung_001", "lung_002"):
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "in" / "masks" / f"{name}_mask.png")
    empty = runner.invoke(app, ["data", "convert", "--format", "masks", str(tmp_path / "in"),
                                str(tmp_path / "e.jsonl")])
    assert empty.exit_code == 1 and "gave no records (empty masks 2)" in empty.output
    assert not (tmp_path / "e.jsonl").exists()


@pytest.mark.parametrize("text", [
    "<think>t</think><answer><|box_start|>(120,260),(300,410)<|box_end|></answer>",
    "<think>t</think><answer>(120,260),(300,410)</answer>",
])
def test_qwen_native_answer_is_a_box(text: str) -> None:
    """answers.json: Qwen's native `(x1,y1),(x2,y2)`, with or without box tokens, in the model's
    convention."""
    frame = rewards.ImageFrame(1000.0, 1000.0, 1000.0, 1000.0, "norm1000")
    parsed = rewards.parse_answer(text, "grounding", frame)
    assert parsed is not None and parsed.format_ok and parsed.box == (120.0, 260.0, 300.0, 410.0)
    scored = rewards.score_group([text], rewards.RewardTarget("grounding",
                                                              boxes=((120.0, 260.0, 300.0, 410.0),),
                                                              frame=frame), rewards.ScheduleSnapshot(0.5, 0),
                                 rewards.RewardConfig(w_recite=0.0))
    assert scored[0].iou == pytest.approx(1.0)


def test_trl_reward_returns_none_for_rows_without_a_target() -> None:
    """TRL convention: a reward returns None for rows it does not apply to (a mixed-task dataset)."""
    frame = rewards.ImageFrame(100.0, 100.0, 112.0, 112.0, "input_pixels")
    target = rewards.RewardTarget("grounding", boxes=((10.0, 10.0, 50.0, 50.0),), frame=frame).to_dict()
    reward = rewards.MedgroundReward(rewards.RewardConfig(w_recite=0.0))
    good = '<think>x</think><answer>{"bbox_2d": [11, 11, 56, 56]}</answer>'
    out = reward(prompts=["a", "a", "b", "b"], completions=[good, "nothing", good, good],
                 reward_target=[target, target, None, None])
    assert out[2] is None and out[3] is None and out[0] is not None and out[0] > 1.0 and out[1] == 0.0
    assert reward(prompts=["b"], completions=[good], reward_target=[None]) == [None]


def test_eval_counts_as_right_what_the_classification_reward_pays_for() -> None:
    from services.evaluation.metrics import classification_metrics

    assert rewards.label_match("Pleural effusion.", "pleural effusion") == 1.0
    assert classification_metrics(["Pleural effusion.", "  PNEUMOTHORAX ", None],
                                  ["pleural effusion", "pneumothorax",
                                   "edema"])["accuracy"] == pytest.approx(200 / 3)


def test_unreadable_image_fails_inspect_and_training_with_the_readers_message(tmp_path: Path) -> None:
    from services.convert import rollout_request

    ds = dataset(ramp(16, 16, 0, 100))
    ds.PixelData = ds.PixelData[:100]
    write(tmp_path / "short.dcm", ds)
    record = Record(id="r", image="short.dcm", width=16, height=16, phrase="nodule", boxes=((1, 1, 5, 5),))
    (tmp_path / "m.jsonl").write_text(json.dumps(record.model_dump(mode="json")) + "\n")
    inspected = runner.invoke(app, ["data", "inspect", str(tmp_path / "m.jsonl")])
    assert inspected.exit_code == 1 and "pixel data does not match the header" in inspected.output
    with pytest.raises(MedicalImageError, match="pixel data does not match the header"):
        rollout_request(record, tmp_path / "short.dcm")
    wrong_size = record.model_copy(update={"image": "ok.png", "width": 20})
    Image.new("L", (16, 16)).save(tmp_path / "ok.png")
    with pytest.raises(MedicalImageError, match=r"the manifest says 20x16 but .* is 16x16"):
        rollout_request(wrong_size, tmp_path / "ok.png")
