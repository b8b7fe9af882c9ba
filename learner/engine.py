"""The DeepSpeed learner: one rank of GRPO or SFT optimisation on the adapter of a frozen Qwen-VL.

``LearnerEngine`` is a plain class (tests build it directly; ``learner/worker.py`` wraps it in a Ray actor).
Each rank gets its shard of the global batch; losses are normalised by counts all-reduced over ranks, so
M ranks on M shards take exactly the step one rank takes on the whole batch.

Deliberate choices:
- One update per batch: ``logp_old = logp.detach()`` (ratio 1, so clipping never binds on the first
  pass); the rollout engine's sampling log-probs only feed the ``logprob_mismatch`` metric.
- Reference log-probs come from the same model with the adapter disabled (no second model in memory).
- Gradient accumulation is ours, not DeepSpeed's: ``managed_gradient_accumulation=false`` makes
  ``step()`` the only boundary, and ranks with fewer micro-batches run zero-weight passes so every rank
  joins the same number of ZeRO-2/3 gradient reductions.
- DeepSpeed averages gradients over ranks; our per-rank losses are shares of the global sum, so the loss
  is multiplied by ``world_size`` before backward.
- A torch AdamW is passed in (DeepSpeed's own Adam JIT-compiles for minutes); ZeRO offload then needs
  ``zero_force_ds_cpu_optimizer: false``.
- The first collective JIT-compiles a DeepSpeed op on CPU (~30 s once, cached in TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from learner import grpo
from learner.batch import StepMetrics, TrainSample, collate, micro_batches
from learner.config import LearnerConfig
from learner.policy import build_policy

_MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def free_port() -> int:
    """An unused TCP port on this host (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def deepspeed_config(cfg: LearnerConfig, world_size: int, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``cfg``; every value that matters is explicit."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.micro_batch_size * world_size,
        "managed_gradient_accumulation": False,
        # DeepSpeed's default clip is 1.0 whatever the user meant: always state it.
        "gradient_clipping": cfg.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def _init_distributed(rank: int, world_size: int, backend: str) -> bool:
    """Join (or create) the process group; returns True when this call created it."""
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(f"a process group (rank {dist.get_rank()} of {dist.get_world_size()}) already "
                               f"exists; this engine wants rank {rank} of {world_size}: close the other engine")
        return False
    import deepspeed

    if world_size > 1 and "MASTER_PORT" not in os.environ:
        raise RuntimeError("several learner ranks need MASTER_ADDR/MASTER_PORT (LearnerGroup sets them)")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if world_size == 1:  # a lone rank agrees with nobody: a fresh port avoids clashing with an earlier engine
        os.environ["MASTER_PORT"] = str(free_port())
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size))
    os.environ.setdefault("LOCAL_RANK", "0")  # Ray gives each rank its own GPU, visible as device 0
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                               rank=rank, world_size=world_size)
    return True


