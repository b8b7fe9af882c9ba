"""The training driver: one process (what `medground train` and `ray job submit` run) that tells the
story of a step in the order of the README diagram (docs/architecture.md):

    records -> prompts (no ground truth) -> RolloutPool (G completions each, adapter version v)
            -> RewardActor (rewards + tau, MedLoc-R1 window) -> advantages + dynamic sampling
            -> LearnerGroup (GRPO step on the MLAE adapter) -> export adapter v+1 -> every rollout worker

`run` starts the cluster handles and walks the stages (`_train_stages`: control, step, evaluate, log,
checkpoint, report); `grpo_step` is one step, phase by phase; its batch comes from the producer
(services/training/producer.py: request, generate, score, select), the run's state and checkpoints from
run_state.py, its metric row from metrics.py. The handles are the Protocols of services/training/seams.py,
so tests run this file in-process against fakes.

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

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from learner.batch import StepMetrics, TrainBatch
from learner.config import GRPOConfig
from services import evaluation
from services.config import RunConfig, StageConfig, write_resolved
from services.data.records import Record
from services.training import run_state
from services.training.metrics import PhaseTimer, batch_row, learner_row, run_row, status_from
from services.training.producer import Producer, advantaged_samples, apply_control
from services.training.run_state import DriverState, RunFailed, StopRequested, publish_adapter
from services.training.sampler import PromptSampler, stage_sampler
from services.training.samples import write_samples
from services.training.seams import RunHandles
from services.training.trackers import Status

__all__ = ["DriverState", "RunFailed", "RunHandles", "StopRequested", "grpo_step", "run", "sft_step"]

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------------------
# The run.


def run(cfg: RunConfig, run_dir: Path | None = None, resume: bool = False,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
        start: Callable[[RunConfig, Path], RunHandles] | None = None) -> Path:
    """Train every stage of `cfg`; returns the run directory. `start` builds the handles (default: on the
    Ray cluster the caller initialised, services/training/handles.py)."""
    run_dir = Path(run_dir or Path(cfg.output_dir) / cfg.name)
    state = DriverState()
    checkpoint = None
    if resume:
        state, checkpoint = run_state.restore_state(run_dir)
        log.info("resuming %s from %s (step %d)", run_dir, checkpoint, state.global_step)
    elif (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume {run_dir} "
                              f"or choose another name with --set name=...")
    write_resolved(cfg, run_dir)
    if start is None:
        from services.training.handles import start_handles as start
    h = start(cfg, run_dir)
    status: Status = "FAILED"  # how the trackers' runs end
    try:
        if checkpoint is not None:
            h.learner.load_checkpoint(checkpoint / "learner")
            h.writer.truncate_after(state.global_step)
            run_state.restore_adapter(h, checkpoint, state.adapter_version)
        else:
            if cfg.init_from is not None:  # start from another run's learner state (a shared warm start)
                h.learner.load_checkpoint(Path(cfg.init_from) / "learner")
                publish_adapter(h, state)
            first = _evaluate(h, 0) if cfg.eval.at_start else {}
            state.last_eval = first.get("eval/A@0.5")
            h.writer.log(0, {"stage": cfg.stages[0].name, **first,
                             **evaluation.centre_box_baseline(h.eval_records)})
        h.control.report(status_from(h, state,
                                     {"stage": cfg.stages[min(state.stage_index, len(cfg.stages) - 1)].name}))
        _train_stages(h, state, on_step)
        run_state.write_final(h)
        status = "FINISHED"
    except StopRequested as exc:  # between steps: the state is one whole step, so keep it
        status = "KILLED"
        raise RunFailed(run_state.failure_message(run_dir, state, run_state.save_on_stop(h, state)
                                                  or exc)) from exc
    except Exception as exc:
        log.exception("run %s: step %d failed", cfg.name, state.global_step + 1)  # the traceback, in the log
        raise RunFailed(run_state.failure_message(run_dir, state, exc)) from exc
    finally:
        h.close(status)
    return run_dir


def _train_stages(h: RunHandles, state: DriverState,
                  on_step: Callable[[int, dict[str, Any]], None] | None) -> None:
    """Every remaining step of every stage: control, step, sync, evaluate, log, checkpoint, report."""
    cfg = h.cfg
    with progress_bar(sum(s.steps for s in cfg.stages), state.global_step, cfg.name) as bar:
        _stage_loop(h, state, on_step, bar)


@contextmanager
def progress_bar(total: int, initial: int, name: str, file: Any = None) -> Iterator[Any]:
    """The run's tqdm bar, closed on the way out whatever happens: a closed bar ends its line, so an error
    printed after a failed step starts on a line of its own instead of being drawn over by the bar."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=name, dynamic_ncols=True, file=file)
    try:
        yield bar
    finally:
        bar.close()


