"""Masks to boxes: PNG masks (ISIC, BUSI, TN3K, Kvasir layouts) and NIfTI/NRRD label volumes.

PNG: IN is a folder with `images/` and `masks/`; a mask belongs to the image whose stem it starts with
(`ISIC_001.jpg` <- `ISIC_001_segmentation.png`, `case (1).png` <- `case (1)_mask.png`, `_mask_1.png`).
Each mask file gives one tight box of its lesion pixels: any non-zero label (masks store the lesion as 1,
255 or a palette index), or above half range for lossy JPEG masks, whose compression noise is not a label.
Several masks of one image make one multi-box record; empty masks are counted and skipped. `--components
each` boxes every 8-connected component of a mask (and of a volume's slice) separately: two lesions in one
mask file give two boxes, not the one box around both. An image with no lesion in any mask is skipped, or
with `--negatives keep` written as a record with no box (a normal image).

Volumes: IN is a folder of `<name>_image.<ext>` + `<name>_label.<ext>` pairs (also `_mask`, `_seg`), ext one
of .nrrd, .nii, .nii.gz. Both are reoriented to LPS+ (medvolume.py) so the written axial slice is in the
radiological convention and the phrase's side is the patient's. --slice picks max (largest label area),
center (middle of the labelled range), all, or an index.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from rewards.boxes import mask_box
from services.data.converters.common import (
    BadRow,
    ConvertError,
    ConvertOptions,
    ConvertResult,
    hashed_split,
    slug,
)
from services.data.medimage import image_size, read_mask
from services.data.records import Box, Record, RecordMeta

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz")
LABEL_TAGS = ("_label", "_mask", "_seg")


def _ref(path: Path, out_dir: Path) -> str:
    """Path relative to the manifest folder when it lies under it, else absolute."""
    try:
        return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix() \
            if path.resolve().is_relative_to(out_dir.resolve()) else str(path.resolve())
    except ValueError:
        return str(path.resolve())


def lesion_boxes(mask: NDArray[np.bool_], components: str) -> list[Box]:
    """Boxes of a boolean mask [H, W]: its one tight box ("union"), or one per 8-connected component
    ("each"), in row-major order of their first pixel; [] for an empty mask."""
    if components == "union":
        box = mask_box(mask)
        return [] if box is None else [box]
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return [b for k in range(1, count + 1) if (b := mask_box(labels == k)) is not None]


def convert_png(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    images_dir, masks_dir = path / "images", path / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise ConvertError(f"{path} must hold images/ and masks/ folders")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    masks = sorted(p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    result = ConvertResult()
    finding = options.finding or "lesion"
    modality = options.modality
    for image in images:
        mine = [m for m in masks if m.stem == image.stem or m.stem.startswith(image.stem + "_")]
        if not mine:
            result.notes["images without mask"] += 1
            continue
        boxes: list[Box] = []
        width, height = image_size(image)
        with result.row(options):
            for m in mine:
                mask = read_mask(m)
                if mask.values.shape != (height, width):
                    raise BadRow(str(m), "size",
                                 f"the mask is {mask.values.shape[1]}x{mask.values.shape[0]} but image "
                                 f"{image.name} is {width}x{height}; masks must be pixel-aligned with their "
                                 "image")
                found = lesion_boxes(mask.foreground(), options.components)
                if not found:
                    result.notes["empty masks"] += 1
                boxes.extend(found)
        if not boxes and options.negatives == "skip":
            continue
        result.records.append(Record(
            id=f"mask:{image.stem}", image=_ref(image, out_dir), width=width, height=height, task="grounding",
            phrase=options.phrase or finding, boxes=tuple(boxes), source="masks",
            knowledge_key=f"{modality}/{slug(finding)}" if modality else None,
            split=hashed_split(image.stem, options),
            meta=RecordMeta(modality=modality, attributes={"finding": finding, "masks": len(mine)}),
        ))
    return result


def _pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    files = sorted(p for p in folder.iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES))
    pairs = []
    for label in files:
        for tag in LABEL_TAGS:
            if tag + "." in label.name:
                name = label.name.split(tag + ".")[0]
                ext = label.name[len(name) + len(tag):]
                image = next((folder / f"{name}{t}{ext}" for t in ("_image", "")
                              if (folder / f"{name}{t}{ext}").is_file()), None)
                if image is None:
                    raise ConvertError(f"label volume {label} has no image {name}_image{ext} or {name}{ext}")
                pairs.append((name, image, label))
    if not pairs:
        raise ConvertError(f"{folder} holds no <name>_image / <name>_label volume pairs")
    return pairs


def _slices(label: NDArray[np.bool_], choice: str) -> list[int]:
    areas = label.sum(axis=(0, 1))
    present = np.flatnonzero(areas)
    if present.size == 0:
        return []
    match choice:
        case "max":
            return [int(np.argmax(areas))]
        case "center":
            return [int(present[present.size // 2])]
        case "all":
            return [int(k) for k in present]
        case _ if choice.isdigit():
            return [int(choice)]
    raise ConvertError(f"--slice {choice!r} must be max, center, all or a slice index")


def convert_volumes(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    from services.data.medvolume import read_volume, to_uint8

    result = ConvertResult()
    finding = options.finding or "lesion"
    modality = options.modality or "ct"
    for name, image_path, label_path in _pairs(path):
        image, label = read_volume(image_path), read_volume(label_path)
        if image.data.shape != label.data.shape:
            raise ConvertError(f"{image_path} {image.data.shape} and {label_path} {label.data.shape} differ "
                               "in shape")
        lesion = np.asarray(label.data > 0)
        for k in _slices(lesion, options.slice):
            found = lesion_boxes(np.asarray(label.axial(k) > 0), options.components)
            if not found:
                result.notes["slices without label"] += 1
                continue
            pixels, window = to_uint8(image.axial(k), options.window)
            rel = f"images/{name}_z{k:03d}.png"
            (out_dir / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(out_dir / rel)
            height, width = pixels.shape
            # Radiological display: columns left of centre are the patient's right.
            sides = {"right" if (b[0] + b[2]) / 2 < width / 2 else "left" for b in found}
            side = sides.pop() if len(sides) == 1 else "both"
            result.records.append(Record(
                id=f"volume:{name}:z{k}", image=rel, width=width, height=height, task="grounding",
                phrase=options.phrase or (f"{finding} on the patient's {side} side" if side != "both"
                                          else f"{finding} on both sides of the patient"), boxes=tuple(found),
                knowledge_key=f"{modality}/{slug(finding)}", source="volume",
                split=hashed_split(name, options),
                meta=RecordMeta(modality=modality,
                                orientation="radiological axial (from LPS+)", window=window,
                                pixel_spacing_mm=(image.spacing[1], image.spacing[0]),
                                attributes={"finding": finding, "side": side, "slice": k, "volume": name}),
            ))
    return result
