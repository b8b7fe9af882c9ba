"""Field cases, round 3 (tests/fixtures/field_3/, README there): photos stored sideways with an EXIF
orientation, Enhanced CT/MR functional groups, boxes in another frame than the file they point at, JSON Lines
with U+2028/U+0085 inside strings, full-width punctuation in answers. One test per case file, each right
value computed independently of the code under test, then the kinds found around it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_files import (
    dataset,
    enhanced,
    float_dataset,
    ramp,
    replaced_once,
    to_bytes,
    with_invalid_text,
    write,
)
from PIL import Image, ImageOps
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

import rewards
from services.cli import app
from services.data import load_manifest, write_manifest
from services.data.converters import ConvertOptions, convert
from services.data.jsonl import jsonl_values
from services.data.medimage import MedicalImageError, read_image
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
    """Manifests (written with ensure_ascii=False, so the separator is stored raw), metrics.jsonl, eval
    files."""
    from services.evaluation import read_ious
    from services.training.metrics import read_metrics

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
    """Line numbers count newline bytes (blank lines included), so the editor shows the line the error
    names."""
    path = tmp_path / "m.jsonl"
    good = json.dumps({"id": "a", "image": "a.png", "phrase": "x\u2028y", "boxes": [[1, 1, 2, 2]]},
                      ensure_ascii=False)
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


# ---- enhanced_ct_shared_fg.dcm: Enhanced CT/MR read through the frame's functional groups ----------------

def _linear_8bit(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM LINEAR window (PS3.3 C.11.2.1.2.1), written out: <= c - 0.5 - (w-1)/2 -> 0, > c - 0.5 + (w-1)/2
    -> 255, else ((v - (c - 0.5)) / (w - 1) + 0.5) * 255, rounded."""
    v = values.astype(float)
    unit = np.where(v <= center - 0.5 - (width - 1) / 2, 0.0,
                    np.where(v > center - 0.5 + (width - 1) / 2, 1.0,
                             (v - (center - 0.5)) / (width - 1) + 0.5))
    return np.round(unit * 255).astype(np.uint8)


def _frame_reference(path: Path | str, frame: int) -> np.ndarray:
    """The frame's display pixels from its own functional groups, with pydicom's functions on a dataset that
    holds only that frame's Pixel Value Transformation and Frame VOI LUT items (per-frame over shared)."""
    from pydicom.dataset import Dataset
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    groups = [ds.PerFrameFunctionalGroupsSequence[frame], ds.SharedFunctionalGroupsSequence[0]]
    pvt = next(g.PixelValueTransformationSequence[0] for g in groups
               if "PixelValueTransformationSequence" in g)
    voi = next(g.FrameVOILUTSequence[0] for g in groups if "FrameVOILUTSequence" in g)
    ref = Dataset()
    ref.BitsStored, ref.PixelRepresentation = ds.BitsStored, ds.PixelRepresentation
    ref.PhotometricInterpretation = ds.PhotometricInterpretation
    ref.RescaleSlope, ref.RescaleIntercept = pvt.RescaleSlope, pvt.RescaleIntercept
    ref.WindowCenter, ref.WindowWidth = voi.WindowCenter, voi.WindowWidth
    values = apply_modality_lut(ds.pixel_array[frame], ref)
    shown = apply_voi_lut(values, ref)
    # pydicom's output range: the rescaled stored range [0, 2**bits - 1] * slope + intercept (unsigned data)
    low = float(ref.RescaleIntercept)
    high = (2 ** int(ds.BitsStored) - 1) * float(ref.RescaleSlope) + low
    return np.round((shown - low) / (high - low) * 255).astype(np.uint8)


