"""The training driver: one process (what `medground train` and `ray job submit` run) that tells the
story of a step in the order of the README diagram (docs/architecture.md):

    records -> prompts (no ground truth) -> RolloutPool (G completions each, adapter version v)
            -> RewardActor (rewards + tau, MedLoc-R1 window) -> advantages + dynamic sampling
            -> LearnerGroup (GRPO step on the MLAE adapter) -> export adapter v+1 -> every rollout worker

`run` starts the cluster handles and walks the stages (`_train_stages`: control, step, evaluate, log,
checkpoint, report); `grpo_step` is one step, phase by phase. The handles are the Protocols of
services/seams.py, so tests run this file in-process against fakes.

Deliberate deviations from textbook GRPO (each one is a config choice or a documented default; the
maths is in docs/algorithms.md):
1. The KL reference is a frozen copy of the adapter as the GRPO stage began (a second adapter slot, no
   second model); `learner.grpo.reference: base` switches the adapter off instead.
2. `learner.grpo.updates_per_batch` updates per batch (default 1, so logp_old = logp.detach() and the
   ratio is 1); later updates take the ratio against the adapter version that sampled the batch.
3. Dynamic sampling: groups whose task rewards (accuracy, format, grade; not the recitation shaping term)
   are all equal carry no gradient; they are dropped and replaced by freshly sampled prompts for up to
   `stage.refill_cap` extra rounds (DAPO), filtering on the spread of rewards, never their mean (continuous
   IoU rewards). `drop_zero_variance: false` keeps them (TRL's way).
4. The accuracy reward is binary at a threshold tau that the MedLoc-R1 schedule raises from a window of
   measured performance; every round of a step is scored under the tau at its start, then observed.
5. Only the adapter trains (MLAE, exported as LoRA to vLLM); the base model and vision tower are frozen.
6. A run is a list of stages: an SFT warm start, then GRPO on grounding, optionally GRPO on
   classification/grading from the previous stage's adapter (VRFT-Aug's perception-driven refinement).
   Each stage starts with fresh optimiser moments unless it sets `carry_optimizer`.
7. The sync alarm: the first batch after each adapter change is checked for agreement between the
   engines' behaviour log-probs and the learner's; a disagreement stops the run (`check_adapter_sync`).
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Callable, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.batch import SamplingSpec, StepMetrics, TrainBatch, TrainSample
from learner.config import GRPOConfig
from learner.export import LoraArtefact
from learner.grpo import group_advantages, select_groups, zero_variance_groups
from rewards.config import RewardConfig
from rewards.schedule import RaiseRecord
from rewards.scorer import ScoredBatch
from rewards.scoring import RewardColumns, RewardTarget, ScheduleSnapshot
from rollout.contracts import RolloutGroup, RolloutRequest
from services import checkpointing as ckpt
from services import evaluation
from services.config import RunConfig, StageConfig, write_resolved
from services.control import JobStatus
from services.convert import reward_target, rollout_request
from services.data.manifest import Manifest
from services.data.records import Record
from services.metrics import MetricsWriter, PhaseTimer
from services.sampler import PromptSampler, stage_sampler
from services.seams import Control, Learner, Reward, Rollout

log = logging.getLogger(__name__)


@dataclass
class DriverState:
    """Everything the driver needs to continue exactly (with the learner's and reward's own state)."""

    stage_index: int = 0
    step_in_stage: int = 0
    global_step: int = 0
    adapter_version: int = 0  # the version rollout workers serve; the only adapter version in the system
    samplers: dict[str, dict[str, Any]] = field(default_factory=dict)
    reward_state: dict[str, Any] | None = None
    last_eval: float | None = None  # the latest held-out A@0.5 (status and progress bar)


@dataclass
class RunHandles:
    """The live parts of a run: cluster handles (the seams) and local helpers."""

    cfg: RunConfig
    run_dir: Path
    manifest: Manifest
    sampling: SamplingSpec  # the rollout engines' sampling distribution, as the learner recomputes it
    pool: Rollout
    learner: Learner
    control: Control
    reward: Callable[[RewardConfig, dict[str, Any] | None], Reward]  # a reward client for a stage
    sft_sample: Callable[[Record], TrainSample]  # a record's prompt and reference answer, tokenised
    writer: MetricsWriter
    eval_records: tuple[Record, ...]

    def close(self) -> None:
        self.writer.close()
        self.pool.shutdown()
        self.learner.shutdown()
        self.control.close()


class RunFailed(RuntimeError):
    """A run stopped on an error; the message names the step, the last complete checkpoint and how to resume."""


class StopRequested(Exception):
    """Raised by an `on_step` callback between steps (SIGTERM or Ctrl-C, services/launch.py): the run
    checkpoints the step it has just finished, then stops with RunFailed naming it."""


# -------------------------------------------------------------------------------------------------------
# The run.


def run(cfg: RunConfig, run_dir: Path | None = None, resume: bool = False,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
        start: Callable[[RunConfig, Path], RunHandles] | None = None) -> Path:
    """Train every stage of `cfg`; returns the run directory. `start` builds the handles (default: on the
    Ray cluster the caller initialised, services/handles.py)."""
    run_dir = Path(run_dir or Path(cfg.output_dir) / cfg.name)
    state = DriverState()
    checkpoint = None
    if resume:
        state, checkpoint = _restore_state(run_dir)
        log.info("resuming %s from %s (step %d)", run_dir, checkpoint, state.global_step)
    elif (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume {run_dir} "
                              f"or choose another name with --set name=...")
    write_resolved(cfg, run_dir)
    if start is None:
        from services.handles import start_handles as start
    h = start(cfg, run_dir)
    try:
        if checkpoint is not None:
            h.learner.load_checkpoint(checkpoint / "learner")
            h.writer.truncate_after(state.global_step)
            _restore_adapter(h, checkpoint, state.adapter_version)
        else:
            if cfg.init_from is not None:  # start from another run's learner state (a shared warm start)
                h.learner.load_checkpoint(Path(cfg.init_from) / "learner")
                publish_adapter(h, state)
            first = _evaluate(h, 0) if cfg.eval.at_start else {}
            state.last_eval = first.get("eval/A@0.5")
            h.writer.log(0, {"stage": cfg.stages[0].name, **first, **evaluation.centre_box_baseline(h.eval_records)})
        h.control.report(_status(h, state, {"stage": cfg.stages[min(state.stage_index, len(cfg.stages) - 1)].name}))
        _train_stages(h, state, on_step)
        _write_final(h)
    except StopRequested as exc:  # between steps: the state is one whole step, so keep it
        raise RunFailed(_failure_message(run_dir, state, _save_on_stop(h, state) or exc)) from exc
    except Exception as exc:
        raise RunFailed(_failure_message(run_dir, state, exc)) from exc
    finally:
        h.close()
    return run_dir


def _train_stages(h: RunHandles, state: DriverState, on_step: Callable[[int, dict[str, Any]], None] | None) -> None:
    """Every remaining step of every stage: control, step, sync, evaluate, log, checkpoint, report."""
    from tqdm import tqdm

    cfg = h.cfg
    bar = tqdm(total=sum(s.steps for s in cfg.stages), initial=state.global_step, desc=cfg.name, dynamic_ncols=True)
    for stage_index in range(state.stage_index, len(cfg.stages)):
        stage = cfg.stages[stage_index]
        sampler = stage_sampler(h.manifest, cfg, stage_index)
        if stage.name in state.samplers:
            sampler.load_state_dict(state.samplers[stage.name])
        producer = None
        if stage.kind == "grpo":
            first_step = sum(s.steps for s in cfg.stages[:stage_index])
            producer = Producer(h, stage, first_step, sampler, h.reward(stage.reward or cfg.reward, state.reward_state))
        if state.step_in_stage == 0:  # a fresh stage: lr, fresh optimiser moments, the KL reference
            h.learner.begin_stage(stage.kind, stage.lr or cfg.learner.lr, stage.carry_optimizer)
        else:  # resumed mid-stage: moments and reference come from the checkpoint
            h.learner.set_lr(stage.lr or cfg.learner.lr)
        while state.step_in_stage < stage.steps:
            timer = PhaseTimer()
            # ---- step
            if producer is not None:
                row = grpo_step(h, stage, producer, state, timer, prefetch=_may_prefetch(cfg, stage, state))
                state.reward_state = producer.reward.state
            else:
                _apply_control(h)
                row = sft_step(h, stage, sampler, timer)
            state.step_in_stage += 1
            state.global_step += 1
            state.samplers[stage.name] = sampler.state_dict()
            stage_done = state.step_in_stage == stage.steps
            due_eval = _due(cfg.eval.every, state.global_step) or (stage_done and stage_index == len(cfg.stages) - 1)
            # ---- sync: SFT publishes its adapter only when an evaluation or the next stage needs it
            if stage.kind == "sft" and (stage_done or due_eval):
                with timer.phase("sync"):
                    publish_adapter(h, state)
            # ---- evaluate
            if due_eval:
                with timer.phase("eval"):
                    row.update(_evaluate(h, state.global_step))
                state.last_eval = row.get("eval/A@0.5", state.last_eval)
            # ---- log
            row.update({"stage": stage.name, "stage_step": state.step_in_stage,
                        "adapter_version": state.adapter_version, "rollout/workers": h.pool.size,
                        "rollout/workers_live": h.pool.live_count(), **timer.row(),
                        **h.pool.take_faults(), **(producer.reward.take_faults() if producer is not None else {})})
            h.writer.log_timeline(state.global_step, timer.started, row.pop("time/spans", []) + timer.spans)
            h.writer.log(state.global_step, row)
            # ---- checkpoint
            if stage_done:
                state.stage_index, state.step_in_stage = stage_index + 1, 0
            if _due(cfg.checkpoint.every, state.global_step) or stage_done:
                _checkpoint(h, state)
            # ---- report
            h.control.report(_status(h, state, row))
            bar.update(1)
            bar.set_postfix(stage=stage.name, tau=row.get("tau/value"), reward=_fmt(row.get("reward/total")),
                            loss=_fmt(row.get("learner/loss")), A50=_fmt(state.last_eval))
            if on_step is not None:
                on_step(state.global_step, row)
            if stage_done:
                break
        if producer is not None:
            producer.close()
    bar.close()


def _may_prefetch(cfg: RunConfig, stage: StageConfig, state: DriverState) -> bool:
    """Whether this step may generate the next step's batch while it learns (rollout.max_staleness = 1):
    not across a stage's end, and not past a step that evaluates or checkpoints -- those drain the pipeline,
    so a run resumed from a checkpoint generates the next batch exactly as the uninterrupted run did."""
    step = state.global_step + 1
    return (cfg.rollout.max_staleness >= 1 and state.step_in_stage + 1 < stage.steps
            and not _due(cfg.eval.every, step) and not _due(cfg.checkpoint.every, step))


# -------------------------------------------------------------------------------------------------------
# One step of each kind.


def grpo_step(h: RunHandles, stage: StageConfig, producer: Producer, state: DriverState, timer: PhaseTimer,
              prefetch: bool = False) -> dict[str, Any]:
    """One GRPO step in the order of the diagram; with `prefetch`, the next step's batch is generated by the
    current adapter while the learner trains on this one (rollout.max_staleness = 1). Returns its metric row."""
    with timer.phase("wait"):  # prompts -> RolloutPool -> RewardActor -> groups with task signal
        step = producer.take(state.global_step)
    if prefetch:
        producer.prefetch(state.global_step + 1)  # the next batch, sampled by adapter v while we learn
    batch = TrainBatch(advantaged_samples(step.kept, h.cfg.learner.grpo), h.sampling)
    metrics = None
    if batch.samples:
        with timer.phase("learner"):  # LearnerGroup: the GRPO update on the adapter
            metrics = h.learner.grpo_step(batch)
        check_adapter_sync(metrics, h.cfg.learner.grpo, state.adapter_version)
    with timer.phase("sync"):  # export adapter v+1, live on every rollout worker once the next batch is made
        producer.drain()
        publish_adapter(h, state)
    return step.metrics(h.pool.last_serving, state.adapter_version - 1) | _learner_row(metrics)


class Producer:
    """Makes a GRPO stage's batches in generation order: prompts (no ground truth) -> G completions each ->
    rewards under one tau -> the groups kept for the learner (`produce`). `prefetch` makes the next one in a
    background thread while the learner trains (rollout.max_staleness = 1); `drain` waits for it, so the
    adapter push that follows never lands mid-batch and every batch is sampled by exactly one version."""

    def __init__(self, h: RunHandles, stage: StageConfig, first_step: int, sampler: PromptSampler[Record],
                 reward: Reward) -> None:
        self.h, self.stage, self.first_step, self.sampler, self.reward = h, stage, first_step, sampler, reward
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="producer")
        self._next: Future[GroupSelection] | None = None

    def take(self, step: int) -> GroupSelection:
        if self._next is not None:
            made, self._next = self._next.result(), None
            return made
        return self.produce(step)

    def prefetch(self, step: int) -> None:
        self._next = self._thread.submit(self.produce, step)

    def drain(self) -> None:
        if self._next is not None:
            futures.wait([self._next])

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)

    def produce(self, step: int) -> GroupSelection:
        """The batch of global step `step` (0-based), generated by the adapter live now."""
        h, stage = self.h, self.stage
        _apply_control(h)  # a resize lands while the pool is idle, before a generation starts
        made = GroupSelection(wanted=stage.prompts_per_step, drop_zero_variance=stage.drop_zero_variance)
        progress = (step - self.first_step) / stage.steps  # the fraction of the stage done (stepped tau)
        records = self.sampler.take(stage.prompts_per_step)
        for refill in range(1 + stage.refill_cap):
            with made.timer.phase("generate"):  # RolloutPool: G completions per prompt
                groups = h.pool.generate(_requests(h, records, step, refill))
            with made.timer.phase("reward"):  # RewardActor: rewards under one tau, then the MedLoc-R1 window
                scored = self.reward.score(_targets(records, groups), step, progress, under=made.tau)
            made.add(groups, scored)  # dynamic sampling: keep groups with task signal
            if made.full:
                break
            records = self.sampler.take(made.room)
        return made


def sft_step(h: RunHandles, stage: StageConfig, sampler: PromptSampler[Record], timer: PhaseTimer) -> dict[str, Any]:
    """Cross-entropy on reference answers (the warm start and the SFT baseline)."""
    with timer.phase("prepare"):
        samples = [h.sft_sample(r) for r in sampler.take(stage.prompts_per_step)]
    with timer.phase("learner"):
        metrics = h.learner.sft_step(samples)
    return _learner_row(metrics)


def sampling_seed(run_seed: int, step: int, refill: int, index: int) -> int:
    """Each request's own sampling seed: the same prompt slot samples the same completions on any worker,
    so a resumed run reproduces the original exactly."""
    return int(np.random.SeedSequence([run_seed, step, refill, index]).generate_state(1)[0])


def _requests(h: RunHandles, records: Sequence[Record], step: int, refill: int) -> list[RolloutRequest]:
    return [rollout_request(r, h.manifest.image_path(r), sampling_seed(h.cfg.seed, step, refill, i))
            for i, r in enumerate(records)]


def _targets(records: Sequence[Record], groups: Sequence[RolloutGroup]) -> list[tuple[list[str], RewardTarget]]:
    return [([c.text for c in g.completions], reward_target(r, g.frame, g.injected_knowledge))
            for r, g in zip(records, groups, strict=True)]


@dataclass
class KeptGroup:
    """A group kept for the learner, with its rewards: `total [G]` and the task part `task [G]`."""

    group: RolloutGroup
    total: np.ndarray
    task: np.ndarray


@dataclass
class GroupSelection:
    """A GRPO step's generation rounds: every group scored, and the groups kept for the learner (DAPO
    dynamic sampling, learner.grpo.select_groups); `tau` is what every round is scored under."""

    wanted: int
    drop_zero_variance: bool = True
    tau: ScheduleSnapshot | None = None
    kept: list[KeptGroup] = field(default_factory=list)
    seen: list[RolloutGroup] = field(default_factory=list)
    columns: list[RewardColumns] = field(default_factory=list)
    zero_variance: int = 0
    schedule: ScheduleSnapshot | None = None  # after the last round was observed
    raises: list[RaiseRecord] = field(default_factory=list)
    timer: PhaseTimer = field(default_factory=lambda: PhaseTimer("producer"))  # its generate and reward seconds

    @property
    def room(self) -> int:
        return self.wanted - len(self.kept)

    @property
    def full(self) -> bool:
        return self.room <= 0

    def add(self, groups: Sequence[RolloutGroup], scored: ScoredBatch) -> None:
        cols = scored.columns
        total, task = _per_group(cols.total, cols.offsets), _per_group(cols.task, cols.offsets)  # [B, G] each
        zero = zero_variance_groups(torch.from_numpy(task))  # [B]
        self.kept += [KeptGroup(groups[i], total[i], task[i])
                      for i in select_groups(zero, self.room, self.drop_zero_variance)]
        self.tau = self.tau or scored.scored_under
        self.seen += groups
        self.columns.append(cols)
        self.zero_variance += int(zero.sum())
        self.schedule = scored.schedule
        self.raises += scored.raises

    def metrics(self, serving: Sequence[int], version: int) -> dict[str, Any]:
        """The step's reward, batch and rollout rows (the learner's come from its StepMetrics); `version` is
        the learner's adapter version when it trained on this batch."""
        for r in self.raises:
            log.info("tau raised %.2f -> %.2f at step %d (%s)", r.old_tau, r.new_tau, r.step, r)
        cat = {k: np.concatenate([getattr(c, k) for c in self.columns])
               for k in ("weighted", "r_acc", "r_format", "r_recite", "r_grade", "iou")}
        cat |= {k: np.concatenate([c.extra[k] for c in self.columns]) for k in self.columns[0].extra}
        # reward/total: the weighted sum of the terms, whatever reward.aggregation combines for the advantage;
        # reward/<name>: a user's term (reward.extra_terms)
        row: dict[str, Any] = {"reward/" + ("total" if k == "weighted" else k.removeprefix("r_")):
                               float(v.mean()) for k, v in cat.items()}
        assert self.schedule is not None
        row |= {"tau/value": self.schedule.tau, "tau/version": self.schedule.version}
        if self.schedule.stats is not None:
            row |= {f"tau/{k}": v for k, v in asdict(self.schedule.stats).items()
                    if k not in ("tau", "version") and isinstance(v, int | float)}
        completions = [c for g in self.seen for c in g.completions]
        gen_s = max(self.timer.seconds.get("generate", 0.0), 1e-9)
        versions = [g.adapter_version for g in self.seen]
        return row | {
            "batch/groups_seen": len(self.seen), "batch/groups_kept": len(self.kept),
            "batch/zero_variance_fraction": self.zero_variance / max(len(self.seen), 1),
            "batch/staleness": float(np.mean([version - k.group.adapter_version for k in self.kept]))
            if self.kept else 0.0,  # adapter versions between the sampling policy and the learner's
            "batch/adapter_version_min": min(versions), "batch/adapter_version_max": max(versions),
            "rollout/workers_serving": len(serving), "rollout/serving_serials": ",".join(map(str, serving)),
            "rollout/completions_per_s": len(completions) / gen_s,
            "rollout/tokens_per_s": sum(len(c.token_ids) for c in completions) / gen_s,
            "rollout/prompt_tokens": sum(len(g.prompt_token_ids) for g in self.seen),
            "rollout/completion_tokens": sum(len(c.token_ids) for c in completions),
            "rollout/truncated_fraction": sum(c.finish_reason == "length" for c in completions)
            / max(len(completions), 1),
            **{f"time/{k}_s": v for k, v in self.timer.seconds.items()},  # when it was made, maybe overlapped
            "time/spans": self.timer.spans}


