"""How much does DeepSpeed cost per GRPO step? The learner engine against a plain torch loop.

Both run the same policy (``learner.policy.build_policy``), the same batch (synthetic prompts with images,
fixed-length completions), the same micro-batching, the same adapter-off reference pass and the same loss
functions (``learner.grpo``), the same entropy metric and an adapter export per step; the plain loop uses torch AdamW and
``clip_grad_norm_`` directly. The difference is DeepSpeed's engine: its ZeRO optimizer wrapper, gradient
bookkeeping and collectives, plus the engine's other step metrics.

    python -m bench.learner                      # CPU, fp32, tiny model (this box)
    python -m bench.learner --device cuda        # one GPU, bf16, ZeRO-2 (tools/gpu_check.sh runs this)

Prints a table and writes JSON to bench/results/learner.json (learner_gpu.json for CUDA runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench import machine
from learner import grpo
from learner.batch import Collated, TrainBatch, TrainSample, collate, micro_batches
from learner.config import LearnerConfig
from learner.export import export_lora
from learner.policy import build_policy


def make_batch(model_dir: Path, n: int, completion_len: int, image_px: int, seed: int = 0) -> list[TrainSample]:
    """``n`` samples: a chat prompt with one ``image_px`` square image and ``completion_len`` text tokens."""
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir))
    rng = np.random.default_rng(seed)
    text_vocab = len(processor.tokenizer) - 32  # stay clear of the special and vision tokens at the end
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Locate finding {i}"}]}]
        text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        image = Image.fromarray(rng.integers(0, 255, (image_px, image_px, 3), dtype=np.uint8))
        enc = processor(text=[text], images=[image], return_tensors="pt")
        completion = tuple(int(t) for t in rng.integers(0, text_vocab, completion_len))
        out.append(TrainSample(prompt_ids=tuple(enc["input_ids"][0].tolist()), completion_ids=completion,
                               advantage=float(rng.standard_normal()), pixel_values=enc["pixel_values"],
                               image_grid_thw=enc["image_grid_thw"],
                               mm_token_type_ids=tuple(enc["mm_token_type_ids"][0].tolist())))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_step(model_dir: Path, cfg: LearnerConfig, samples: list[TrainSample], device: torch.device,
               bf16: bool) -> Callable[[], None]:
    """The same GRPO step with no DeepSpeed: AdamW on the adapter, autocast bf16 on GPU."""
    model = build_policy(model_dir, cfg).to(device)
    if bf16:  # DeepSpeed bf16 keeps the frozen base in bf16 too; trainable weights stay fp32 here
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    g = cfg.grpo
    batches = [collate(mb, 0) for mb in micro_batches(samples, cfg.micro_batch_size)]
    n_seq = float(sum(grpo.sequences_with_tokens(b.loss_mask) for b in batches))
    n_tok = float(sum(b.loss_mask.sum() for b in batches))

    def logits(batch: Collated) -> torch.Tensor:
        inputs = batch.model_inputs(device, torch.float32)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(**inputs, use_cache=False).logits[:, :-1]

    def step() -> None:
        export_lora(model, 1)  # the engine exports the adapter version that samples each batch: same work
        for batch in batches:
            targets, mask = batch.targets.to(device), batch.loss_mask.to(device)
            with torch.no_grad(), model.disable_adapter():
                ref = grpo.token_logprobs(logits(batch), targets)
            out = logits(batch)
            logp = grpo.token_logprobs(out, targets)
            with torch.no_grad():  # the engine reports entropy too: same metric work on both sides
                float((grpo.token_entropy(out.detach()) * mask).sum())
            parts = grpo.grpo_loss(logp, logp.detach(), ref, batch.advantages.to(device), mask,
                                   eps_low=g.eps_low, eps_high=g.eps_high, beta=g.beta, mode=g.aggregation,
                                   num_sequences=n_seq, num_tokens=n_tok)
            parts.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.gradient_clipping)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_interleaved(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                     rounds: int) -> dict[str, list[float]]:
    """Alternate the contenders step by step, so load from other processes hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + rounds):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--size", choices=["tiny", "small"], default=None, help="tiny on CPU, small on CUDA")
    ap.add_argument("--batch", type=int, default=None, help="samples per step (8 CPU, 64 CUDA)")
    ap.add_argument("--micro", type=int, default=None, help="micro-batch size (4 CPU, 16 CUDA)")
    ap.add_argument("--completion-len", type=int, default=64)
    ap.add_argument("--image-px", type=int, default=112)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed rounds (one step of each contender)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    record = machine.start()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench.learner --device cuda: torch sees no CUDA device")
    os.environ["DS_ACCELERATOR"] = args.device
    size = args.size or ("small" if cuda else "tiny")
    batch, micro = args.batch or (64 if cuda else 8), args.micro or (16 if cuda else 4)
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    # reference "base": both contenders take the adapter-off reference pass (no stage-start copy to swap in)
    cfg = LearnerConfig(micro_batch_size=micro, zero_stage=2, precision="bf16" if cuda else "fp32",
                        grpo={"reference": "base"})  # type: ignore[arg-type]

    from services.models.tiny import build_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp) / "model", "qwen2_5_vl", size, seed=0)
        samples = make_batch(model_dir, batch, args.completion_len, args.image_px)
        from learner.engine import LearnerEngine

        engine = LearnerEngine(model_dir, cfg)
        engine.begin_stage("grpo", cfg.lr)
        versions = itertools.count(1)

        def deepspeed_step() -> None:
            # On-policy as in training: the batch was sampled by the version exported just before the step.
            v = next(versions)
            engine.export(v)
            engine.grpo_step(TrainBatch(tuple(dataclasses.replace(s, adapter_version=v) for s in samples)))

        try:
            contenders = {"deepspeed ZeRO-2": deepspeed_step,
                          "plain torch": plain_step(model_dir, cfg, samples, device, cuda)}
            times = time_interleaved(contenders, device, args.warmup, args.steps)
        finally:
            engine.close()

    tokens = sum(s.num_tokens for s in samples)
    loss_tokens = sum(len(s.completion_ids) for s in samples)
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"step_s_median": med, "step_s_all": ts, "tokens_per_s": tokens / med,
                      "loss_tokens_per_s": loss_tokens / med}
    overhead = rows["deepspeed ZeRO-2"]["step_s_median"] / rows["plain torch"]["step_s_median"] - 1.0
    result = {
        "question": "DeepSpeed learner step vs a plain torch loop, same model and batch",
        "machine": machine.finish(record), "device": args.device, "precision": "bf16" if cuda else "fp32",
        "model": f"qwen2_5_vl {size} (random weights)", "adapter": cfg.adapter, "batch": batch, "micro_batch": micro,
        "completion_len": args.completion_len, "image_px": args.image_px, "tokens_per_step": tokens,
        "loss_tokens_per_step": loss_tokens, "warmup": args.warmup, "steps": args.steps, "results": rows,
        "deepspeed_overhead": overhead, "date": time.strftime("%Y-%m-%d"),
    }
    where = result["machine"]["gpu"] or f"{result['machine']['cores']} cores"
    print(f"learner step, qwen2_5_vl {size}, batch {batch} (micro {micro}), {tokens} tokens/step, "
          f"{args.device} {result['precision']} on {where}")
    print(f"{'engine':<18}{'step s (median)':>17}{'tokens/s':>12}{'loss tok/s':>12}")
    for name, r in rows.items():
        print(f"{name:<18}{r['step_s_median']:>17.4f}{r['tokens_per_s']:>12.0f}{r['loss_tokens_per_s']:>12.0f}")
    print(f"DeepSpeed overhead: {overhead:+.1%} step time")
    out = machine.write_json(result, args.out or machine.results_path("learner", gpu=cuda))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