def test_enhanced_ct_uses_the_shared_functional_groups() -> None:
    """Rescale (-1024) and window (40, 400) only in the Shared Functional Groups: +40 HU is mid-grey."""
    path = CASES / "enhanced_ct_shared_fg.dcm"
    stored = pydicom.dcmread(path).pixel_array  # [2, 32, 32]
    for frame in (0, 1):
        image = read_image(path, frame=frame)
        assert image.window == (40.0, 400.0) and image.frames == 2
        assert np.array_equal(image.pixels, _frame_reference(path, frame))
        assert np.array_equal(image.pixels, _linear_8bit(stored[frame] - 1024.0, 40.0, 400.0))
    hu = stored[0] - 1024
    # +40 HU: (40 - 39.5) / 399 + 0.5 = 0.50125 -> 127.8 -> 128 (mid-grey), never the 241 of the fallback
    # window
    assert (hu == 40).any() and set(read_image(path).pixels[hu == 40].tolist()) == {128}


def test_enhanced_ct_frames_read_their_own_per_frame_groups(tmp_path: Path) -> None:
    """Per-frame Pixel Value Transformation and Frame VOI LUT differ by frame; Pixel Measures are shared."""
    stored = np.stack([ramp(8, 8, 0, 2000), ramp(8, 8, 0, 2000)])
    per_frame = [{"PixelValueTransformationSequence": {"RescaleSlope": 1, "RescaleIntercept": -1024},
                  "FrameVOILUTSequence": {"WindowCenter": 40, "WindowWidth": 400}},
                 {"PixelValueTransformationSequence": {"RescaleSlope": 2, "RescaleIntercept": -2048},
                  "FrameVOILUTSequence": {"WindowCenter": 300, "WindowWidth": 1500}}]
    path = write(tmp_path / "enhanced.dcm", enhanced(stored,
                                                     {"PixelMeasuresSequence": {"PixelSpacing": [0.5, 0.7]}},
                                                     per_frame))
    first, second = read_image(path, frame=0), read_image(path, frame=1)
    assert np.array_equal(first.pixels, _linear_8bit(stored[0] - 1024.0, 40, 400))
    assert np.array_equal(second.pixels, _linear_8bit(stored[1] * 2.0 - 2048, 300, 1500))
    assert np.array_equal(second.pixels, _frame_reference(path, 1))
    assert (first.window, second.window) == ((40.0, 400.0), (300.0, 1500.0))
    assert first.pixel_spacing_mm == (0.5, 0.7)


def test_real_enhanced_ct_from_pydicom_data() -> None:
    """pydicom-data's eCT_Supplemental.dcm (512 x 512 x 2): window (49, 102) and rescale -1024 in its Shared
    Functional Groups; main read it with the fallback window, 48 grey levels off on average."""
    path = get_testdata_file("eCT_Supplemental.dcm", download=False)
    if path is None:
        pytest.skip("eCT_Supplemental.dcm comes with pydicom-data; install the `data` extra")
    for frame in (0, 1):
        image = read_image(path, frame=frame)
        assert image.window == (49.0, 102.0)
        assert np.array_equal(image.pixels, _frame_reference(path, frame))


def test_functional_group_values_that_are_not_numbers_are_named(tmp_path: Path) -> None:
    ds = enhanced(np.stack([ramp(8, 8, 0, 100)]), {"PixelValueTransformationSequence": {"RescaleSlope": 7.25,
                                                                                       "RescaleIntercept": 0}})  # noqa: E501
    data = with_invalid_text(to_bytes(ds), "7.25", "7,25")
    with pytest.raises(MedicalImageError, match=r"Shared Functional Groups Sequence \(5200,9229\) > "
                                                r"PixelValueTransformationSequence \(0028,9145\) > "
                                                r"RescaleSlope \(0028,1053\) holds '7,25', not a number"):
        read_image(data)


# ---- Float pixel data and malformed values: decoded, or refused naming the tag ---------------------------

@pytest.mark.parametrize("double", [False, True])
def test_float_pixel_data_is_decoded(double: bool) -> None:
    """Float (7FE0,0008) and Double Float (7FE0,0009) Pixel Data: the fallback window over the finite values;
    NaN (nothing measured) shows black."""
    values = np.array([[0.0, 1.0, 2.0, np.nan], [3.0, 4.0, 5.0, 6.0]]) * 0.001  # tiny values: no integer ramp
    image = read_image(to_bytes(float_dataset(values, double=double)))
    finite = values[np.isfinite(values)]
    low, high = np.percentile(finite, 0.5), np.percentile(finite, 99.5)
    expected = np.round(np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0, 1) * 255)
    assert image.pixels.tolist() == expected.astype(np.uint8).tolist()
    assert image.pixels[0, 3] == 0 and image.pixels[1, 3] == 255


