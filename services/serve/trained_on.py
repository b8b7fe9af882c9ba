"""What a served model was trained on, and which prior knowledge a free-text request gets (no Ray).

A run that injected VRFT-Aug knowledge built every training and evaluation prompt with its record's
`knowledge_key`; a request to the endpoint has a phrase only. So that the endpoint builds the same prompt,
the key is chosen by one documented rule (`choose_knowledge`, README "Serving"):

1. `knowledge_key` in the request wins (source "request");
2. else the run's grounding keys (the `knowledge_key`s of the records its stages trained on; none when its
   manifest cannot be read here; every key of the folder for a bare model served with `knowledge_dir`) are
   matched against the phrase by finding name and synonyms (`rollout.knowledge.match_key`; source "phrase");
3. else, when the run trained grounding under one key only, that key (source "only_key");
4. else no knowledge (source "none"); a service that injects none answers source "off".

On the shipped synthetic data (phrases name their finding) the rule gives every record its own key, so a
served answer equals evaluation's (tests/unit/services/serve/test_serve_knowledge.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rollout.knowledge import KnowledgeBase, match_key
from services.config import RunConfig
from services.data.manifest import ManifestError, load_manifest

Source = Literal["request", "phrase", "only_key", "none", "off"]


@dataclass(frozen=True)
class TrainedOn:
    """The run's training data in a few facts, for the page and GET /v1/model.

    `records`: training records per task; `modalities`: the knowledge modalities of their keys (e.g.
    "chest x-ray"); `grounding_keys`: knowledge keys of the grounding records with their counts; `note`:
    why some fact is unknown (no run directory, manifest not found where the run read it)."""

    run: str | None = None
    manifest: str | None = None
    splits: tuple[str, ...] = ()
    records: dict[str, int] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    grounding_keys: dict[str, int] = field(default_factory=dict)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "manifest": self.manifest, "splits": list(self.splits),
                "records": self.records, "sources": list(self.sources), "modalities": list(self.modalities),
                "grounding_keys": self.grounding_keys, "note": self.note}


@dataclass(frozen=True)
class KnowledgeChoice:
    """The key a request's prompt is built with (None: no knowledge), how it was chosen, and the finding
    name that matched (source "phrase")."""

    key: str | None
    source: Source
    matched: str | None = None


def trained_on(cfg: RunConfig, run_dir: str | Path, knowledge: KnowledgeBase | None) -> TrainedOn:
    """Read the run's manifest (as its config names it) for the records its stages trained on."""
    name = Path(run_dir).name
    splits = tuple(dict.fromkeys(s.train_split or cfg.data.train_split for s in cfg.stages))
    tasks = {t for s in cfg.stages for t in ([s.task] if isinstance(s.task, str) else s.task)}
    try:
        manifest = load_manifest(cfg.data.manifest, on_bad_record="skip", report=lambda _: None)
    except (ManifestError, OSError) as exc:
        return TrainedOn(run=name, manifest=cfg.data.manifest, splits=splits,
                         note=f"the run's manifest is not readable here ({exc}); no knowledge key is chosen "
                              "from phrases: send knowledge_key")
    records = [r for r in manifest.records if r.split in splits and r.task in tasks]
    keys = Counter(r.knowledge_key for r in records if r.knowledge_key)
    modalities = sorted({knowledge.entries[k].modality for k in keys if knowledge and k in knowledge.entries})
    grounding = Counter(r.knowledge_key for r in records if r.task == "grounding" and r.knowledge_key)
    return TrainedOn(run=name, manifest=cfg.data.manifest, splits=splits,
                     records=dict(sorted(Counter(r.task for r in records).items())),
                     sources=tuple(sorted({r.source for r in records if r.source})),
                     modalities=tuple(modalities), grounding_keys=dict(sorted(grounding.items())))


def choose_knowledge(phrase: str, given: str | None, trained: TrainedOn, knowledge: KnowledgeBase | None,
                     inject: bool) -> KnowledgeChoice:
    """The knowledge key for one request by the module's rule; `given` is an already checked request key."""
    if knowledge is None or not inject:
        return KnowledgeChoice(None, "off")
    if given is not None:
        return KnowledgeChoice(given, "request")
    # a run: only the keys it trained grounding with (none when its data cannot be read here); a bare model
    # served with a knowledge folder: every key of the folder
    candidates = list(trained.grounding_keys) if trained.run is not None else list(knowledge.entries)
    key, name = match_key(phrase, candidates, knowledge)
    if key is not None:
        return KnowledgeChoice(key, "phrase", name)
    if len(trained.grounding_keys) == 1:
        return KnowledgeChoice(next(iter(trained.grounding_keys)), "only_key")
    return KnowledgeChoice(None, "none")
