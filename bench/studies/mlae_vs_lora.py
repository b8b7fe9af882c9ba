"""MLAE versus plain LoRA at the same rank, and MLAE with p = 0 (issue 18, on the pretrained CPU base): the
MedLoc-R1 bench's GRPO stage (deploy/configs/bench_medloc.yaml: every arm from the base itself, the same
prompts, sampling seeds and budget) with each adapter, trained from the first GRPO step; held-out metrics on
400 images and the MLAE paper's expert-similarity measure (mean |cos| between the rank-1 experts b_i a_i^T
of each adapted layer, from the exported adapter; learner/expert_similarity.py). Writes
bench/results/mlae_vs_lora.json/.md and plots.

    python -m bench.studies.mlae_vs_lora             # 3 adapters, seeds 0 1 2 (about 11 min a seed)
    python -m bench.studies.mlae_vs_lora --seeds 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.studies.arms import Arm, Row, Study
from bench.studies.medloc_ablation import CONFIG, prepare

# Rank 16 on q/k/v/o and the MLP for all three (the bench config); LoRA scaling lora_alpha / r = 16 / 16 = 1,
# MLAE's lambda starts at alpha = 1: the same initial update scale.
ARMS = (
    Arm("lora", ("learner.adapter=lora",), note="plain PEFT LoRA, same rank and targets"),
    Arm("mlae_p0", ("learner.mlae.p=0.0",), note="MLAE without masking (lambda only)"),
    Arm("mlae_p0.1",
        note="MLAE, stochastic mask p = 0.1 (the bench and demo config; the medloc bench's medloc arm)"),
)


COLUMNS = (("A@0.5", "eval/A@0.5", 1), ("A@0.8", "eval/A@0.8", 1), ("pseudo-mAP", "eval/pseudo_mAP", 1),
           ("mIoU", "eval/mIoU", 3), ("A@0.5 >10%", "eval/>10%/A@0.5", 1),
           ("expert mean abs cos", "expert_cos_abs", 3), ("expert signed cos", "expert_cos_signed", 3))
DEVIATIONS = (
    "the pretrained 3.6M-parameter CPU base (docs/miniature.md) with rank-16 adapters on attention and MLP, "
    "not a ViT-B/16 on VTAB; the adapters are trained by GRPO (the medloc bench's stage), not supervised",
    "MLAE p = 0.1 (the demo's light mask), not the paper's 0.5",
    "expert similarity from the exported LoRA form (lambda folded into B; |cos| is blind to it)",
)


def expert_similarity(run_dir: Path) -> Row:
    from learner.expert_similarity import adapter_expert_similarity
    from learner.export import LoraArtefact

    return dict(adapter_expert_similarity(LoraArtefact.load(run_dir / "adapter").tensors))


def study(seeds: tuple[int, ...]) -> Study:
    return Study("mlae_vs_lora", CONFIG, ARMS, seeds=seeds, warm_stages=(), extra=expert_similarity,
                 paired_against=("lora",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    import yaml

    from bench.studies.runner import run_study

    stage = yaml.safe_load(Path(CONFIG).read_text())["stages"][0]
    desc = ("MLAE vs plain LoRA vs MLAE p = 0 (rank 16, q/k/v/o + MLP) on the pretrained CPU base: the "
            f"MedLoc-R1 bench's {stage['steps']} GRPO steps of {stage['prompts_per_step']} prompts x G = 8 "
            "from the base, the same prompts and seeds for each adapter. Held-out metrics on 400 images in "
            "percent (mIoU in [0, 1]); expert cos: mean over layers of the mean |cos| (and signed cos) "
            "over pairs of rank-1 experts b_i a_i^T of the final adapter.")
    run_study(study(tuple(args.seeds)), "mlae_vs_lora", COLUMNS, prepare, desc, DEVIATIONS)


if __name__ == "__main__":
    main()
