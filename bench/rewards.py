"""How fast does the reward actor score completions? (issue 4)

Completions per second through the Ray actor at batch sizes 64..4096 (one call per batch, G = 8), beside a
plain per-completion Python scorer (parse_answer + to_original + scalar iou + a breakdown per completion)
measured in the same run, plus the in-process vectorised scorer, the driver-side cost of building
breakdown objects, the actor latency of a 512-completion step, and what the recitation BLEU term costs.
Targets: >= 100k completions/s at batch 1024, < 20 ms actor latency at 512.

    python -m bench.rewards [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import machine
from rewards import (
    ImageFrame,
    RewardBreakdown,
    RewardConfig,
    RewardScorer,
    RewardTarget,
    best_iou,
    parse_answer,
    to_original,
)

G = 8
KNOWLEDGE = ("A pulmonary nodule is a round or oval opacity up to 3 cm across, surrounded by aerated lung, "
             "most often in the upper lobes; calcification suggests a benign cause.")


def make_batch(n: int, seed: int, knowledge: str = "") -> list[tuple[list[str], RewardTarget]]:
    """n completions in groups of G: 1024x1024 images seen as 1008x1008, jittered boxes, 10 % malformed."""
    rng = random.Random(seed)
    frame = ImageFrame(1024.0, 1024.0, 1008.0, 1008.0, "input_pixels")
    groups = []
    for _ in range(n // G):
        x, y, s = rng.uniform(0, 700), rng.uniform(0, 700), rng.uniform(20, 300)
        target = RewardTarget("grounding", boxes=((x, y, x + s, y + s),), frame=frame, knowledge=knowledge)
        texts = []
        for _ in range(G):
            j = [round(v + rng.gauss(0, 15)) for v in (x, y, x + s, y + s)]
            if rng.random() < 0.1:
                texts.append(f"the box is {j}")  # no tags: unparsable
            else:
                texts.append("<think>An opacity in the right upper zone, round, about two centimetres across."
                             f'</think><answer>{{"bbox_2d": [{j[0]}, {j[1]}, {j[2]}, {j[3]}]}}</answer>')
        groups.append((texts, target))
    return groups


def plain_scorer(groups: list[tuple[list[str], RewardTarget]], tau: float,
                 cfg: RewardConfig) -> list[RewardBreakdown]:
    """The obvious loop over the same primitives: the reference the vectorised path is compared with."""
    out = []
    for texts, target in groups:
        assert target.frame is not None
        for text in texts:
            parsed = parse_answer(text, "grounding", target.frame)
            box = None if parsed is None or parsed.box is None else to_original(parsed.box, target.frame)
            v = best_iou(box, target.boxes)
            fmt = 1.0 if parsed is not None and parsed.format_ok else 0.0
            acc = 1.0 if v >= tau else 0.0
            task = cfg.w_acc * acc + cfg.w_format * fmt
            out.append(RewardBreakdown(task, task, acc, fmt, 0.0, 0.0, v, box, fmt == 1.0, tau, 0))
    return out


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and sizes (smoke run); writes nothing "
                        "to bench/results")
    args = parser.parse_args()
    import ray

    from rewards.actor import create_reward_actor

    sizes = [64, 1024] if args.quick else [64, 256, 512, 1024, 2048, 4096]
    repeats = 5 if args.quick else 25
    record = machine.start()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # no knowledge injected: the recitation term is measured separately below
    cfg = RewardConfig(w_recite=0.0)
    actor = create_reward_actor(cfg)
    local = RewardScorer(cfg)
    rows = []
    for n in sizes:
        groups = make_batch(n, seed=n)
        ref = ray.put(groups)  # the driver ships a batch once; the actor call is what is timed
        t_plain = statistics.median(timed(lambda g=groups: plain_scorer(g, 0.3, cfg), max(3, repeats // 3)))
        t_local = statistics.median(timed(lambda g=groups: local.score_batch(g), repeats))
        t_actor = timed(lambda r=ref: ray.get(actor.score_batch.remote(r)), repeats)
        t_objs = statistics.median(timed(lambda g=groups: local.score_batch(g).groups, repeats))
        row = {"batch": n, "plain_python_per_s": n / t_plain, "vectorised_in_process_per_s": n / t_local,
               "actor_per_s": n / statistics.median(t_actor), "actor_median_ms": 1e3
               * statistics.median(t_actor),
               "actor_p90_ms": 1e3 * float(np.percentile(t_actor, 90)),
               "in_process_with_breakdown_objects_per_s": n / t_objs}
        rows.append(row)
        print(f"batch {n:5d}: plain {row['plain_python_per_s']:>9,.0f}/s | vectorised "
              f"{row['vectorised_in_process_per_s']:>9,.0f}/s | actor {row['actor_per_s']:>9,.0f}/s "
              f"({row['actor_median_ms']:.2f} ms, p90 {row['actor_p90_ms']:.2f}) | +objects "
              f"{row['in_process_with_breakdown_objects_per_s']:>9,.0f}/s")
    # Step latency as the driver sees it: ship the 512 completions with the call.
    step = make_batch(512, seed=7)
    lat = timed(lambda: ray.get(actor.score_batch.remote(step)), repeats)
    latency = {"median_ms": 1e3 * statistics.median(lat), "p90_ms": 1e3 * float(np.percentile(lat, 90))}
    print(f"512-completion step, batch shipped with the call: median {latency['median_ms']:.2f} ms, "
          f"p90 {latency['p90_ms']:.2f} ms (target < 20 ms)")
    # Recitation: BLEU per completion when knowledge is injected and w_recite != 0 (default -0.5).
    rec = make_batch(512, seed=9, knowledge=KNOWLEDGE)
    with_bleu = RewardScorer(RewardConfig())
    t_rec = statistics.median(timed(lambda: with_bleu.score_batch(rec), max(3, repeats // 5)))
    t_norec = statistics.median(timed(lambda: local.score_batch(rec), repeats))
    recitation = {"batch": 512, "with_recitation_per_s": 512 / t_rec, "without_per_s": 512 / t_norec,
                  "bleu_us_per_completion": 1e6 * (t_rec - t_norec) / 512}
    print(f"recitation (sacrebleu sentence BLEU): {recitation['with_recitation_per_s']:,.0f}/s with, "
          f"{recitation['without_per_s']:,.0f}/s without = {recitation['bleu_us_per_completion']:.0f} us "
          "per completion")
    at_1024 = next((r for r in rows if r["batch"] == 1024), None)
    summary = (f"actor {at_1024['actor_per_s']:,.0f} completions/s at 1024 (plain Python "
               f"{at_1024['plain_python_per_s']:,.0f}/s); 512-step latency {latency['median_ms']:.1f} ms"
               if at_1024 else "")
    print(summary)
    ray.shutdown()
    result = {"group_size": G, "rows": rows, "latency_512": latency, "recitation": recitation,
              "summary": summary,
              "note": "medians of repeated calls", "machine": machine.finish(record)}
    print(machine.describe(result["machine"]))
    if not args.quick:
        print(f"wrote {machine.write_json(result, machine.results_path('rewards'))}")


if __name__ == "__main__":
    main()
