"""The DeepSpeed learner: one rank of GRPO or SFT optimisation on the adapter of a frozen Qwen-VL.

``LearnerEngine`` is a plain class (tests build it directly; ``learner/worker.py`` wraps it in a Ray actor).
Each rank gets its shard of the global batch; losses are normalised by counts all-reduced over ranks, so
M ranks on M shards take exactly the step one rank takes on the whole batch.

Deliberate choices (docs/algorithms.md, "GRPO"):
- Every log-prob (current, old, reference, the entropy metric) is of the distribution the rollout engine
  sampled from: logits with the engine's token masks, divided by its temperature (``SamplingSpec``).
- ``logp_old``: on-policy (the batch was sampled by the adapter version the weights still are) it is
  ``logp.detach()``, so the ratio is exactly 1; otherwise (``updates_per_batch > 1``, or a stale batch) a
  no-grad forward under a saved copy of the version that sampled the batch, with the same MLAE mask
  draw as the gradient pass, so the ratio measures the weights' drift and not mask noise.
- With ``shared_prefix`` (default) a GRPO micro-batch is packed by prompt (``learner/packing.py``): each
  group's prompt is computed once, followed by its completions under a block attention mask, and the
  frozen vision tower runs once per image per step, its features reused by every pass of the step; the
  log-probs and gradients are the plain path's (docs/algorithms.md, "The shared-prefix learner").
- The rollout correction (``grpo.rollout_correction``, learner/correction.py) weights the surrogate by the
  learner's probability of each token under the version that sampled it over the engine's. When a training
  forward draws an MLAE mask, that log-prob comes from an extra eval-mode forward: the mask is no mismatch.
- The KL reference is a frozen copy of the adapter as the GRPO stage began (``grpo.reference``), swapped
  into the adapter's parameters for a no-grad forward under the same mask draw (KL is exactly 0 at the
  stage's first step); ``base`` switches the adapter off instead. No second model in memory; with
  ``beta = 0`` no reference forward and no copy.
- The sync alarm's reading (``logprob_mismatch``) comes from an eval-mode forward (no MLAE mask) of the
  first micro-batch after each adapter version change; the training forward's mask noise would hide a
  failed sync (0.7 nats/token at p = 0.5).
- Each stage starts with fresh optimiser moments (``begin_stage``) unless it asks to carry them.
- Checkpoint I/O is in ``learner/checkpoint.py``; the adapter copies in ``learner/adapter_copies.py``.
- Gradient accumulation is ours, not DeepSpeed's: ``managed_gradient_accumulation=false`` makes
  ``step()`` the only boundary, and ranks with fewer micro-batches run zero-weight passes so every rank
  joins the same number of ZeRO-2/3 gradient reductions.
- DeepSpeed averages gradients over ranks; our per-rank losses are shares of the global sum, so the loss
  is multiplied by ``world_size`` before backward.
- A torch AdamW is passed in (DeepSpeed's own Adam JIT-compiles for minutes); ZeRO offload then needs
  ``zero_force_ds_cpu_optimizer: false``.
- On CPU, DeepSpeed's shared-memory all-reduce op is switched off before the process group starts: it
  serves only DeepSpeed-Inference's ``inference_all_reduce`` (training collectives go through gloo), and
  loading it JIT-compiles under a file lock that a process killed mid-load (a learner actor stopped by a
  test, a fault, ``ray stop``) leaves behind, after which every later learner start waits on it forever
  (torch's ``FileBaton`` has no timeout).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from learner import checkpoint, correction, grpo, packing
from learner.adapter_copies import AdapterCopies
from learner.batch import Collated, SamplingSpec, StepMetrics, TrainBatch, TrainSample, collate, micro_batches
from learner.config import LearnerConfig
from learner.distributed import deepspeed_config, init_distributed
from learner.packing import Packed
from learner.policy import build_policy

MicroBatch = Collated | Packed  # plain (one sequence per completion) or packed by prompt (shared prefix)

class LearnerEngine:
    """One DeepSpeed rank training the adapter. All ranks call every method in the same order."""

    def __init__(self, model_dir: str | Path, cfg: LearnerConfig, rank: int = 0, world_size: int = 1) -> None:
        import deepspeed

        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda)
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self._owns_group = init_distributed(rank, world_size, "nccl" if cuda else "gloo")
        model = build_policy(model_dir, cfg)
        text_cfg = getattr(model.config, "text_config", model.config)
        self.pad_id = int(getattr(text_cfg, "pad_token_id", None) or 0)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError(f"the {cfg.adapter} adapter has no trainable parameters: check "
                               "mlae.target_modules")
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ds_engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg, world_size, self.bf16))
        # the objects DeepSpeed holds (ZeRO shards)
        self.copies = AdapterCopies(params, keep=cfg.kept_versions)
        self._features: Any = None  # the current GRPO step's vision features (shared-prefix path)
        self.steps = 0
        self._checked_version = -1  # the newest behaviour version the sync alarm has read

    @property
    def model(self) -> Any:
        """The PEFT model (base plus adapter) inside the DeepSpeed engine."""
        return self.ds_engine.module

    # ---- forward passes -------------------------------------------------------------------------------

    def _logits(self, batch: MicroBatch, sampling: SamplingSpec | None = None) -> torch.Tensor:
        """``[B, T, V]`` next-token logits (plain: positions 0..L-2; packed: each completion's tokens, ``T`` =
        its longest completion); of the sampling distribution when given."""
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        if isinstance(batch, Packed):
            logits = packing.forward(self.ds_engine, batch, self._features, self.device, dtype)  # [N, C, V]
        else:
            logits = self.ds_engine(**batch.model_inputs(self.device, dtype), use_cache=False).logits[:, :-1]
        if sampling is None:
            return logits  # type: ignore[no-any-return]
        return grpo.sampling_logits(logits, sampling, batch.completion_start)

    def _logprobs(self, batch: MicroBatch, sampling: SamplingSpec) -> torch.Tensor:
        """``[B, T]`` log-probs of the batch's tokens under the sampling distribution."""
        return grpo.token_logprobs(self._logits(batch, sampling), batch.targets.to(self.device))

    @contextmanager
    def _reference_policy(self) -> Iterator[None]:
        if self.cfg.grpo.reference == "base":
            with self.model.disable_adapter():
                yield
        else:
            with self.copies.as_reference():
                yield

    # ---- collectives ----------------------------------------------------------------------------------

    def _all_reduce(self, values: list[float], op: dist.ReduceOp.RedOpType) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=op)
        return [float(v) for v in t.tolist()]

    def _schedule(self, samples: Sequence[TrainSample], mask_truncated: bool,
                  shared: bool = False) -> tuple[list[MicroBatch], float, float, int]:
        """Micro-batches of this rank's samples (``shared``: packed by prompt, the step's vision features
        computed), and the global (sequences with loss tokens, loss tokens, most micro-batches on any
        rank)."""
        if not samples:
            raise ValueError(f"learner rank {self.rank} got no samples: every rank needs at least one")
        batches: list[MicroBatch]
        if shared:
            packed, self._features = packing.packed_micro_batches(
                self.model.get_base_model().model, samples, self.cfg.micro_batch_size,
                self.pad_id, self.device,
                torch.bfloat16 if self.bf16 else torch.float32)
            batches = list(packed)
        else:
            batches = [collate(mb, self.pad_id) for mb in micro_batches(samples, self.cfg.micro_batch_size)]
        if mask_truncated:
            batches = [dataclasses.replace(b, loss_mask=b.loss_mask * (~b.truncated)[:, None].float())
                       for b in batches]
        seqs = sum(grpo.sequences_with_tokens(b.loss_mask) for b in batches)
        toks = sum(float(b.loss_mask.sum()) for b in batches)
        n_seq, n_tok = self._all_reduce([seqs, toks], dist.ReduceOp.SUM)
        (n_mb,) = self._all_reduce([len(batches)], dist.ReduceOp.MAX)
        return batches, n_seq, n_tok, int(n_mb)

    # ---- steps ------------------------------------------------------------------------------------------

    def grpo_step(self, batch: TrainBatch) -> StepMetrics:
        """``grpo.updates_per_batch`` optimiser steps of GRPO over this rank's shard of the global batch.

        ``batch.sampling`` is the distribution the completions were sampled from; each sample's
        ``adapter_version`` names the policy that sampled it (see the module docstring for logp_old).
        """
        t0 = time.perf_counter()
        g = self.cfg.grpo
        try:
            batches, n_seq, n_tok, n_mb = self._schedule(batch.samples, g.mask_truncated_completions,
                                                         shared=self.cfg.shared_prefix)
            mismatch = self._sync_reading(batches[0], batch.sampling)
            sums: dict[str, float] = {}
            lows, highs = {"ratio": float("inf")}, {"ratio": float("-inf")}  # running minima and maxima
            for _ in range(g.updates_per_batch):
                step_sums = self._grpo_update(batches, n_seq, n_tok, n_mb, batch.sampling, lows, highs)
                sums = {k: sums.get(k, 0.0) + v for k, v in step_sums.items()}
        finally:
            self._features = None  # the step's vision features: every pass of this step reused them
        keys = list(sums)
        total = dict(zip(keys, self._all_reduce([sums[k] for k in keys], dist.ReduceOp.SUM), strict=True))
        low = dict(zip(lows, self._all_reduce(list(lows.values()), dist.ReduceOp.MIN), strict=True))
        high = dict(zip(highs, self._all_reduce(list(highs.values()), dist.ReduceOp.MAX), strict=True))
        k = g.updates_per_batch
        denom = max(n_tok, 1.0) * k
        return StepMetrics(
            loss=total["loss"] / k, kl=total["kl"] / denom, clip_fraction=total["clipped"] / denom,
            entropy=total["entropy"] / denom, ratio_mean=total["ratio"] / denom if n_tok else 1.0,
            ratio_min=low["ratio"] if n_tok else 1.0, ratio_max=high["ratio"] if n_tok else 1.0,
            grad_norm=self._grad_norm(), sequences=int(n_seq), tokens=int(n_tok),
            seconds=time.perf_counter() - t0, logprob_mismatch=mismatch,
            truncated=int(total["truncated"] / k), **correction.step_metrics(total, low, high))

    def _grpo_update(self, batches: list[MicroBatch], n_seq: float, n_tok: float, n_mb: int,
                     sampling: SamplingSpec, lo: dict[str, float], hi: dict[str, float]) -> dict[str, float]:
        """One optimiser step over the micro-batches: this rank's metric sums (extremes into lo, hi)."""
        g = self.cfg.grpo
        correct = g.rollout_correction != "none"
        self.ds_engine.train()
        sums = dict.fromkeys(("loss", "kl", "clipped", "ratio", "entropy", "truncated"), 0.0)
        for i in range(n_mb):
            # Ranks with fewer micro-batches repeat their last one at weight 0 to join every reduction.
            batch, weight = (batches[i], 1.0) if i < len(batches) else (batches[-1], 0.0)
            mask = batch.loss_mask.to(self.device)  # [B, T]
            rng = checkpoint.rng_state()  # every forward of this micro-batch draws the same MLAE masks
            ref = None
            if g.beta > 0.0:
                with torch.no_grad(), self._reference_policy():
                    ref = self._logprobs(batch, sampling)  # [B, T]
                checkpoint.set_rng_state(rng)
            # The policy the engines sampled: the training forward's logp_old, unless it draws an MLAE mask.
            sampled = self._stale_logprobs(batch, sampling, rng, sampled=True) \
                if correct and self.cfg.stochastic_train_forward else None
            stale = self._stale_logprobs(batch, sampling, rng)  # rows of older versions, or None
            logits = self._logits(batch, sampling)  # [B, T, V] of the sampling distribution
            logp = grpo.token_logprobs(logits, batch.targets.to(self.device))  # [B, T]
            logp_old = logp.detach() if stale is None else torch.where(stale[0][:, None], stale[1], logp.detach())  # noqa: E501
            weights, stats = correction.weigh(
                logp_old if sampled is None else sampled[1], batch.sampling_logprobs.to(self.device),
                batch.sampling_mask.to(self.device), mask, g.rollout_correction, g.rollout_correction_cap,
                g.rollout_correction_low) if correct else (None, None)
            parts = grpo.grpo_loss(
                logp, logp_old, ref, batch.advantages.to(self.device), mask,
                eps_low=g.eps_low, eps_high=g.eps_high, beta=g.beta, mode=g.aggregation,
                num_sequences=n_seq, num_tokens=n_tok, ratio_level=g.ratio_level, correction=weights,
                constant_length=g.constant_length)
            self.ds_engine.backward(parts.loss * (weight * self.world_size))
            if weight == 0.0:
                continue
            with torch.no_grad():
                ent = grpo.token_entropy(logits.detach())  # [B, T]
            sums["loss"] += float(parts.loss.detach())
            sums["kl"] += parts.kl_sum
            sums["clipped"] += parts.clipped_sum
            sums["ratio"] += parts.ratio_sum
            sums["entropy"] += float((ent * mask).sum())
            sums["truncated"] += float((batch.truncated & (batch.loss_mask.sum(dim=1) == 0)).sum())
            lo["ratio"], hi["ratio"] = min(lo["ratio"], parts.ratio_min), max(hi["ratio"], parts.ratio_max)
            if stats is not None:
                correction.accumulate(stats, sums, lo, hi)
        if correct:  # a step whose correction dropped every token stops here, before the optimiser moves
            counts = self._all_reduce([sums.get("rc_tokens", 0.0), sums.get("rc_tokens_affected", 0.0)],
                                      dist.ReduceOp.SUM)
            correction.require_kept(*counts, g.rollout_correction, g.rollout_correction_cap,
                                    g.rollout_correction_low)
        self._optimizer_step()
        return sums

    def _stale_logprobs(self, batch: MicroBatch, sampling: SamplingSpec, rng: dict[str, Any],
                        sampled: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For rows sampled by a version the weights no longer are: ``(rows [B] bool, logp_old [B, T])``,
        each from a no-grad forward under that version with this micro-batch's mask draw. ``sampled``: every
        row, in eval mode (no MLAE mask): the policy the engines sampled (for the rollout correction)."""
        versions = batch.adapter_version.to(self.device)  # [B]
        stale = sorted({int(v) for v in versions.tolist()} - {None if sampled else self.copies.live_version})
        if not stale:
            return None
        rows = torch.zeros_like(versions, dtype=torch.bool)  # [B]
        values = torch.zeros(batch.loss_mask.shape, dtype=torch.float32, device=self.device)  # [B, T]
        self.ds_engine.train(not sampled)
        try:
            for v in stale:
                with torch.no_grad(), self.copies.as_version(v):
                    lp = self._logprobs(batch, sampling)  # [B, T]
                checkpoint.set_rng_state(rng)
                values = torch.where((versions == v)[:, None], lp, values)
                rows |= versions == v
        finally:
            self.ds_engine.train()
        return rows, values

    def _sync_reading(self, batch: MicroBatch, sampling: SamplingSpec) -> float | None:
        """The sync alarm's reading: mean |learner - behaviour| log-prob over this micro-batch's newest
        version, eval mode, once per new version (all ranks decide together: ZeRO-3 forwards gather)."""
        newest = int(batch.adapter_version.max())
        known = float(batch.sampling_mask.sum() > 0)  # behaviour log-probs to compare with
        global_newest, any_known = self._all_reduce([float(newest), known], dist.ReduceOp.MAX)
        if global_newest <= self._checked_version or not any_known:
            return None
        self._checked_version = int(global_newest)
        # [B, T]
        rows = ((batch.adapter_version == newest)[:, None] & batch.sampling_mask.bool()).to(self.device)
        self.ds_engine.eval()
        try:
            with torch.no_grad(), self.copies.as_version(newest):
                logp = self._logprobs(batch, sampling)  # [B, T]
        finally:
            self.ds_engine.train()
        diff = (logp - batch.sampling_logprobs.to(self.device)).abs()  # [B, T]
        total, count = self._all_reduce([float(diff[rows].sum()), float(rows.sum())], dist.ReduceOp.SUM)
        return total / count if count > 0 else None

    def sft_step(self, samples: Sequence[TrainSample]) -> StepMetrics:
        """One optimiser step of cross-entropy on reference answers (``completion_ids``), token-mean."""
        t0 = time.perf_counter()
        batches, n_seq, n_tok, n_mb = self._schedule(samples, mask_truncated=False)
        self.ds_engine.train()
        loss_sum, ent_sum = 0.0, 0.0
        for i in range(n_mb):
            batch, weight = (batches[i], 1.0) if i < len(batches) else (batches[-1], 0.0)
            mask = batch.loss_mask.to(self.device)
            logits = self._logits(batch)
            loss = grpo.sft_loss(grpo.token_logprobs(logits, batch.targets.to(self.device)), mask, n_tok)
            self.ds_engine.backward(loss * (weight * self.world_size))
            if weight > 0.0:
                loss_sum += float(loss.detach())
                with torch.no_grad():
                    ent_sum += float((grpo.token_entropy(logits.detach()) * mask).sum())
        self._optimizer_step()
        loss_total, ent_total = self._all_reduce([loss_sum, ent_sum], dist.ReduceOp.SUM)
        return StepMetrics(
            loss=loss_total, kl=0.0, clip_fraction=0.0, entropy=ent_total / max(n_tok, 1.0), ratio_mean=1.0,
            ratio_min=1.0, ratio_max=1.0, grad_norm=self._grad_norm(), sequences=int(n_seq),
            tokens=int(n_tok), seconds=time.perf_counter() - t0)

    def _optimizer_step(self) -> None:
        self.ds_engine.step()
        self.steps += 1
        self.copies.mark_moved()

    def _grad_norm(self) -> float:
        norm = self.ds_engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @torch.no_grad()
    def logprobs(self, samples: Sequence[TrainSample], sampling: SamplingSpec | None = None,
                 adapter: bool = True) -> list[torch.Tensor]:
        """Per-sample completion log-probs (``[Lc]`` float32 on CPU each), in eval mode (no MLAE mask),
        of the sampling distribution ``sampling`` (default: temperature 1, no masks).

        ``adapter=False`` gives the base model's. Under ZeRO-3 every rank must call this together.
        """
        sampling = sampling or SamplingSpec()
        self.ds_engine.eval()
        out: list[torch.Tensor] = []
        try:
            for mb in micro_batches(samples, self.cfg.micro_batch_size):
                batch = collate(mb, self.pad_id)
                if adapter:
                    logp = self._logprobs(batch, sampling)
                else:
                    with self.model.disable_adapter():
                        logp = self._logprobs(batch, sampling)
                for row, s in enumerate(mb):
                    start = len(s.prompt_ids) - 1
                    out.append(logp[row, start : start + len(s.completion_ids)].float().cpu())
        finally:
            self.ds_engine.train()
        return out

    # ---- stages, export, checkpoints --------------------------------------------------------------------

    def begin_stage(self, kind: str, lr: float, carry_optimizer: bool = False) -> None:
        """Start a stage: its learning rate, fresh optimiser moments (unless carried), and for GRPO with a KL
        term (``beta > 0``, ``reference: stage_start``) the KL reference copied from the adapter as it is now.
        Call at a stage's first step, not on resume."""
        self.set_lr(lr)
        if not carry_optimizer:
            self._reset_optimizer()
        g = self.cfg.grpo
        if kind == "grpo" and g.beta > 0.0 and g.reference == "stage_start":
            self.copies.set_reference()
        elif kind == "grpo":  # no KL, or the base as reference: no adapter copy to hold
            self.copies.reference = None

    def _reset_optimizer(self) -> None:
        """Drop AdamW's moments and step counts: the next step is a fresh optimiser's first (TRL and verl
        build a new optimiser for an RL run; SFT momentum would steer and shrink the first GRPO updates)."""
        inner: Any = self.ds_engine.optimizer
        while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
            inner = inner.optimizer
        if not isinstance(inner, torch.optim.Optimizer):
            raise TypeError("cannot find the torch optimiser inside "
                            f"{type(self.ds_engine.optimizer).__name__}")
        inner.state.clear()

    def set_lr(self, lr: float) -> None:
        """Change the learning rate (a stage's ``lr`` override)."""
        for group in self.ds_engine.optimizer.param_groups:
            group["lr"] = lr

    def export(self, version: int) -> Any:
        """The adapter in LoRA form (``learner.export.LoraArtefact``) as ``version``; every rank calls (ZeRO-3
        gathers). The learner keeps a copy of that version for off-policy ratios and the sync alarm."""
        from learner.export import export_lora

        self.copies.mark_exported(version)
        return export_lora(self.model, version)

    def save_checkpoint(self, directory: str | Path, adapter_dir: str | Path | None = None,
                        version: int = 0) -> Path:
        """Write this rank's state to ``directory`` atomically (learner/checkpoint.py); rank 0 writes the
        adapter, as ``version``, to ``adapter_dir`` when given. All ranks call."""
        return checkpoint.save(self, Path(directory), None if adapter_dir is None
                               else Path(adapter_dir), version)

    def load_checkpoint(self, directory: str | Path) -> None:
        """Restore a checkpoint written by ``save_checkpoint`` with the same number of ranks."""
        checkpoint.load(self, Path(directory))
        self._checked_version = -1

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (a rank that exits inside one can abort).

        DeepSpeed's own ``destroy_process_group`` also drops its cached groups, so a later engine in the
        same process (tests, a rebuilt learner) starts clean.
        """
        if self._owns_group and dist.is_initialized():
            import deepspeed.comm

            deepspeed.comm.destroy_process_group()
            self._owns_group = False
