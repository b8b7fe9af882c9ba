"""Forward KL of a run's policy from its base on held-out prompts (issue 28; docs/algorithms.md, "KL from the
base (evaluation)").

pi_theta is the run's base model with its exported adapter (a plain LoRA; an MLAE run exports its eval-mode
form, every expert on, learner/export.py); pi_base is the same PEFT model inside `disable_adapter()`. Prompts
are built as training and `medground eval` build them (services/convert.py `rollout_request`, the rollout
worker's prompt builder and processor, knowledge injection as configured); completions come from the
transformers engine (rollout/engine_hf.py), in process, without Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.batch import SamplingSpec, collate
from learner.export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraArtefact
from learner.grpo import sampling_logits
from rollout.contracts import RolloutGroup
from services.checkpointing import run_adapter
from services.config import RunConfig, load_run_config
from services.convert import grpo_samples, rollout_request, sampling_spec
from services.data.manifest import Manifest
from services.data.records import Record

TEMPERATURE = 1.0
_SEED_SALT = 0x4B1  # the KL draws' own seed stream, apart from the sampled evaluation's


def token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) over the vocabulary at each position, summed over the unmasked positions of a row.

    `logits_p`, `logits_q`: [B, T, V] unnormalised next-token logits (any float dtype; computed in float32);
    `mask`: [B, T], 1 where the position counts, 0 where it does not (padding). Returns [B] float32 nats:
    sum_t mask[b, t] * sum_v p(v) (log p(v) - log q(v)). A token with p(v) = 0 (logit -inf) adds nothing; a
    masked position adds nothing whatever its logits hold (NaN included).
    """
    if logits_p.shape != logits_q.shape or logits_p.shape[:2] != mask.shape:
        raise ValueError(f"token_kl needs logits [B, T, V] of one shape and a mask [B, T], got "
                         f"{tuple(logits_p.shape)}, {tuple(logits_q.shape)} and {tuple(mask.shape)}")
    logp = torch.log_softmax(logits_p.float(), dim=-1)  # [B, T, V]
    logq = torch.log_softmax(logits_q.float(), dim=-1)  # [B, T, V]
    p = logp.exp()
    per_token = torch.where(p > 0, p * (logp - logq), 0.0).sum(dim=-1)  # [B, T]
    return torch.where(mask > 0, per_token, 0.0).sum(dim=-1)  # [B]


def kl_from_base(run_dir: Path, *, step: int | None = None, images: int = 100, samples: int = 2,
                 seed: int = 0, split: str | None = None) -> dict[str, float]:
    """Monte Carlo forward KL(pi_theta || pi_base) of a run's adapter on held-out prompts, in nats.

    `samples` completions per prompt of the first `images` grounding records with a box of `split`
    (default: the run's `data.eval_split`; any grounding record when a stage is `multi_box`) are drawn
    from pi_theta at temperature 1 (top-p 1, the run's `max_new_tokens` and `min_new_tokens`, vision
    tokens suppressed as the rollout engines do); request i's seed comes from (`seed`, i) alone, so two
    calls draw the same completions. Along each completion y the exact per-token
    KL over the vocabulary, sum_v pi_theta(v | x, y<t) (log pi_theta(v | .) - log pi_base(v | .)), is
    summed over its tokens (the same processed distribution, `learner.grpo.sampling_logits`, for both).
    By the chain rule its expectation over y ~ pi_theta is the sequence-level KL(pi_theta || pi_base)
    (of completions capped at max_new_tokens): unbiased, and each token's term is the expectation of the
    single-sample log-ratio log pi_theta(y_t | .) - log pi_base(y_t | .) given the prefix (Rao-Blackwellised;
    in practice far less variable than the log-ratio, and never negative).

    `step`: a checkpoint's adapter (None: the final adapter, else the latest checkpoint's, as
    `medground eval`). Returns `kl_nats_per_completion` (mean over the n = images x samples completions)
    and its `_se` (std / sqrt(n) over completions, 0 when n = 1; completions of one prompt are correlated,
    so it can understate the spread over prompts), `kl_nats_per_token` (total KL / total completion
    tokens), `completions`, `images` (prompts used, at most `images`) and `temperature` (1.0).
    Raises ValueError naming the path or split when the run has no resolved_config.json, no adapter at that
    step, or the split holds no grounding record, and when `images` or `samples` is below 1.
    """
    if images < 1 or samples < 1:
        raise ValueError(f"kl_from_base needs images >= 1 and samples >= 1, got images={images} "
                         f"samples={samples}")
    cfg = load_run_config(run_dir)  # ConfigError (a ValueError) names a directory that is not a run
    artefact = _artefact(run_dir, step)
    manifest, records, multi = _heldout(cfg, split, images)
    kls, tokens = _sample_and_score(cfg, artefact, manifest, records, multi, samples, seed)
    n = len(kls)
    values = np.asarray(kls, dtype=np.float64)
    return {"kl_nats_per_completion": float(values.mean()),
            "kl_nats_per_completion_se": float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
            "kl_nats_per_token": float(values.sum() / max(sum(tokens), 1)),
            "completions": n, "images": len(records), "temperature": TEMPERATURE}


