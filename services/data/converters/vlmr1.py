"""VLM-R1 grounding data, both published forms.

- REC JSON: a list of {"image", "problem", "solution": [x1, y1, x2, y2], "normalized_solution"?}, absolute
  pixels of the image file (MedGround-R1's MS-CXR files use it).
- JSONL: one {"id", "image", "conversations": [{"from": "human", "value": "<image>..."},
  {"from": "gpt", "value": "[x1, y1, x2, y2]"}]} per line.
Sizes come from the images when they are present next to the manifest, else stay unknown.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from services.data.converters.common import (
    ConvertError,
    ConvertOptions,
    ConvertResult,
    hashed_split,
    image_ref,
    size_if_present,
)
from services.data.records import Record, clip_box

_BOX = re.compile(r"\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]")


def _record(k: int, image: Any, phrase: str, box: list[float], out_dir: Path, options: ConvertOptions,
            where: str) -> Record:
    if isinstance(image, list):
        if len(image) != 1:
            raise ConvertError(f"{where}: one image per item is supported, got {len(image)}")
        image = image[0]
    ref = image_ref(options.image_root, str(image))
    size = size_if_present(out_dir, ref)
    x1, y1, x2, y2 = (float(c) for c in box)
    clipped = clip_box((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), *(size or (None, None)))
    phrase = phrase.replace("<image>", "").strip()
    return Record(id=f"vlmr1:{k}", image=ref, width=size[0] if size else None, height=size[1] if size else None,
                  task="grounding", phrase=phrase, boxes=(clipped,), source="vlm_r1",
                  split=hashed_split(str(image), options))


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    result = ConvertResult()
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            item = json.loads(line)
            turns = item.get("conversations") or []
            human = next((t["value"] for t in turns if t.get("from") == "human"), None)
            gpt = next((t["value"] for t in turns if t.get("from") == "gpt"), None)
            match = _BOX.search(gpt or "")
            if human is None or match is None:
                raise ConvertError(f"{path} line {n}: needs a human turn and a gpt turn holding [x1, y1, x2, y2]")
            result.records.append(_record(n, item["image"], human, [float(g) for g in match.groups()], out_dir,
                                          options, f"{path} line {n}"))
    else:
        items = json.loads(text)
        if not isinstance(items, list):
            raise ConvertError(f"{path}: a VLM-R1 REC JSON file is a list of items")
        for n, item in enumerate(items):
            missing = [k for k in ("image", "problem", "solution") if k not in item]
            if missing:
                raise ConvertError(f"{path} item {n}: missing {missing}")
            result.records.append(_record(n, item["image"], item["problem"], item["solution"], out_dir, options,
                                          f"{path} item {n}"))
    result.notes["items"] = len(result.records)
    return result
