"""Real model shapes: what a learner step costs at real width, and what an adapter push moves.

Two questions, one table each:

1. Per-step seconds and memory at real width (measured). The Qwen2.5-VL-3B and -7B shapes (random
   weights, the real Qwen tokenizer) are cut to 1 and 2 text layers and 2 vision blocks on CPU; each
   configuration runs in its own process (a clean peak RSS): the DeepSpeed learner (ZeRO-2, MLAE on all
   seven language-model projections) does SFT and GRPO steps on a fixed batch, then transformers
   generates. Depth is linear in both, so the full-depth line is extrapolated from the two measured
   depths (1 layer + (L - 1) x the per-layer difference), and labelled so. On a GPU
   (`--device cuda`, run by `make gpu-check`) the 3B shape runs at full depth in bf16: nothing is
   extrapolated, memory is the CUDA allocator's peak.
2. Bytes per weight sync (computed from the shapes, no model built): the adapter the learner pushes after
   each step (rank 16 and 64 on all seven projections at the real depth, fp32 as exported) against
   sending the full weights (bf16, every parameter, counted on a meta-device model).

    python -m bench.shapes                     # CPU (make bench-shapes): ~15 min on 2 cores
    python -m bench.shapes --device cuda       # one GPU, 3B at full depth, bf16 (tools/gpu_check.sh)

Writes bench/results/shapes.json (shapes_gpu.json for CUDA) with the machine recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine

SYNC_SHAPES = ("qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen3_vl_4b", "qwen3_vl_8b")


def sync_table() -> list[dict[str, Any]]:
    """Adapter bytes per push (rank 16, 64; fp32) vs full weights (bf16) at each shape's real depth."""
    import torch
    from transformers import AutoModelForImageTextToText

    from services.models.shapes import REAL, lora_bytes
    from services.models.tiny import SPECIAL_TOKENS, model_config

    ids = {t: 151643 + i for i, t in enumerate(SPECIAL_TOKENS)}
    rows = []
    for name in SYNC_SHAPES:
        shape = REAL[name]  # type: ignore[index]
        with torch.device("meta"):
            params = sum(p.numel()
                         for p in AutoModelForImageTextToText.from_config(model_config(shape, ids)).parameters())  # noqa: E501
        full = 2 * params
        rows.append({"shape": name, "layers": shape.layers, "parameters": params,
                     "full_weights_bf16_bytes": full,
                     **{f"lora_r{r}_bytes": lora_bytes(shape, r) for r in (16, 64)},
                     **{f"lora_r{r}_share_of_full": lora_bytes(shape, r) / full for r in (16, 64)}})
    return rows


