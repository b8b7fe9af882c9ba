"""Rollout throughput: vLLM against transformers generate on the same model, prompts and G, plus the
latency of hot-loading a LoRA adapter into a live vLLM engine.

    python -m bench.rollout [--size tiny|small] [--prompts 16] [--group 8] [--max-new-tokens 64]

Prints a table and the vLLM / transformers ratio; writes bench/results/rollout.json with the machine.
Both engines run in this process, one after the other, on the same random-weight model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import machine
from learner.export import LoraArtefact
from rollout.config import RolloutConfig, SamplingConfig
from rollout.contracts import RolloutRequest
from rollout.core import RolloutWorkerCore


def _requests(count: int) -> list[RolloutRequest]:
    rng = np.random.default_rng(0)
    return [RolloutRequest(prompt_id=f"p{i}", question=f"Locate the small left upper nodule {i}.",
                           image=Image.fromarray((rng.random((96 + 8 * (i % 4), 128, 3))
                                                  * 255).astype("uint8")))
            for i in range(count)]


def _adapter(model_dir: Path, version: int) -> LoraArtefact:
    """A rank-8 LoRA on q/k/v/o with random non-zero B, as the learner ships it (its LoraArtefact)."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForImageTextToText

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32), config)  # noqa: E501
    generator = torch.Generator().manual_seed(version)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    with tempfile.TemporaryDirectory() as tmp:  # PEFT's own serialisation of the config (key names included)
        model.save_pretrained(tmp)
        peft_config = json.loads((Path(tmp) / "adapter_config.json").read_text())
    # PEFT's saved keys drop the adapter name; get_peft_model_state_dict does the same
    return LoraArtefact(version=version, tensors=tensors, peft_config=peft_config)


def _throughput(core: RolloutWorkerCore, requests: list[RolloutRequest], group: int,
                sampling: SamplingConfig, repeats: int) -> dict[str, float]:
    core.generate(requests[:2], n=group, sampling=sampling)  # warm-up: first-call allocations
    rates, seconds, tokens = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        groups = core.generate(requests, n=group, sampling=sampling)
        elapsed = time.perf_counter() - start
        count = sum(len(c.token_ids) for g in groups for c in g.completions)
        rates.append(count / elapsed)
        seconds.append(elapsed)
        tokens.append(count)
    return {"tokens_per_s": statistics.median(rates), "seconds_per_call": statistics.median(seconds),
            "tokens_per_call": statistics.median(tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adapter-loads", type=int, default=5)
    args = parser.parse_args()
    from services.models.tiny import build_model_dir

    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as workdir:
        run(args, build_model_dir(Path(workdir) / "model", "qwen2_5_vl", args.size, seed=0))


def run(args: argparse.Namespace, model_dir: Path) -> None:
    """Measure both engines on the model in `model_dir` and write the results."""
    from services.models.tiny import parameter_count

    record = machine.start()
    requests = _requests(args.prompts)
    sampling = SamplingConfig(temperature=0.9, max_new_tokens=args.max_new_tokens)
    config = RolloutConfig(max_model_len=1024)
    adapters = [_adapter(model_dir, v) for v in range(1, args.adapter_loads + 1)]

    rows: dict[str, dict[str, Any]] = {}
    # The reference first: an in-process vLLM engine binds this process's threads to cores, which would
    # change the conditions transformers runs under afterwards.
    for engine in ("hf", "vllm"):
        start = time.perf_counter()
        core = RolloutWorkerCore(model_dir, config.model_copy(update={"engine": engine}))
        startup = time.perf_counter() - start
        row: dict[str, Any] = {"startup_s": startup,
                               **_throughput(core, requests, args.group, sampling, args.repeats)}
        loads = []
        for adapter in adapters:
            start = time.perf_counter()
            core.load_adapter(adapter)
            loads.append(time.perf_counter() - start)
        row["adapter_load_ms_median"] = 1000 * statistics.median(loads)
        row["adapter_load_ms_max"] = 1000 * max(loads)
        start = time.perf_counter()
        core.load_adapter(None)
        row["adapter_unload_ms"] = 1000 * (time.perf_counter() - start)
        core.close()
        rows[engine] = row

    ratio = rows["vllm"]["tokens_per_s"] / rows["hf"]["tokens_per_s"]
    print(f"\nrollout: {args.size} Qwen2.5-VL ({parameter_count(model_dir) / 1e6:.2f}M params), "
          f"{args.prompts} prompts x G={args.group}, <= {args.max_new_tokens} new tokens, temperature 0.9")
    print(f"{'engine':<8}{'tokens/s':>12}{'s/call':>10}{'tokens/call':>13}{'start s':>10}"
          f"{'adapter load ms (median/max)':>31}")
    for name, r in rows.items():
        print(f"{name:<8}{r['tokens_per_s']:>12.0f}{r['seconds_per_call']:>10.2f}{r['tokens_per_call']:>13.0f}"
              f"{r['startup_s']:>10.1f}{r['adapter_load_ms_median']:>20.1f} / {r['adapter_load_ms_max']:.1f}")
    print(f"vLLM / transformers throughput ratio: {ratio:.2f}x")

    result = {
        "benchmark": "rollout", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine.finish(record),
        "setup": {"model": f"qwen2_5_vl/{args.size}", "parameters": parameter_count(model_dir),
                  "prompts": args.prompts, "group_size": args.group, "max_new_tokens": args.max_new_tokens,
                  "temperature": 0.9, "repeats": args.repeats, "adapter_loads": args.adapter_loads},
        "engines": rows, "vllm_over_hf_tokens_per_s": ratio,
    }
    print(f"wrote {machine.write_json(result, machine.results_path('rollout'))}")


if __name__ == "__main__":
    main()
