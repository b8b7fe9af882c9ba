"""MS-CXR `MS_CXR_Local_Alignment_v1.0.0.csv` (PhysioNet, credentialed; columns from public loaders).

Columns dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height; one row per box,
xywh in pixels of the original MIMIC-CXR image. Rows sharing (dicom_id, label_text) are one phrase with
several boxes, merged into one multi-box record. Images are the MIMIC-CXR files named in `path`.
"""

from __future__ import annotations

from pathlib import Path

from rewards.boxes import clip_box
from services.data.converters.common import (
    ConvertOptions,
    ConvertResult,
    cell,
    hashed_split,
    image_ref,
    number,
    read_table,
    require_columns,
    slug,
)
from services.data.records import Box, Record, RecordMeta, xywh_to_xyxy

COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    rows = read_table(path)
    require_columns(rows, COLUMNS, path, "MS-CXR")
    result = ConvertResult()
    groups: dict[tuple[str, str], list[Box]] = {}
    first: dict[tuple[str, str], dict[str, str]] = {}
    sizes: dict[tuple[str, str], tuple[int, int]] = {}
    for n, row in enumerate(rows, start=2):
        result.notes["rows"] += 1
        with result.row(options):
            key = (cell(row, "dicom_id", path, n), cell(row, "label_text", path, n))
            width = int(number(row["image_width"], path, n, "image_width"))
            height = int(number(row["image_height"], path, n, "image_height"))
            box = xywh_to_xyxy(*(number(row[c], path, n, c) for c in ("x", "y", "w", "h")))
            groups.setdefault(key, []).append(clip_box(box, width, height))
            first.setdefault(key, row)
            sizes[key] = (width, height)
    for k, (key, boxes) in enumerate(groups.items()):
        row = first[key]
        finding = row["category_name"].strip().lower()
        # MIMIC paths look like files/p10/p10000032/s50414267/<dicom_id>.jpg: the patient is the p-folder.
        parts = Path(row["path"]).parts
        patient = parts[2] if len(parts) > 3 else key[0]
        result.notes["merged boxes"] += len(boxes) - 1
        result.records.append(Record(
            id=f"mscxr:{key[0]}:{k}", image=image_ref(options.image_root, row["path"].strip()),
            width=sizes[key][0], height=sizes[key][1], task="grounding", phrase=key[1], boxes=tuple(boxes),
            knowledge_key=f"cxr/{slug(finding)}", source="ms_cxr", split=hashed_split(patient, options),
            meta=RecordMeta(modality="cxr", orientation="radiological",
                            attributes={"finding": finding, "patient_id": patient}),
        ))
    return result
