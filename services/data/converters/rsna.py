"""RSNA Pneumonia Detection `stage_2_train_labels.csv`: patientId,x,y,width,height,Target.

One row per box on positive patients (up to 4 rows each), one row with empty coordinates and Target 0 per
negative patient. Positives become one grounding record per patient with all its boxes (xywh in the
DICOM's pixels: 1024 x 1024 in the published set; a DICOM present beside the manifest gives its own size,
and a box past its edge is refused as drawn in another frame, `fit_boxes`). Negatives (Target 0) are
counted ("negatives") and skipped, or with `--negatives keep` written as records with no box asking the same
phrase (the finding is absent).
"""

from __future__ import annotations

from pathlib import Path

from services.data.converters.common import (
    BadRow,
    ConvertOptions,
    ConvertResult,
    cell,
    fit_boxes,
    hashed_split,
    image_ref,
    number,
    read_table,
    require_columns,
    size_if_present,
)
from services.data.records import Box, Record, RecordMeta, xywh_to_xyxy

RSNA_SIZE = 1024


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    rows = read_table(path)
    require_columns(rows, ("patientId", "x", "y", "width", "height", "Target"), path,
                    "RSNA stage_2_train_labels")
    result = ConvertResult()
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    negatives: set[str] = set()
    for n, row in enumerate(rows, start=2):
        result.notes["rows"] += 1
        with result.row(options):
            pid = cell(row, "patientId", path, n)
            if cell(row, "Target", path, n) == "0":
                if any(cell(row, c, path, n) for c in ("x", "y", "width", "height")):
                    raise BadRow(f"{path} row {n}", "Target",
                                 "0 (negative) but coordinates are given; fix the "
                                 "row or drop it")
                negatives.add(pid)
                continue
            x, y, w, h = (number(row[c], path, n, c) for c in ("x", "y", "width", "height"))
            boxes.setdefault(pid, []).append(xywh_to_xyxy(x, y, w, h))
    result.notes["negatives"] = len(negatives - boxes.keys())
    root = options.image_root if options.image_root is not None else "stage_2_train_images"
    finding = options.finding or "pneumonia"
    if options.negatives == "keep":
        for pid in sorted(negatives - boxes.keys()):
            result.records.append(_record(pid, root, out_dir, (), options, finding))
    for pid, pid_boxes in boxes.items():
        ref = image_ref(root, f"{pid}.dcm")
        # The published DICOMs are 1024 x 1024; a present file's own header wins (a phantom, another export).
        stored = size_if_present(out_dir, ref)
        clipped: tuple[Box, ...] = ()
        with result.row(options):
            clipped, _ = fit_boxes(pid_boxes, f"{path} patientId {pid}", None if stored
                                   else (RSNA_SIZE, RSNA_SIZE),
                                   stored, result.notes)
        kept = tuple(b for b in clipped if b[0] < b[2] and b[1] < b[3])
        if len(kept) < len(clipped):
            result.notes["boxes outside the image"] += len(clipped) - len(kept)
        if not kept:
            continue
        result.records.append(_record(pid, root, out_dir, kept, options, finding))
    return result


def _record(pid: str, root: str, out_dir: Path, boxes: tuple[Box, ...], options: ConvertOptions,
            finding: str) -> Record:
    """One patient's record: its boxes (none: a negative), in the frame of its DICOM when present."""
    ref = image_ref(root, f"{pid}.dcm")
    width, height = size_if_present(out_dir, ref) or (RSNA_SIZE, RSNA_SIZE)
    return Record(
        id=f"rsna:{pid}", image=ref, width=width, height=height,
        task="grounding", phrase=options.phrase or "lung opacity suspicious for pneumonia",
        boxes=boxes, knowledge_key="cxr/pneumonia", source="rsna_pneumonia",
        split=hashed_split(pid, options),
        meta=RecordMeta(modality="cxr", orientation="radiological",
                        attributes={"finding": finding, "patient_id": pid}),
    )
