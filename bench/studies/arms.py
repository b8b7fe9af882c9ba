"""Arms x seeds studies, the pure half: what an arm is, how its run config is built, and how a finished
run's metrics become one row of a table (mean and spread over seeds).

A study runs its base config's warm-start stages once per seed (and per distinct `Arm.warm` overrides),
then every arm's stages from that checkpoint (`init_from`) with the same model, data order, budget and
seeds; only the arm's overrides differ. `bench/studies/runner.py` does the running (one Ray session for all).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.config import apply_overrides

Row = dict[str, Any]


@dataclass(frozen=True)
class Arm:
    """One named variant: `overrides` (`a.b=value`, stage indices relative to the arm's own stages; `{seed}`
    in one stands for the run's seed, e.g. a split written per seed) on the base config; `stages` names the
    base stages it runs (default: every stage after the warm start); `warm` overrides also apply to its
    warm start (e.g. the adapter kind), so arms differing there get their own warm start; `train=False`
    evaluates the warm start itself (no stage runs), or the model when the study has no warm stages;
    `equal_time_as` makes the arm's single stage as many steps as fit in the
    training seconds of that arm (run earlier, same seed), at a seconds-per-step measured once per study;
    `seeds` runs the arm on the study's first `seeds` seeds only (a costly side row), None on all."""

    name: str
    overrides: tuple[str, ...] = ()
    stages: tuple[str, ...] | None = None
    warm: tuple[str, ...] = ()
    train: bool = True
    note: str = ""
    equal_time_as: str | None = None  # an SFT arm given the training seconds that arm took (same seed)
    seeds: int | None = None


@dataclass(frozen=True)
class Study:
    """Arms x seeds on one base config; `common` overrides (base stage indices) apply to every run first."""

    name: str
    config: str
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    warm_stages: tuple[str, ...]
    common: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ("eval/A@0.5", "eval/A@0.8", "eval/pseudo_mAP", "eval/mIoU")
    extra: Callable[[Any], Row] | None = field(default=None, compare=False)  # run_dir -> extra metrics
    # Relative-area edges of the study's own size buckets (a set whose targets all fall in one of the global
    # SIZE_BUCKETS, e.g. 11-20 %, is split finer): final metrics per bucket, `eval/<bucket>/...`.
    size_edges: tuple[float, ...] = ()
    paired_against: tuple[str, ...] = ()  # arms every other arm is compared with, image by image, per seed
    # Called after every arm x seed (trained or not) with what the run left; its row is merged into the run's
    # row (e.g. evaluations on other splits, final metrics from a chosen checkpoint: `final_predictions`).
    after: Callable[[AfterRun], Row] | None = field(default=None, compare=False)


# (checkpoint step or None for the final adapter, split, k sampled completions per image or None for the
# run's eval.samples) -> (report row `eval/...`, predictions file); for an arm that does not train, the model
# itself is evaluated as the study's config says (step and k do not apply)
Evaluate = Callable[[int | None, str, int | None], tuple[Row, Path]]


@dataclass(frozen=True)
class AfterRun:
    """What a study's `after` hook sees of one finished arm x seed: its `rows` (metrics.jsonl; () for an arm
    that does not train), the config `tree` it ran (the study's base config with the common and seed
    overrides for an arm that does not train), and `evaluate` (bench.studies.runner's evaluation on the
    study's shared rollout workers, so a hook needs no Ray of its own and a test can pass a fake)."""

    arm: Arm
    seed: int
    run_dir: Path
    rows: tuple[Row, ...]
    tree: Row
    evaluate: Evaluate


def seed_overrides(seed: int) -> list[str]:
    """One seed drives data order, sampling, adapter init, masks and the engine's own seed (the run config
    derives learner.seed, learner.mlae.seed and rollout.seed from `seed`)."""
    return [f"seed={seed}"]


def _select_stages(tree: Row, names: Sequence[str]) -> Row:
    by_name = {s["name"]: s for s in tree["stages"]}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"stages {missing} are not in the base config (it has {list(by_name)})")
    return {**tree, "stages": [by_name[n] for n in names]}


def warm_tree(base: Row, study: Study, arm: Arm, seed: int) -> Row:
    """The warm-start run's config tree: the warm stages only, evaluated once at their end."""
    tree = _select_stages(apply_overrides(base, list(study.common)), study.warm_stages)
    return apply_overrides(tree, [*arm.warm, *seed_overrides(seed), "eval.at_start=false"])