def test_float_pixel_data_with_a_frame_window() -> None:
    ds = float_dataset(np.array([[-1.0, 0.0], [0.5, 2.0]]))
    ds.SharedFunctionalGroupsSequence = enhanced(np.zeros((1, 2, 2)), {"FrameVOILUTSequence": {
        "WindowCenter": 0.5, "WindowWidth": 2}}).SharedFunctionalGroupsSequence
    # LINEAR (0.5, 2): <= 0.5 - 0.5 - 0.5 = -0.5 -> 0; > 0.5 -> 255; 0 -> ((0 - 0) / 1 + 0.5) = 0.5 -> 128
    assert read_image(to_bytes(ds)).pixels.tolist() == [[0, 128], [255, 255]]


def test_pydicom_bad_vr_file_is_refused_naming_the_tag() -> None:
    """pydicom's badVR.dcm: Number of Frames (IS) holds "1A"; main raised a raw ValueError (a 500 at
    Serve)."""
    path = get_testdata_file("badVR.dcm")
    with pytest.raises(MedicalImageError, match=r"NumberOfFrames \(0028,0008\) holds '1A'"):
        read_image(path)
    with pytest.raises(MedicalImageError, match=r"NumberOfFrames \(0028,0008\)"):
        read_image(Path(path).read_bytes())


def test_a_value_pydicom_cannot_convert_is_refused_in_the_pixel_module_and_ignored_elsewhere() -> None:
    """A US value of odd length: pydicom raises BytesLengthException when the element is read."""
    base = to_bytes(dataset(ramp(16, 16, 0, 1000)))
    rows = b"\x28\x00\x10\x00US\x02\x00\x10\x00"  # (0028,0010) US, length 2, value 16
    broken = replaced_once(base, rows, b"\x28\x00\x10\x00US\x03\x00\x10\x00\x00")
    with pytest.raises(MedicalImageError, match=r"Rows \(0028,0010\) cannot be read \(BytesLengthException"):
        read_image(broken)
    ds = dataset(ramp(16, 16, 0, 1000))
    ds.AcquisitionMatrix = [0, 16, 16, 0]  # (0018,1310) US, 4 values; nothing in the pipeline reads it
    data = to_bytes(ds)
    value = np.array([0, 16, 16, 0], "<u2").tobytes()
    odd = replaced_once(data, b"\x18\x00\x10\x13US\x08\x00" + value, b"\x18\x00\x10\x13US\x09\x00"
                        + value + b"\x00")
    assert np.array_equal(read_image(odd).pixels, read_image(data).pixels)


# ---- derm_exif6.jpg: one orientation rule for every stored raster (EXIF 1-8) -----------------------------

def _exif_upright(path: Path) -> np.ndarray:
    """What viewers, annotation tools and browsers show: Pillow's exif_transpose of the stored pixels."""
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def _save(pixels: np.ndarray, path: Path, orientation: int | None) -> Path:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)
    return path


