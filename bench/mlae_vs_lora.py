"""MLAE versus plain LoRA at the same rank, and MLAE with p = 0 (issue 9): the same training (SFT warm start
then GRPO with the MedLoc-R1 reward on the small-target benchmark, deploy/configs/bench_medloc.yaml) with
each adapter; held-out metrics and the MLAE paper's expert-similarity measure (mean |cosine| between the
rank-1 experts b_i a_i^T of each adapted layer, from the exported adapter; learner/expert_similarity.py).

The adapter is trained from the first step, so each arm has its own SFT run (same data order, seeds and
budget); by default that SFT run is the whole arm (CPU budget), `--grpo-steps N` adds GRPO after it.
Writes bench/results/mlae_vs_lora.json/.md and plots.

    python -m bench.mlae_vs_lora                     # 3 adapters x 200 SFT steps, seed 0
    python -m bench.mlae_vs_lora --grpo-steps 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench._arms import Arm, Row, Study
from bench.medloc_ablation import CONFIG, prepare

# Rank 16 on q/k/v/o and the MLP for all three (the bench config); LoRA scaling lora_alpha / r = 16 / 16 = 1,
# MLAE's lambda starts at alpha = 1: the same initial update scale.
ARMS = (  # lora first: the mlae arm's warm start is the medloc bench's (same config), often already on disk
    Arm("lora", warm=("learner.adapter=lora",), note="plain PEFT LoRA, same rank and targets"),
    Arm("mlae_p0", warm=("learner.mlae.p=0.0",), note="MLAE without masking (lambda only)"),
    Arm("mlae_p0.1", note="MLAE, stochastic mask p = 0.1 (the bench and demo config)"),
)


def arms(grpo_steps: int) -> tuple[Arm, ...]:
    """GRPO arms after each adapter's own SFT; with 0 GRPO steps the SFT run itself is the arm."""
    if grpo_steps > 0:
        return ARMS
    return tuple(Arm(a.name, warm=a.warm, train=False, note=a.note + "; SFT only") for a in ARMS)


COLUMNS = (("A@0.5", "eval/A@0.5", 1), ("A@0.8", "eval/A@0.8", 1), ("pseudo-mAP", "eval/pseudo_mAP", 1),
           ("mIoU", "eval/mIoU", 3), ("A@0.5 >10%", "eval/>10%/A@0.5", 1),
           ("expert mean abs cos", "expert_cos_abs", 3), ("expert signed cos", "expert_cos_signed", 3))
DEVIATIONS = (
    "a random 3.6M-parameter Qwen2.5-VL with rank-16 adapters on attention and MLP, not a ViT-B/16 on VTAB",
    "200 SFT steps (16 prompts per step) and by default no GRPO (--grpo-steps N adds it: the CPU budget went to "
    "SFT, where these adapters learn most); one seed by default; MLAE p = 0.1 (the demo's light mask), not the "
    "paper's 0.5",
    "expert similarity from the exported LoRA form (lambda folded into B; |cos| is blind to it)",
)


def expert_similarity(run_dir: Path) -> Row:
    from learner.expert_similarity import adapter_expert_similarity
    from learner.export import LoraArtefact

    return dict(adapter_expert_similarity(LoraArtefact.load(run_dir / "adapter").tensors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--grpo-steps", type=int, default=0, help="GRPO steps after the SFT (0: SFT only)")
    args = parser.parse_args()
    from bench._runner import run_study

    study = Study("mlae_vs_lora", CONFIG, arms(args.grpo_steps), seeds=tuple(args.seeds), warm_stages=("warmup",),
                  common=("stages.0.steps=200", f"stages.1.steps={max(args.grpo_steps, 1)}"), extra=expert_similarity)
    then = f"then {args.grpo_steps} GRPO steps (MedLoc-R1 reward)" if args.grpo_steps else "(no GRPO)"
    desc = ("MLAE vs plain LoRA vs MLAE p = 0 (rank 16, q/k/v/o + MLP) on the small-target benchmark: 200 SFT "
            f"steps {then}, the same data order and seed for each adapter. Held-out metrics "
            "in percent (mIoU in [0, 1]); expert cos: mean over layers of the mean |cos| (and signed cos) over "
            "pairs of rank-1 experts b_i a_i^T of the final adapter.")
    run_study(study, "mlae_vs_lora", COLUMNS, prepare, desc, DEVIATIONS)


if __name__ == "__main__":
    main()
