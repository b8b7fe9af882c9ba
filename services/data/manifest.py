"""Manifests: a list of records in JSONL (one record a line) or Parquet (one record a row).

A bad record is reported with its line (row) number, field and reason. `on_bad_record` (DataConfig) says
whether it is skipped or stops the load; the count of skipped records is always printed, because a silent
drop of half a dataset looks exactly like a smaller dataset.
Importable without torch; pyarrow is imported only for Parquet.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from services.data.jsonl import BadLine, read_jsonl
from services.data.records import Record

OnBad = Literal["skip", "fail"]
_PARQUET_JSON_COLUMNS = ("meta",)


class ManifestError(ValueError):
    """A manifest that cannot be loaded; the message names the file, line, field and reason."""


@dataclass(frozen=True)
class BadRecord:
    """Why one line (JSONL, 1-based) or row (Parquet, 1-based) of a manifest was rejected."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass(frozen=True)
class Manifest:
    """Records loaded from `path`; relative image paths resolve against the manifest's folder."""

    path: Path
    records: tuple[Record, ...]
    skipped: tuple[BadRecord, ...] = field(default=())

    @property
    def root(self) -> Path:
        return self.path.parent

    def image_path(self, record: Record) -> Path:
        """Absolute path of a record's image."""
        image = Path(record.image)
        return image if image.is_absolute() else self.root / image

    def select(self, split: str | None = None,
               task: str | Collection[str] | None = None) -> tuple[Record, ...]:
        """Records of one split and/or task (or any of several tasks), in manifest order."""
        tasks = None if task is None else {task} if isinstance(task, str) else set(task)
        return tuple(r for r in self.records
                     if (split is None or r.split == split) and (tasks is None or r.task in tasks))

    def with_sizes(self) -> Manifest:
        """Fill unknown width/height from image headers (PIL for PNG/JPEG, pydicom for DICOM)."""
        from services.data.medimage import image_size

        filled = tuple(
            r if r.width is not None and r.height is not None
            else r.model_copy(update=dict(zip(("width", "height"),
                                              image_size(self.image_path(r)), strict=True)))
            for r in self.records
        )
        # model_copy skips validation: re-validate so a box past the now-known size is caught.
        return Manifest(self.path, tuple(Record.model_validate(r.model_dump()) for r in filled), self.skipped)


def _explain(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:  # a whole-record rule: its message starts with the field at fault
        head, sep, rest = msg.partition(": ")
        loc, msg = (head, rest) if sep and head in Record.model_fields else ("record", msg)
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return loc, msg + more


def _parse(rows: Iterable[tuple[int, Any]], path: Path, on_bad_record: OnBad) -> Manifest:
    records: list[Record] = []
    skipped: list[BadRecord] = []
    seen: dict[str, int] = {}
    for line, raw in rows:
        bad: BadRecord | None = None
        if isinstance(raw, BadRecord):
            bad = raw
        else:
            try:
                rec = Record.model_validate(raw)
            except ValidationError as exc:
                bad = BadRecord(line, *_explain(exc))
            else:
                if rec.id in seen:
                    bad = BadRecord(line, "id", f"duplicate id {rec.id!r} (first on line {seen[rec.id]})")
                else:
                    seen[rec.id] = line
                    records.append(rec)
        if bad is not None:
            if on_bad_record == "fail":
                raise ManifestError(f"{path}: {bad} (set data.on_bad_record=skip to skip bad records)")
            skipped.append(bad)
    return Manifest(path, tuple(records), tuple(skipped))


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    for line_no, value in read_jsonl(path):
        yield line_no, BadRecord(line_no, "json", value.reason) if isinstance(value, BadLine) else value


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    for row_no, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        try:
            for col in _PARQUET_JSON_COLUMNS:
                if isinstance(row.get(col), str):
                    row[col] = json.loads(row[col])
        except json.JSONDecodeError as exc:
            yield row_no, BadRecord(row_no, col, f"not valid JSON: {exc.msg}")
            continue
        # Parquet has no "absent": drop nulls so the record's defaults apply, as in JSONL.
        yield row_no, {k: v for k, v in row.items() if v is not None}


def load_manifest(
    path: str | Path, on_bad_record: OnBad = "fail", report: Callable[[str], None] | None = None
) -> Manifest:
    """Load a `.jsonl` or `.parquet` manifest; print how many records were loaded and skipped.

    `report` receives the summary line and each skipped record (default: stderr).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; `medground data synth` or `data convert` "
                            "writes one")
    match path.suffix:
        case ".jsonl":
            manifest = _parse(_jsonl_rows(path), path, on_bad_record)
        case ".parquet":
            manifest = _parse(_parquet_rows(path), path, on_bad_record)
        case _:
            raise ManifestError(f"manifest {path} must end in .jsonl or .parquet")
    say = report or (lambda line: print(line, file=sys.stderr))
    for bad in manifest.skipped:
        say(f"{path}: skipped {bad}")
    say(f"{path}: {len(manifest.records)} records loaded, {len(manifest.skipped)} skipped")
    return manifest


def record_to_json(record: Record) -> str:
    """One JSONL line: keys sorted, defaults omitted, so output is byte-for-byte reproducible."""
    return json.dumps(record.model_dump(mode="json", exclude_defaults=True), sort_keys=True,
                      ensure_ascii=False)


def write_manifest(records: Iterable[Record], path: str | Path) -> Path:
    """Write records as `.jsonl` or `.parquet` (by suffix); refuse duplicate ids."""
    path = Path(path)
    records = list(records)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ManifestError(f"record ids must be unique; repeated: {dupes}")
    path.parent.mkdir(parents=True, exist_ok=True)
    match path.suffix:
        case ".jsonl":
            path.write_text("".join(record_to_json(r) + "\n" for r in records), encoding="utf-8")
        case ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            rows = [r.model_dump(mode="json") for r in records]
            for row in rows:
                for col in _PARQUET_JSON_COLUMNS:
                    row[col] = json.dumps(row[col], sort_keys=True)
            pq.write_table(pa.Table.from_pylist(rows), path)
        case _:
            raise ManifestError(f"manifest {path} must end in .jsonl or .parquet")
    return path
