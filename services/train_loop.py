"""The training driver: one process (what `medground train` and `ray job submit` run) that tells the
story of a step in the order of ARCHITECTURE.md:

    records -> prompts (no ground truth) -> RolloutPool (G completions each, adapter version v)
            -> RewardActor (rewards + tau, MedLoc-R1 window) -> advantages + dynamic sampling
            -> LearnerGroup (GRPO step on the MLAE adapter) -> export adapter v+1 -> every rollout worker

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

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError

from learner.batch import SamplingSpec, StepMetrics, TrainSample
from learner.config import GRPOConfig
from learner.grpo import group_advantages, select_groups, zero_variance_groups
from rollout.images import convention_of, family_of
from rollout.knowledge import KnowledgeBase, load_knowledge
from rollout.processing import PromptProcessor
from rollout.prompts import build_prompt
from services import checkpointing as ckpt
from services import evaluation
from services.config import RunConfig, StageConfig, write_resolved
from services.control import start_control_actor
from services.convert import (
    grpo_samples,
    reference_answer,
    reward_target,
    rollout_request,
    sampling_spec,
    sft_sample,
)
from services.data.manifest import Manifest, load_manifest
from services.data.records import Record
from services.learner_group import LearnerGroup
from services.metrics import MetricsWriter, plot_run
from services.reward_client import RewardClient
from services.rollout_pool import RolloutPool
from services.sampler import PromptSampler

log = logging.getLogger(__name__)


@dataclass
class DriverState:
    """Everything the driver needs to continue exactly (with the learner's and reward's own state)."""

    stage_index: int = 0
    step_in_stage: int = 0
    global_step: int = 0
    adapter_version: int = 0
    samplers: dict[str, dict[str, Any]] = field(default_factory=dict)
    reward_state: dict[str, Any] | None = None


@dataclass
class Services:
    """The live parts of a run (cluster handles and local helpers)."""

    cfg: RunConfig
    run_dir: Path
    manifest: Manifest
    knowledge: KnowledgeBase
    processor: PromptProcessor
    sampling: SamplingSpec  # the rollout engines' sampling distribution, as the learner recomputes it
    pool: RolloutPool
    learner: LearnerGroup
    control: Any
    writer: MetricsWriter
    eval_records: tuple[Record, ...]
    last_eval: float | None = None  # the latest held-out A@0.5 (progress bar and status)


# -------------------------------------------------------------------------------------------------------
# One step of each kind.


def grpo_step(svc: Services, stage: StageConfig, sampler: PromptSampler[Record], reward: RewardClient,
              state: DriverState, progress: float) -> dict[str, Any]:
    """Generate, score, keep groups with task signal (refilling), and take one GRPO step."""
    cfg, timings = svc.cfg, {"generate": 0.0, "reward": 0.0}
    kept: list[tuple[Any, list[Any]]] = []  # (group, its reward breakdowns)
    breakdowns: list[Any] = []
    all_groups: list[Any] = []
    zero_variance = groups_seen = 0
    records = sampler.take(stage.prompts_per_step)
    under = None  # every refill round is scored under the first round's tau
    for refill in range(1 + stage.refill_cap):
        t = time.perf_counter()
        seeds = [sampling_seed(cfg.seed, state.global_step, refill, i) for i in range(len(records))]
        groups = svc.pool.generate([rollout_request(r, svc.manifest.image_path(r), seed)
                                    for r, seed in zip(records, seeds, strict=True)])
        timings["generate"] += time.perf_counter() - t
        t = time.perf_counter()
        targets = [reward_target(r, g.frame, g.injected_knowledge) for r, g in zip(records, groups, strict=True)]
        scored = reward.score([([c.text for c in g.completions], tgt) for g, tgt in zip(groups, targets, strict=True)],
                              step=state.global_step, progress=progress, under=under)
        under = scored.scored_under
        timings["reward"] += time.perf_counter() - t
        per_group = scored.groups
        signal = torch.tensor([[b.task for b in bs] for bs in per_group], dtype=torch.float64)  # [B, G]
        zero = zero_variance_groups(signal)  # [B]
        breakdowns.extend(per_group)
        all_groups.extend(groups)
        groups_seen += len(groups)
        zero_variance += int(zero.sum())
        keep = select_groups(zero, stage.prompts_per_step - len(kept), stage.drop_zero_variance)
        kept.extend((groups[i], per_group[i]) for i in keep)
        if len(kept) >= stage.prompts_per_step:
            break
        records = sampler.take(stage.prompts_per_step - len(kept))
    samples = _grpo_batch(svc, kept)
    row = _reward_row(breakdowns, scored.schedule)
    row.update({"batch/groups_seen": groups_seen, "batch/groups_kept": len(kept),
                "batch/zero_variance_fraction": zero_variance / max(groups_seen, 1),
                "batch/adapter_version_lag": float(np.mean([state.adapter_version - g.adapter_version
                                                            for g, _ in kept])) if kept else 0.0,
                "batch/adapter_version_min": min(g.adapter_version for g in all_groups),
                "batch/adapter_version_max": max(g.adapter_version for g in all_groups),
                "time/generate_s": timings["generate"], "time/reward_s": timings["reward"]})
    completions = [c for g in all_groups for c in g.completions]
    row.update({"rollout/workers_serving": len(svc.pool.last_serving),
                "rollout/serving_serials": ",".join(map(str, svc.pool.last_serving)),
                "rollout/completions_per_s": len(completions) / max(timings["generate"], 1e-9),
                "rollout/tokens_per_s": sum(len(c.token_ids) for c in completions) / max(timings["generate"], 1e-9),
                "rollout/truncated_fraction": sum(c.finish_reason == "length" for c in completions)
                / max(len(completions), 1)})
    for r in scored.raises:
        log.info("tau raised %.2f -> %.2f at step %d (%s)", r.old_tau, r.new_tau, r.step, r)
    metrics = svc.learner.grpo_step(samples, svc.sampling) if samples else None
    if metrics is not None:
        check_adapter_sync(metrics, cfg.learner.grpo, state.adapter_version)
    row.update(_learner_row(metrics, skipped=not samples))
    return row


def _grpo_batch(svc: Services, kept: Sequence[tuple[Any, list[Any]]]) -> list[TrainSample]:
    """TrainSamples of the kept groups, with advantages normalised over exactly these groups."""
    if not kept:
        return []
    g = svc.cfg.learner.grpo
    totals = torch.tensor([[b.total for b in bs] for _, bs in kept], dtype=torch.float64)  # [B, G]
    signal = torch.tensor([[b.task for b in bs] for _, bs in kept], dtype=torch.float64)  # [B, G]
    adv, _ = group_advantages(totals, signal, scale=g.scale_rewards, eps=g.adv_eps)  # [B, G]
    return [s for (group, _), a in zip(kept, adv, strict=True) for s in grpo_samples(group, a.tolist())]


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


def sampling_seed(run_seed: int, step: int, refill: int, index: int) -> int:
    """Each request's own sampling seed: the same prompt slot samples the same completions on any worker,
    so a resumed run reproduces the original exactly."""
    return int(np.random.SeedSequence([run_seed, step, refill, index]).generate_state(1)[0])


def sft_step(svc: Services, stage: StageConfig, sampler: PromptSampler[Record]) -> dict[str, Any]:
    """Cross-entropy on reference answers (the warm start and the SFT baseline)."""
    t = time.perf_counter()
    samples = [_sft_sample(svc, r) for r in sampler.take(stage.prompts_per_step)]
    prep = time.perf_counter() - t
    row = _learner_row(svc.learner.sft_step(samples), skipped=False)
    row["time/prepare_s"] = prep
    return row


def _sft_sample(svc: Services, record: Record) -> TrainSample:
    prompt = build_prompt(rollout_request(record, svc.manifest.image_path(record)),
                          convention_of(svc.processor.family), svc.knowledge, svc.cfg.rollout.inject_knowledge)
    prepared = svc.processor.prepare(prompt)
    return sft_sample(prepared, reference_answer(record, prepared.frame), svc.processor.tokenizer)


def _reward_row(breakdowns: Sequence[Sequence[Any]], schedule: Any) -> dict[str, Any]:
    flat = [b for bs in breakdowns for b in bs]
    mean = lambda xs: float(np.mean(xs)) if xs else 0.0  # noqa: E731
    row = {"reward/total": mean([b.total for b in flat]), "reward/acc": mean([b.r_acc for b in flat]),
           "reward/format": mean([b.r_format for b in flat]), "reward/recite": mean([b.r_recite for b in flat]),
           "reward/grade": mean([b.r_grade for b in flat]), "reward/iou": mean([b.iou for b in flat]),
           "tau/value": schedule.tau, "tau/version": schedule.version}
    if schedule.stats is not None:
        row.update({f"tau/{k}": v for k, v in asdict(schedule.stats).items()
                    if k not in ("tau", "version") and isinstance(v, int | float)})
    return row


def _learner_row(m: StepMetrics | None, skipped: bool) -> dict[str, Any]:
    if m is None:
        return {"learner/skipped": 1, "time/learner_s": 0.0}
    row = {f"learner/{k}": v for k, v in asdict(m).items() if k != "seconds" and v is not None}
    row.update({"learner/skipped": int(skipped), "time/learner_s": m.seconds})
    return row


# -------------------------------------------------------------------------------------------------------
# The run.


def run(cfg: RunConfig, run_dir: Path | None = None, resume: bool = False,
        on_step: Callable[[int, dict[str, Any]], None] | None = None) -> Path:
    """Train every stage of `cfg`; returns the run directory. Ray must be initialised by the caller."""
    run_dir = Path(run_dir or Path(cfg.output_dir) / cfg.name)
    state = DriverState()
    if resume:
        state, checkpoint = _restore_state(run_dir)
        log.info("resuming %s from %s (step %d)", run_dir, checkpoint, state.global_step)
    elif (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume {run_dir} "
                              f"or choose another name with --set name=...")
    write_resolved(cfg, run_dir)
    svc = _start(cfg, run_dir)
    try:
        if resume:
            svc.learner.load_checkpoint(checkpoint / "learner")
            svc.writer.truncate_after(state.global_step)
            _push_adapter(svc, state, export=False, artefact_dir=checkpoint / "adapter")
        else:
            if cfg.init_from is not None:  # start from another run's learner state (a shared warm start)
                svc.learner.load_checkpoint(Path(cfg.init_from) / "learner")
                _push_adapter(svc, state)
            first = _evaluate(svc, 0) if cfg.eval.at_start else {}
            svc.last_eval = first.get("eval/A@0.5")
            svc.writer.log(0, {"stage": cfg.stages[0].name, **first, **_baseline(svc)})
        _report(svc, state, {"stage": cfg.stages[min(state.stage_index, len(cfg.stages) - 1)].name}, svc.last_eval)
        _train_stages(svc, state, on_step)
        _write_final(svc, state)
    finally:
        _stop(svc)
    return run_dir


def _train_stages(svc: Services, state: DriverState, on_step: Callable[[int, dict[str, Any]], None] | None) -> None:
    cfg = svc.cfg
    total_steps = sum(s.steps for s in cfg.stages)
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=state.global_step, desc=cfg.name, dynamic_ncols=True)
    last_eval: float | None = svc.last_eval
    for stage_index in range(state.stage_index, len(cfg.stages)):
        stage = cfg.stages[stage_index]
        records = svc.manifest.select(split=(stage.data or cfg.data).train_split, task=stage.task)
        sampler = PromptSampler(records, seed=cfg.seed * 1000 + stage_index)
        if stage.name in state.samplers:
            sampler.load_state_dict(state.samplers[stage.name])
        reward = RewardClient(stage.reward or cfg.reward, state.reward_state) if stage.kind == "grpo" else None
        if state.step_in_stage == 0:  # a fresh stage: lr, fresh optimiser moments, the KL reference
            svc.learner.begin_stage(stage.kind, stage.lr or cfg.learner.lr, stage.carry_optimizer)
        else:  # resumed mid-stage: moments and reference come from the checkpoint
            svc.learner.set_lr(stage.lr or cfg.learner.lr)
        while state.step_in_stage < stage.steps:
            _apply_control(svc)
            t0 = time.perf_counter()
            progress = state.step_in_stage / stage.steps
            if stage.kind == "sft":
                row = sft_step(svc, stage, sampler)
            else:
                assert reward is not None
                row = grpo_step(svc, stage, sampler, reward, state, progress)
                state.reward_state = reward.state
            state.step_in_stage += 1
            state.global_step += 1
            state.samplers[stage.name] = sampler.state_dict()
            stage_done = state.step_in_stage == stage.steps
            due_eval = _due(cfg.eval.every, state.global_step) or (stage_done and stage_index == len(cfg.stages) - 1)
            t = time.perf_counter()
            if stage.kind == "grpo" or stage_done or due_eval:
                _push_adapter(svc, state)
            row["time/sync_s"] = time.perf_counter() - t
            if due_eval:
                row.update(_evaluate(svc, state.global_step))
                last_eval = row.get("eval/A@0.5", last_eval)
            row["time/step_s"] = time.perf_counter() - t0
            known = sum(row.get(k, 0.0) for k in ("time/generate_s", "time/reward_s", "time/learner_s", "time/sync_s"))
            row["time/other_s"] = max(row["time/step_s"] - known - row.get("time/eval_s", 0.0), 0.0)
            row.update({"stage": stage.name, "stage_step": state.step_in_stage, "adapter_version": state.adapter_version,
                        "rollout/workers": svc.pool.size, "rollout/workers_live": svc.pool.live_count()})
            svc.writer.log(state.global_step, row)
            if stage_done:
                state.stage_index, state.step_in_stage = stage_index + 1, 0
            if _due(cfg.checkpoint.every, state.global_step) or stage_done:
                _checkpoint(svc, state)
            _report(svc, state, row, last_eval)
            bar.update(1)
            bar.set_postfix(stage=stage.name, tau=row.get("tau/value"), reward=_fmt(row.get("reward/total")),
                            loss=_fmt(row.get("learner/loss")), A50=_fmt(last_eval))
            if on_step is not None:
                on_step(state.global_step, row)
            if stage_done:
                break
    bar.close()


def _due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0


def _fmt(v: Any) -> str | None:
    return None if v is None else f"{v:.3g}"


def _start(cfg: RunConfig, run_dir: Path) -> Services:
    manifest = load_manifest(cfg.data.manifest, on_bad_record=cfg.data.on_bad_record).with_sizes()
    knowledge = load_knowledge(cfg.data.knowledge_dir)
    processor = PromptProcessor(cfg.model.path, family_of(cfg.model.path), cfg.rollout.min_pixels,
                                cfg.rollout.max_pixels)
    control = start_control_actor(cfg.name)
    learner = LearnerGroup(cfg.model.path, cfg.learner)
    pool = RolloutPool(cfg.model.path, cfg.rollout, knowledge)
    pool.wait_ready()
    eval_records = manifest.select(split=cfg.data.eval_split)[:cfg.eval.max_samples]
    sampling = sampling_spec(cfg.rollout.sampling, cfg.model.path, processor.tokenizer)
    return Services(cfg, run_dir, manifest, knowledge, processor, sampling, pool, learner, control,
                    MetricsWriter(run_dir), eval_records)


def _stop(svc: Services) -> None:
    svc.writer.close()
    svc.pool.shutdown()
    svc.learner.shutdown()
    ray.kill(svc.control)


def _apply_control(svc: Services) -> None:
    """Resize requests from `medground scale rollout N` land here, between steps."""
    n = ray.get(svc.control.take_rollout_request.remote())
    if n is not None and n != svc.pool.size:
        log.info("resizing the rollout pool %d -> %d", svc.pool.size, n)
        grow = n > svc.pool.size
        svc.pool.resize(n)
        if grow and svc.cfg.rollout.resize_wait_s > 0:
            try:
                svc.pool.wait_ready(timeout=svc.cfg.rollout.resize_wait_s)
            except GetTimeoutError:  # e.g. no free resources yet: they join once up
                log.warning("%d of %d rollout workers up after rollout.resize_wait_s=%.0f s; carrying on",
                            svc.pool.live_count(), n, svc.cfg.rollout.resize_wait_s)


def _push_adapter(svc: Services, state: DriverState, export: bool = True, artefact_dir: Path | None = None) -> None:
    """Export adapter v+1 from the learner (one object-store put) and make it live on every worker."""
    if export:
        state.adapter_version += 1
        ref = svc.learner.export(state.adapter_version)
    elif artefact_dir is not None and state.adapter_version > 0:
        from learner.export import LoraArtefact

        ref = ray.put(LoraArtefact.load(artefact_dir, version=state.adapter_version))
    else:
        return
    svc.pool.load_adapter(state.adapter_version, ref)


def _evaluate(svc: Services, step: int) -> dict[str, Any]:
    t = time.perf_counter()
    preds = evaluation.predict(svc.pool, svc.manifest, svc.eval_records, svc.cfg.rollout.sampling.max_new_tokens)
    row = evaluation.report(preds)
    evaluation.write_predictions(preds, svc.run_dir / "eval" / f"step-{step}.jsonl")
    if svc.cfg.eval.overlays:
        evaluation.write_overlays(preds, svc.manifest, svc.run_dir / "samples" / f"step-{step}", svc.cfg.eval.overlays)
    row["time/eval_s"] = time.perf_counter() - t
    return row


def _baseline(svc: Services) -> dict[str, Any]:
    return evaluation.centre_box_baseline(svc.eval_records)


def _checkpoint(svc: Services, state: DriverState) -> Path:
    def fill(d: Path) -> None:
        svc.learner.save_checkpoint(d / "learner")
        if state.adapter_version > 0:
            ray.get(svc.learner.export(state.adapter_version)).save(d / "adapter")
        driver = asdict(state)
        ckpt.write_json(d / "reward_state.json", driver.pop("reward_state"))
        ckpt.write_json(d / "driver_state.json", {**driver, "rng": ckpt.rng_state()})
    return ckpt.write_checkpoint(svc.run_dir, state.global_step, fill, svc.cfg.checkpoint.keep)


def _restore_state(run_dir: Path) -> tuple[DriverState, Path]:
    checkpoint = ckpt.latest_checkpoint(run_dir)
    raw = ckpt.read_json(checkpoint / "driver_state.json")
    ckpt.set_rng_state(raw.pop("rng"))
    return DriverState(**raw, reward_state=ckpt.read_json(checkpoint / "reward_state.json")), checkpoint


def _report(svc: Services, state: DriverState, row: dict[str, Any], last_eval: float | None) -> None:
    """What `medground status` shows (the control actor stamps the time)."""
    status = {"step": state.global_step, "stage": row.get("stage"), "tau": row.get("tau/value"),
              "tau_version": row.get("tau/version"), "reward": row.get("reward/total"),
              "adapter_version": state.adapter_version, "rollout_workers": svc.pool.size,
              "rollout_workers_live": row.get("rollout/workers_live", svc.pool.live_count()),
              "rollout_workers_serving": row.get("rollout/workers_serving"),
              "completions_per_s": row.get("rollout/completions_per_s"),
              "tokens_per_s": row.get("rollout/tokens_per_s"), "step_seconds": row.get("time/step_s"),
              "last_A@0.5": last_eval, "total_steps": sum(s.steps for s in svc.cfg.stages),
              "run_dir": str(svc.run_dir)}
    svc.control.report.remote(status)


def _write_final(svc: Services, state: DriverState) -> None:
    if state.adapter_version > 0:
        ray.get(svc.learner.export(state.adapter_version)).save(svc.run_dir / "adapter")
    plot_run(svc.run_dir)

