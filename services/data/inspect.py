"""`medground data inspect`: counts per task, split and size bucket, a contact sheet with boxes drawn, and
every record whose boxes are not in the frame of the image it points at (`frame_problems`)."""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from services.data.converters.common import OVERHANG
from services.data.manifest import Manifest
from services.data.medimage import MedicalImageError, image_size, read_image
from services.data.records import SIZE_BUCKETS, Record, size_bucket

NO_BOX = "no box"
NEGATIVES = "negatives"  # grounding records with no box: the finding is absent (issue 31)
UNKNOWN_SIZE = "size unknown"


@dataclass(frozen=True)
class Counts:
    """Record counts keyed by (task, split, bucket); bucket is a SIZE_BUCKETS name, NEGATIVES, NO_BOX or
    UNKNOWN_SIZE."""

    cells: dict[tuple[str, str, str], int]

    def table(self) -> str:
        """A plain-text table: one row per (task, split), one column per bucket, and a total."""
        buckets = [b[0] for b in SIZE_BUCKETS] + [NEGATIVES, NO_BOX, UNKNOWN_SIZE]
        used = [b for b in buckets if any(k[2] == b for k in self.cells)]
        rows = sorted({(t, s) for t, s, _ in self.cells})
        header = ["task", "split", *used, "total"]
        body = [[t, s, *(str(self.cells.get((t, s, b), 0)) for b in used),
                 str(sum(self.cells.get((t, s, b), 0) for b in used))] for t, s in rows]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                         for r in [header, *body])


def bucket_of(record: Record) -> str:
    """The size bucket of a record's largest box (NEGATIVES for a grounding record without boxes, NO_BOX for
    other tasks, UNKNOWN_SIZE without a size)."""
    if record.is_negative:
        return NEGATIVES
    if not record.boxes:
        return NO_BOX
    area = record.relative_area()
    return UNKNOWN_SIZE if area is None else size_bucket(area)


def count(records: tuple[Record, ...] | list[Record]) -> Counts:
    return Counts(dict(Counter((r.task, r.split, bucket_of(r)) for r in records)))


def _caption(record: Record) -> str:
    answer = (record.label if record.task == "classification"
              else f"grade {record.grade}" if record.task == "grading" else f"{len(record.boxes)} box")
    return f"{record.split} {record.task}: {record.phrase} [{answer}]"


def spread(records: list[Record], limit: int) -> list[Record]:
    """Up to `limit` records taken in turn from each (task, split, bucket) group, evenly spaced inside it.

    A plain stride would alias with generators that cycle buckets by index and show one bucket only.
    """
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.task, r.split, bucket_of(r)), []).append(r)
    per_group = -(-limit // max(1, len(groups)))
    picks = [[g[int(i * len(g) / min(per_group, len(g)))] for i in range(min(per_group, len(g)))]
             for _, g in sorted(groups.items())]
    chosen = [p[i] for i in range(per_group) for p in picks if i < len(p)]
    return chosen[:limit]


@dataclass(frozen=True)
class Sheet:
    """A written contact sheet and the drawn records whose image could not be read (one message each)."""

    path: Path
    unreadable: tuple[str, ...]


def contact_sheet(manifest: Manifest, out: str | Path, limit: int = 24, columns: int = 6,
                  tile: int = 224) -> Sheet:
    """Draw up to `limit` records (spread across the manifest) with their boxes and captions into a PNG.

    Images are read as training reads them (the one reader, the record's window) and scaled to `tile` px
    on their long side; boxes are scaled with them, so what is drawn is the record's stored-image box.
    A missing or unreadable image is drawn as a labelled empty tile and its error is returned.
    """
    chosen = spread(list(manifest.records), limit)
    rows = max(1, -(-len(chosen) // columns))
    caption_h = 30
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption_h)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    unreadable: list[str] = []
    for k, record in enumerate(chosen):
        x0, y0 = (k % columns) * tile, (k // columns) * (tile + caption_h)
        path = manifest.image_path(record)
        try:
            thumb = read_image(path, window=record.meta.window).to_pil().convert("RGB")
        except MedicalImageError as exc:
            unreadable.append(f"{record.id}: {exc}")
            word = "missing" if not path.is_file() else "unreadable"
            draw.text((x0 + 6, y0 + tile // 2), f"{word}: {path.name}", fill=(255, 120, 120), font=font)
        else:
            scale = tile / max(thumb.size)
            thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))))
            sheet.paste(thumb, (x0, y0))
            for x1, y1, x2, y2 in record.boxes:
                draw.rectangle([x0 + x1 * scale, y0 + y1 * scale, x0 + x2 * scale, y0 + y2 * scale],
                               outline=(255, 40, 40), width=2)
        for i, line in enumerate(textwrap.wrap(_caption(record), width=tile // 6)[:2]):
            draw.text((x0 + 3, y0 + tile + 2 + 13 * i), line, fill=(230, 230, 230), font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return Sheet(out, tuple(unreadable))


def missing_images(manifest: Manifest) -> list[tuple[str, Path]]:
    """(record id, image path) for every record whose image file does not exist, in manifest order."""
    return [(r.id, path) for r in manifest.records if not (path := manifest.image_path(r)).is_file()]


def frame_problems(manifest: Manifest) -> list[str]:
    """One line per record whose boxes are not in the frame of the image it points at, the rule the
    converters follow (converters/common.py `fit_boxes`): a stated width x height other than the image's
    (the boxes were drawn on another copy of it: a DICOM beside its smaller JPG export), or, without a
    stated size, a box past the image's edge by more than OVERHANG of the side. Sizes come from headers
    (`image_size`, upright); records whose image is missing or unreadable are left to the contact sheet
    and training, which name them."""
    sizes: dict[Path, tuple[int, int] | None] = {}
    problems = []
    for record in manifest.records:
        path = manifest.image_path(record)
        if not record.boxes or not path.is_file():
            continue
        if path not in sizes:
            try:
                sizes[path] = image_size(path)
            except MedicalImageError:
                sizes[path] = None
        size = sizes[path]
        if size is None:
            continue
        width, height = size
        if record.width is not None and record.height is not None and (record.width, record.height) != size:
            problems.append(f"{record.id}: the manifest says {record.width}x{record.height} but {path} is "
                            f"{width}x{height}, so its boxes are in another frame; convert again with the "
                            "images in place (a resized copy gets its boxes scaled) or point the record at "
                            "the image the boxes were drawn on")
            continue
        tx, ty = max(1.0, OVERHANG * width), max(1.0, OVERHANG * height)
        outside = [b for b in record.boxes if b[0] < -tx or b[1] < -ty or b[2] > width + tx
                   or b[3] > height + ty]
        if outside:
            x1, y1, x2, y2 = outside[0]
            problems.append(f"{record.id}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside {path} "
                            f"({width}x{height}), so it was drawn in another frame; point the record at the "
                            "image the boxes were drawn on, or give the record that image's width and "
                            "height")
    return problems
