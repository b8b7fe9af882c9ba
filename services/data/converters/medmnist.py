"""MedMNIST-style `.npz`: `{train,val,test}_images` (N, H, W) or (N, H, W, 3) uint8 and `*_labels` (N, 1).

Images are written as PNGs beside the manifest. `classification` records carry the class name (from
--labels, else the index as text) and all names as choices; `grading` records carry the label as an
ordinal grade (e.g. RetinaMNIST's 0..4 diabetic-retinopathy grade). Multi-label sets (ChestMNIST) are
refused: one answer per record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from services.data.converters.common import ConvertError, ConvertOptions, ConvertResult
from services.data.records import Record, RecordMeta


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    if options.task not in ("classification", "grading"):
        raise ConvertError(f"--task {options.task!r}: MedMNIST converts to classification or grading")
    result = ConvertResult()
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    splits = [s for s in ("train", "val", "test") if f"{s}_images" in arrays]
    if not splits:
        raise ConvertError(f"{path} has no <split>_images arrays (found {sorted(arrays)})")
    all_labels = np.concatenate([arrays[f"{s}_labels"].reshape(len(arrays[f"{s}_labels"]), -1)
                                 for s in splits])
    if all_labels.shape[1] != 1:
        raise ConvertError(f"{path} is multi-label ({all_labels.shape[1]} labels per image); one is "
                           "supported")
    n_classes = int(all_labels.max()) + 1
    names = options.labels or tuple(str(i) for i in range(n_classes))
    if len(names) < n_classes:
        raise ConvertError(f"--labels names {len(names)} classes but the labels reach {n_classes - 1}")
    modality = options.modality
    question = options.phrase or ("Which class does this image show?" if options.task == "classification"
                                  else f"Grade this image from 0 to {n_classes - 1}.")
    for split in splits:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            rel = f"images/{split}/{i:06d}.png"
            Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(out_dir / rel)
            height, width = pixels.shape[:2]
            common = {"id": f"{path.stem}:{split}:{i}", "image": rel, "width": width, "height": height,
                      "phrase": question, "source": f"medmnist:{path.stem}", "split": split,
                      "meta": RecordMeta(modality=modality)}
            if options.task == "classification":
                result.records.append(Record(task="classification", label=names[int(label)],
                                             choices=names[:n_classes], **common))
            else:
                result.records.append(Record(task="grading", grade=int(label),
                                             max_grade=n_classes - 1, **common))
    result.notes["images"] = len(result.records)
    return result
