"""VinDr-CXR `train.csv` (Kaggle; PhysioNet's annotations_train.csv has the same columns).

Columns image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max; xyxy in the original DICOM's pixels.
Each training image was read by three radiologists, one row per (radiologist, box), and a reader who saw
nothing wrote one "No finding" row with empty coordinates. Policy (README "Data"):
- boxes of one class on one image are fused across radiologists: greedy clustering at IoU >= fuse_iou,
  coordinates averaged; a fused box needs `min_votes` distinct radiologists;
- one grounding record per (image, class) with all fused boxes;
- images with only "No finding" rows are negatives: counted and skipped, or with `--negatives keep` asked
  about every class that has a positive record in this conversion, one record with no box per (image,
  class), with that class's phrase and knowledge key (`negative_classes`). An image that some reader
  boxed is never a negative for another class: a class the readers left out of an abnormal image, or one
  whose boxes fusion dropped below min_votes, is uncertain, not absent.
Width and height are read from the DICOM header when the image is present, else left unknown; a fused box
past the image's edge was drawn in another frame and is refused (`fit_boxes`).
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
from services.data.records import Box, Record, RecordMeta

NO_FINDING = "No finding"
COLUMNS = ("image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max")


def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fuse(boxes: list[tuple[Box, str]], iou: float, min_votes: int) -> list[tuple[Box, list[str]]]:
    """Greedy clustering of (box, radiologist) pairs; each cluster -> (mean box, its radiologists).

    A box joins the first cluster whose mean box overlaps it at IoU >= `iou`; larger boxes seed clusters
    first so the order of the table does not matter.
    """
    clusters: list[list[tuple[Box, str]]] = []
    for box, rad in sorted(boxes, key=lambda br: -(br[0][2] - br[0][0]) * (br[0][3] - br[0][1])):
        for cluster in clusters:
            if _iou(_mean(cluster), box) >= iou:
                cluster.append((box, rad))
                break
        else:
            clusters.append([(box, rad)])
    out = [(_mean(c), sorted({r for _, r in c})) for c in clusters]
    return [(b, rads) for b, rads in out if len(rads) >= min_votes]


def _mean(cluster: list[tuple[Box, str]]) -> Box:
    n = len(cluster)
    return (sum(b[0] for b, _ in cluster) / n, sum(b[1] for b, _ in cluster) / n,
            sum(b[2] for b, _ in cluster) / n, sum(b[3] for b, _ in cluster) / n)


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    rows = read_table(path)
    require_columns(rows, COLUMNS, path, "VinDr-CXR train")
    result = ConvertResult()
    groups: dict[tuple[str, str], list[tuple[Box, str]]] = {}
    images_with_boxes: set[str] = set()
    all_images: set[str] = set()
    for n, row in enumerate(rows, start=2):
        result.notes["rows"] += 1
        with result.row(options):
            image, cls, rad = (cell(row, c, path, n) for c in ("image_id", "class_name", "rad_id"))
            all_images.add(image)
            if cls == NO_FINDING:
                result.notes["no-finding rows"] += 1
                continue
            x1, y1, x2, y2 = (number(row[c], path, n, c) for c in ("x_min", "y_min", "x_max", "y_max"))
            if not (x1 < x2 and y1 < y2):
                result.notes["degenerate boxes"] += 1
                continue
            groups.setdefault((image, cls), []).append(((max(0.0, x1), max(0.0, y1), x2, y2), rad))
            images_with_boxes.add(image)
    result.notes["negatives"] = len(all_images - images_with_boxes)
    root = options.image_root if options.image_root is not None else "train"
    _positives(path, out_dir, options, groups, root, result)
    if options.negatives == "keep":
        classes = negative_classes(result.records)
        for image in sorted(all_images - images_with_boxes):
            ref = image_ref(root, f"{image}.dicom")
            size = size_if_present(out_dir, ref)
            for cls in classes:
                result.records.append(_record(image, cls, ref, size, (), options, {}))
        result.notes["negative records"] += len(classes) * len(all_images - images_with_boxes)
    return result


def negative_classes(records: list[Record]) -> list[str]:
    """The VinDr classes a "No finding" image is asked about: every class with a positive record in this
    conversion (sorted), so negatives ask exactly the questions positives ask."""
    return sorted({str(r.meta.attributes["vindr_class"]) for r in records if r.boxes})


def _record(image: str, cls: str, ref: str, size: tuple[int, int] | None, boxes: tuple[Box, ...],
            options: ConvertOptions, extra: dict[str, list[str] | list[int]]) -> Record:
    finding = cls.lower()
    return Record(
        id=f"vindr:{image}:{slug(cls)}", image=ref, width=size[0] if size else None,
        height=size[1] if size else None, task="grounding", phrase=options.phrase or finding,
        boxes=boxes, knowledge_key=f"cxr/{slug(cls)}", source="vindr_cxr",
        split=hashed_split(image, options),
        meta=RecordMeta(modality="cxr", orientation="radiological",
                        attributes={"finding": finding, "vindr_class": cls, **extra}))


def _positives(path: Path, out_dir: Path, options: ConvertOptions,
               groups: dict[tuple[str, str], list[tuple[Box, str]]], root: str,
               result: ConvertResult) -> None:
    """One record per (image, class) with its fused boxes."""
    for (image, cls), boxes in sorted(groups.items()):
        fused = fuse(boxes, options.fuse_iou, options.min_votes)
        result.notes["boxes before fusion"] += len(boxes)
        if not fused:
            result.notes["classes below min_votes"] += 1
            continue
        ref = image_ref(root, f"{image}.dicom")
        fitted: tuple[Box, ...] = ()
        size: tuple[int, int] | None = None
        with result.row(options):
            fitted, size = fit_boxes([b for b, _ in fused], f"{path} image_id {image} class {cls}", None,
                                     size_if_present(out_dir, ref), result.notes)
        if not fitted:
            continue  # skipped (--on-bad-record skip)
        result.records.append(_record(image, cls, ref, size, fitted, options, {
            "rad_ids": sorted({r for _, r in boxes}), "votes": [len(rads) for _, rads in fused]}))
