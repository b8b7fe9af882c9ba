"""Held-out evaluation: heldout.py (greedy prediction through a rollout pool, the report, prediction files,
overlays), metrics.py (the pure metrics: accuracy at IoU thresholds, size buckets, standard errors, paired
changes), run.py (`medground eval RUN`), kl.py (the forward KL of a run's adapter from its base on held-out
prompts, `medground eval --kl-samples`). What is evaluated is what is served: the same prompt builder,
parser and frame conversion (docs/algorithms.md, "Evaluation")."""

from services.evaluation.heldout import (
    GREEDY,
    Prediction,
    centre_box_baseline,
    eval_files,
    evaluate,
    grounding_answer,
    grounding_boxes,
    predict,
    predict_sampled,
    read_ious,
    read_sampled_ious,
    report,
    sample_config,
    write_overlays,
    write_predictions,
)

__all__ = ["GREEDY", "Prediction", "centre_box_baseline", "eval_files", "evaluate",
           "grounding_answer", "grounding_boxes", "predict",
           "predict_sampled", "read_ious", "read_sampled_ious", "report", "sample_config", "write_overlays",
           "write_predictions"]
