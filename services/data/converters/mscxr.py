"""MS-CXR `MS_CXR_Local_Alignment_v1.0.0.csv` (PhysioNet, credentialed; columns from public loaders).

Columns dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height; one row per box,
xywh in pixels of the original MIMIC-CXR DICOM, whose size image_width x image_height states. Rows sharing
(dicom_id, label_text) are one phrase with several boxes, merged into one multi-box record. Images are the
MIMIC-CXR files named in `path`: when the file is there (often MIMIC-CXR-JPG's export, smaller than the
DICOM) the boxes are scaled onto it (`fit_boxes`); an image that is not a resized copy is refused.
"""

from __future__ import annotations

from pathlib import Path

from services.data.converters.common import (
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
    slug,
)
from services.data.records import Box, Record, RecordMeta, xywh_to_xyxy

COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
           "image_width", "image_height")


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    rows = read_table(path)
    require_columns(rows, COLUMNS, path, "MS-CXR")
    result = ConvertResult()
    groups: dict[tuple[str, str], list[Box]] = {}
    first: dict[tuple[str, str], tuple[int, dict[str, str]]] = {}
    sizes: dict[tuple[str, str], tuple[int, int]] = {}
    for n, row in enumerate(rows, start=2):
        result.notes["rows"] += 1
        with result.row(options):
            key = (cell(row, "dicom_id", path, n), cell(row, "label_text", path, n))
            width = int(number(row["image_width"], path, n, "image_width"))
            height = int(number(row["image_height"], path, n, "image_height"))
            box = xywh_to_xyxy(*(number(row[c], path, n, c) for c in ("x", "y", "w", "h")))
            groups.setdefault(key, []).append(box)
            first.setdefault(key, (n, row))
            sizes[key] = (width, height)
    for k, (key, boxes) in enumerate(groups.items()):
        n, row = first[key]
        finding = row["category_name"].strip().lower()
        # MIMIC paths look like files/p10/p10000032/s50414267/<dicom_id>.jpg: the patient is the p-folder.
        parts = Path(row["path"]).parts
        patient = parts[2] if len(parts) > 3 else key[0]
        ref = image_ref(options.image_root, row["path"].strip())
        fitted: tuple[Box, ...] = ()
        size: tuple[int, int] | None = None
        with result.row(options):
            fitted, size = fit_boxes(boxes, f"{path} row {n}", sizes[key], size_if_present(out_dir, ref),
                                     result.notes)
        if size is None:
            continue  # skipped (--on-bad-record skip): the boxes fit no frame
        result.notes["merged boxes"] += len(boxes) - 1
        result.records.append(Record(
            id=f"mscxr:{key[0]}:{k}", image=ref,
            width=size[0], height=size[1], task="grounding", phrase=key[1], boxes=fitted,
            knowledge_key=f"cxr/{slug(finding)}", source="ms_cxr", split=hashed_split(patient, options),
            meta=RecordMeta(modality="cxr", orientation="radiological",
                            attributes={"finding": finding, "patient_id": patient}),
        ))
    return result
