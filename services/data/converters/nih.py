"""NIH ChestX-ray8 `BBox_List_2017.csv`: one record per (image, finding), boxes in 1024 x 1024 PNG pixels.

The header is `Image Index,Finding Label,Bbox [x,y,w,h],,,`: the bracket is split by its own commas, so
columns are taken by position (image, label, x, y, w, h), never by name. Values are float xywh.
"""

from __future__ import annotations

from pathlib import Path

from rewards.boxes import clip_box
from services.data.converters.common import (
    BadRow,
    ConvertError,
    ConvertOptions,
    ConvertResult,
    hashed_split,
    image_ref,
    number,
    read_rows,
    slug,
)
from services.data.records import Record, RecordMeta, xywh_to_xyxy

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
            box = xywh_to_xyxy(x, y, w, h)
            clipped = clip_box(box, NIH_SIZE, NIH_SIZE)
            result.notes["clipped boxes"] += clipped != box
            groups.setdefault((image, label), []).append(clipped)
    root = options.image_root if options.image_root is not None else "images"
    for (image, label), boxes in groups.items():
        finding = PHRASES.get(label, label.lower())
        patient = image.split("_")[0]
        result.notes["merged boxes"] += len(boxes) - 1
        result.records.append(Record(
            id=f"nih:{image}:{slug(finding)}", image=image_ref(root, image), width=NIH_SIZE, height=NIH_SIZE,
            task="grounding", phrase=options.phrase or finding, boxes=tuple(boxes),
            knowledge_key=f"cxr/{slug(finding)}", source="nih_cxr8", split=hashed_split(patient, options),
            meta=RecordMeta(modality="cxr", orientation="radiological",
                            attributes={"finding": finding, "patient_id": patient, "nih_label": label}),
        ))
    return result