def _stage_loop(h: RunHandles, state: DriverState, on_step: Callable[[int, dict[str, Any]], None] | None,
                bar: Any) -> None:
    cfg = h.cfg
    for stage_index in range(state.stage_index, len(cfg.stages)):
        stage = cfg.stages[stage_index]
        sampler, producer = _begin_stage(h, state, stage_index)
        while state.step_in_stage < stage.steps:
            timer = PhaseTimer()
            # ---- step
            if producer is not None:
                row, spans, faults = grpo_step(h, stage, producer, state, timer,
                                               prefetch=_may_prefetch(cfg, stage, state))
                state.reward_state = producer.reward.state
            else:
                apply_control(h)
                row, spans, faults = sft_step(h, stage, sampler, timer), [], {}
            state.step_in_stage += 1
            state.global_step += 1
            state.samplers[stage.name] = sampler.state_dict()
            stage_done = state.step_in_stage == stage.steps
            due_eval = _due(cfg.eval.every,
                            state.global_step) or (stage_done and stage_index == len(cfg.stages) - 1)
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
            row.update(run_row(h, state, stage.name, timer, faults, h.pool.take_faults(),
                               producer.reward.take_faults() if producer is not None else {}))
            h.writer.log_timeline(state.global_step, timer.started, spans + timer.spans)
            h.writer.log(state.global_step, row)
            # ---- checkpoint
            if stage_done:
                state.stage_index, state.step_in_stage = stage_index + 1, 0
            if _due(cfg.checkpoint.every, state.global_step) or stage_done:
                run_state.write_checkpoint(h, state)
            # ---- report
            h.control.report(status_from(h, state, row))
            bar.update(1)
            bar.set_postfix(stage=stage.name, tau=row.get("tau/value"), reward=_fmt(row.get("reward/total")),
                            loss=_fmt(row.get("learner/loss")), A50=_fmt(state.last_eval))
            if on_step is not None:
                on_step(state.global_step, row)
            if stage_done:
                break
        if producer is not None:
            producer.close()


def _begin_stage(h: RunHandles, state: DriverState,
                 stage_index: int) -> tuple[PromptSampler[Record], Producer | None]:
    """A stage's prompt order (restored when resumed), its batch source (GRPO) and the learner set for it: a
    fresh stage gets its lr, fresh optimiser moments and the KL reference; a resumed one only its lr (the
    moments and the reference come from the checkpoint)."""
    cfg, stage = h.cfg, h.cfg.stages[stage_index]
    sampler = stage_sampler(h.manifest, cfg, stage_index)
    if stage.name in state.samplers:
        sampler.load_state_dict(state.samplers[stage.name])
    producer = None
    if stage.kind == "grpo":
        first_step = sum(s.steps for s in cfg.stages[:stage_index])
        producer = Producer(h, stage, first_step, sampler, h.reward(cfg.reward_of(stage), state.reward_state))
    if state.step_in_stage == 0:
        h.learner.begin_stage(stage.kind, cfg.lr_of(stage), stage.carry_optimizer)
    else:
        h.learner.set_lr(cfg.lr_of(stage))
    return sampler, producer


def _may_prefetch(cfg: RunConfig, stage: StageConfig, state: DriverState) -> bool:
    """Whether this step may generate the next step's batch while it learns (max_staleness = 1): not across
    a stage's end, and not past a step that evaluates or checkpoints -- those drain the pipeline, so a run
    resumed from a checkpoint generates the next batch exactly as the uninterrupted run did."""
    step = state.global_step + 1
    return (cfg.max_staleness >= 1 and state.step_in_stage + 1 < stage.steps
            and not _due(cfg.eval.every, step) and not _due(cfg.checkpoint.every, step))


# -------------------------------------------------------------------------------------------------------
# One step of each kind.


