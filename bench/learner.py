"""What does a GRPO step cost the learner, plain (one sequence per completion) vs shared prefix (each prompt
once per group, the vision tower once per image per step; learner/packing.py)?

Two ``LearnerEngine``s, ``learner.shared_prefix`` false and true, the same config otherwise, take alternated
steps on the same batch: groups of G completions of one prompt with one image, each step on-policy (the
adapter version exported just before it). Cases:

- ``demo``: the demo's learner config (deploy/configs/demo.yaml) and shapes -- 8 prompts x G = 8, a
  ~167-token prompt (a 112 px image = 16 tokens, the rest text) and 43-token completions, the small
  qwen2_5_vl (random weights: time depends on shapes only).
- ``3b-cut``: the Qwen2.5-VL-3B widths cut to 2 text and 2 vision layers (``init-model --shape qwen2_5_vl_3b
  --layers 2 --vision-layers 2``), one prompt with a 1,024-token image (896 px), G = 4, 100-token
  completions, one micro-batch of 4 (the plain path's [4, L, 151,936] logits take ~3 GB per copy here).

The demo case also times each path KL-free (``learner.grpo.beta = 0``: no reference forward, no reference
copy) in the same alternation, against the demo's beta 0.04 (a reference forward with the adapter as the stage
began): ``kl_free_over_kl`` per path.

For each arm: step seconds (median of the timed rounds) and the tokens one forward pass computes (padding
excluded); the prefix share is the prompt's part of the plain path's tokens.

    python -m bench.learner                          # CPU, fp32, both cases (~15 min on 2 cores)
    python -m bench.learner --cases demo             # the demo case only (~2 min)
    python -m bench.learner --device cuda --cases demo   # one GPU, bf16 (tools/gpu_check.sh)

Prints a table and writes JSON to bench/results/learner.json (learner_gpu.json for CUDA runs); a case not
run this time is kept from the file already there (each case carries its own machine record and date).
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
import yaml

from bench import machine
from learner.batch import TrainBatch, TrainSample
from learner.config import LearnerConfig
from learner.packing import plan

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "deploy" / "configs" / "demo.yaml"


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark shape: the model, the batch (prompts x group), the prompt and completion lengths."""

    prompts: int
    group: int
    prompt_tokens: int
    completion_len: int
    image_px: int
    micro_batch: int
    warmup: int
    rounds: int
    shape: str | None = None  # a real shape cut to 2 + 2 layers, else the small qwen2_5_vl
    note: str = ""
    kl_free: bool = False  # also time each path with beta = 0 (no reference forward)


# An arm: (shared_prefix, beta = 0?); the config's beta otherwise.
ARMS = {"plain": (False, False), "shared": (True, False), "plain_kl_free": (False, True),
        "shared_kl_free": (True, True)}


CASES = {
    "demo": Case(prompts=8, group=8, prompt_tokens=167, completion_len=43, image_px=112, micro_batch=16,
                 warmup=2, rounds=8, note="deploy/configs/demo.yaml learner, small qwen2_5_vl", kl_free=True),
    "3b-cut": Case(prompts=1, group=4, prompt_tokens=1084, completion_len=100, image_px=896, micro_batch=4,
                   warmup=1, rounds=2, shape="qwen2_5_vl_3b",
                   note="Qwen2.5-VL-3B widths, 2 text + 2 vision layers, 1,024-token image"),
}


