"""MedLoc-R1 in miniature (issue 18): does the performance-aware IoU threshold schedule beat a fixed tau = 0.5
(VLM-R1), a continuous IoU reward (Raw-IoU), a threshold stepped by training progress (V-Triune/ROLL) and
more SFT at equal extra wall-clock, and what do its parts do (each raise condition removed, full window
refresh)?

Every arm starts from the same pretrained CPU base (deploy/configs/bases/study.yaml, built once and cached),
runs the same GRPO budget on the same prompts in the same order with the same sampling seeds, and is
evaluated greedily on the same 400 held-out images (one standard error of A@0.5 at most 2.5 points). The
SFT arm trains for as many seconds as the schedule arm of its seed did, on reference answers in the base's
own style; every arm is compared with it image by image. Writes bench/results/medloc_ablation[_main|_reduced|
_conditions].json/.md and plots.

    python -m bench.studies.medloc_ablation --reduced    # the base and the 5 main arms, seed 0
    python -m bench.studies.medloc_ablation --main       # the same, 3 seeds: criteria (a)-(c) of issue 18
    python -m bench.studies.medloc_ablation --ablations  # the schedule and its 4 ablations, seed 0
    python -m bench.studies.medloc_ablation              # 10 rows, 3 seeds: the full study
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.studies.arms import Arm, Row, Study

CONFIG = "deploy/configs/bench_medloc.yaml"

BASE = Arm("base", train=False, note="the pretrained CPU base, before any adapter stage")
MAIN = (
    Arm("medloc", (), note="MedLoc-R1 schedule (piecewise step, half refresh, all three conditions)"),
    Arm("fixed_0.5", ("reward.accuracy=fixed", "reward.fixed_tau=0.5"), note="VLM-R1: binary IoU >= 0.5"),
    Arm("raw_iou", ("reward.accuracy=raw_iou",), note="continuous IoU reward"),
    Arm("stepped", ("reward.accuracy=stepped",), note="tau by training progress: 0.3, 0.45, 0.6, 0.7, 0.8"),
    Arm("sft", ("stages.0.kind=sft",), equal_time_as="medloc",
        note="SFT on reference answers in the base's own style for the seconds the medloc arm trained (equal "
             "extra wall-clock)"),
)
ABLATIONS = (
    Arm("medloc_no_reward", ("reward.schedule.use_reward_condition=false",), note="without r_bar >= P"),
    Arm("medloc_no_std", ("reward.schedule.use_std_condition=false",), note="without sigma <= S"),
    Arm("medloc_no_margin", ("reward.schedule.use_margin_condition=false",), note="without margin >= Delta"),
    Arm("medloc_full_refresh", ("reward.schedule.refresh=full",), note="drop the whole window after a raise"),
)

# The study's targets cover 11-20 % of the image; its size buckets split them at 15 % (about 200 each).
SIZE_EDGES = (0.10, 0.15, 0.20)
COLUMNS = (("A@0.5", "eval/A@0.5", 1), ("A@0.8", "eval/A@0.8", 1), ("pseudo-mAP", "eval/pseudo_mAP", 1),
           ("mIoU", "eval/mIoU", 3), ("A@0.5 10-15%", "eval/10-15%/A@0.5", 1),
           ("A@0.5 15-20%", "eval/15-20%/A@0.5", 1),
           ("mIoU 10-15%", "eval/10-15%/mIoU", 3), ("mIoU 15-20%", "eval/15-20%/mIoU", 3),
           ("zero-var groups", "zero_variance_fraction", 2), ("final tau", "tau_final", 2),
           ("raises", "tau_raises", 1))

DEVIATIONS = (
    "window N = 16 prompt groups instead of the paper's 30, and 4 prompts per GRPO step: the window fills "
    "after 4 steps and a half refresh refills it in 2, so the schedule can raise several times within the "
    "budget",
    "a 3.6M-parameter Qwen2.5-VL trained in full on other synthetic images (the CPU base), not "
    "Qwen2.5-VL-3B; targets 11-20 % of the image (the base's largest size band), seen at 112 px: on smaller "
    "targets this base's sampled boxes keep the window's accuracy below P = 0.8 (docs/RESULTS.md)",
    "sampling temperature 0.6, not 0.9: at 0.9 the window's accuracy at tau 0.45 stays near 0.6 and its "
    "margin under 0.1, so tau rises once at most",
    "tens of GRPO steps of 4 prompts x G = 8, not 1000; held-out set: 400 test images; no dynamic-sampling "
    "refill (every arm sees the same prompts and samples)",
)


def prepare(tree: Row) -> None:
    from bench.studies.runner import ensure_inputs

    ensure_inputs(tree, "demo", splits={"train": 2000, "test": 400}, area_buckets=((0.11, 0.20),))


def study(arms: str = "all", seeds: tuple[int, ...] = (0, 1, 2)) -> Study:
    """`arms`: "main" (the base and the 5 main arms, each compared with the base and the SFT arm),
    "ablations" (the schedule and its ablations, compared with the schedule) or "all" (every arm, compared
    with all three)."""
    if arms == "ablations":
        return Study("medloc_ablation", CONFIG, (MAIN[0], *ABLATIONS), seeds=seeds, warm_stages=(),
                     size_edges=SIZE_EDGES, paired_against=("medloc",))
    if arms == "main":
        return Study("medloc_ablation", CONFIG, (BASE, *MAIN), seeds=seeds, warm_stages=(),
                     size_edges=SIZE_EDGES,
                     paired_against=("base", "sft"))
    return Study("medloc_ablation", CONFIG, (BASE, *MAIN, *ABLATIONS), seeds=seeds, warm_stages=(),
                 size_edges=SIZE_EDGES, paired_against=("base", "sft", "medloc"))


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--reduced", action="store_true", help="the base and the 5 main arms, seed 0")
    mode.add_argument("--main", action="store_true", help="the base and the 5 main arms, seeds 0 1 2")
    mode.add_argument("--ablations", action="store_true", help="the schedule and its 4 ablations, seed 0")
    args = parser.parse_args()
    from bench.studies.runner import run_study

    arms = "main" if args.reduced or args.main else "ablations" if args.ablations else "all"
    s = study(arms, (0,) if args.reduced or args.ablations else (0, 1, 2))
    stage = yaml.safe_load(Path(CONFIG).read_text())["stages"][0]
    desc = (f"MedLoc-R1 study on the pretrained CPU base ({stage['steps']} GRPO steps of "
            f"{stage['prompts_per_step']} prompts x G = 8, {len(s.seeds)} seed(s), every arm from the base "
            "itself; targets 11-20 % of the image). Held-out metrics on 400 images in percent (mIoU in [0, "
            "1]); zero-var groups: fraction of GRPO groups whose 8 task rewards were all equal; raises: "
            "tau raises of the schedule.")
    stem = {"main": "medloc_ablation_main" if args.main else "medloc_ablation_reduced",
            "ablations": "medloc_ablation_conditions", "all": "medloc_ablation"}[arms]
    run_study(s, stem, COLUMNS, prepare, desc, DEVIATIONS)


if __name__ == "__main__":
    main()
