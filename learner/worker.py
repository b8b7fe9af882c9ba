"""The learner rank as a Ray actor: a thin wrapper over ``LearnerEngine`` (the only Ray import in learner/).

The engine is built in ``setup`` rather than in the constructor because the ranks can only join a process
group once the group knows rank 0's address, which rank 0 reports through ``address``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from learner.batch import SamplingSpec, StepMetrics, TrainBatch, TrainSample
from learner.config import LearnerConfig
from learner.distributed import free_port
from learner.engine import LearnerEngine


class LearnerRank:
    """One rank's state inside its actor; every method forwards to the engine."""

    def __init__(self, model_dir: str, cfg: LearnerConfig, rank: int, world_size: int) -> None:
        self.model_dir, self.cfg, self.rank, self.world_size = model_dir, cfg, rank, world_size
        self._engine: LearnerEngine | None = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port, for MASTER_ADDR/MASTER_PORT (asked of rank 0)."""
        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master: tuple[str, int]) -> None:
        """Join the process group at rank 0's `address()` and build the engine; all ranks must be called
        concurrently (the group passes rank 0's address as an object ref, which Ray resolves first)."""
        master_addr, master_port = master
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        self._engine = LearnerEngine(self.model_dir, self.cfg, self.rank, self.world_size)

    @property
    def engine(self) -> LearnerEngine:
        if self._engine is None:
            raise RuntimeError("LearnerRank.setup() has not run: create ranks through services.LearnerGroup")
        return self._engine

    def grpo_step(self, batch: TrainBatch) -> StepMetrics:
        return self.engine.grpo_step(batch)

    def sft_step(self, samples: Sequence[TrainSample]) -> StepMetrics:
        return self.engine.sft_step(samples)

    def logprobs(self, samples: Sequence[TrainSample], sampling: SamplingSpec | None = None,
                 adapter: bool = True) -> list[Any]:
        return self.engine.logprobs(samples, sampling, adapter)

    def begin_stage(self, kind: str, lr: float, carry_optimizer: bool) -> None:
        self.engine.begin_stage(kind, lr, carry_optimizer)

    def set_lr(self, lr: float) -> None:
        self.engine.set_lr(lr)

    def export(self, version: int) -> Any:
        """The LoraArtefact on rank 0 (its return value is the one object-store copy), None elsewhere."""
        artefact = self.engine.export(version)
        return artefact if self.rank == 0 else None

    def save_checkpoint(self, directory: str, adapter_dir: str | None, version: int) -> str:
        return str(self.engine.save_checkpoint(Path(directory), adapter_dir, version))

    def load_checkpoint(self, directory: str) -> int:
        self.engine.load_checkpoint(Path(directory))
        return self.engine.steps

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


# max_restarts=0: a rank that dies mid-step leaves the others waiting in a collective; a restarted rank
# could not rejoin them. The run stops and is resumed from its last checkpoint (`medground train --resume`).
LearnerWorker = ray.remote(max_restarts=0)(LearnerRank)
