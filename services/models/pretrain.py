"""A pretrained base for the CPU miniature: a small Qwen-VL trained in full on synthetic grounding.

In production RL starts from a pretrained VLM (Qwen2.5-VL) whose language-model head is sharp; the adapter
stages (an SFT warm start if any, then GRPO) run on top and the KL reference is that base. A random model
cannot stand in for it: with the head and final norm frozen, no logit of a hidden-256 network passes ~6, so
no token gets more than ~30 % of the mass and an adapter cannot make answers parse (docs/miniature.md). So
the miniature first trains every weight of a small random model on synthetic grounding images drawn with
another seed than any run's data, in the answer format of the runs, with varied reasoning of its own in
the think block (sometimes quoting the finding's prior knowledge, so the recitation reward has something
to act on). The result is a model directory like any other plus `base_recipe.json` (the recipe and its
hash: the cache key) and `base_report.json` (held-out A@0.3/0.5/0.8, mIoU by size bucket, per-token
entropy on its own answers, parse rate of samples at temperature 0.9, build time).

A recipe is a YAML file (deploy/configs/bases/*.yaml); `medground base build RECIPE` or a run config's
`model.base` builds it when the model directory is missing or was built from another recipe.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

RECIPE_FILE = "base_recipe.json"
REPORT_FILE = "base_report.json"


class BaseRecipe(BaseModel):
    """How a base is built; every field changes the result, so the hash of all of them is the cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Literal["qwen2_5_vl", "qwen2_vl"] = Field("qwen2_5_vl",
                                                      description="Model family (box convention).")
    size: Literal["tiny", "small"] = Field("small", description="Model dims (services/models/tiny.py DIMS).")
    seed: int = Field(0, description="Seeds the initial weights and the order of training samples.")
    data_preset: str = Field("demo", description="Synthetic preset (`medground data synth --preset`).")
    data_knobs: dict[str, Any] = Field(default_factory=dict, description="Overrides of the preset's knobs.")
    data_seed: int = Field(1000, description="Seed of the base's own images: runs use other seeds (0 by "
                           "default), so no held-out image of a run is ever trained on.")
    train_images: int = Field(4000, ge=16, description="Training images.")
    held_out_images: int = Field(400, ge=16, description="Images of the base's own held-out report.")
    min_pixels: int = Field(56 * 56, ge=28 * 28,
                            description="Processor pixel budget (as rollout.min_pixels).")
    max_pixels: int = Field(112 * 112, ge=28 * 28,
                            description="Processor pixel budget (as rollout.max_pixels).")
    steps: int = Field(2000, ge=1, description="Optimiser steps.")
    batch: int = Field(16, ge=1, description="Samples per step.")
    lr: float = Field(2e-3, gt=0.0, description="Peak AdamW learning rate of the one-cycle schedule.")
    warmup: float = Field(0.05, gt=0.0, lt=1.0, description="Fraction of steps warming up to the peak.")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay.")
    knowledge_fraction: float = Field(0.5, ge=0.0, le=1.0, description="Prompts with prior knowledge "
                                      "injected (runs switch injection on or off; the base has seen both).")
    recite_fraction: float = Field(0.3, ge=0.0, le=1.0, description="Think blocks that quote the finding's "
                                   "appearance from the knowledge file (VRFT-Aug's recitation).")
    max_new_tokens: int = Field(64, ge=8, description="Completion cap of the report's generations.")
    threads: int = Field(2, ge=1, description="torch CPU threads.")

    def digest(self) -> str:
        """12 hex digits of the recipe's canonical JSON: the cache key."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def load_recipe(path: str | Path) -> BaseRecipe:
    """Read a base recipe YAML; errors name the file and the field."""
    from pydantic import ValidationError

    from services.config import ConfigError, explain

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"base recipe {path} does not exist; the shipped ones are in deploy/configs/bases/")
    try:
        return BaseRecipe.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        raise explain(exc, BaseRecipe, str(path)) from None


def is_built(recipe: BaseRecipe, model_dir: str | Path) -> bool:
    """True when `model_dir` holds a base built from exactly this recipe."""
    stored = Path(model_dir) / RECIPE_FILE
    return stored.is_file() and json.loads(stored.read_text()).get("digest") == recipe.digest()


def build_base(recipe: BaseRecipe, out: str | Path, log: Any = print) -> dict[str, Any]:
    """Build the base into `out` (replacing what is there) and return its report.

    The model is complete in `out` before it is measured: `base_recipe.json` is written last, so a build
    that stops half-way is rebuilt by the next caller (`is_built` is false) rather than half-used."""
    import torch

    from rollout.knowledge import load_knowledge
    from services.data.synth import make_spec, write_dataset
    from services.models.tiny import build_model_dir

    t0 = time.perf_counter()
    torch.set_num_threads(recipe.threads)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    work = Path(tempfile.mkdtemp(prefix="medground-base-"))
    try:
        model_dir = build_model_dir(out, recipe.family, recipe.size, seed=recipe.seed,
                                    min_pixels=recipe.min_pixels, max_pixels=recipe.max_pixels)
        spec = make_spec(recipe.data_preset, **recipe.data_knobs).model_copy(
            update={"splits": {"train": recipe.train_images, "val": recipe.held_out_images}})
        manifest = write_dataset(spec, work / "data", seed=recipe.data_seed)
        knowledge = load_knowledge(Path(__file__).resolve().parents[2] / "deploy" / "knowledge")
        log(f"base {recipe.digest()}: {recipe.train_images} images written in "
            f"{time.perf_counter() - t0:.0f} s")
        curve = _train(recipe, model_dir, manifest, knowledge, log)
        trained_s = time.perf_counter() - t0
        report = {"recipe": recipe.model_dump(), "digest": recipe.digest(), "train_loss_per_50_steps": curve,
                  "build_s_to_trained": trained_s, **measure_base(model_dir, manifest, recipe)}
        report["build_s"] = time.perf_counter() - t0
        (model_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        (model_dir / RECIPE_FILE).write_text(json.dumps({"digest": recipe.digest(), **recipe.model_dump()},
                                                        indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _optimiser(model: Any, recipe: BaseRecipe) -> tuple[Any, Any]:
    """AdamW over every parameter with the recipe's one-cycle learning rate."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.steps,
                                                pct_start=recipe.warmup)
    return opt, sched


