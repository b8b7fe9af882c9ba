"""How often does a GRPO group carry no gradient under fixed tau = 0.5 versus the MedLoc-R1 schedule? (issue
4)

A mock policy predicts the ground-truth box with Gaussian corner jitter (pixels), jitter shrinking linearly
as "training" goes on (40 px -> 4 px over the run), on a 1024 x 1024 image, for several target sizes.
Every completion has the right format, so a group's rewards vary only through the accuracy term; a group
is zero-variance when its G rewards are all equal (docs/algorithms.md, "GRPO": spread <= 1e-6). The same
groups
are scored under fixed tau = 0.5, the schedule (defaults: N = 30, piecewise 0.3 -> 0.8) and raw IoU.

    python -m bench.sparsity [--quick]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from bench import machine
from rewards import ImageFrame, RewardConfig, RewardScorer, RewardTarget

G = 8
SIDES = (24, 48, 96, 192, 384)  # box side in px of a 1024 px image: 0.05 % .. 14 % of the area
EPS = 1e-6


def run(side: int, mode: str, steps: int, groups_per_step: int, seed: int) -> dict[str, float]:
    """Zero-variance fraction (whole run and last quarter), mean IoU and final tau for one box size and
    mode."""
    rng = np.random.default_rng(seed)  # same seed per size: every mode sees the same boxes and jitter
    frame = ImageFrame(1024.0, 1024.0, 1008.0, 1008.0, "input_pixels")
    to_model = 1008.0 / 1024.0
    scorer = RewardScorer(RewardConfig(accuracy=mode, w_recite=0.0))  # type: ignore[arg-type]
    zero: list[bool] = []
    all_fail: list[bool] = []
    ious: list[float] = []
    for t in range(steps):
        sigma = 40.0 + (4.0 - 40.0) * t / max(steps - 1, 1)  # px, shrinking as the mock policy "learns"
        batch = []
        for _ in range(groups_per_step):
            x, y = rng.uniform(0, 1024 - side, size=2)
            gt = (x, y, x + side, y + side)
            pred = np.asarray(gt) + rng.normal(0.0, sigma, size=(G, 4))  # [G, 4] original px
            # Corners in order and inside the image: format stays 1, so only accuracy can vary.
            pred = np.clip(np.concatenate([np.minimum(pred[:, :2], pred[:, 2:]),
                                           np.maximum(pred[:, :2], pred[:, 2:]) + 1.0],
                                          axis=1), 0.0, 1024.0)
            texts = [f'<think>t</think><answer>{{"bbox_2d": '
                     f'[{", ".join(f"{v * to_model:.1f}" for v in p)}]}}</answer>'
                     for p in pred]
            batch.append((texts, RewardTarget("grounding", boxes=(gt,), frame=frame)))
        scored = scorer.score_batch(batch, step=t, progress=t / steps)
        cols = scored.columns
        for g in range(cols.num_groups):
            r = cols.total[cols.offsets[g] : cols.offsets[g + 1]]
            acc = cols.r_acc[cols.offsets[g] : cols.offsets[g + 1]]
            zero.append(bool(r.max() - r.min() <= EPS))
            all_fail.append(bool(zero[-1] and acc.max() <= EPS))
        ious.extend(cols.iou.tolist())
    z = np.asarray(zero)
    tail = z[len(z) * 3 // 4 :]
    tau = scorer.snapshot(1.0).tau
    return {"zero_var": float(z.mean()), "zero_var_last_quarter": float(tail.mean()),
            "all_fail": float(np.mean(all_fail)),
            "mean_iou": float(np.mean(ious)), "final_tau": float("nan") if tau is None else tau}


def cell(r: dict[str, float]) -> str:
    return f"{r['zero_var']:.1%} ({r['all_fail']:.1%}) / {r['zero_var_last_quarter']:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter run (smoke test); writes nothing")
    args = parser.parse_args()
    record = machine.start()
    steps, per_step = (60, 8) if args.quick else (300, 16)
    rows: list[dict[str, Any]] = []
    print(f"zero-variance groups (G = {G}), {steps} steps x {per_step} groups, jitter 40 -> 4 px: "
          "whole run (of which all-fail) / last quarter of the run")
    print(f"{'side px':>7} {'area %':>6} | {'fixed tau 0.5':>24} | {'medloc schedule':>24} {'tau end':>7} | "
          f"{'raw IoU':>7} | mIoU")
    for side in SIDES:
        res = {mode: run(side, mode, steps, per_step, seed=side) for mode in ("fixed", "medloc", "raw_iou")}
        row = {"side_px": side, "area_pct": 100.0 * side * side / 1024**2, **{m: r for m, r in res.items()}}
        rows.append(row)
        f, m, r = res["fixed"], res["medloc"], res["raw_iou"]
        print(f"{side:>7} {row['area_pct']:>6.2f} | {cell(f):>24} | {cell(m):>24} {m['final_tau']:>7.2f} | "
              f"{r['zero_var']:>7.1%} | {f['mean_iou']:.3f}")
    result = {"group_size": G, "steps": steps, "groups_per_step": per_step,
              "jitter_px": [40.0, 4.0], "rows": rows,
              "machine": machine.finish(record)}
    if not args.quick:
        print(f"wrote {machine.write_json(result, machine.results_path('sparsity'))}")


if __name__ == "__main__":
    main()