def make_batch(model_dir: Path, n: int, completion_len: int, image_px: int, seed: int = 0, group: int = 1,
               prompt_tokens: int | None = None) -> list[TrainSample]:
    """``n`` samples in groups of ``group`` consecutive completions sharing one chat prompt and one
    ``image_px`` square image (one tensor, as services/convert.grpo_samples shares it); the prompt's text is
    padded with words up to about ``prompt_tokens`` tokens; completions are ``completion_len`` text tokens."""
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir))
    rng = np.random.default_rng(seed)
    text_vocab = min(len(processor.tokenizer) - 32, 100_000)  # clear of the special and vision tokens
    out: list[TrainSample] = []
    for g in range(-(-n // group)):
        words = f"Locate finding {g}."
        while True:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": words}]}]
            text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            image = Image.fromarray(rng.integers(0, 255, (image_px, image_px, 3), dtype=np.uint8))
            enc = processor(text=[text], images=[image], return_tensors="pt")
            if prompt_tokens is None or enc["input_ids"].shape[1] >= prompt_tokens:
                break
            words += " the opacity lies near the left upper zone" * max(1, (prompt_tokens - enc["input_ids"].shape[1]) // 12)  # noqa: E501
        prompt = tuple(enc["input_ids"][0].tolist())
        types = tuple(enc["mm_token_type_ids"][0].tolist())
        for _ in range(min(group, n - len(out))):
            completion = tuple(int(t) for t in rng.integers(0, text_vocab, completion_len))
            out.append(TrainSample(prompt_ids=prompt, completion_ids=completion,
                                   advantage=float(rng.standard_normal()),
                                   pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"],
                                   mm_token_type_ids=types))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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


def computed_tokens(samples: list[TrainSample], micro_batch: int) -> dict[str, int]:
    """Tokens one forward pass computes on each path (padding excluded) and the step's vision patches."""
    made = plan(samples, micro_batch)
    shared = sum(len(samples[p.start].prompt_ids) + sum(len(samples[i].completion_ids) for i in p)
                 for mb in made.micro_batches for p in mb)
    patches = [s.pixel_values.shape[0] if s.pixel_values is not None else 0 for s in samples]
    return {"plain_tokens_per_pass": sum(s.num_tokens for s in samples), "shared_tokens_per_pass": shared,
            "plain_patches_per_pass": sum(patches),
            "shared_patches_per_step": sum(patches[i] for i in made.image_samples)}


def run_case(name: str, case: Case, cfg: LearnerConfig, device: torch.device, tmp: Path) -> dict[str, Any]:
    from learner.engine import LearnerEngine
    from services.models.tiny import build_model_dir

    record = machine.start()  # each case's own load record: cases may be taken from separate runs
    px = case.image_px * case.image_px
    if case.shape is None:
        model_dir = build_model_dir(tmp / name, "qwen2_5_vl", "small", seed=0, max_pixels=max(px, 112 * 112))
    else:
        model_dir = build_model_dir(tmp / name, shape=case.shape, layers=2, vision_layers=2, seed=0,  # type: ignore[arg-type]
                                    max_pixels=px, device=device.type)
    samples = make_batch(model_dir, case.prompts * case.group, case.completion_len, case.image_px,
                         group=case.group,
                         prompt_tokens=case.prompt_tokens)
    cfg = cfg.model_copy(update={"micro_batch_size": case.micro_batch})
    kl_free = cfg.grpo.model_copy(update={"beta": 0.0})
    arms = [a for a in ARMS if case.kl_free or not ARMS[a][1]]
    engines = {arm: LearnerEngine(model_dir, cfg.model_copy(update={
        "shared_prefix": ARMS[arm][0], **({"grpo": kl_free} if ARMS[arm][1] else {})})) for arm in arms}
    steps = {}
    for arm, engine in engines.items():
        engine.begin_stage("grpo", cfg.lr)
        versions = itertools.count(1)

        def step(engine: Any = engine, versions: Any = versions) -> None:
            v = next(versions)  # on-policy as in training: sampled by the version exported just before
            engine.export(v)
            engine.grpo_step(TrainBatch(tuple(dataclasses.replace(s, adapter_version=v) for s in samples)))

        steps[arm] = step
    try:
        times = time_interleaved(steps, device, case.warmup, case.rounds)
    finally:
        for engine in engines.values():
            engine.close()
    prompt = sum(len(s.prompt_ids) for s in samples)
    tokens = computed_tokens(samples, case.micro_batch)
    medians = {arm: statistics.median(ts) for arm, ts in times.items()}
    kl = {path: {"beta": cfg.grpo.beta, "kl_free_over_kl": medians[f"{path}_kl_free"] / medians[path],
                 "seconds_saved": medians[path] - medians[f"{path}_kl_free"]}
          for path in ("plain", "shared") if f"{path}_kl_free" in medians}
    return {"note": case.note, "machine": machine.finish(record), "date": time.strftime("%Y-%m-%d"),
            "prompts": case.prompts, "group": case.group, "micro_batch": case.micro_batch,
            "prompt_tokens": len(samples[0].prompt_ids), "completion_tokens": case.completion_len,
            "image_px": case.image_px, "prefix_share": prompt / sum(s.num_tokens for s in samples), **tokens,
            "warmup": case.warmup, "rounds": case.rounds,
            "results": {arm: {"step_s_median": medians[arm], "step_s_all": ts} for arm, ts in times.items()},
            "shared_over_plain": medians["shared"] / medians["plain"], **({"kl_free": kl} if kl else {})}


def kept_cases(path: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The cases of the result file at `path` that this run did not measure (none when there is no file)."""
    import json

    if not path.is_file():
        return {}
    cases = json.loads(path.read_text()).get("cases", {})
    return {name: row for name, row in cases.items() if name not in run}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    ap.add_argument("--steps", type=int, default=None, help="timed rounds per case (default: the case's)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    record = machine.start()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench.learner --device cuda: torch sees no CUDA device")
    os.environ["DS_ACCELERATOR"] = args.device
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    learner = yaml.safe_load(DEMO_CONFIG.read_text())["learner"]
    cfg = LearnerConfig.model_validate({**learner, "precision": "bf16" if cuda else "fp32"})
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            case = CASES[name] if args.steps is None else dataclasses.replace(CASES[name], rounds=args.steps)
            rows[name] = run_case(name, case, cfg, device, Path(tmp))
    out_path = args.out or machine.results_path("learner", gpu=cuda)
    rows = {**rows, **kept_cases(out_path, rows)}
    result = {
        "question": "GRPO learner step, plain (one sequence per completion) vs shared prefix (each prompt "
                    "once per group, the vision tower once per image per step), same engine config and "
                    "batch; and with beta = 0 (no reference forward) against the config's beta (kl_free)",
        "machine": machine.finish(record), "device": args.device, "precision": "bf16" if cuda else "fp32",
        "learner": f"{DEMO_CONFIG.relative_to(ROOT)} learner section (micro-batch per case)",
        "adapter": cfg.adapter,
        "cases": rows, "date": time.strftime("%Y-%m-%d"),
    }
    print(f"GRPO learner step, plain vs shared prefix, {args.device} {result['precision']}; "
          f"{machine.describe(result['machine'])}")
    print(f"{'case':<8}{'arm':<8}{'step s':>10}{'tokens/pass':>13}{'prefix share':>14}{'shared/plain':>14}")
    for name, r in rows.items():
        for arm in ("plain", "shared"):
            ratio = f"{r['shared_over_plain']:.3f}" if arm == "shared" else ""
            print(f"{name:<8}{arm:<8}{r['results'][arm]['step_s_median']:>10.3f}{r[f'{arm}_tokens_per_pass']:>13}"
                  f"{r['prefix_share']:>14.0%}{ratio:>14}")
    for name, r in rows.items():
        for path, k in r.get("kl_free", {}).items():
            kl_s, free_s = (r["results"][a]["step_s_median"] for a in (path, f"{path}_kl_free"))
            print(f"{name} {path}: beta {k['beta']} -> 0 (no reference forward): {kl_s:.3f} -> {free_s:.3f} "
                  f"s/step ({k['kl_free_over_kl']:.3f}x, {k['seconds_saved']:.3f} s saved)")
    out = machine.write_json(result, out_path)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
