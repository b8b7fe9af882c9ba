"""COCO detection JSON: images, annotations (bbox xywh in pixels), categories.

One grounding record per (image, category) with all of its boxes; crowd annotations are skipped and
counted. The phrase is the category name (or --phrase). Fields the COCO format requires (image id and
file_name, category id and name, annotation image_id and category_id) are checked item by item; optional
ones are filled the way the data itself allows: image width/height from the image file when it is there
(else left unknown and read from the file before training, as for DICOM sources), a missing bbox from the
annotation's polygon segmentation, iscrowd as 0. What cannot be filled is a BadRow naming the item.
Boxes land in the frame of the image file (`fit_boxes`): an image's width/height state the frame of its
boxes, scaled onto a resized copy of that image; without them a box past the file's edge is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from services.data.converters.common import (
    BadRow,
    ConvertError,
    ConvertOptions,
    ConvertResult,
    Size,
    fit_boxes,
    hashed_split,
    image_ref,
    size_if_present,
    slug,
)
from services.data.records import Box, Record, RecordMeta, xywh_to_xyxy


def _require(item: Any, key: str, where: str) -> Any:
    if not isinstance(item, dict) or item.get(key) is None:
        raise BadRow(where, key, "is missing; COCO requires it (see the format's description in "
                                 "cocodataset.org's data format page); add it or drop the item")
    return item[key]


def _stated(image: dict[str, Any], where: str) -> Size | None:
    """The image's width/height as the JSON states them (the frame of its boxes), None when omitted
    (several exporters omit them: the image file knows)."""
    width, height = image.get("width"), image.get("height")
    if width is None or height is None:
        return None
    if not all(isinstance(v, int | float) and v >= 1 and float(v).is_integer() for v in (width, height)):
        raise BadRow(where, "width/height", f"{width!r} x {height!r} is not a positive whole pixel size; "
                                            "fix it or remove both fields (they are then read from the "
                                            "image)")
    return int(width), int(height)


def _box(ann: dict[str, Any], where: str) -> Box:
    """The annotation's xywh bbox as xyxy; without a bbox, the extent of its polygon segmentation."""
    bbox = ann.get("bbox")
    if bbox is None:
        polygons = ann.get("segmentation")
        points = [float(v) for poly in polygons for v in poly] if isinstance(polygons, list) and polygons \
            and all(isinstance(p, list) for p in polygons) else []
        if len(points) < 6 or len(points) % 2:
            raise BadRow(where, "bbox", "is missing and there is no polygon segmentation to derive it from; "
                                        "add bbox [x, y, width, height] in pixels")
        xs, ys = points[0::2], points[1::2]
        return (min(xs), min(ys), max(xs), max(ys))
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)
            and all(math.isfinite(v) for v in bbox)):
        raise BadRow(where, "bbox", f"{bbox!r} is not [x, y, width, height] (four numbers, pixels)")
    return xywh_to_xyxy(*bbox)


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column "
                           f"{exc.colno}") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(doc, dict)
               or k not in doc]
    if missing:
        raise ConvertError(f"{path} is not COCO detection JSON: missing {missing}")
    result = ConvertResult()
    images: dict[Any, tuple[str, Size | None, Size | None, str]] = {}  # ref, stated, stored size, file name
    for i, image in enumerate(doc["images"]):
        where = f"{path} images[{i}]"
        with result.row(options):
            image_id, name = _require(image, "id", where), str(_require(image, "file_name", where))
            ref = image_ref(options.image_root, name)
            images[image_id] = (ref, _stated(image, where), size_if_present(out_dir, ref), name)
    names: dict[Any, str] = {}
    for i, category in enumerate(doc["categories"]):
        where = f"{path} categories[{i}]"
        with result.row(options):
            names[_require(category, "id", where)] = str(_require(category, "name", where))
    groups: dict[tuple[Any, Any], list[Box]] = {}
    sizes: dict[Any, Size | None] = {}
    for i, ann in enumerate(doc["annotations"]):
        where = f"{path} annotations[{i}]"
        with result.row(options):
            image_id, cat = _require(ann, "image_id", where), _require(ann, "category_id", where)
            if ann.get("iscrowd", 0):
                result.notes["crowd annotations"] += 1
                continue
            if image_id not in images or cat not in names:
                field = "image_id" if image_id not in images else "category_id"
                raise BadRow(where, field, f"{ann[field]!r} matches no entry of "
                                           f"{'images' if field == 'image_id' else 'categories'}")
            _, stated, stored, _ = images[image_id]
            (box,), sizes[image_id] = fit_boxes([_box(ann, where)], where, stated, stored, result.notes)
            if box[0] >= box[2] or box[1] >= box[3]:
                result.notes["empty boxes"] += 1
                continue
            groups.setdefault((image_id, cat), []).append(box)
    modality = options.modality
    for (image_id, cat), boxes in groups.items():
        ref, _, _, file_name = images[image_id]
        width, height = sizes[image_id] or (None, None)
        name = names[cat]
        result.records.append(Record(
            id=f"coco:{image_id}:{slug(name)}", image=ref, width=width, height=height, task="grounding",
            phrase=options.phrase or name, boxes=tuple(boxes),
            knowledge_key=f"{modality}/{slug(name)}" if modality else None, source="coco",
            split=hashed_split(file_name, options),
            meta=RecordMeta(modality=modality, attributes={"finding": name}),
        ))
    return result
