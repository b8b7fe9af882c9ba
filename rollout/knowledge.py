"""Prior knowledge for VRFT-Aug injection (docs/algorithms.md, "VRFT-Aug"), read from YAML files.

Each file in a folder holds `{version: 1, entries: {"<modality>/<finding>": {modality, finding,
appearance, location, [synonyms]}}}`; `synonyms` (optional, a list of phrases) are other names of the
finding that `match_key` recognises in a free-text phrase (the Serve endpoint's rule, README "Serving").
Files are read in name order; a later file may add keys, but a key defined in two files is an error naming
both, so a user's extension never silently overrides the shipped text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

_FIELDS = ("modality", "finding", "appearance", "location")
_OPTIONAL = ("synonyms",)


@dataclass(frozen=True)
class KnowledgeEntry:
    """One finding on one modality: how it looks and where it typically is (plain text)."""

    modality: str
    finding: str
    appearance: str
    location: str
    synonyms: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        """The finding's name and its synonyms, lower case: what `match_key` looks for in a phrase."""
        return tuple(dict.fromkeys(n.strip().lower() for n in (self.finding, *self.synonyms) if n.strip()))

    def text(self) -> str:
        """The injected sentence, e.g. "nodule on chest x-ray: A round opacity. Typically the upper
        lobes."."""
        return f"{self.finding} on {self.modality}: {self.appearance} Typically {self.location}."


@dataclass(frozen=True)
class KnowledgeBase:
    """All entries of a folder, keyed "<modality>/<finding>", with the file each came from."""

    entries: MappingProxyType[str, KnowledgeEntry]
    sources: MappingProxyType[str, str]

    def text(self, key: str) -> str:
        """The injected text for `key`; an unknown key is an error listing a few known ones."""
        entry = self.entries.get(key)
        if entry is None:
            known = ", ".join(sorted(self.entries)[:8]) or "(none)"
            raise KeyError(f"no prior knowledge for {key!r}; known keys include: {known}; "
                           f"add an entry to a YAML file in the knowledge folder")
        return entry.text()

    def __getstate__(self) -> dict[str, dict[str, Any]]:
        # mappingproxy does not pickle; workers receive the knowledge base through Ray
        return {"entries": dict(self.entries), "sources": dict(self.sources)}

    def __setstate__(self, state: dict[str, dict[str, Any]]) -> None:
        object.__setattr__(self, "entries", MappingProxyType(state["entries"]))
        object.__setattr__(self, "sources", MappingProxyType(state["sources"]))


def _entry(raw: Any, key: str, source: Path) -> KnowledgeEntry:
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: entry {key!r} must be a mapping with keys {list(_FIELDS)}")
    missing = [f for f in _FIELDS if not isinstance(raw.get(f), str) or not raw[f].strip()]
    if missing:
        raise ValueError(f"{source}: entry {key!r} lacks non-empty text for {missing}")
    extra = sorted(set(raw) - set(_FIELDS) - set(_OPTIONAL))
    if extra:
        raise ValueError(f"{source}: entry {key!r} has unknown fields {extra}; "
                         f"allowed: {list(_FIELDS + _OPTIONAL)}")
    synonyms = raw.get("synonyms", [])
    if not isinstance(synonyms, list) or not all(isinstance(x, str) and x.strip() for x in synonyms):
        raise ValueError(f"{source}: entry {key!r}: synonyms must be a list of non-empty phrases, "
                         f"got {synonyms!r}")
    return KnowledgeEntry(**{f: raw[f].strip() for f in _FIELDS}, synonyms=tuple(x.strip() for x in synonyms))


def load_knowledge(folder: str | Path) -> KnowledgeBase:
    """Read every `*.yaml` / `*.yml` file of `folder` into one knowledge base."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"knowledge folder {folder} does not exist (the shipped one is "
                                "deploy/knowledge)")
    entries: dict[str, KnowledgeEntry] = {}
    sources: dict[str, str] = {}
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    for path in files:
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("entries"), dict):
            raise ValueError(f"{path}: expected a mapping with `version: 1` and an `entries` mapping")
        for key, raw in doc["entries"].items():
            if not isinstance(key, str) or key.count("/") != 1:
                raise ValueError(f"{path}: key {key!r} must look like '<modality>/<finding>'")
            if key in entries:
                raise ValueError(f"knowledge key {key!r} is defined in both {sources[key]} and {path}; "
                                 f"keep one of them")
            entries[key] = _entry(raw, key, path)
            sources[key] = str(path)
    return KnowledgeBase(entries=MappingProxyType(entries), sources=MappingProxyType(sources))


def _words(text: str) -> str:
    """Lower case, hyphens and punctuation as spaces, single spaces, padded: ' left pleural effusion '."""
    return " " + " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split()) + " "


def match_key(phrase: str, keys: Iterable[str], knowledge: KnowledgeBase) -> tuple[str | None, str | None]:
    """The knowledge key whose finding a free-text phrase names: (key, the name matched) or (None, None).

    Rule: a key matches when its finding name or one of its synonyms occurs in `phrase` as whole words (case,
    hyphens and punctuation ignored); the longest matched name wins ("nodule or mass" over "nodule"); a tie
    goes to the key first in sorted order. Only `keys` that the knowledge base holds are considered.
    Example: "large consolidation in the right middle zone" with keys {cxr/nodule, cxr/consolidation}
    -> ("cxr/consolidation", "consolidation").
    """
    text = _words(phrase)
    best: tuple[int, str, str] | None = None  # (-length, key, name): the smallest wins
    for key in sorted(set(keys)):
        entry = knowledge.entries.get(key)
        if entry is None:
            continue
        for name in entry.names():
            if _words(name) in text and (best is None or (-len(name), key) < best[:2]):
                best = (-len(name), key, name)
    return (None, None) if best is None else (best[1], best[2])
