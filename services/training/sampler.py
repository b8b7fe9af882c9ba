"""Deterministic prompt order: a seeded permutation per epoch, with a position that checkpoints exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    from services.config import RunConfig
    from services.data.manifest import Manifest
    from services.data.records import Record

T = TypeVar("T")


@dataclass
class PromptSampler(Generic[T]):
    """Yields items in a fresh seeded permutation each epoch; `state_dict` is (epoch, position)."""

    items: tuple[T, ...]
    seed: int
    epoch: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("the sampler has no records: check the manifest's split and task for this stage")
        self._order = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.items))

    def take(self, n: int) -> list[T]:
        out = []
        for _ in range(n):
            if self.position >= len(self.items):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self.items[int(self._order[self.position])])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "count": len(self.items)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["count"] != len(self.items):
            raise ValueError(f"the checkpoint's sampler saw {state['count']} records, the manifest now has "
                             f"{len(self.items)}: resume with the same data, or start a new run")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


def stage_sampler(manifest: Manifest, cfg: RunConfig, stage_index: int) -> PromptSampler[Record]:
    """Stage `stage_index`'s prompts in the driver's order: the records of its split (default: the run's
    data.train_split) and task, permuted from the run's `seed` and the stage's index. One definition for the
    driver and for benchmarks that give another trainer the same prompts (bench/vs_trl.py). A stage without
    `multi_box` skips negative grounding records (no box): a single-box answer cannot say "not present"."""
    stage = cfg.stages[stage_index]
    records = manifest.select(split=stage.train_split or cfg.data.train_split, task=stage.tasks)
    if not stage.multi_box:
        records = tuple(r for r in records if r.task != "grounding" or r.boxes)
    return PromptSampler(records, seed=cfg.seed * 1000 + stage_index)
