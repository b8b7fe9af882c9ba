"""What every converter shares: reading tables as published (.csv, .csv.gz, a .zip holding one CSV),
patient-level hashed splits, finding names, boxes put in the frame of the image a record points at
(`fit_boxes`), and the result type that reports what was dropped and why.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rewards.boxes import clip_box
from services.data.records import Box, Record

Size = tuple[int, int]
# A box may overhang the image it claims by this fraction of the side (at least one pixel) and be clipped:
# annotation tools let a drag run past the edge and some write x2 = width + 1. More means another frame.
OVERHANG = 0.01


class ConvertError(ValueError):
    """Input that does not match the documented format; the message names the file, row and column."""


class BadRow(ConvertError):
    """One row or item that breaks the format: `where` (file and row/item), the `field` and the reason with
    its fix. `ConvertResult.row` skips or raises it according to `ConvertOptions.on_bad_record`."""

    def __init__(self, where: str, field: str, reason: str) -> None:
        super().__init__(f"{where}: {field}: {reason}")
        self.where, self.field, self.reason = where, field, reason


@dataclass(frozen=True)
class ConvertOptions:
    """Options shared by the converters (CLI flags of `medground data convert`)."""

    image_root: str | None = None  # folder of the images, relative to the manifest or absolute
    split: str | None = None  # force one split for every record (else hashed by patient)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    phrase: str | None = None  # phrase for formats that carry none (masks, volumes)
    finding: str | None = None  # finding name for formats that carry none
    modality: str | None = None
    slice: str = "max"  # volumes: "max" (largest label area), "center", "all" or an index
    window: tuple[float, float] | None = None  # volumes / DICOM: (center, width)
    min_votes: int = 1  # VinDr: radiologists needed for a fused box
    fuse_iou: float = 0.4  # VinDr: IoU above which two radiologists' boxes are the same finding
    task: str = "classification"  # MedMNIST: classification or grading
    labels: tuple[str, ...] = ()  # MedMNIST: class names by index
    on_bad_record: Literal["skip", "fail"] = "fail"  # a malformed row: stop naming it, or count it and go on
    # Negatives (issue 31): "skip" counts them; "keep" writes each as a grounding record with no box, asking
    # about the finding it lacks (RSNA Target 0, VinDr "No finding", images without a mask lesion).
    negatives: Literal["skip", "keep"] = "skip"
    components: Literal["union", "each"] = "union"  # masks/volumes: one box per mask, or one per component


@dataclass
class ConvertResult:
    """Records made, counted notes (rows read, negatives skipped, boxes merged, ...) and skipped rows."""

    records: list[Record] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        notes = ", ".join(f"{k} {v}" for k, v in sorted(self.notes.items()))
        return f"{len(self.records)} records" + (f" ({notes})" if notes else "")

    @contextmanager
    def row(self, options: ConvertOptions) -> Iterator[None]:
        """Run one row's conversion: a BadRow inside stops the conversion (on_bad_record=fail) or is
        counted under "skipped (<field>)" and listed in `skipped` (skip); other errors pass through."""
        try:
            yield
        except BadRow as exc:
            if options.on_bad_record == "fail":
                raise ConvertError(f"{exc} (or pass --on-bad-record skip to skip such rows)") from None
            self.skipped.append(str(exc))
            self.notes[f"skipped ({exc.field})"] += 1


def read_table(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV as published: plain, gzip-compressed, or the single CSV inside a zip."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path} does not exist")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    elif path.suffix == ".zip":
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = [n for n in zf.namelist() if n.endswith(".csv")]
            if len(names) != 1:
                raise ConvertError(f"{path} must hold exactly one .csv, found {names}")
            raw = zf.read(names[0])
    text = raw.decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def read_rows(path: str | Path) -> list[list[str]]:
    """Raw CSV rows (header included) for tables whose header cannot be trusted (NIH)."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))


def require_columns(rows: list[dict[str, str]], columns: tuple[str, ...], path: str | Path, fmt: str) -> None:
    if not rows:
        raise ConvertError(f"{path} has no data rows")
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ConvertError(f"{path} is not a {fmt} table: columns {missing} are missing (found "
                           f"{list(rows[0])})")


def number(value: str | None, path: str | Path, row: int, column: str) -> float:
    """A CSV cell as a finite float, or BadRow naming the file, row and column."""
    try:
        out = float(value) if value is not None else float("nan")
    except ValueError:
        out = float("nan")
    if out != out or out in (float("inf"), float("-inf")):
        raise BadRow(f"{path} row {row}", column,
                     f"holds {value!r}, not a number; fix the cell or drop the row")
    return out


