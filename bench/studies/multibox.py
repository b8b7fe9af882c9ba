"""Zero, one or many boxes (issue 31): the set reward versus the single-box reward, from one SFT warm start
on list answers, on synthetic images with 0-3 lesions and normals (deploy/configs/bench_multibox.yaml).

Arms: `sft` (the warm start itself: before GRPO), `grpo_set` (GRPO with `reward.boxes: set`), `grpo_single`
(the same GRPO steps, prompts and seeds with `reward.boxes: single`, the old reward). Reports the
false-positive rate on the normals and the recall on multi-lesion images (IoU >= 0.5), with AP@0.5, the miss
rate and F1@0.5, before and after GRPO. Writes bench/results/multibox.json/.md.

    python -m bench.studies.multibox              # seed 0 (about 15-20 min on 2 cores, base build included)
    python -m bench.studies.multibox --seeds 0 1 2
"""

from __future__ import annotations

import argparse

from bench.studies.arms import Arm, Row, Study

CONFIG = "deploy/configs/bench_multibox.yaml"
ARMS = (
    Arm("sft", train=False, note="the SFT warm start on list answers ([] for normals): before GRPO"),
    Arm("grpo_set", note="GRPO with the set reward (F1 of Hungarian matches at tau; [] on a normal: 1)"),
    Arm("grpo_single", ("reward.boxes=single",),
        note="the same GRPO with the single-box reward (first box, best IoU; nothing is right on a normal)"),
)
COLUMNS = (("FP rate on normals %", "eval/sets/negatives/fp_rate", 1),
           ("recall@0.5 multi-lesion %", "eval/sets/multi/R@0.5", 1),
           ("AP@0.5 %", "eval/sets/AP@0.5", 1), ("F1@0.5 %", "eval/sets/F1@0.5", 1),
           ("miss rate %", "eval/sets/miss_rate", 1),
           ("parse fail on normals %", "eval/sets/negatives/neg_parse_fail_pct", 1))
METRICS = ("eval/sets/negatives/fp_rate", "eval/sets/multi/R@0.5", "eval/sets/AP@0.5", "eval/sets/miss_rate")
DEVIATIONS = (
    "synthetic phantoms (112 px) with 0-3 lesions of one finding, not RSNA / VinDr / MS-CXR; the demo's 3.6M-"
    "parameter CPU base, pretrained on one lesion per image, not Qwen2.5-VL-3B",
    "a short budget: 400 SFT steps of 16 prompts, then 16 GRPO steps of 8 prompts x G = 8 at T = 0.9",
    "one seed by default: differences of a few points are within noise (200 held-out images, ~50 normals)",
)


def prepare(tree: Row) -> None:
    from bench.studies.runner import ensure_inputs

    ensure_inputs(tree, "multibox", splits={"train": 2000, "val": 200, "test": 0})


def study(seeds: tuple[int, ...]) -> Study:
    return Study("multibox", CONFIG, ARMS, seeds=seeds, warm_stages=("warm",), metrics=METRICS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    from bench.studies.runner import run_study

    desc = ("Set reward vs single-box reward after one SFT warm start on list answers, on synthetic "
            "images with 0-3 lesions (a quarter normal); held-out 200 val images. FP rate: normals answered "
            "with any box; recall: true boxes of images with >= 2 lesions matched at IoU >= 0.5 (one-to-one, "
            "max total IoU); "
            "percent.")
    run_study(study(tuple(args.seeds)), "multibox", COLUMNS, prepare, desc, DEVIATIONS)


if __name__ == "__main__":
    main()