def _train(recipe: BaseRecipe, model_dir: Path, manifest: Path, knowledge: Any, log: Any) -> list[float]:
    """Full-weight SFT (every parameter, AdamW, one-cycle lr) on the recipe's training split."""
    import torch
    from transformers import AutoModelForImageTextToText

    from learner import grpo
    from learner.batch import collate
    from rollout.images import convention_of
    from rollout.processing import PromptProcessor
    from rollout.prompts import build_prompt
    from services.convert import rollout_request, sft_sample
    from services.data.manifest import load_manifest
    from services.targets import own_think, reference_answer

    data = load_manifest(manifest).with_sizes()
    records = data.select(split="train", task="grounding")
    processor = PromptProcessor(model_dir, recipe.family, recipe.min_pixels, recipe.max_pixels)
    convention = convention_of(recipe.family)
    torch.manual_seed(recipe.seed)
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    model.train()
    opt, sched = _optimiser(model, recipe)
    rng = np.random.default_rng([recipe.seed, 7])
    pad = int(model.config.text_config.pad_token_id or 0)
    curve: list[float] = []
    window: list[float] = []
    prepared_cache: dict[tuple[int, bool], Any] = {}
    started = time.perf_counter()
    for step in range(recipe.steps):
        samples = []
        for i in rng.integers(len(records), size=recipe.batch):
            record = records[int(i)]
            inject = bool(rng.random() < recipe.knowledge_fraction)
            key = (int(i), inject)  # the processor's work is the same every epoch: done once per prompt
            if key not in prepared_cache:
                prompt = build_prompt(rollout_request(record, data.image_path(record)), convention, knowledge,
                                      inject_knowledge=inject)
                prepared_cache[key] = processor.prepare(prompt)
            prepared = prepared_cache[key]
            think = own_think(record, knowledge, recite=bool(rng.random() < recipe.recite_fraction))
            samples.append(sft_sample(prepared, reference_answer(record, prepared.frame, think),
                                      processor.tokenizer))
        batch = collate(samples, pad)
        logits = model(**batch.model_inputs(torch.device("cpu"), torch.float32),
                       use_cache=False).logits[:, :-1]
        loss = grpo.sft_loss(grpo.token_logprobs(logits, batch.targets), batch.loss_mask,
                             float(batch.loss_mask.sum()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        window.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == recipe.steps:
            curve.append(float(np.mean(window)))
            window = []
            log(f"base step {step + 1}/{recipe.steps}: answer loss {curve[-1]:.3f} "
                f"({time.perf_counter() - started:.0f} s)")
    model.save_pretrained(model_dir, safe_serialization=True)
    return curve


def measure_base(model_dir: Path, manifest: Path, recipe: BaseRecipe, samples_n: int = 4,
                 sampled_images: int = 100) -> dict[str, Any]:
    """The base's own numbers on its held-out split: greedy A@0.3/0.5/0.8 and mIoU (overall and by size
    bucket, with standard errors), per-token entropy at T = 1 on its greedy answers (all answer tokens, and
    the box's digit tokens), and the parse rate and IoU of `samples_n` samples at T = 0.9."""
    import torch
    from transformers import AutoModelForImageTextToText

    import rewards
    from rollout.config import RolloutConfig, SamplingConfig
    from rollout.core import RolloutWorkerCore
    from rollout.knowledge import load_knowledge
    from services import evaluation
    from services.convert import rollout_request
    from services.data.manifest import load_manifest
    from services.evaluation.metrics import grounding_metrics

    data = load_manifest(manifest).with_sizes()
    held_out = data.select(split="val", task="grounding")
    knowledge = load_knowledge(Path(__file__).resolve().parents[2] / "deploy" / "knowledge")
    engine = RolloutConfig(engine="vllm", engine_in_process=False, min_pixels=recipe.min_pixels,
                           max_pixels=recipe.max_pixels, max_model_len=1024)
    core = RolloutWorkerCore(model_dir, engine, knowledge)
    try:
        greedy = evaluation.predict(core, data, held_out, recipe.max_new_tokens)
        sampling = SamplingConfig(temperature=0.9, max_new_tokens=recipe.max_new_tokens)
        subset = held_out[:sampled_images]
        groups = core.generate([rollout_request(r, data.image_path(r), seed=i) for i, r in enumerate(subset)],
                               n=samples_n, sampling=sampling)
        own = core.generate([rollout_request(r, data.image_path(r)) for r in subset], n=1,
                            sampling=SamplingConfig(temperature=0.0, max_new_tokens=recipe.max_new_tokens))
    finally:
        core.close()
    sampled_iou, sampled_parsed = [], []
    for record, group in zip(subset, groups, strict=True):
        for c in group.completions:
            _, box = evaluation.grounding_answer(c.text, group.frame)
            sampled_parsed.append(box is not None)
            sampled_iou.append(max(rewards.iou(box, gt) for gt in record.boxes) if box is not None else 0.0)
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ent_all, ent_digit = _answer_entropy(model, core.processor.tokenizer, own)
    report = evaluation.report(greedy)
    sampled = grounding_metrics(sampled_iou, sampled_parsed)
    return {
        "held_out": {k.removeprefix("eval/"): v for k, v in report.items()},
        "sampled_T0.9": {"images": len(subset), "per_image": samples_n,
                         "parse_pct": 100.0 * float(np.mean(sampled_parsed)), **sampled},
        "entropy_T1_nats": {"answer_tokens": float(np.mean(ent_all)), "box_digit_tokens":
                            float(np.mean(ent_digit)) if ent_digit else math.nan},
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _answer_entropy(model: Any, tokenizer: Any, own: Sequence[Any]) -> tuple[list[float], list[float]]:
    """Per-token entropy (nats) of the T = 1 distribution over the base's own greedy answers, teacher-forced:
    every answer token, and the box's digit tokens."""
    import torch

    from learner import grpo
    from learner.batch import collate
    from services.convert import grpo_samples

    digits = {tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    ent_all: list[float] = []
    ent_digit: list[float] = []
    with torch.no_grad():
        for group in own:
            (sample,) = grpo_samples(group, [0.0])
            batch = collate([sample], int(model.config.text_config.pad_token_id or 0))
            inputs = batch.model_inputs(torch.device("cpu"), torch.float32)
            ent = grpo.token_entropy(model(**inputs, use_cache=False).logits[:, :-1])[0]  # [T]
            mask = batch.loss_mask[0].bool()
            ent_all.extend(ent[mask].tolist())
            targets = batch.targets[0][mask].tolist()
            ent_digit.extend(e for e, t in zip(ent[mask].tolist(), targets, strict=True) if t in digits)
    return ent_all, ent_digit