def grpo_step(h: RunHandles, stage: StageConfig, producer: Producer, state: DriverState, timer: PhaseTimer,
              prefetch: bool = False) -> tuple[dict[str, Any], list[list[Any]], dict[str, int]]:
    """One GRPO step in the order of the diagram; with `prefetch`, the next step's batch is generated by the
    current adapter while the learner trains on this one (max_staleness = 1). Returns its metric row, the
    producer's phase spans of its batch and the faults its generation met."""
    with timer.phase("wait"):  # prompts -> RolloutPool -> RewardActor -> groups with task signal
        selection = producer.take(state.global_step)
    if prefetch:
        producer.prefetch(state.global_step + 1)  # the next batch, sampled by adapter v while we learn
    batch = TrainBatch(advantaged_samples(selection.kept, h.cfg.learner.grpo), h.sampling)
    if _due(h.cfg.logging.samples_every, state.global_step + 1):  # what the model said, readable
        path = write_samples(h.run_dir, state.global_step + 1, selection, h.cfg.learner.grpo,
                             h.cfg.logging.samples_groups)
        h.writer.artifact(path, "completions")
    learned = state.adapter_version  # the version the learner's weights are as it trains on this batch
    metrics = None
    if batch.samples:
        with timer.phase("learner"):  # LearnerGroup: the GRPO update on the adapter
            metrics = h.learner.grpo_step(batch)
        check_adapter_sync(metrics, h.cfg.learner.grpo, learned)
    with timer.phase("sync"):  # export adapter v+1, live on every worker once the next batch is made
        producer.drain()
        publish_adapter(h, state)
    for r in selection.raises:
        log.info("tau raised %.2f -> %.2f at step %d (%s)", r.old_tau, r.new_tau, r.step, r)
    return batch_row(selection, learned) | learner_row(metrics), selection.timer.spans, selection.faults


def sft_step(h: RunHandles, stage: StageConfig, sampler: PromptSampler[Record],
             timer: PhaseTimer) -> dict[str, Any]:
    """Cross-entropy on reference answers (the warm start and the SFT baseline)."""
    with timer.phase("prepare"):
        samples = [h.sft_sample(r, stage.multi_box) for r in sampler.take(stage.prompts_per_step)]
    with timer.phase("learner"):
        metrics = h.learner.sft_step(samples)
    return learner_row(metrics)


class AdapterSyncError(RuntimeError):
    """The rollout engines' log-probs disagree with the learner's right after an adapter change."""


def check_adapter_sync(metrics: StepMetrics, grpo: GRPOConfig, version: int) -> None:
    """The sync alarm (docs/algorithms.md, "GRPO"): stop (or warn) when the first batch after an adapter
    change was sampled from a different policy than the learner holds for that version."""
    reading = metrics.logprob_mismatch
    if grpo.sync_alarm == "off" or reading is None or reading <= grpo.sync_alarm_nats:
        return
    message = (f"adapter sync alarm: behaviour log-probs of the first batch after adapter v{version} differ "
               f"from the learner's by {reading:.4g} nats/token (threshold "
               f"learner.grpo.sync_alarm_nats={grpo.sync_alarm_nats}). Likely causes: the adapter did not "
               "reach a rollout engine (it still serves an older adapter or the base model); the engine "
               "and the learner disagree on temperature or token masks; or their weights differ (model "
               "path, dtype). Set learner.grpo.sync_alarm=warn to train on.")
    if grpo.sync_alarm == "stop":
        raise AdapterSyncError(message)
    log.warning(message)


def _evaluate(h: RunHandles, step: int) -> dict[str, Any]:
    """Held-out evaluation: greedy answers and k samples per record (the same draws at every evaluation);
    `eval/step-N.jsonl` (every answer: text, so a tracker gets it only with logging.log_completions),
    `eval/step-N.json` (the report: numbers), overlays in `samples/step-N/`."""
    written = h.run_dir / "eval" / f"step-{step}.jsonl"
    row, preds = evaluation.evaluate(h.pool, h.manifest, h.eval_records, h.cfg, written)
    written.with_suffix(".json").write_text(json.dumps(row, indent=2, sort_keys=True) + "\n")
    h.writer.artifact(written.with_suffix(".json"), "report")
    h.writer.artifact(written, "completions")
    if h.cfg.eval.overlays:
        overlays = h.run_dir / "samples" / f"step-{step}"
        evaluation.write_overlays(preds, h.manifest, overlays, h.cfg.eval.overlays)
        h.writer.artifact(overlays, "images")
    return row


def _due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0


def _fmt(v: Any) -> str | None:
    return None if v is None else f"{v:.3g}"
