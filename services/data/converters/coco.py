"""COCO detection JSON: images, annotations (bbox xywh in pixels), categories.

One grounding record per (image, category) with all of its boxes; crowd annotations are skipped and
counted. The phrase is the category name (or --phrase).
"""

from __future__ import annotations

import json
from pathlib import Path

from services.data.converters.common import (
    ConvertError,
    ConvertOptions,
    ConvertResult,
    hashed_split,
    image_ref,
    slug,
)
from services.data.records import Box, Record, RecordMeta, clip_box, xywh_to_xyxy


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [k for k in ("images", "annotations", "categories") if k not in doc]
    if missing:
        raise ConvertError(f"{path} is not COCO detection JSON: missing {missing}")
    images = {im["id"]: im for im in doc["images"]}
    names = {c["id"]: c["name"] for c in doc["categories"]}
    result = ConvertResult()
    groups: dict[tuple[int, int], list[Box]] = {}
    for ann in doc["annotations"]:
        if ann.get("iscrowd", 0):
            result.notes["crowd annotations"] += 1
            continue
        image = images.get(ann["image_id"])
        if image is None or ann["category_id"] not in names:
            raise ConvertError(f"{path}: annotation {ann.get('id')} refers to a missing image or category")
        box = clip_box(xywh_to_xyxy(*ann["bbox"]), image["width"], image["height"])
        if box[0] >= box[2] or box[1] >= box[3]:
            result.notes["empty boxes"] += 1
            continue
        groups.setdefault((ann["image_id"], ann["category_id"]), []).append(box)
    modality = options.modality
    for (image_id, cat), boxes in groups.items():
        image = images[image_id]
        name = names[cat]
        result.records.append(Record(
            id=f"coco:{image_id}:{slug(name)}", image=image_ref(options.image_root, image["file_name"]),
            width=image["width"], height=image["height"], task="grounding", phrase=options.phrase or name,
            boxes=tuple(boxes), knowledge_key=f"{modality}/{slug(name)}" if modality else None, source="coco",
            split=hashed_split(str(image["file_name"]), options),
            meta=RecordMeta(modality=modality, attributes={"finding": name}),
        ))
    return result
