"""RSNA Pneumonia Detection `stage_2_train_labels.csv`: patientId,x,y,width,height,Target.

One row per box on positive patients (up to 4 rows each), one row with empty coordinates and Target 0 per
negative patient. Positives become one grounding record per patient with all its boxes (xywh in the
1024 x 1024 DICOM's pixels). Negatives have nothing to ground: they are counted ("negatives") and skipped.
"""

from __future__ import annotations

from pathlib import Path

from services.data.converters.common import (
    ConvertError,
    ConvertOptions,
    ConvertResult,
    hashed_split,
    image_ref,
    number,
    read_table,
    require_columns,
)
from services.data.records import Record, RecordMeta, clip_box, xywh_to_xyxy

RSNA_SIZE = 1024


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    rows = read_table(path)
    require_columns(rows, ("patientId", "x", "y", "width", "height", "Target"), path, "RSNA stage_2_train_labels")
    result = ConvertResult()
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    negatives: set[str] = set()
    for n, row in enumerate(rows, start=2):
        pid = row["patientId"].strip()
        result.notes["rows"] += 1
        if row["Target"].strip() == "0":
            if any(row[c].strip() for c in ("x", "y", "width", "height")):
                raise ConvertError(f"{path} row {n}: Target 0 (negative) but coordinates are given")
            negatives.add(pid)
            continue
        x, y, w, h = (number(row[c], path, n, c) for c in ("x", "y", "width", "height"))
        boxes.setdefault(pid, []).append(clip_box(xywh_to_xyxy(x, y, w, h), RSNA_SIZE, RSNA_SIZE))
    result.notes["negatives"] = len(negatives - boxes.keys())
    root = options.image_root if options.image_root is not None else "stage_2_train_images"
    finding = options.finding or "pneumonia"
    for pid, pid_boxes in boxes.items():
        result.records.append(Record(
            id=f"rsna:{pid}", image=image_ref(root, f"{pid}.dcm"), width=RSNA_SIZE, height=RSNA_SIZE,
            task="grounding", phrase=options.phrase or "lung opacity suspicious for pneumonia",
            boxes=tuple(pid_boxes), knowledge_key="cxr/pneumonia", source="rsna_pneumonia",
            split=hashed_split(pid, options),
            meta=RecordMeta(modality="cxr", orientation="radiological",
                            attributes={"finding": finding, "patient_id": pid}),
        ))
    return result