class LearnerEngine:
    """One DeepSpeed rank training the adapter. All ranks call every method in the same order."""

    def __init__(self, model_dir: str | Path, cfg: LearnerConfig, rank: int = 0, world_size: int = 1) -> None:
        import deepspeed

        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
        if cfg.precision == "bf16" or (cfg.precision == "auto" and cuda):
            self.bf16 = True
        else:
            self.bf16 = False
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self._owns_group = _init_distributed(rank, world_size, "nccl" if cuda else "gloo")
        model = build_policy(model_dir, cfg)
        text_cfg = getattr(model.config, "text_config", model.config)
        self.pad_id = int(getattr(text_cfg, "pad_token_id", None) or 0)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError(f"the {cfg.adapter} adapter has no trainable parameters: check mlae.target_modules")
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg, world_size, self.bf16))
        self.steps = 0

    @property
    def model(self) -> Any:
        """The PEFT model (base plus adapter) inside the DeepSpeed engine."""
        return self.engine.module

    # ---- forward passes -------------------------------------------------------------------------------

    def _inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: batch[k].to(self.device) for k in _MODEL_INPUTS if k in batch}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(torch.bfloat16 if self.bf16 else torch.float32)
        return out

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, T, V]`` next-token logits for positions 0..L-2."""
        out = self.engine(**self._inputs(batch), use_cache=False)
        return out.logits[:, :-1]

    def _targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["input_ids"][:, 1:].to(self.device)  # [B, T]

    # ---- collectives ----------------------------------------------------------------------------------

    def _all_reduce(self, values: list[float], op: dist.ReduceOp.RedOpType) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=op)
        return [float(v) for v in t.tolist()]

    def _global_counts(self, batches: list[dict[str, torch.Tensor]]) -> tuple[float, float, int]:
        """Global (sequences with loss tokens, loss tokens) and the most micro-batches any rank has."""
        seqs = sum(grpo.sequences_with_tokens(b["loss_mask"]) for b in batches)
        toks = sum(float(b["loss_mask"].sum()) for b in batches)
        n_seq, n_tok = self._all_reduce([seqs, toks], dist.ReduceOp.SUM)
        (n_mb,) = self._all_reduce([len(batches)], dist.ReduceOp.MAX)
        return n_seq, n_tok, int(n_mb)

    def _schedule(self, samples: Sequence[TrainSample]) -> tuple[list[dict[str, torch.Tensor]], float, float, int]:
        if not samples:
            raise ValueError(f"learner rank {self.rank} got no samples: every rank needs at least one")
        batches = [collate(mb, self.pad_id) for mb in micro_batches(samples, self.cfg.micro_batch_size)]
        return (batches, *self._global_counts(batches))

    # ---- steps ------------------------------------------------------------------------------------------

    def grpo_step(self, samples: Sequence[TrainSample]) -> StepMetrics:
        """One optimiser step of GRPO over this rank's shard of the global batch."""
        t0 = time.perf_counter()
        g = self.cfg.grpo
        batches, n_seq, n_tok, n_mb = self._schedule(samples)
        self.engine.train()
        sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "ratio": 0.0, "entropy": 0.0, "mis": 0.0, "mis_n": 0.0}
        rmin, rmax = float("inf"), float("-inf")
        for i in range(n_mb):
            # Ranks with fewer micro-batches repeat their last one at weight 0 to join every reduction.
            batch, weight = (batches[i], 1.0) if i < len(batches) else (batches[-1], 0.0)
            mask = batch["loss_mask"].to(self.device)  # [B, T]
            targets = self._targets(batch)
            ref = None
            if g.beta > 0.0:
                with torch.no_grad(), self.model.disable_adapter():
                    ref = grpo.token_logprobs(self._logits(batch), targets)  # [B, T]
            logits = self._logits(batch)  # [B, T, V]
            logp = grpo.token_logprobs(logits, targets)  # [B, T]
            parts = grpo.grpo_loss(
                logp, logp.detach(), ref, batch["advantages"].to(self.device), mask,
                eps_low=g.eps_low, eps_high=g.eps_high, beta=g.beta, mode=g.aggregation,
                num_sequences=n_seq, num_tokens=n_tok)
            self.engine.backward(parts.loss * (weight * self.world_size))
            if weight == 0.0:
                continue
            with torch.no_grad():
                ent = grpo.token_entropy(logits.detach())  # [B, T]
                sm = batch["sampling_mask"].to(self.device) * mask
                diff = (logp.detach() - batch["sampling_logprobs"].to(self.device)).abs()
            sums["loss"] += float(parts.loss.detach())
            sums["kl"] += parts.kl_sum
            sums["clipped"] += parts.clipped_sum
            sums["ratio"] += parts.ratio_sum
            sums["entropy"] += float((ent * mask).sum())
            sums["mis"] += float((diff * sm).sum())
            sums["mis_n"] += float(sm.sum())
            rmin, rmax = min(rmin, parts.ratio_min), max(rmax, parts.ratio_max)
        self.engine.step()
        self.steps += 1
        keys = list(sums)
        total = dict(zip(keys, self._all_reduce([sums[k] for k in keys], dist.ReduceOp.SUM), strict=True))
        (rmin,) = self._all_reduce([rmin], dist.ReduceOp.MIN)
        (rmax,) = self._all_reduce([rmax], dist.ReduceOp.MAX)
        denom = max(n_tok, 1.0)
        return StepMetrics(
            loss=total["loss"], kl=total["kl"] / denom, clip_fraction=total["clipped"] / denom,
            entropy=total["entropy"] / denom, ratio_mean=total["ratio"] / denom if n_tok else 1.0,
            ratio_min=rmin if n_tok else 1.0, ratio_max=rmax if n_tok else 1.0,
            grad_norm=self._grad_norm(), sequences=int(n_seq), tokens=int(n_tok),
            seconds=time.perf_counter() - t0,
            logprob_mismatch=total["mis"] / total["mis_n"] if total["mis_n"] > 0 else None)

    def sft_step(self, samples: Sequence[TrainSample]) -> StepMetrics:
        """One optimiser step of cross-entropy on reference answers (``completion_ids``), token-mean."""
        t0 = time.perf_counter()
        batches, n_seq, n_tok, n_mb = self._schedule(samples)
        self.engine.train()
        loss_sum, ent_sum = 0.0, 0.0
        for i in range(n_mb):
            batch, weight = (batches[i], 1.0) if i < len(batches) else (batches[-1], 0.0)
            mask = batch["loss_mask"].to(self.device)
            logits = self._logits(batch)
            loss = grpo.sft_loss(grpo.token_logprobs(logits, self._targets(batch)), mask, n_tok)
            self.engine.backward(loss * (weight * self.world_size))
            if weight > 0.0:
                loss_sum += float(loss.detach())
                with torch.no_grad():
                    ent_sum += float((grpo.token_entropy(logits.detach()) * mask).sum())
        self.engine.step()
        self.steps += 1
        loss_total, ent_total = self._all_reduce([loss_sum, ent_sum], dist.ReduceOp.SUM)
        return StepMetrics(
            loss=loss_total, kl=0.0, clip_fraction=0.0, entropy=ent_total / max(n_tok, 1.0), ratio_mean=1.0,
            ratio_min=1.0, ratio_max=1.0, grad_norm=self._grad_norm(), sequences=int(n_seq),
            tokens=int(n_tok), seconds=time.perf_counter() - t0)

    def _grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @torch.no_grad()
    def logprobs(self, samples: Sequence[TrainSample], adapter: bool = True) -> list[torch.Tensor]:
        """Per-sample completion log-probs (``[Lc]`` float32 on CPU each), in eval mode (no MLAE mask).

        ``adapter=False`` gives the reference policy's. Under ZeRO-3 every rank must call this together.
        """
        self.engine.eval()
        out: list[torch.Tensor] = []
        for mb in micro_batches(samples, self.cfg.micro_batch_size):
            batch = collate(mb, self.pad_id)
            if adapter:
                logp = grpo.token_logprobs(self._logits(batch), self._targets(batch))
            else:
                with self.model.disable_adapter():
                    logp = grpo.token_logprobs(self._logits(batch), self._targets(batch))
            for row, s in enumerate(mb):
                start = len(s.prompt_ids) - 1
                out.append(logp[row, start : start + len(s.completion_ids)].float().cpu())
        self.engine.train()
        return out

    def set_lr(self, lr: float) -> None:
        """Change the learning rate (a stage's ``lr`` override)."""
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    # ---- adapter export and checkpoints ---------------------------------------------------------------

    def export(self, version: int) -> Any:
        """The adapter in LoRA form (``learner.export.LoraArtefact``); every rank calls (ZeRO-3 gathers)."""
        from learner.export import export_lora

        return export_lora(self.model, version)

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Write DeepSpeed state, RNG states and the exported adapter to ``directory`` atomically.

        Everything goes to ``<directory>.tmp`` first and is renamed when complete, so a crash leaves either
        the previous checkpoint or the new one, never half of one. All ranks call; the directory must be
        on storage every rank sees.
        """
        final = Path(directory)
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        self.engine.save_checkpoint(str(tmp), tag="deepspeed", client_state={"steps": self.steps},
                                    exclude_frozen_parameters=True)
        torch.save(_rng_state(), tmp / f"rng_rank{self.rank}.pt")
        artefact = self.export(self.steps)
        self._barrier()  # every rank's files are in tmp before rank 0 renames it
        if self.rank == 0:
            artefact.save(tmp / "adapter")
            (tmp / "learner_state.json").write_text(json.dumps(
                {"steps": self.steps, "world_size": self.world_size, "adapter": self.cfg.adapter}) + "\n")
            old = final.with_name(final.name + ".old")
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return final

    def load_checkpoint(self, directory: str | Path) -> None:
        """Restore a checkpoint written by ``save_checkpoint`` with the same number of ranks."""
        directory = Path(directory)
        state = json.loads((directory / "learner_state.json").read_text())
        if state["world_size"] != self.world_size:
            raise ValueError(f"checkpoint {directory} was written by {state['world_size']} learner ranks; "
                             f"resume with learner.num_ranks={state['world_size']} (ZeRO partitions differ)")
        path, client = self.engine.load_checkpoint(str(directory), tag="deepspeed", load_module_strict=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {directory}/deepspeed")
        self.steps = int(client["steps"])
        _set_rng_state(torch.load(directory / f"rng_rank{self.rank}.pt", weights_only=False))

    def _barrier(self) -> None:
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


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