def arm_tree(base: Row, study: Study, arm: Arm, seed: int, init_from: str | None) -> Row:
    """The arm's config tree: its stages, started from the warm checkpoint (or the model itself when the
    study has no warm stages), no evaluation at the start."""
    names = arm.stages or tuple(s["name"] for s in base["stages"] if s["name"] not in study.warm_stages)
    tree = _select_stages(apply_overrides(base, list(study.common)), names)
    start = [f"init_from={init_from}"] if init_from is not None else []
    own = [o.replace("{seed}", str(seed)) for o in arm.overrides]
    return apply_overrides(tree, [*arm.warm, *seed_overrides(seed), *own, "eval.at_start=false", *start])


def training_seconds(rows: Sequence[Row]) -> float:
    """Seconds a run spent in its steps, evaluation excluded (what an equal-time arm is given)."""
    return sum(r["time/step_s"] - r.get("time/eval_s", 0.0) for r in rows if "time/step_s" in r)


def tree_key(tree: Row) -> str:
    """Short stable hash of a config tree (names warm-start checkpoints so identical ones are reused).
    SFT stages never sample, so when every stage is SFT the sampling temperature and top-p stay out of it
    (evaluation is greedy); a warm start is then shared by arms that sample differently."""
    if all(s.get("kind") == "sft" for s in tree.get("stages", [])):
        sampling = {k: v for k, v in tree.get("rollout", {}).get("sampling", {}).items()
                    if k not in ("temperature", "top_p")}
        tree = {**tree, "rollout": {**tree.get("rollout", {}), "sampling": sampling}}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:10]


# -------------------------------------------------------------------------------------------------------
# One run's metrics -> one summary.


def bucket_name(low: float, high: float) -> str:
    return f"{100 * low:g}-{100 * high:g}%"


def size_bucket_metrics(ious: Mapping[str, float], areas: Mapping[str, float], edges: Sequence[float]) -> Row:
    """Final held-out metrics per relative-area bucket [edges[i], edges[i+1]) of a study's own set, keyed
    `eval/<low>-<high>%/<metric>` (A@t in percent with its standard error, mIoU): `ious` and `areas` (box
    area / image area) by record id, as `services.evaluation.read_ious` gives the first. Raises ValueError
    for a held-out record outside the edges, which would otherwise drop out of every bucket unseen."""
    from services.evaluation.metrics import grounding_metrics

    out: Row = {}
    outside = [i for i in ious if not edges[0] <= areas[i] < edges[-1]]
    if outside:
        raise ValueError(f"{len(outside)} held-out targets (e.g. {outside[0]}, area "
                         f"{areas[outside[0]]:.4f}) lie outside the study's size edges {list(edges)}; widen "
                         "them")
    for low, high in itertools.pairwise(edges):
        ids = sorted(i for i in ious if low <= areas[i] < high)
        if ids:
            metrics = grounding_metrics([ious[i] for i in ids], [True] * len(ids))
            out.update({f"eval/{bucket_name(low, high)}/{k}": v for k, v in metrics.items()
                        if k != "parse_fail_pct"})
    return out