def _rss_gib() -> float:
    """Resident set size of this process now (Linux /proc), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def measure(model_dir: Path, rank: int, device: str, batch: int, completion_len: int, image_px: int,
            steps: int, gen_tokens: int) -> dict[str, Any]:
    """One configuration, in this process: learner SFT and GRPO steps, then generation. Returns seconds,
    tokens/s and memory."""
    import torch

    from bench.learner import make_batch
    from learner.config import LearnerConfig
    from learner.engine import LearnerEngine
    from rollout.images import FAMILIES, family_of

    cuda = device == "cuda"
    family = family_of(model_dir)
    samples = make_batch(model_dir, batch, completion_len, image_px)
    cfg = LearnerConfig(micro_batch_size=batch, zero_stage=2, precision="bf16" if cuda else "fp32",
                        torch_threads=0,
                        mlae={"rank": rank, "target_modules": FAMILIES[family].lora_modules})  # type: ignore[arg-type]
    engine = LearnerEngine(model_dir, cfg)
    out: dict[str, Any] = {"rss_after_load_gib": _rss_gib()}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for kind, step in (("sft", engine.sft_step), ("grpo", engine.grpo_step)):
            times = []
            for i in range(steps + 1):  # the first is a warm-up
                sync()
                t0 = time.perf_counter()
                step(samples)
                sync()
                if i:
                    times.append(time.perf_counter() - t0)
            out[f"{kind}_step_s"] = statistics.median(times)
        tokens = sum(s.num_tokens for s in samples)
        out["learner_tokens_per_s"] = tokens / out["grpo_step_s"]
        export_t0 = time.perf_counter()
        artefact = engine.export(1)
        out["export_s"] = time.perf_counter() - export_t0
        out["adapter_bytes"] = sum(t.numel() * t.element_size() for t in artefact.tensors.values())
        if cuda:
            out["learner_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    finally:
        engine.close()
    del engine
    out.update(generate(model_dir, samples, cuda, gen_tokens))
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def generate(model_dir: Path, samples: list[Any], cuda: bool, new_tokens: int) -> dict[str, Any]:
    """Greedy generation of `new_tokens` per prompt for the batch's prompts (one call), tokens/s."""
    import torch
    from transformers import AutoModelForImageTextToText

    device = torch.device("cuda" if cuda else "cpu")
    model = AutoModelForImageTextToText.from_pretrained(
        str(model_dir), dtype=torch.bfloat16 if cuda else torch.float32).to(device).eval()
    n = len(samples)
    ids = torch.tensor([s.prompt_ids for s in samples], device=device)  # same-size images: equal lengths
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.cat([s.pixel_values for s in samples]).to(device, model.dtype),
              "image_grid_thw": torch.cat([s.image_grid_thw for s in samples]).to(device),
              "mm_token_type_ids": torch.tensor([s.mm_token_type_ids for s in samples], device=device)}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    out = {"generate_batch": n, "generate_new_tokens": new_tokens, "generate_s": seconds,
           "generate_tokens_per_s": n * new_tokens / seconds}
    if cuda:
        out["generate_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _extrapolate(rows: list[dict[str, Any]], full_layers: dict[str, int]) -> list[dict[str, Any]]:
    """Full-depth estimates from two measured depths of the same shape and rank (linear in depth)."""
    out = []
    keys = ("sft_step_s", "grpo_step_s", "peak_rss_gib", "rss_after_load_gib", "adapter_bytes")
    for shape, rank in sorted({(r["shape"], r["rank"]) for r in rows}):
        by_depth = {r["layers"]: r for r in rows if r["shape"] == shape and r["rank"] == rank}
        if len(by_depth) < 2:
            continue
        (d1, a), (d2, b) = sorted(by_depth.items())[:2]
        depth = full_layers[shape]
        est = {k: a[k] + (b[k] - a[k]) / (d2 - d1) * (depth - d1) for k in keys}
        out.append({"shape": shape, "rank": rank, "layers": depth,
                    "extrapolated_from_layers": [d1, d2], **est})
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--shapes", nargs="+", default=None, help="default: 3b and 7b on CPU, 3b on CUDA")
    ap.add_argument("--layers", nargs="+", type=int, default=None,
                    help="text depths (CPU: 1 2; CUDA: the full depth)")
    ap.add_argument("--vision-layers", type=int, default=None, help="vision blocks (CPU: 2; CUDA: all)")
    ap.add_argument("--ranks", nargs="+", type=int, default=None,
                    help="adapter ranks measured (CPU: 64; CUDA: 16 64)")
    ap.add_argument("--batch", type=int, default=None, help="samples per step (CPU 2, CUDA 8)")
    ap.add_argument("--completion-len", type=int, default=32)
    ap.add_argument("--image-px", type=int, default=224)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per kind after one warm-up")
    ap.add_argument("--gen-tokens", type=int, default=None,
                    help="generated tokens per prompt (CPU 16, CUDA 128)")
    ap.add_argument("--dry-run", action="store_true",
                    help="the sync table and the plan only: build and run nothing")
    # child process: a model dir
    ap.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    cuda = args.device == "cuda"
    os.environ["DS_ACCELERATOR"] = args.device
    args.batch = args.batch or (8 if cuda else 2)
    args.gen_tokens = args.gen_tokens or (128 if cuda else 16)
    if args.measure is not None:  # the child: one configuration, JSON on the last line of stdout
        res = measure(args.measure, args.rank, args.device, args.batch, args.completion_len, args.image_px,
                      args.steps, args.gen_tokens)
        print(json.dumps(res))
        return res

    from services.models.shapes import REAL

    record = machine.start()
    shapes = args.shapes or (["qwen2_5_vl_3b"] if cuda else ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
    ranks = args.ranks or ([16, 64] if cuda else [64])
    result: dict[str, Any] = {
        "question": "learner step and generation at real width; adapter bytes per push vs full-weight sync",
        "machine": record, "device": args.device, "precision": "bf16" if cuda else "fp32",
        "date": time.strftime("%Y-%m-%d"), "sync": sync_table(),
        "batch": args.batch, "completion_len": args.completion_len, "image_px": args.image_px,
        "steps": args.steps}
    _print_sync(result["sync"])
    plan = [(s, n, r) for s in shapes for n in (args.layers or ([REAL[s].layers] if cuda else [1, 2]))  # type: ignore[index]
            for r in ranks]
    vision = args.vision_layers or (None if cuda else 2)
    print(f"plan: {len(plan)} runs: " + ", ".join(f"{s} {n} layers rank {r}" for s, n, r in plan)
          + f"; {vision or 'all'} vision blocks, batch {args.batch}, {args.image_px} px images, "
          f"{args.device}")
    if args.dry_run:
        return result
    rows = _run_plan(plan, vision, args)
    result["measured"] = rows
    depths = {s: REAL[s].layers for s in shapes}  # type: ignore[index]
    result["extrapolated"] = [] if cuda else _extrapolate(rows, depths)
    _print_measured(rows, result["extrapolated"], args.device, record)
    result["machine"] = machine.finish(record)
    out = machine.write_json(result, args.out or machine.results_path("shapes", gpu=cuda))
    print(f"wrote {out}")
    return result


def _run_plan(plan: list[tuple[str, int, int]], vision: int | None,
              args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each (shape, text layers, rank) measured in a child process (a clean peak RSS), on a model built
    for it (one on disk at a time)."""
    from services.models.shapes import REAL
    from services.models.tiny import build_model_dir

    cuda, rows = args.device == "cuda", []
    with tempfile.TemporaryDirectory(prefix="medground-shapes-") as tmp:
        built: dict[tuple[str, int], Path] = {}
        for shape, layers, rank in plan:
            if (shape, layers) not in built:
                for old in built.values():  # one model on disk at a time (a 7B layer is ~1 GB)
                    subprocess.run(["rm", "-rf", str(old)], check=True)
                built.clear()
                t0 = time.perf_counter()
                built[(shape, layers)] = build_model_dir(
                    Path(tmp) / f"{shape}-{layers}", shape=shape, layers=layers, vision_layers=vision,  # type: ignore[arg-type]
                    dtype="bfloat16" if cuda else "float32", device="cuda" if cuda else "cpu",
                    min_pixels=args.image_px ** 2, max_pixels=args.image_px ** 2)
                print(f"built {shape} ({layers} layers) in {time.perf_counter() - t0:.0f} s", flush=True)
            cmd = [sys.executable, "-m", "bench.shapes", "--measure", str(built[(shape, layers)]),
                   "--rank", str(rank), "--device", args.device, "--batch", str(args.batch),
                   "--completion-len", str(args.completion_len), "--image-px", str(args.image_px),
                   "--steps", str(args.steps), "--gen-tokens", str(args.gen_tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
                raise SystemExit(f"bench.shapes: {shape} {layers} layers rank {rank} failed (output above)")
            row = {"shape": shape, "layers": layers, "vision_layers": vision or REAL[shape].vision_depth,  # type: ignore[index]
                   "rank": rank, **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(_row_line(row), flush=True)
    return rows


def _print_sync(rows: list[dict[str, Any]]) -> None:
    print(f"{'shape':<15}{'layers':>7}{'params':>15}{'full bf16':>11}{'LoRA r16':>10}{'r16/full':>9}"
          f"{'LoRA r64':>10}{'r64/full':>9}")
    for r in rows:
        print(f"{r['shape']:<15}{r['layers']:>7}{r['parameters']:>15,}{r['full_weights_bf16_bytes'] / 2**30:>9.2f}Gi"  # noqa: E501
              f"{r['lora_r16_bytes'] / 2**20:>8.0f}Mi{r['lora_r16_share_of_full']:>9.1%}"
              f"{r['lora_r64_bytes'] / 2**20:>8.0f}Mi{r['lora_r64_share_of_full']:>9.1%}")


def _print_measured(rows: list[dict[str, Any]], extrapolated: list[dict[str, Any]], device: str,
                    record: dict[str, Any]) -> None:
    print(f"\n{'shape':<15}{'layers':>7}{'rank':>5}{'SFT s':>8}{'GRPO s':>8}{'learner tok/s':>14}{'gen tok/s':>10}"  # noqa: E501
          f"{'peak GiB':>9}   ({device}, {record['gpu'] or str(record['cores']) + ' cores'})")
    for row in rows:
        print(_row_line(row))
    for est in extrapolated:
        print(f"{est['shape']:<15}{est['layers']:>7}{est['rank']:>5}{est['sft_step_s']:>8.2f}{est['grpo_step_s']:>8.2f}"
              f"{'':>14}{'':>10}{est['peak_rss_gib']:>9.2f}   extrapolated from {est['extrapolated_from_layers']} layers")  # noqa: E501


def _row_line(r: dict[str, Any]) -> str:
    peak = r.get("learner_peak_gib", r["peak_rss_gib"])
    return (f"{r['shape']:<15}{r['layers']:>7}{r['rank']:>5}{r['sft_step_s']:>8.2f}{r['grpo_step_s']:>8.2f}"
            f"{r['learner_tokens_per_s']:>14.0f}{r['generate_tokens_per_s']:>10.1f}{peak:>9.2f}")


if __name__ == "__main__":
    main()
