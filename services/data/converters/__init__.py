"""Converters from published dataset formats to medground records (`medground data convert`).

Each takes (input path, manifest folder, ConvertOptions) and returns a ConvertResult: the records and
counted notes of what was merged, skipped or clipped, which the CLI prints. A conversion that yields no
record is an error listing those counts; a malformed row is skipped or fatal by `on_bad_record`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.data.converters import coco, masks, medmnist, mscxr, nih, rsna, vindr, vlmr1
from services.data.converters.common import BadRow, ConvertError, ConvertOptions, ConvertResult

Converter = Callable[[Path, Path, ConvertOptions], ConvertResult]

FORMATS: dict[str, Converter] = {
    "vlm-r1": vlmr1.convert,  # REC JSON list or conversations JSONL (by suffix)
    "ms-cxr": mscxr.convert,
    "nih": nih.convert,
    "vindr": vindr.convert,
    "rsna": rsna.convert,
    "coco": coco.convert,
    "masks": masks.convert_png,
    "volumes": masks.convert_volumes,
    "medmnist": medmnist.convert,
}


def convert(fmt: str, source: str | Path, out_dir: str | Path,
            options: ConvertOptions | None = None) -> ConvertResult:
    """Run the converter for `fmt`; an unknown format names the known ones."""
    if fmt not in FORMATS:
        raise ConvertError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = Path(source)
    if not source.exists():
        raise ConvertError(f"input {source} does not exist")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = FORMATS[fmt](source, out, options or ConvertOptions())
    if not result.records:  # an empty manifest would train on nothing and look like success
        counts = ", ".join(f"{k} {v}" for k, v in sorted(result.notes.items())) or "nothing was read"
        raise ConvertError(f"{fmt}: {source} gave no records ({counts}); check --format and the input's "
                           "layout against the format's description (`medground data convert --help`)")
    return result


__all__ = ["FORMATS", "BadRow", "ConvertError", "ConvertOptions", "ConvertResult", "convert"]
