"""Is a base on a target set in MedLoc-R1's sparse regime? (issue 28's gate, before the study runs)

The paper's claim is about findings small enough that a fixed IoU threshold pays almost nothing early: groups
of G samples all fail at tau 0.5, their advantages are zero and the gradient vanishes, while the schedule's
lower start (tau 0.3) still pays some of them. For a base (a recipe of deploy/configs/bases/) and synthetic
targets of one area band (box / image), this measures on held-out images, at each sampling temperature:

- sampled A@0.3 / A@0.5 / A@0.8 (pass@1 over G samples per image), and the greedy numbers;
- the fraction of images whose G samples are all on one side of tau, i.e. a zero-variance group of the first
  GRPO step, at tau 0.3 and tau 0.5 (the accuracy term only: the format term is 1 for nearly every sample
  of a pretrained base, so it moves no group's spread).

The gate (issue 28): sampled A@0.5 <= 15 % and sampled A@0.3 >= 40 % at the study's temperature, so that at
fixed tau 0.5 at least half of the first steps' groups have zero variance and at tau 0.3 at most a quarter.

    python -m bench.sparse_gate --base deploy/configs/bases/demo.yaml --areas 0.01,0.02 0.005,0.01 \
        --temperatures 0.6 0.9 --images 100 --samples 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine

GATE = {"sampled_A@0.5_max": 15.0, "sampled_A@0.3_min": 40.0, "zero_var_tau0.5_min": 0.5,
        "zero_var_tau0.3_max": 0.25}


def zero_variance_fraction(ious: np.ndarray, tau: float) -> float:
    """`ious [n, G]`: the fraction of groups whose accuracy rewards (IoU >= tau) are all equal."""
    hits = ious >= tau  # [n, G]
    return float(np.mean(hits.all(axis=1) | (~hits).all(axis=1)))


def measure(model_dir: Path, data: Path, temperatures: list[float], samples: int, seed: int,
            recipe: Any) -> dict[str, Any]:
    """Greedy and sampled numbers of one model on one manifest's val split, per temperature."""
    from rollout.config import RolloutConfig, SamplingConfig
    from rollout.core import RolloutWorkerCore
    from rollout.knowledge import load_knowledge
    from services import evaluation
    from services.data.manifest import load_manifest
    from services.evaluation.metrics import grounding_metrics, sampled_metrics

    manifest = load_manifest(data).with_sizes()
    records = manifest.select(split="val", task="grounding")
    engine = RolloutConfig(engine="vllm", engine_in_process=False, max_model_len=1024,
                           min_pixels=recipe.min_pixels, max_pixels=recipe.max_pixels)
    core = RolloutWorkerCore(model_dir, engine, load_knowledge(Path("deploy/knowledge")))
    max_new_tokens = recipe.max_new_tokens
    out: dict[str, Any] = {"images": len(records)}
    try:
        greedy = evaluation.predict(core, manifest, records, max_new_tokens)
        out["greedy"] = grounding_metrics([p.iou for p in greedy], [p.box is not None for p in greedy])
        for t in temperatures:
            sampling = SamplingConfig(temperature=t, max_new_tokens=max_new_tokens)
            ious = np.asarray(list(evaluation.predict_sampled(core, manifest, records, samples, sampling,
                                                              seed).values()))  # [n, G]
            out[f"T{t}"] = {"sampled": sampled_metrics(ious.tolist()),
                            "zero_var_tau0.3": zero_variance_fraction(ious, 0.3),
                            "zero_var_tau0.5": zero_variance_fraction(ious, 0.5),
                            "all_fail_tau0.5": float(np.mean((ious < 0.5).all(axis=1)))}
    finally:
        core.close()
    return out


def passes(row: dict[str, Any]) -> bool:
    s = row["sampled"]
    return (s["A@0.5"] <= GATE["sampled_A@0.5_max"] and s["A@0.3"] >= GATE["sampled_A@0.3_min"]
            and row["zero_var_tau0.5"] >= GATE["zero_var_tau0.5_min"]
            and row["zero_var_tau0.3"] <= GATE["zero_var_tau0.3_max"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="deploy/configs/bases/demo.yaml",
                        help="base recipe (built when missing)")
    parser.add_argument("--model-dir", default=None,
                        help="where the base is built (default models/base-<recipe>)")
    parser.add_argument("--areas", nargs="+", default=["0.01,0.02"], help="area bands LOW,HIGH (box / image)")
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.6, 0.9])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--samples", type=int, default=8, help="G: samples per image (a group)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="sparse_gate")
    args = parser.parse_args()
    from services.data.synth import make_spec, write_dataset
    from services.models.pretrain import build_base, is_built, load_recipe

    record = machine.start()
    recipe = load_recipe(args.base)
    model_dir = Path(args.model_dir or f"models/base-{Path(args.base).stem}")
    if not is_built(recipe, model_dir):
        build_base(recipe, model_dir)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mg-gate-") as tmp:
        for band in args.areas:
            low, high = (float(v) for v in band.split(","))
            data = write_dataset(make_spec("demo", splits={"train": 0, "val": args.images, "test": 0},
                                           area_buckets=((low, high),)),
                                 Path(tmp) / band, seed=args.seed, manifest_name="manifest.jsonl")
            row = {"areas": [low, high], **measure(model_dir, data, args.temperatures,
                                                   args.samples, args.seed,
                                                   recipe)}
            row["gate"] = {f"T{t}": passes(row[f"T{t}"]) for t in args.temperatures}
            rows.append(row)
            for t in args.temperatures:
                r, s = row[f"T{t}"], row[f"T{t}"]["sampled"]
                print(f"areas {low:.3f}-{high:.3f}  T {t}: greedy A@0.5 "
                      f"{row['greedy']['A@0.5']:5.1f}  sampled A@0.3 {s['A@0.3']:5.1f}  A@0.5 "
                      f"{s['A@0.5']:5.1f}  A@0.8 {s['A@0.8']:4.1f}  zero-variance tau 0.3 "
                      f"{r['zero_var_tau0.3']:.2f}  tau 0.5 {r['zero_var_tau0.5']:.2f}  gate "
                      f"{'PASS' if row['gate'][f'T{t}'] else 'fail'}", flush=True)
    result = {"question": "is this base on these targets in MedLoc-R1's sparse regime (issue 28's gate)?",
              "base": args.base, "model_dir": str(model_dir), "gate": GATE, "samples_per_image": args.samples,
              "rows": rows, "wall_s": time.perf_counter() - t0, "machine": machine.finish(record)}
    path = machine.write_json(result, machine.results_path(args.out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