def test_photo_stored_sideways_is_read_sized_and_served_upright(tmp_path: Path) -> None:
    """derm_exif6.jpg: stored 48 wide x 64 high with Orientation 6; shown upright 64 x 48. Training (the
    rollout request), eval (the overlay), Serve (the upload) and `image_size` all see the upright image."""
    from services.convert import rollout_request
    from services.data.manifest import Manifest
    from services.data.medimage import image_size
    from services.evaluation import Prediction, write_overlays
    from services.serve.config import Limits
    from services.serve.validate import decode_image

    path = CASES / "derm_exif6.jpg"
    stored = np.asarray(Image.open(path).convert("RGB"))
    upright = _exif_upright(path)
    assert stored.shape == (64, 48, 3) and upright.shape == (48, 64, 3)
    assert np.array_equal(upright, np.rot90(stored, k=-1))  # Orientation 6: turn 90 degrees clockwise to view
    image = read_image(path)
    assert image.size == (64, 48) and image_size(path) == (64, 48)
    assert np.array_equal(image.pixels, upright)
    record = Record(id="derm", image=str(path), width=64, height=48, phrase="lesion",
                    boxes=((36, 4, 60, 20),))
    assert np.array_equal(np.asarray(rollout_request(record, path).image.convert("RGB")), upright)
    served = decode_image(path.read_bytes(), Limits(min_image_side=8))
    assert (served.width, served.height) == (64, 48) and np.array_equal(np.asarray(served.image), upright)
    (overlay,) = write_overlays([Prediction(record, "", None, 0.0)],
                                Manifest(tmp_path / "m.jsonl", (record,)),
                                tmp_path / "overlays", limit=1)
    shown = np.asarray(Image.open(overlay).convert("RGB"))
    scale = shown.shape[1] // 64
    assert shown.shape[:2] == (48 * scale, 64 * scale)  # drawn upright, at an integer scale
    assert np.array_equal(shown[40 * scale, 10 * scale], upright[40, 10])  # away from the box and the text


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_reads_and_sizes_like_exif_transpose(tmp_path: Path, orientation: int) -> None:
    from services.data.medimage import image_size, read_mask

    stored = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3) * 3  # asymmetric: every pixel differs
    path = _save(stored, tmp_path / "photo.png", orientation)
    upright = _exif_upright(path)
    assert upright.shape == ((4, 6, 3) if orientation >= 5 else (6, 4, 3))
    assert np.array_equal(read_image(path).pixels, upright)
    assert np.array_equal(read_image(path.read_bytes()).pixels, upright)
    assert image_size(path) == (upright.shape[1], upright.shape[0])
    mask = _save(stored[..., 0], tmp_path / "mask.png", orientation)
    assert np.array_equal(read_mask(mask).values, np.asarray(ImageOps.exif_transpose(Image.open(mask))))
    jpeg = _save(stored, tmp_path / "photo.jpg", orientation)
    assert image_size(jpeg) == (upright.shape[1], upright.shape[0])
    assert np.array_equal(read_image(jpeg).pixels, _exif_upright(jpeg))