def _artefact(run_dir: Path, step: int | None) -> LoraArtefact:
    try:
        adapter, _ = run_adapter(run_dir, step)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (adapter / name).is_file()]
    if missing:
        raise ValueError(f"{adapter} has no exported adapter ({', '.join(missing)} missing): pick a step "
                         f"listed under {run_dir / 'checkpoints'}, or leave out --step for the final one")
    return LoraArtefact.load(adapter)


def _heldout(cfg: RunConfig, split: str | None, images: int) -> tuple[Manifest, list[Record], bool]:
    """The manifest, the first `images` grounding prompts of the split (those the sampled evaluation
    scores, services/evaluation/heldout.py `predict_sampled`) and whether prompts ask for box sets."""
    from services.data.manifest import load_manifest

    split = cfg.data.eval_split if split is None else split
    multi = any(s.multi_box for s in cfg.stages)
    manifest = load_manifest(cfg.data.manifest, on_bad_record=cfg.data.on_bad_record).with_sizes()
    records = [r for r in manifest.select(split=split, task="grounding") if r.boxes or multi][:images]
    if not records:
        raise ValueError(f"split {split!r} of {cfg.data.manifest} has no grounding record with a box; name a "
                         "held-out split that has some (split=...)")
    return manifest, records, multi


def _sample_and_score(cfg: RunConfig, artefact: LoraArtefact, manifest: Manifest, records: Sequence[Record],
                      multi: bool, samples: int, seed: int) -> tuple[list[float], list[int]]:
    """Per completion: its summed KL (nats) and its token count."""
    from rollout.core import RolloutWorkerCore
    from rollout.engine_hf import HfEngine
    from rollout.knowledge import load_knowledge

    core = RolloutWorkerCore(cfg.model.path, cfg.rollout.model_copy(update={"engine": "hf"}),
                             load_knowledge(cfg.data.knowledge_dir), seed=seed)
    try:
        core.load_adapter(artefact)
        engine = core.engine
        if not isinstance(engine, HfEngine):
            raise TypeError(f"kl_from_base needs the transformers engine, got {type(engine).__name__}")
        sampling = cfg.rollout.sampling.model_copy(update={"temperature": TEMPERATURE, "top_p": 1.0})
        seeds = np.random.SeedSequence([seed, _SEED_SALT]).generate_state(len(records))
        groups = core.generate([rollout_request(r, manifest.image_path(r), int(s), multi)
                                for r, s in zip(records, seeds, strict=True)], n=samples, sampling=sampling)
        spec = sampling_spec(sampling, cfg.model.path, core.processor.tokenizer)
        scored = [_completion_kl(engine.model, g, spec) for g in groups]
    finally:
        core.close()
    return [kl for group in scored for kl, _ in group], [n for group in scored for _, n in group]


def _completion_kl(model: Any, group: RolloutGroup, spec: SamplingSpec) -> list[tuple[float, int]]:
    """(summed KL, tokens) of each completion of a group: one forward of prompt + completion with the adapter
    and one inside `disable_adapter()`, projecting to the vocabulary only the positions that predict a
    completion token (`logits_to_keep`)."""
    out = []
    weight = next(model.parameters())
    for sample in grpo_samples(group, [0.0] * len(group.completions)):
        length = len(sample.completion_ids)
        inputs = collate([sample], pad_id=0).model_inputs(weight.device, weight.dtype)  # 1 row: no pad
        with torch.no_grad():
            theta = model(**inputs, logits_to_keep=length + 1, use_cache=False).logits[:, :-1]  # [1, Lc, V]
            with model.disable_adapter():
                base = model(**inputs, logits_to_keep=length + 1, use_cache=False).logits[:, :-1]
        start = torch.zeros(1, dtype=torch.long)  # kept position 0 predicts completion token 0
        kl = token_kl(sampling_logits(theta, spec, start), sampling_logits(base, spec, start),
                      torch.ones(1, length, device=theta.device))
        out.append((float(kl[0]), length))
    return out
