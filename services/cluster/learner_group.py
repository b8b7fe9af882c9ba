"""The learner group: M DeepSpeed ranks as Ray actors in one placement group.

The driver hands the group one global batch of ``TrainSample``s; the group shards it evenly (the engine's
loss normalisation by global counts makes M shards equal to one batch), runs the step on all ranks at
once, and after each step rank 0 exports the adapter in LoRA form: ``export`` returns the object ref of
that one object-store copy, which rollout workers load by reference (no per-parameter RPC).

A rank that dies stops the group: every call waits on all ranks at once and, when one is gone, kills the
others (they would wait for it inside a collective until gloo's or NCCL's timeout, 30 min by default) and
raises ``LearnerRankLost``. A rank cannot rejoin its process group, so the run stops, naming its last
checkpoint (README, "Reliability").

Ranks use gloo on CPU and NCCL on GPU (``learner.gpus_per_rank > 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from learner.batch import StepMetrics, TrainBatch, TrainSample, shard
from learner.config import LearnerConfig
from learner.packing import shard_groups
from learner.worker import LearnerWorker


class LearnerRankLost(RuntimeError):
    """A learner rank died; the other ranks were stopped with it."""


class LearnerGroup:
    """``cfg.num_ranks`` learner actors packed into one placement group; every call runs on all ranks."""

    def __init__(self, model_dir: str | Path, cfg: LearnerConfig, ready_timeout_s: float = 600.0) -> None:
        self.cfg = cfg
        bundle: dict[str, float] = {"CPU": cfg.cpus_per_rank}
        if cfg.gpus_per_rank > 0:
            bundle["GPU"] = cfg.gpus_per_rank
        self._pg = placement_group([dict(bundle) for _ in range(cfg.num_ranks)], strategy="PACK")
        ready, _ = ray.wait([self._pg.ready()], timeout=ready_timeout_s)
        if not ready:
            remove_placement_group(self._pg)
            raise RuntimeError(f"the cluster cannot place {cfg.num_ranks} learner ranks of {bundle} within "
                               f"{ready_timeout_s:.0f} s: lower learner.num_ranks or "
                               "cpus_per_rank/gpus_per_rank")
        accelerator = "cuda" if cfg.gpus_per_rank > 0 else "cpu"
        self._workers: list[Any] = [
            LearnerWorker.options(  # type: ignore[attr-defined]
                num_cpus=cfg.cpus_per_rank, num_gpus=cfg.gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._pg, placement_group_bundle_index=rank),
                runtime_env={"env_vars": {"DS_ACCELERATOR": accelerator}},
            ).remote(str(model_dir), cfg, rank, cfg.num_ranks)
            for rank in range(cfg.num_ranks)
        ]
        # every rank builds its engine in the background from here (setup runs first on each actor, before
        # any later call): the driver starts the rollout workers meanwhile, then calls wait_ready
        master = self._workers[0].address.remote()
        self._setup: list[Any] | None = [w.setup.remote(master) for w in self._workers]

    def wait_ready(self) -> None:
        """Block until every rank has joined the process group and built its engine; a rank that failed
        shuts the group down (placement group freed) and its error surfaces. Every call waits for this."""
        if self._setup is None:
            return
        setup, self._setup = self._setup, None
        try:
            ray.get(setup)
        except Exception:
            self.shutdown()
            raise

    @property
    def num_ranks(self) -> int:
        return len(self._workers)

    def _all(self, refs: list[Any], what: str) -> list[Any]:
        """Every rank's result of one call; a dead rank stops the whole group (see the module docstring)."""
        if not self._workers:
            raise LearnerRankLost(f"the learner group was stopped after a rank died; it cannot run {what}")
        self.wait_ready()
        try:
            return list(ray.get(refs))
        except (RayActorError, RayTaskError) as exc:
            # a live rank's collective can fail first ("connection reset by peer") and be the error ray.get
            # raises: whichever error comes first, a dead rank means the group is lost
            dead = self._dead_ranks()
            if isinstance(exc, RayTaskError) and not dead:
                raise  # a rank's own error (a bug, bad input): the ranks are alive
            for w in self._workers:
                ray.kill(w)
            self._workers = []
            raise LearnerRankLost(
                f"learner rank(s) {dead} died during {what} ({type(exc).__name__}); the other "
                "ranks were stopped, since a rank cannot rejoin its process group") from exc

    def _dead_ranks(self) -> list[int]:
        """Ranks whose actor is gone: their ping fails at once, while live ranks (busy in a collective) do
        not answer within the grace period."""
        pings = [w.__ray_ready__.remote() for w in self._workers]
        done, _ = ray.wait(pings, num_returns=len(pings), timeout=5.0)
        dead = []
        for rank, ping in enumerate(pings):
            if ping in done:
                try:
                    ray.get(ping)
                except RayActorError:
                    dead.append(rank)
        return dead

    def grpo_step(self, batch: TrainBatch) -> StepMetrics:
        """GRPO over the global batch (``batch.samples``, sampled from ``batch.sampling``), sharded evenly;
        with
        ``shared_prefix`` in whole groups, so each group's image crosses to one rank once (its samples share
        one tensor, which pickling sends once per call) and each rank packs every prompt it has once."""
        shards = (shard_groups if self.cfg.shared_prefix else shard)(batch.samples, self.num_ranks)
        metrics: list[StepMetrics] = self._all(
            [w.grpo_step.remote(TrainBatch(tuple(s), batch.sampling)) for w,
             s in zip(self._workers, shards, strict=True)],
            "grpo_step")
        return metrics[0]  # already reduced over ranks; rank 0's wall time stands for the step

    def sft_step(self, samples: Sequence[TrainSample]) -> StepMetrics:
        """One SFT optimiser step (cross-entropy on ``completion_ids``) over the global batch."""
        shards = shard(samples, self.num_ranks)
        metrics: list[StepMetrics] = self._all([w.sft_step.remote(s) for w,
                                                s in zip(self._workers, shards, strict=True)],
                                               "sft_step")
        return metrics[0]

    def begin_stage(self, kind: str, lr: float, carry_optimizer: bool) -> None:
        """A stage's first step is next: its lr, fresh optimiser moments unless carried, the KL reference."""
        self._all([w.begin_stage.remote(kind, lr, carry_optimizer) for w in self._workers], "begin_stage")

    def set_lr(self, lr: float) -> None:
        self._all([w.set_lr.remote(lr) for w in self._workers], "set_lr")

    def export(self, version: int) -> ray.ObjectRef:
        """Object ref of the ``LoraArtefact`` (rank 0's return value: the one object-store copy)."""
        refs = [w.export.remote(version) for w in self._workers]
        # the other ranks only take part in ZeRO-3 gathers; wait so errors surface
        self._all(refs[1:], "export")
        ray.wait([refs[0]], fetch_local=False)
        # rank 0 alive, without fetching its artefact
        self._all([self._workers[0].__ray_ready__.remote()], "export")
        return refs[0]

    def save_checkpoint(self, directory: str | Path, adapter_dir: str | Path | None, version: int) -> Path:
        """DeepSpeed state, RNG states and adapter copies under ``directory``, written atomically; rank 0 also
        writes the adapter, as ``version``, to ``adapter_dir``."""
        adapter = None if adapter_dir is None else str(adapter_dir)
        return Path(self._all([w.save_checkpoint.remote(str(directory), adapter, version)
                               for w in self._workers],
                              "save_checkpoint")[0])

    def load_checkpoint(self, directory: str | Path) -> int:
        """Restore every rank from ``directory``; returns the learner's step count."""
        return int(self._all([w.load_checkpoint.remote(str(directory)) for w in self._workers],
                             "load_checkpoint")[0])

    def shutdown(self) -> None:
        """Leave the process group on every rank, then free the actors and the placement group (once)."""
        if self._pg is None:
            return
        try:
            if self._workers:
                ray.get([w.close.remote() for w in self._workers], timeout=120)
        finally:
            for w in self._workers:
                ray.kill(w)
            self._workers = []
            remove_placement_group(self._pg)
            self._pg = None
