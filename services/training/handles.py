"""The run's handles on a Ray cluster: what `services.training.train_loop.run` starts by default.

Everything heavy starts here: the control actor, the learner ranks, the rollout workers (their engines
up before the first step), plus the local pieces the driver itself uses (the manifest, SFT samples built
with the workers' prompt builder and processor, the metrics writer). Ray must be initialised by the caller
(services/training/launch.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learner.batch import TrainSample
from rewards.config import RewardConfig
from rollout.images import family_of
from rollout.knowledge import load_knowledge
from rollout.processing import PromptProcessor
from services.cluster.control import ControlClient
from services.cluster.learner_group import LearnerGroup
from services.cluster.reward_client import RewardClient
from services.cluster.rollout_pool import RolloutPool
from services.config import RunConfig
from services.convert import prepared_prompt, sampling_spec, sft_sample
from services.data.manifest import load_manifest
from services.data.records import Record
from services.models.pretrain import load_recipe
from services.targets import reference_answer, sft_think
from services.training.metrics import MetricsWriter
from services.training.seams import Rollout, RunHandles
from services.training.trackers import open_trackers


class BorrowedPool:
    """A rollout pool lent to one run: the run starts on the base model (adapter v0) and cannot shut the
    workers down; the lender does. Benchmarks and tests run many short runs on one pool, each of which would
    otherwise start its vLLM engines again (~25 s each on CPU)."""

    def __init__(self, pool: RolloutPool) -> None:
        self._pool = pool
        pool.load_adapter(0, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def shutdown(self) -> None:
        """The lender owns the workers."""


def start_handles(cfg: RunConfig, run_dir: Path, pool: BorrowedPool | None = None) -> RunHandles:
    """Start the cluster side of a run (the learner's placement group before the rollout workers, so the
    workers never starve it; the ranks and the workers then start side by side) and return the handles.
    `pool`: rollout workers already up for exactly this model, knowledge and rollout config (a run on another
    config would sample from another distribution than the one the learner recomputes: ValueError)."""
    trackers = open_trackers(cfg, run_dir)  # first: a tracker that cannot be reached stops the run at once
    try:
        return _start(cfg, run_dir, pool, MetricsWriter(run_dir, trackers=trackers))
    except BaseException:
        trackers.close("FAILED")
        raise


def _start(cfg: RunConfig, run_dir: Path, pool: BorrowedPool | None, writer: MetricsWriter) -> RunHandles:
    manifest = load_manifest(cfg.data.manifest, on_bad_record=cfg.data.on_bad_record).with_sizes()
    knowledge = load_knowledge(cfg.data.knowledge_dir)
    lent = None if pool is None else (pool.model_dir, pool.config, pool.knowledge
                                      and dict(pool.knowledge.entries))
    if lent is not None and lent != (cfg.model.path, cfg.rollout, dict(knowledge.entries)):
        raise ValueError(f"the lent rollout pool runs {pool.model_dir} with another rollout config or "
                         f"knowledge than run {cfg.name!r} ({cfg.model.path}); lend a pool started with the "
                         "run's own model.path, rollout section and data.knowledge_dir")
    control = ControlClient(cfg.name)
    # the learner's placement group first (its CPUs are taken before any worker's); then the ranks and the
    # rollout workers start side by side while the driver builds its own processor
    learner = LearnerGroup(cfg.model.path, cfg.learner)
    workers: Rollout = RolloutPool(cfg.model.path, cfg.rollout, cfg.pool, knowledge) if pool is None else pool
    processor = PromptProcessor(cfg.model.path, family_of(cfg.model.path), cfg.rollout.min_pixels,
                                cfg.rollout.max_pixels)
    try:
        learner.wait_ready()  # a rank that fails has shut its group down
        workers.wait_ready()
    except BaseException:
        workers.shutdown()  # a borrowed pool stays up: its lender owns it
        learner.shutdown()
        raise

    def reward(config: RewardConfig, state: dict[str, Any] | None) -> RewardClient:
        return RewardClient(config, state)

    recite_fraction = load_recipe(cfg.model.base).recite_fraction if cfg.model.base else None

    def sft(record: Record, multi_box: bool = False) -> TrainSample:
        """The prompt a rollout worker would build, prepared by the same processor, and the reference
        answer."""
        prepared = prepared_prompt(record, manifest.image_path(record), processor, knowledge,
                                   cfg.rollout.inject_knowledge, multi_box)
        think = sft_think(record, knowledge, recite_fraction, cfg.seed)
        answer = reference_answer(record, prepared.frame, think, multi_box)
        return sft_sample(prepared, answer, processor.tokenizer)

    return RunHandles(cfg=cfg, run_dir=run_dir, manifest=manifest,
                      sampling=sampling_spec(cfg.rollout.sampling, cfg.model.path, processor.tokenizer),
                      pool=workers, learner=learner, control=control, reward=reward, sft_sample=sft,
                      writer=writer,
                      eval_records=manifest.select(split=cfg.data.eval_split)[:cfg.eval.max_samples])
