"""MLAE against PEFT LoRA at the same rank: forward+backward time, activation memory, trainable parameters.

    python -m bench.mlae [--repeats 12] [--configs tiny,large]

Configs: the tiny test model (hidden 128, 2 layers) and a larger random Qwen2.5-VL built in memory
(hidden 1024, 4 layers, head size 32, never saved). Adapters on q/k/v/o, rank 8. Variants: PEFT LoRA
(the reference), MLAE with the stochastic mask (p = 0.5) and MLAE without a mask (p = 0). Timings interleave
the variants round by round, so drift from other processes on a shared machine hits all of them alike;
the median of process CPU time (one thread by default) is the compared figure, because wall time on a
shared 2-core machine swings by a factor of 3 with other tenants' load; wall medians and minima are
recorded beside it. Memory is the bytes autograd saves for backward (exact, machine-independent),
since peak RSS on CPU cannot be attributed to one variant in one process. Target: MLAE overhead <= 10 %.
Writes bench/results/mlae.json with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import machine
from learner.config import MLAEConfig
from learner.mlae import apply_mlae

RANK = 8
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# name -> (batch, sequence length)
SHAPES = {"tiny": (8, 128), "large": (2, 256)}


def _large_model() -> nn.Module:
    """A random Qwen2.5-VL with a 1024-wide, 4-layer language model (~60M parameters), built in memory."""
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    text = dict(vocab_size=512, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
                tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=1024,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[1])
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(Qwen2_5_VLConfig(text_config=text, vision_config=vision),
                                                   dtype=torch.float32)


def _models(name: str, tmp: Path) -> dict[str, nn.Module]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    if name == "tiny":
        from services.models.tiny import build_model_dir

        model_dir = build_model_dir(tmp / "tiny", "qwen2_5_vl", "tiny", seed=0)

        def base() -> nn.Module:
            return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    else:
        base = _large_model
    torch.manual_seed(0)
    models = {
        "lora": get_peft_model(base(), LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=list(TARGETS))),
        "mlae_p0.5": apply_mlae(base(), MLAEConfig(rank=RANK, p=0.5, target_modules=TARGETS)),
        "mlae_p0": apply_mlae(base(), MLAEConfig(rank=RANK, mask="none", target_modules=TARGETS)),
    }
    for model in models.values():
        model.train()
        with torch.no_grad():  # non-zero B so every variant does the same work as after a few steps
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.01)
    return models


def _step(model: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
    return run


def _saved_bytes(run: Callable[[], None]) -> int:
    """Bytes of tensors autograd saves for backward during one forward (activation memory)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total


def bench_config(name: str, repeats: int) -> dict[str, Any]:
    batch, length = SHAPES[name]
    with tempfile.TemporaryDirectory() as tmp:
        models = _models(name, Path(tmp))
    ids = torch.randint(0, 500, (batch, length), generator=torch.Generator().manual_seed(0))  # [B, L]
    runs = {k: _step(m, ids) for k, m in models.items()}
    for run in runs.values():  # warm-up: allocator, kernels
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    out: dict[str, Any] = {"batch": batch, "seq_len": length, "rank": RANK, "targets": list(TARGETS),
                           "repeats": repeats, "variants": {}}
    ref = statistics.median(cpu["lora"])
    for key, model in models.items():
        med = statistics.median(cpu[key])
        out["variants"][key] = {
            "fwd_bwd_cpu_ms_median": round(1e3 * med, 2),
            "fwd_bwd_wall_ms_median": round(1e3 * statistics.median(times[key]), 2),
            "fwd_bwd_wall_ms_min": round(1e3 * min(times[key]), 2),
            "overhead_vs_lora_pct": round(100 * (med / ref - 1), 1),
            "saved_activation_mb": round(_saved_bytes(runs[key]) / 2**20, 2),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in model.parameters()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--configs", default="tiny,large")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 makes process CPU time a clean measure of work on a shared "
                             "machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = machine.start()
    result: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "configs": {}}
    for name in args.configs.split(","):
        result["configs"][name] = bench_config(name, args.repeats)
    print(f"{'config':<7} {'variant':<10} {'CPU ms':>9} {'wall ms':>9} {'vs LoRA':>8} {'saved MB':>9} "
          f"{'trainable':>10}")
    for name, cfg in result["configs"].items():
        for key, v in cfg["variants"].items():
            print(f"{name:<7} {key:<10} {v['fwd_bwd_cpu_ms_median']:>9.1f} "
                  f"{v['fwd_bwd_wall_ms_median']:>9.1f} {v['overhead_vs_lora_pct']:>7.1f}% "
                  f"{v['saved_activation_mb']:>9.2f} {v['trainable_params']:>10,}")
    out = machine.write_json({**result, "machine": machine.finish(record)}, machine.results_path("mlae"))
    worst = max(v["overhead_vs_lora_pct"] for c in result["configs"].values()
                for k, v in c["variants"].items() if k != "lora")
    print(f"MLAE worst median overhead vs PEFT LoRA: {worst:+.1f} % (target <= 10 %); wrote {out}")


if __name__ == "__main__":
    main()
