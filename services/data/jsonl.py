"""JSON Lines, read one way everywhere: records end at the newline byte and nowhere else.

JSON Lines (jsonlines.org) ends a record at `\\n` (a `\\r\\n` ending is whitespace to JSON).
`str.splitlines()`
also splits at U+2028, U+2029, U+0085, U+001C..U+001E, `\\v` and `\\f`, which JSON allows raw inside strings:
a valid file with "left\\u2028pleural effusion" in a phrase would be cut in two, refused with wrong line
numbers, or lose records under --on-bad-record skip. So every JSONL file medground reads (manifests,
VLM-R1 JSONL, metrics.jsonl, eval/step-N.jsonl, timeline.jsonl) goes through `read_jsonl`, which splits
the bytes at b"\\n" only and decodes each line by itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BadLine:
    """A line that is not one JSON value: `reason` says why (invalid UTF-8 or JSON, with the column)."""

    reason: str


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any | BadLine]]:
    """(line number from 1, parsed value or BadLine) for each non-blank line of a JSON Lines file.

    Lines are split at the newline byte only (never at U+2028, U+0085 or the other breaks `str.splitlines`
    knows); blank lines are skipped but counted, so numbers match an editor's. The caller decides what a
    BadLine costs (a manifest skips or stops, a metrics file forgives a last line cut short).
    """
    with Path(path).open("rb") as fh:
        for number, raw in enumerate(fh, start=1):  # binary files iterate at b"\n" only
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield number, BadLine(f"not UTF-8 text (byte {exc.start + 1}: {exc.reason}); save the file "
                                      "as UTF-8")
                continue
            if not text.strip():
                continue
            try:
                # without its newline, so a line cut short is reported at its own last column
                yield number, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield number, BadLine(f"not valid JSON: {exc.msg} at column {exc.colno}")


def jsonl_values(path: str | Path) -> list[Any]:
    """Every value of a JSON Lines file that medground wrote itself (eval/step-N.jsonl, timeline.jsonl), or
    ValueError naming the first bad line: such a file is never edited by hand, so a bad line is an error."""
    values = []
    for number, value in read_jsonl(path):
        if isinstance(value, BadLine):
            raise ValueError(f"{path} line {number}: {value.reason}; the file is damaged: re-create it")
        values.append(value)
    return values
