"""VRFT-Aug in miniature (issues 9 and 18): prior knowledge on/off, the recitation weight negative/zero/
positive, and grounding-first curriculum versus grading only, on the pretrained CPU base and a synthetic
grading task whose grade is the lesion's size (grade 0 none, 1-3 by relative area;
deploy/configs/bench_vrft.yaml).

Every arm starts from the same SFT warm start on the base, on grounding and grading records together (it
teaches the grading answer format and keeps the box answers, with targets in the base's own style: thinks
that say where it looks and quote the knowledge in about 30 % of answers), except `no_knowledge`, whose
prompts differ and so has its own warm start without knowledge. The
grading arms run the same GRPO steps on the same prompts; `grounding_first` runs GRPO on grounding first
(extra steps) and then the same grading steps. Reports held-out grading accuracy and mean absolute grade
error, the grounding metrics on the same images, and how much the policy recites the knowledge (greedy
held-out thinks; sampled completions during GRPO). Writes bench/results/vrft_aug.json/.md and plots.

    python -m bench.studies.vrft_aug    # 6 rows, seed 0
    python -m bench.studies.vrft_aug --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.studies.arms import Arm, Row, Study

CONFIG = "deploy/configs/bench_vrft.yaml"
GRADE = ("grade",)
ARMS = (
    Arm("sft_warm_start", train=False, note="the shared starting point (knowledge on)"),
    Arm("grade_recite-0.5", stages=GRADE,
        note="knowledge on, w_recite = -0.5 [paper's better sign, default]"),
    Arm("grade_recite0", ("reward.w_recite=0.0",), stages=GRADE, note="knowledge on, no recitation term"),
    Arm("grade_recite+0.5", ("reward.w_recite=0.5",), stages=GRADE, note="knowledge on, recitation rewarded"),
    Arm("no_knowledge", ("reward.w_recite=0.0",), stages=GRADE, warm=("rollout.inject_knowledge=false",),
        note="no prior knowledge in prompts (own warm start); recitation term 0 (nothing to recite)"),
    Arm("grounding_first", stages=("ground", "grade"), note="GRPO on grounding, then the same grading GRPO"),
)
COLUMNS = (("grade acc %", "eval/grade/accuracy", 1), ("mean abs grade error",
                                                       "eval/grade/mean_abs_grade_error", 3),
           ("grade parse fail %", "eval/grade/parse_fail_pct", 1), ("A@0.5", "eval/A@0.5", 1),
           ("mIoU", "eval/mIoU", 3),
           ("greedy r_recite", "recite_greedy", 3), ("sampled r_recite, first 4 steps",
                                                     "recite_sampled_first", 3),
           ("last 4 steps", "recite_sampled_last", 3), ("zero-var groups", "zero_variance_fraction", 2))
METRICS = ("eval/grade/accuracy", "eval/grade/mean_abs_grade_error", "eval/A@0.5", "eval/mIoU")
DEVIATIONS = (
    "synthetic phantoms with a size grade (0-3), not MedMNIST; a 3.6M-parameter Qwen2.5-VL trained in full "
    "on grounding (the CPU base), not Qwen2.5-VL-3B; the task-level knowledge text describes chest "
    "radiographs in general, not the grade thresholds",
    "warm start: 400 SFT steps of 8 prompts on grounding and grading records together (teaches the grading "
    "answer format, which the base never saw, and keeps its box answers); then 16 GRPO steps on grounding "
    "(grounding_first only) and 32 on grading, of 4 prompts x G = 8 at T = 0.9, not thousands",
    "the MFRS graded reward (2^(-2d)) scores grades in every arm; recitation = BLEU(think, injected "
    "knowledge) without the brevity penalty (docs/algorithms.md, Rewards)",
)
WINDOW = 4  # GRPO steps averaged at each end of a run for the sampled recitation score


def recitation_of(run_dir: Path) -> Row:
    """How much the policy quotes the prior knowledge (VRFT-Aug's recitation, rewards.recitation):
    `recite_greedy`, the mean r_recite of the greedy think on the held-out grading records of the run's last
    evaluation, each against its record's knowledge text (whether or not the prompt carried it, so arms
    compare); `recite_sampled_first` / `_last`, the mean r_recite of the sampled completions over the first
    and the last WINDOW GRPO steps on grading (None when the run scored no recitation: w_recite = 0 or no
    GRPO on grading)."""
    from rewards import recitation
    from rewards.parse import split_completion
    from rollout.knowledge import load_knowledge
    from services.config import load_run_config
    from services.data.jsonl import jsonl_values
    from services.data.manifest import load_manifest
    from services.evaluation import eval_files
    from services.training.metrics import read_metrics

    cfg = load_run_config(run_dir)
    knowledge = load_knowledge(cfg.data.knowledge_dir)
    records = {r.id: r for r in load_manifest(cfg.data.manifest).select(split=cfg.data.eval_split)}
    files = eval_files(run_dir)
    if not files:
        raise FileNotFoundError(f"{run_dir} has no evaluation (eval/step-N.jsonl); the run did not finish")
    scores = []
    for row in jsonl_values(files[-1]):
        record = records[row["id"]]
        if record.task == "grading" and record.knowledge_key is not None:
            scores.append(recitation(split_completion(row["text"])[0], knowledge.text(record.knowledge_key)))
    grading = {s.name for s in cfg.stages if s.kind == "grpo" and "grading" in s.tasks}
    sampled = [r["reward/recite"] for r in read_metrics(run_dir / "metrics.jsonl")
               if r.get("stage") in grading and "reward/recite" in r]
    scored = bool(sampled) and cfg.reward.w_recite != 0.0
    return {"recite_greedy": sum(scores) / len(scores) if scores else None,
            "recite_sampled_first": sum(sampled[:WINDOW]) / len(sampled[:WINDOW]) if scored else None,
            "recite_sampled_last": sum(sampled[-WINDOW:]) / len(sampled[-WINDOW:]) if scored else None}


def prepare(tree: Row) -> None:
    from bench.studies.runner import ensure_inputs

    ensure_inputs(tree, "demo-grading", tasks=("grounding", "grading"),
                  splits={"train": 3000, "val": 400, "test": 0})


def study(seeds: tuple[int, ...]) -> Study:
    return Study("vrft_aug", CONFIG, ARMS, seeds=seeds, warm_stages=("warm",), metrics=METRICS,
                 extra=recitation_of)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    from bench.studies.runner import run_study

    desc = ("VRFT-Aug strategies on the pretrained CPU base and a synthetic size-grading task (grade 0-3; "
            "held-out: the grading and grounding records of 400 val images). Grade accuracy in percent; "
            "mean absolute grade error counts an unparsable answer (or a grade off the 0-3 scale) as the "
            "largest error (3); r_recite: BLEU of the think against the knowledge text, without the brevity "
            "penalty.")
    run_study(study(tuple(args.seeds)), "vrft_aug", COLUMNS, prepare, desc, DEVIATIONS)


if __name__ == "__main__":
    main()
