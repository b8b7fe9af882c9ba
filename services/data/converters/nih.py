"""NIH ChestX-ray8 `BBox_List_2017.csv`: one record per (image, finding), boxes in 1024 x 1024 PNG pixels.

The header is `Image Index,Finding Label,Bbox [x,y,w,h],,,`: the bracket is split by its own commas, so
columns are taken by position (image, label, x, y, w, h), never by name. Values are float xywh. A PNG present
beside the manifest at another size (a downscaled copy) gets the boxes scaled onto it (`fit_boxes`).
"""

from __future__ import annotations

from pathlib import Path

from services.data.converters.common import (
    BadRow,
    ConvertError,
    ConvertOptions,
    ConvertResult,
    fit_boxes,
    hashed_split,
    image_ref,
    number,
    read_rows,
    size_if_present,
    slug,
)
from services.data.records import Box, Record, RecordMeta, xywh_to_xyxy

NIH_SIZE = 1024
# The table's labels as a radiologist would phrase them.
PHRASES = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Effusion": "pleural effusion",
           "Infiltrate": "infiltrate", "Infiltration": "infiltrate", "Mass": "mass", "Nodule": "nodule",
           "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax"}


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    rows = read_rows(path)
    if not rows or not rows[0] or rows[0][0].strip() != "Image Index":
        raise ConvertError(f"{path} is not BBox_List_2017.csv: the first column must be 'Image Index'")
    result = ConvertResult()
    groups: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        result.notes["rows"] += 1
        with result.row(options):
            if len(row) < 6:
                raise BadRow(f"{path} row {n}", "row", f"expected image, label, x, y, w, h; got {row}")
            image, label = row[0].strip(), row[1].strip()
            x, y, w, h = (number(row[i], path, n, ("x", "y", "w", "h")[i - 2]) for i in range(2, 6))
            groups.setdefault((image, label), []).append(xywh_to_xyxy(x, y, w, h))
    root = options.image_root if options.image_root is not None else "images"
    for (image, label), table_boxes in groups.items():
        ref = image_ref(root, image)
        boxes: tuple[Box, ...] = ()
        size: tuple[int, int] | None = None
        with result.row(options):
            boxes, size = fit_boxes(table_boxes, f"{path} image {image}", (NIH_SIZE, NIH_SIZE),
                                    size_if_present(out_dir, ref), result.notes)
        if size is None:
            continue  # skipped (--on-bad-record skip)
        finding = PHRASES.get(label, label.lower())
        patient = image.split("_")[0]
        result.notes["merged boxes"] += len(boxes) - 1
        result.records.append(Record(
            id=f"nih:{image}:{slug(finding)}", image=ref, width=size[0], height=size[1],
            task="grounding", phrase=options.phrase or finding, boxes=tuple(boxes),
            knowledge_key=f"cxr/{slug(finding)}", source="nih_cxr8", split=hashed_split(patient, options),
            meta=RecordMeta(modality="cxr", orientation="radiological",
                            attributes={"finding": finding, "patient_id": patient, "nih_label": label}),
        ))
    return result