def pooled_change(per_seed: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Mean over seeds of paired changes (mean, standard error) and the standard error of that mean,
    sqrt(sum se_i^2) / n: the seeds' runs are independent, each change is paired over the same images."""
    if not per_seed:
        raise ValueError("no seeds to pool")
    n = len(per_seed)
    return sum(m for m, _ in per_seed) / n, math.sqrt(sum(se * se for _, se in per_seed)) / n


def summarise(rows: Sequence[Row], metrics: Sequence[str]) -> Row:
    """From a run's metrics.jsonl rows: the last evaluation's metrics (every `eval/...` key, size buckets
    included), the zero-variance group fraction over all GRPO groups (weighted by groups seen), and the
    per-step paths of tau, zero-variance fraction and accuracy reward and every evaluation's overall metrics
    (`eval_point`: the learning curve), for plots."""
    steps = [r for r in rows if "time/step_s" in r]
    grpo = [r for r in steps if "batch/groups_seen" in r]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    final = {k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else {}
    seen = sum(r["batch/groups_seen"] for r in grpo)
    zero = sum(r["batch/zero_variance_fraction"] * r["batch/groups_seen"] for r in grpo)
    taus = [r["tau/value"] for r in grpo if "tau/value" in r]
    out: Row = {"final": final, "headline": {m: final.get(m) for m in metrics},
                "grpo_steps": len(grpo), "sft_steps": len(steps) - len(grpo),
                "zero_variance_fraction": zero / seen if seen else None,
                "tau_final": taus[-1] if taus else None,
                "tau_raises": int(grpo[-1].get("tau/version", 0)) if grpo else None,
                "tau_window_final": {k: grpo[-1][f"tau/{k}"] for k in ("r_bar", "sigma", "margin")
                                     if grpo and f"tau/{k}" in grpo[-1]},
                "kl_final": grpo[-1].get("learner/kl") if grpo else None,
                "path": {"tau": taus, "zero_variance": [r["batch/zero_variance_fraction"] for r in grpo],
                         "reward_acc": [r.get("reward/acc") for r in grpo],
                         "reward_iou": [r.get("reward/iou") for r in grpo],
                         "eval": [eval_point(r) for r in evals]},
                "step_s_median": _median([r["time/step_s"] for r in steps])}
    return out


def eval_point(row: Row) -> Row:
    """One evaluation of a run as a point of its learning curve: the step and the overall greedy and sampled
    metrics (`eval/A@0.5`, `eval/sampled/A@0.5`, their `_se`, ...; size buckets and pass@k left out)."""
    keep = {k: v for k, v in row.items() if k.startswith("eval/")
            and (k.count("/") == 1 or (k.startswith("eval/sampled/") and k.count("/") == 2))}
    return {"step": row.get("step"), **keep}


def _median(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


def spread(values: Sequence[float | None]) -> Row:
    """Mean, sample std (0 for one value), min, max and n over seeds; None values are left out."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(xs), "max": max(xs), "n": len(xs)}


def aggregate(per_seed: Sequence[Row]) -> Row:
    """Spread over seeds of every final eval metric, the zero-variance fraction, final tau and raises."""
    keys = sorted({k for s in per_seed for k in s["final"]})
    out: Row = {k: spread([s["final"].get(k) for s in per_seed]) for k in keys}
    for k in ("zero_variance_fraction", "tau_final", "tau_raises"):
        out[k] = spread([s.get(k) for s in per_seed])
    for k in sorted({k for s in per_seed for k in s.get("extra", {})}):
        out[k] = spread([s.get("extra", {}).get(k) for s in per_seed])
    return out


def fmt(cell: Row | None, digits: int = 1) -> str:
    """'mean ± std' ('-' when missing; no ± for one seed)."""
    if not cell or cell.get("mean") is None:
        return "-"
    if cell["n"] > 1:
        return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"
    return f"{cell['mean']:.{digits}f}"


def markdown_table(arms: Sequence[tuple[str, Row]], columns: Sequence[tuple[str, str, int]]) -> str:
    """Rows = arms, columns = (header, aggregate key, digits), cells 'mean ± std' over seeds."""
    head = "| arm | " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    body = ["| " + name + " | " + " | ".join(fmt(agg.get(k), d) for _, k, d in columns) + " |"
            for name, agg in arms]
    return "\n".join([head, rule, *body])


def compare(old: Row, new: Row, keys: Sequence[str], abs_tol: float) -> list[str]:
    """Cells of two study results (`aggregate` dicts by arm) that differ by more than the seeds' spread:
    |mean_new - mean_old| > max(std_old, std_new, abs_tol). Returns one line per mismatch (empty: match)."""
    bad = []
    for arm, agg in old["aggregate"].items():
        for key in keys:
            a, b = agg.get(key) or {}, (new["aggregate"].get(arm) or {}).get(key) or {}
            if a.get("mean") is None and b.get("mean") is None:
                continue
            if a.get("mean") is None or b.get("mean") is None:
                bad.append(f"{arm} {key}: {a.get('mean')} vs {b.get('mean')}")
                continue
            allowed = max(a.get("std") or 0.0, b.get("std") or 0.0, abs_tol)
            if abs(b["mean"] - a["mean"]) > allowed:
                bad.append(f"{arm} {key}: {a['mean']:.4g} vs {b['mean']:.4g} (allowed {allowed:.3g})")
    return bad