def _per_group(column: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """A reward column [N] with group offsets [B + 1] as ``[B, G]`` (every group has G completions)."""
    return np.stack([column[lo:hi] for lo, hi in itertools.pairwise(offsets)])


def advantaged_samples(kept: Sequence[KeptGroup], grpo: GRPOConfig) -> tuple[TrainSample, ...]:
    """TrainSamples of the kept groups, with advantages normalised over exactly these groups."""
    from services.convert import grpo_samples

    if not kept:
        return ()
    totals = torch.from_numpy(np.stack([k.total for k in kept]))  # [B, G]
    signal = torch.from_numpy(np.stack([k.task for k in kept]))  # [B, G]
    adv, _ = group_advantages(totals, signal, scale=grpo.scale_rewards, eps=grpo.adv_eps)  # [B, G]
    return tuple(s for k, a in zip(kept, adv, strict=True) for s in grpo_samples(k.group, a.tolist()))


class AdapterSyncError(RuntimeError):
    """The rollout engines' log-probs disagree with the learner's right after an adapter change."""


def check_adapter_sync(metrics: StepMetrics, grpo: GRPOConfig, version: int) -> None:
    """The sync alarm (docs/algorithms.md, "GRPO"): stop (or warn) when the first batch after an adapter
    change was sampled from a different policy than the learner holds for that version."""
    reading = metrics.logprob_mismatch
    if grpo.sync_alarm == "off" or reading is None or reading <= grpo.sync_alarm_nats:
        return
    message = (f"adapter sync alarm: behaviour log-probs of the first batch after adapter v{version} differ from the "
               f"learner's by {reading:.4g} nats/token (threshold learner.grpo.sync_alarm_nats="
               f"{grpo.sync_alarm_nats}). Likely causes: the adapter did not reach a rollout engine (it still serves "
               "an older adapter or the base model); the engine and the learner disagree on temperature or token "
               "masks; or their weights differ (model path, dtype). Set learner.grpo.sync_alarm=warn to train on.")
    if grpo.sync_alarm == "stop":
        raise AdapterSyncError(message)
    log.warning(message)


def _learner_row(m: StepMetrics | None) -> dict[str, Any]:
    if m is None:
        return {"learner/skipped": 1}
    row = {f"learner/{k}": v for k, v in asdict(m).items() if k != "seconds" and v is not None}
    return row | {"learner/skipped": 0}


# -------------------------------------------------------------------------------------------------------
# The adapter, evaluation, checkpoints, status.


def publish_adapter(h: RunHandles, state: DriverState) -> None:
    """Export adapter v+1 from the learner (one object-store transfer) and make it live on every worker."""
    state.adapter_version += 1
    h.pool.load_adapter(state.adapter_version, h.learner.export(state.adapter_version))


def _restore_adapter(h: RunHandles, checkpoint: Path, version: int) -> None:
    """On resume: the checkpoint's adapter (the version workers served when it was written) goes live."""
    if version > 0:
        h.pool.load_adapter(version, LoraArtefact.load(checkpoint / "adapter", version=version))


def _apply_control(h: RunHandles) -> None:
    """Resize requests from `medground scale rollout N` land here, between steps."""
    n = h.control.take_rollout_request()
    if n is None or n == h.pool.size:
        return
    log.info("resizing the rollout pool %d -> %d", h.pool.size, n)
    grow = n > h.pool.size
    h.pool.resize(n)
    if grow and h.cfg.rollout.resize_wait_s > 0:
        try:
            h.pool.wait_ready(timeout=h.cfg.rollout.resize_wait_s)
        except TimeoutError:  # e.g. no free resources yet: they join once up
            log.warning("%d of %d rollout workers up after rollout.resize_wait_s=%.0f s; carrying on",
                        h.pool.live_count(), n, h.cfg.rollout.resize_wait_s)


def _evaluate(h: RunHandles, step: int) -> dict[str, Any]:
    preds = evaluation.predict(h.pool, h.manifest, h.eval_records, h.cfg.rollout.sampling.max_new_tokens)
    row = evaluation.report(preds, h.cfg.reward.label_match)
    evaluation.write_predictions(preds, h.run_dir / "eval" / f"step-{step}.jsonl")
    if h.cfg.eval.overlays:
        evaluation.write_overlays(preds, h.manifest, h.run_dir / "samples" / f"step-{step}", h.cfg.eval.overlays)
    return row


def _checkpoint(h: RunHandles, state: DriverState) -> Path:
    """`checkpoints/step-N/`: the learner's state, the adapter workers serve (written once, by the learner,
    as `state.adapter_version`), the reward schedule and the driver's state."""
    def fill(d: Path) -> None:
        h.learner.save_checkpoint(d / "learner", d / "adapter" if state.adapter_version > 0 else None,
                                  state.adapter_version)
        driver = asdict(state)
        ckpt.write_json(d / "reward_state.json", driver.pop("reward_state"))
        ckpt.write_json(d / "driver_state.json", {**driver, "rng": ckpt.rng_state()})
    return ckpt.write_checkpoint(h.run_dir, state.global_step, fill, h.cfg.checkpoint.keep)


def _save_on_stop(h: RunHandles, state: DriverState) -> Exception | None:
    """A stopped run's final checkpoint (unless this step has one); the error when it cannot be written."""
    if f"step-{state.global_step}" in {c.name for c in ckpt.list_checkpoints(h.run_dir)}:
        return None
    try:
        _checkpoint(h, state)
    except Exception as exc:  # reported in RunFailed's message in place of the stop request
        return exc
    return None


def _restore_state(run_dir: Path) -> tuple[DriverState, Path]:
    checkpoint = ckpt.latest_checkpoint(run_dir)
    raw = ckpt.read_json(checkpoint / "driver_state.json")
    ckpt.set_rng_state(raw.pop("rng"))
    return DriverState(**raw, reward_state=ckpt.read_json(checkpoint / "reward_state.json")), checkpoint


def _write_final(h: RunHandles) -> None:
    """`adapter/`: a copy of the last checkpoint's (every run ends with a checkpoint), and the plots."""
    last = ckpt.latest_checkpoint(h.run_dir) / "adapter"
    if last.is_dir():
        shutil.rmtree(h.run_dir / "adapter", ignore_errors=True)
        shutil.copytree(last, h.run_dir / "adapter")
    h.writer.plot()


def _status(h: RunHandles, state: DriverState, row: dict[str, Any]) -> JobStatus:
    """What `medground status` shows (the control actor stamps the time)."""
    return JobStatus(step=state.global_step, total_steps=sum(s.steps for s in h.cfg.stages), stage=row.get("stage"),
                     tau=row.get("tau/value"), tau_version=row.get("tau/version"), reward=row.get("reward/total"),
                     adapter_version=state.adapter_version, staleness=row.get("batch/staleness"),
                     rollout_workers=h.pool.size,
                     rollout_workers_live=row.get("rollout/workers_live", h.pool.live_count()),
                     rollout_workers_serving=row.get("rollout/workers_serving"),
                     completions_per_s=row.get("rollout/completions_per_s"),
                     tokens_per_s=row.get("rollout/tokens_per_s"), step_seconds=row.get("time/step_s"),
                     last_eval_a50=state.last_eval, run_dir=str(h.run_dir))


def _failure_message(run_dir: Path, state: DriverState, exc: BaseException) -> str:
    done = ckpt.list_checkpoints(run_dir)
    where = (f"the last complete checkpoint is {done[-1]}; continue with: medground train --resume {run_dir}"
             if done else "no checkpoint was written yet (checkpoint.every > 0 writes them); start the run again")
    return f"run {run_dir.name} stopped after step {state.global_step} ({type(exc).__name__}: {exc}); {where}"


def _due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0


def _fmt(v: Any) -> str | None:
    return None if v is None else f"{v:.3g}"