def cell(row: dict[str, str], column: str, path: str | Path, n: int) -> str:
    """A CSV cell, stripped; BadRow when the row is too short to have it."""
    value = row.get(column)
    if value is None:
        raise BadRow(f"{path} row {n}", column,
                     "the row has fewer cells than the header; fix or drop the row")
    return value.strip()


def hashed_split(key: str, options: ConvertOptions) -> str:
    """Deterministic train/val/test from a patient (or image) key, so one patient never spans splits."""
    if options.split is not None:
        return options.split
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    if u < options.test_fraction:
        return "test"
    return "val" if u < options.test_fraction + options.val_fraction else "train"


def slug(finding: str) -> str:
    """'Pleural effusion' -> 'pleural-effusion', 'Nodule/Mass' -> 'nodule-mass' (knowledge-key form)."""
    return "-".join("".join(c if c.isalnum() else " " for c in finding.lower()).split())


def image_ref(root: str | None, name: str) -> str:
    return name if not root else f"{root.rstrip('/')}/{name}"


def size_if_present(manifest_dir: Path, image: str) -> tuple[int, int] | None:
    """(width, height) from the image header when the file is already there, else None: the upright size
    the reader returns (medimage.image_size)."""
    path = Path(image) if Path(image).is_absolute() else manifest_dir / image
    if not path.is_file():
        return None
    from services.data.medimage import image_size

    return image_size(path)


def _scaled(boxes: list[Box], stated: Size, stored: Size, where: str) -> list[Box]:
    """Boxes of a `stated` frame in a resized copy of it (`stored`); BadRow when the sides scale differently
    (a crop, a pad or another image: no scale is right)."""
    sx, sy = stored[0] / stated[0], stored[1] / stated[1]
    if abs(stated[0] * sy - stored[0]) > 1 or abs(stated[1] * sx - stored[1]) > 1:
        raise BadRow(where, "image "
                            "size", f"the boxes are in a {stated[0]}x{stated[1]} frame but the image is "
                                    f"{stored[0]}x{stored[1]}, not a resized copy of it; point the record "
                                    "at the image the boxes were drawn on")
    return [(x1 * sx, y1 * sy, x2 * sx, y2 * sy) for x1, y1, x2, y2 in boxes]


def fit_boxes(boxes: list[Box], where: str, stated: Size | None, stored: Size | None,
              notes: Counter[str]) -> tuple[tuple[Box, ...], Size | None]:
    """(boxes in the frame of the image the record points at, that image's size), so a converter never
    writes a box outside its image.

    stated: the frame the source says its boxes are in (MS-CXR's image_width/height, COCO's width/height,
    NIH's 1024 x 1024), None when it says none; stored: the image's own size when the file is there.
    A stated frame that differs from the stored image is scaled onto it when the image is a resized copy
    (both sides scale alike, within a pixel), else BadRow naming both sizes. Without a stated frame the
    boxes claim the stored image's: a box past its edge by more than OVERHANG of the side was drawn in
    another frame (BadRow naming the box and the size). What remains is clipped to the frame (counted)."""
    if stated is not None and stored is not None and stated != stored:
        boxes = _scaled(boxes, stated, stored, where)
        notes["boxes scaled to the stored image"] += len(boxes)
    frame = stored or stated
    if frame is None:
        return tuple(clip_box(b, None, None) for b in boxes), None
    width, height = frame
    if stated is None:
        tx, ty = max(1.0, OVERHANG * width), max(1.0, OVERHANG * height)
        for x1, y1, x2, y2 in boxes:
            if min(x1, x2) < -tx or min(y1, y2) < -ty or max(x1,
                                                             x2) > width + tx or max(y1, y2) > height + ty:
                raise BadRow(where, "boxes", f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the "
                                             f"{width}x{height} image, so it was drawn in another frame; "
                                             "point the record at the image the boxes were drawn on, or "
                                             "state that image's size in the source (e.g. COCO "
                                             "width/height) so the boxes are scaled")
    clipped = tuple(clip_box(b, width, height) for b in boxes)
    changed = sum(c != b for c, b in zip(clipped, boxes, strict=True))
    if changed:
        notes["clipped boxes"] += changed
    return clipped, frame