def test_a_png_exif_chunk_after_the_pixels_is_ignored_by_reader_and_size_alike(tmp_path: Path) -> None:
    """The size is read from the header alone, so an eXIf chunk after IDAT cannot count for it; the reader
    ignores it too, so pixels and sizes never disagree."""
    from services.data.medimage import image_size

    stored = np.zeros((6, 4), np.uint8)
    data = _save(stored, tmp_path / "a.png", 6).read_bytes()
    start = data.index(b"eXIf") - 4
    length = int.from_bytes(data[start:start + 4], "big")
    chunk, rest = data[start:start + 12 + length], data[:start] + data[start + 12 + length:]
    end = rest.index(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(rest[:end] + chunk + rest[end:])
    assert image_size(tmp_path / "late.png") == (4, 6) and read_image(tmp_path / "late.png").size == (4, 6)


def test_coco_without_sizes_reads_the_upright_size_and_keeps_its_boxes(tmp_path: Path) -> None:
    """A COCO export without image sizes next to derm_exif6.jpg: main read 48 x 64 and clipped x2 = 60 to
    48."""
    (tmp_path / "derm.jpg").write_bytes((CASES / "derm_exif6.jpg").read_bytes())
    doc = {"images": [{"id": 1, "file_name": "derm.jpg"}], "categories": [{"id": 1, "name": "naevus"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [36, 4, 24, 16]}]}
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    done = runner.invoke(app, ["data", "convert", "--format", "coco", str(tmp_path / "coco.json"),
                               str(tmp_path / "m.jsonl")])
    assert done.exit_code == 0, done.output
    (record,) = load_manifest(tmp_path / "m.jsonl").records
    assert (record.width, record.height, record.boxes) == (64, 48, ((36, 4, 60, 20),))  # xywh -> xyxy


def test_masks_and_contact_sheet_follow_the_photo_orientation(tmp_path: Path) -> None:
    """An ISIC-like pair: the photo stored sideways (EXIF 6), the mask drawn on the upright photo (no
    EXIF)."""
    (tmp_path / "in" / "images").mkdir(parents=True)
    (tmp_path / "in" / "masks").mkdir()
    (tmp_path / "in" / "images" / "ISIC_1.jpg").write_bytes((CASES / "derm_exif6.jpg").read_bytes())
    upright = _exif_upright(CASES / "derm_exif6.jpg")
    lesion = upright[..., 0] < 128  # the dark naevus, in the upright frame
    Image.fromarray((lesion
                     * 255).astype(np.uint8)).save(tmp_path / "in" / "masks" / "ISIC_1_segmentation.png")
    ys, xs = np.nonzero(lesion)
    done = runner.invoke(app, ["data", "convert", "--format", "masks", str(tmp_path / "in"),
                               str(tmp_path / "m.jsonl")])
    assert done.exit_code == 0, done.output
    (record,) = load_manifest(tmp_path / "m.jsonl").records
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # pixel i spans [i, i + 1)
    assert (record.width, record.height, record.boxes) == (64, 48, (tuple(float(v) for v in box),))
    inspected = runner.invoke(app, ["data", "inspect", str(tmp_path / "m.jsonl")])
    assert inspected.exit_code == 0, inspected.output
    sheet = np.asarray(Image.open(tmp_path / "m_sheet.png").convert("RGB")).astype(int)
    scale = 224 / 64  # the long side fills the tile
    cx, cy = (box[0] + box[2]) / 2 * scale, (box[1] + box[3]) / 2 * scale
    # red channel: naevus 70, skin 206; the sideways photo would put the naevus at (cy, cy)
    assert sheet[round(cy), round(cx), 0] < 128 and sheet[round(cy), round(cy), 0] > 150


# ---- mscxr_small/: boxes in the frame of the image each record points at ---------------------------------

def _mscxr(tmp_path: Path) -> Path:
    """The case folder copied: the table (boxes in the 2544 x 3056 DICOM frame) and a 636 x 764 JPG export."""
    import shutil

    return Path(shutil.copytree(CASES / "mscxr_small", tmp_path / "mscxr"))


def test_mscxr_boxes_are_scaled_onto_the_smaller_jpg_they_point_at(tmp_path: Path) -> None:
    folder = _mscxr(tmp_path)
    table = folder / "MS_CXR_Local_Alignment_v1.0.0.csv"
    done = runner.invoke(app, ["data", "convert", "--format", "ms-cxr", str(table), str(folder / "m.jsonl")])
    assert done.exit_code == 0, done.output
    assert "boxes scaled to the stored image 2" in done.output
    (record,) = load_manifest(folder / "m.jsonl").records
    stored = Image.open(folder / "files/p10/p10000032/s50/d1.jpg").size
    assert (record.width, record.height) == stored == (636, 764)
    # xywh in the DICOM frame (200, 2000, 400, 300) -> xyxy (200, 2000, 600, 2300), x 636/2544 = 1/4, y
    # 764/3056
    # = 1/4 -> (50, 500, 150, 575); (1900, 2048, 420, 280) -> (1900, 2048, 2320, 2328) / 4 -> (475, 512, 580,
    # 582)
    assert record.boxes == ((50.0, 500.0, 150.0, 575.0), (475.0, 512.0, 580.0, 582.0))
    pixels = np.asarray(Image.open(folder / "files/p10/p10000032/s50/d1.jpg"))
    # the box covers the finding drawn there
    assert pixels[500:575, 50:150].mean() > 150 > pixels[:400].mean()
    inspected = runner.invoke(app, ["data", "inspect", str(folder / "m.jsonl")])
    assert inspected.exit_code == 0, inspected.output


def test_a_manifest_in_the_dicom_frame_beside_the_jpg_is_named_by_inspect_and_training(
        tmp_path: Path) -> None:
    """Converted without the images (the table's 2544 x 3056 frame kept), then used beside the JPG export."""
    from services.convert import rollout_request

    folder = _mscxr(tmp_path)
    table = folder / "MS_CXR_Local_Alignment_v1.0.0.csv"
    done = runner.invoke(app, ["data", "convert", "--format", "ms-cxr", str(table),
                               str(tmp_path / "elsewhere.jsonl")])
    assert done.exit_code == 0, done.output
    (record,) = load_manifest(tmp_path / "elsewhere.jsonl").records
    assert (record.width, record.height) == (2544, 3056)  # no image there: the table's frame is kept
    write_manifest([record], folder / "m.jsonl")
    inspected = runner.invoke(app, ["data", "inspect", str(folder / "m.jsonl")])
    assert inspected.exit_code == 1 and "Traceback" not in inspected.output
    assert "the manifest says 2544x3056 but" in inspected.output and "is 636x764" in inspected.output
    with pytest.raises(MedicalImageError,
                       match=r"2544x3056 but .* is 636x764 pixels, so its boxes are in another "
                                                r"frame.*convert again with the images in place"):
        rollout_request(record, folder / record.image)


def test_an_image_that_is_not_a_resized_copy_of_the_tables_frame_is_refused_in_one_line(
        tmp_path: Path) -> None:
    folder = _mscxr(tmp_path)
    jpg = folder / "files/p10/p10000032/s50/d1.jpg"
    Image.open(jpg).crop((0, 0, 636, 700)).save(jpg)  # 636 x 700: x scales by 1/4, y would need 0.229
    table = folder / "MS_CXR_Local_Alignment_v1.0.0.csv"
    refused = runner.invoke(app, ["data", "convert", "--format", "ms-cxr", str(table),
                                  str(folder / "m.jsonl")])
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    assert "the boxes are in a 2544x3056 frame but the image is 636x700" in refused.output
    skipped = runner.invoke(app, ["data", "convert", "--format", "ms-cxr", "--on-bad-record",
                                  "skip", str(table),
                                  str(folder / "m.jsonl")])
    assert (skipped.exit_code == 1 and "gave no records" in skipped.output
            and "skipped (image size) 1" in skipped.output)


def test_boxes_past_the_image_without_a_stated_frame_are_refused(tmp_path: Path) -> None:
    """VLM-R1 and COCO without sizes claim the image file's frame: a box well past its edge was drawn on
    another copy (here boxes of a 1024 frame beside a 256 px image); a stated COCO size scales instead."""
    Image.new("L", (256, 256)).save(tmp_path / "a.png")
    (tmp_path / "rec.json").write_text(json.dumps([{"image": "a.png", "problem": "nodule",
                                                    "solution": [600, 500, 700, 620]}]))
    refused = runner.invoke(app, ["data", "convert", "--format", "vlm-r1", str(tmp_path / "rec.json"),
                                  str(tmp_path / "v.jsonl")])
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    assert "box (600, 500, 700, 620) lies outside the 256x256 image" in refused.output
    doc = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "nodule"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [600, 500, 100, 120]}]}
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    coco = runner.invoke(app, ["data", "convert", "--format", "coco", str(tmp_path / "coco.json"),
                               str(tmp_path / "c.jsonl")])
    assert coco.exit_code == 1 and "lies outside the 256x256 image" in coco.output
    doc["images"][0].update(width=1024, height=1024)  # the frame stated: a 1/4 copy, scaled
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    scaled = runner.invoke(app, ["data", "convert", "--format", "coco", str(tmp_path / "coco.json"),
                                 str(tmp_path / "c.jsonl")])
    assert scaled.exit_code == 0, scaled.output
    (record,) = load_manifest(tmp_path / "c.jsonl").records
    # (600, 500, 700, 620) / 4 = (150, 125, 175, 155)
    assert (record.width, record.height, record.boxes) == (256, 256, ((150, 125, 175, 155),))
    overhang = Record(id="r", image="a.png", phrase="nodule", boxes=((600, 500, 700, 620),))
    write_manifest([overhang], tmp_path / "m.jsonl")
    inspected = runner.invoke(app, ["data", "inspect", str(tmp_path / "m.jsonl")])
    assert inspected.exit_code == 1 and "box (600, 500, 700, 620) lies outside" in inspected.output
