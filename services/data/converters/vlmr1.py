"""VLM-R1 grounding data, both published forms.

- REC JSON: a list of {"image", "problem", "solution": [x1, y1, x2, y2], "normalized_solution"?}, absolute
  pixels of the image file (MedGround-R1's MS-CXR files use it).
- JSONL: one {"id", "image", "conversations": [{"from": "human", "value": "<image>..."},
  {"from": "gpt", "value": "[x1, y1, x2, y2]"}]} per line.
Sizes come from the images when they are present next to the manifest, else stay unknown. The boxes are
in the image file's pixels: one past its edge was drawn in another frame and is refused (`fit_boxes`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from services.data.converters.common import (
    BadRow,
    ConvertError,
    ConvertOptions,
    ConvertResult,
    fit_boxes,
    hashed_split,
    image_ref,
    size_if_present,
)
from services.data.jsonl import BadLine, read_jsonl
from services.data.records import Record

_BOX = re.compile(r"\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]")


def _record(k: int, image: Any, phrase: str, box: list[float], out_dir: Path, options: ConvertOptions,
            where: str, notes: Counter[str]) -> Record:
    if isinstance(image, list):
        if len(image) != 1:
            raise ConvertError(f"{where}: one image per item is supported, got {len(image)}")
        image = image[0]
    ref = image_ref(options.image_root, str(image))
    x1, y1, x2, y2 = (float(c) for c in box)
    corners = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    (clipped,), size = fit_boxes([corners], where, None, size_if_present(out_dir, ref), notes)
    phrase = phrase.replace("<image>", "").strip()
    return Record(id=f"vlmr1:{k}", image=ref, width=size[0] if size else None, height=size[1]
                  if size else None,
                  task="grounding", phrase=phrase, boxes=(clipped,), source="vlm_r1",
                  split=hashed_split(str(image), options))


def _jsonl_item(item: Any, n: int, path: Path) -> tuple[Any, str, list[float]]:
    where = f"{path} line {n}"
    if isinstance(item, BadLine):
        raise BadRow(where, "json", f"{item.reason}; fix or drop the line")
    if not isinstance(item, dict) or "image" not in item:
        raise BadRow(where, "image", "missing; each line needs image and conversations")
    turns = item.get("conversations") or []
    human = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "human"), None)
    gpt = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
    match = _BOX.search(gpt if isinstance(gpt, str) else "")
    if not isinstance(human, str) or match is None:
        raise BadRow(where, "conversations", "needs a human turn and a gpt turn holding [x1, y1, x2, y2]")
    return item["image"], human, [float(g) for g in match.groups()]


def convert(path: Path, out_dir: Path, options: ConvertOptions) -> ConvertResult:
    result = ConvertResult()
    if Path(path).suffix == ".jsonl":
        for n, value in read_jsonl(path):  # split at newline bytes only (services/data/jsonl.py)
            with result.row(options):
                image, human, box = _jsonl_item(value, n, path)
                result.records.append(_record(n, image, human, box, out_dir, options, f"{path} line {n}",
                                              result.notes))
    else:
        try:
            items = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConvertError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(items, list):
            raise ConvertError(f"{path}: a VLM-R1 REC JSON file is a list of items")
        for n, item in enumerate(items):
            with result.row(options):
                missing = [k for k in ("image", "problem", "solution") if not isinstance(item, dict)
                           or k not in item]
                if missing:
                    raise BadRow(f"{path} item {n}", ", ".join(missing),
                                 "missing; each item needs image, problem "
                                                                        "and solution [x1, y1, x2, y2]")
                if not (isinstance(item["solution"], list) and len(item["solution"]) == 4):
                    raise BadRow(f"{path} item {n}", "solution",
                                 f"{item['solution']!r} is not [x1, y1, x2, y2]")
                result.records.append(_record(n, item["image"], item["problem"], item["solution"], out_dir,
                                              options, f"{path} item {n}", result.notes))
    result.notes["items"] = len(result.records)
    return result
