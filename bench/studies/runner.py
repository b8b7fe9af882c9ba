"""Arms x seeds studies, the running half: one private Ray session for every run of a study, warm starts
cached on disk (one per seed and warm-override set), each arm's run read back into `bench.studies.arms`
summaries, then JSON + Markdown + plots under bench/results/.

Runs land in runs/bench/<study>/ (ignored by git); warm starts in runs/bench/warm/, named by a hash of their
config, so any study whose warm config is equal (a seed, the same adapter) reuses the one already there.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import yaml

from bench import machine
from bench.studies.arms import (
    AfterRun,
    Arm,
    Evaluate,
    Row,
    Study,
    aggregate,
    arm_tree,
    markdown_table,
    pooled_change,
    seed_overrides,
    size_bucket_metrics,
    summarise,
    training_seconds,
    tree_key,
    warm_tree,
)
from bench.studies.plots import plot_study
from services.config import apply_overrides

RUNS = Path("runs") / "bench"
log = logging.getLogger("bench")


class _SharedPool:
    """Rollout workers kept up across a study's runs of one model and rollout config: a study is dozens of
    short runs, each lent the pool (services.training.handles.BorrowedPool: it starts on the base model and
    cannot
    shut the workers down); the study shuts them down at its end (close_all)."""

    pools: ClassVar[dict[str, Any]] = {}

    @classmethod
    def get(cls, cfg: Any) -> Any:
        """The pool for this model and rollout config; one at a time: the private cluster has the CPUs of one
        pool and one learner, so a run that needs another config (another seed, prompts without knowledge)
        shuts the previous pool down first."""
        from rollout.knowledge import load_knowledge
        from services.cluster.rollout_pool import RolloutPool

        key = json.dumps([cfg.model.path, cfg.data.knowledge_dir, cfg.rollout.model_dump(mode="json"),
                          cfg.pool.model_dump(mode="json")], sort_keys=True)
        if key not in cls.pools:
            cls.close_all()
            cls.pools[key] = RolloutPool(cfg.model.path, cfg.rollout, cfg.pool,
                                         load_knowledge(cfg.data.knowledge_dir))
        from services.training.handles import BorrowedPool

        return BorrowedPool(cls.pools[key])

    @classmethod
    def close_all(cls) -> None:
        for pool in cls.pools.values():
            pool.shutdown()
        cls.pools.clear()


FINISHED = "bench_run.json"  # written when an arm's run has finished: its config's key and wall seconds


def train(tree: Row, run_dir: Path) -> float:
    """Validate and run one config tree into `run_dir` on the study's shared rollout workers; returns its
    wall seconds. A run that already finished with exactly this config (`bench_run.json`, e.g. before a
    study was interrupted) is kept, not run again; anything else in `run_dir` is replaced."""
    from services.config import RunConfig
    from services.training import train_loop
    from services.training.handles import start_handles

    cfg = RunConfig.model_validate(tree)
    done = run_dir / FINISHED
    if done.is_file() and json.loads(done.read_text())["key"] == tree_key(tree):
        log.info("reusing the finished run %s", run_dir)
        return float(json.loads(done.read_text())["wall_s"])
    shutil.rmtree(run_dir, ignore_errors=True)
    t = time.perf_counter()
    train_loop.run(cfg, run_dir=run_dir, start=lambda c, d: start_handles(c, d, pool=_SharedPool.get(c)))
    wall = time.perf_counter() - t
    done.write_text(json.dumps({"key": tree_key(tree), "wall_s": wall}) + "\n")
    return wall


def _checkpoint_of(run_dir: Path) -> Path | None:
    """The run's latest complete checkpoint (services.checkpointing), None when it has none."""
    from services.checkpointing import list_checkpoints

    done = list_checkpoints(run_dir) if (run_dir / "resolved_config.json").is_file() else []
    return done[-1] if done else None


def _warm(base: Row, study: Study, arm: Arm, seed: int,
          cache: dict[str, tuple[Path, Row]]) -> tuple[Path, Row]:
    tree = warm_tree(base, study, arm, seed)
    key = tree_key(tree)
    if key in cache:
        return cache[key]
    run_dir = RUNS / "warm" / f"warm-s{seed}-{key}"  # shared by studies: equal configs reuse one warm start
    tree = {**tree, "name": f"bench-warm-s{seed}-{key}"}
    ckpt = _checkpoint_of(run_dir)
    from services.training.metrics import read_metrics

    if ckpt is not None and (run_dir / "metrics.jsonl").is_file():
        log.info("reusing warm start %s", ckpt)
        wall = json.loads((run_dir / "bench_wall.json").read_text())["wall_s"]
    else:
        log.info("warm start %s", run_dir)
        wall = train(tree, run_dir)
        (run_dir / "bench_wall.json").write_text(json.dumps({"wall_s": wall}) + "\n")
        ckpt = _checkpoint_of(run_dir)
        assert ckpt is not None, f"the warm start {run_dir} wrote no checkpoint"
    summary = summarise(read_metrics(run_dir / "metrics.jsonl"), study.metrics)
    summary["wall_s"] = wall
    cache[key] = (ckpt, summary)
    return cache[key]


def _evaluate_model(base: Row, study: Study, seed: int, run_dir: Path,
                    split: str | None = None) -> tuple[Row, Path]:
    """The metrics of the model itself (no adapter) on `split` (default: the held-out split), evaluated
    exactly as an arm's evaluation (the same records, greedy and eval.samples sampled completions with the
    run's draws, the same pool); predictions to `run_dir`/eval/step-0.jsonl like a run's (another split:
    base-<split>.jsonl). Returns (the report row, the predictions file)."""
    from services import evaluation
    from services.config import RunConfig
    from services.data.manifest import load_manifest

    cfg = RunConfig.model_validate(apply_overrides(base, [*study.common, *seed_overrides(seed)]))
    manifest = load_manifest(cfg.data.manifest, on_bad_record=cfg.data.on_bad_record).with_sizes()
    name = split or cfg.data.eval_split
    records = manifest.select(split=name)[:cfg.eval.max_samples]
    if not records:
        raise ValueError(f"the manifest {cfg.data.manifest} has no records in split {name!r}")
    pool = _SharedPool.get(cfg)  # on the base model
    pool.wait_ready()
    if split is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    path = run_dir / "eval" / ("step-0.jsonl" if split is None else f"base-{split}.jsonl")
    report, _ = evaluation.evaluate(pool, manifest, records, cfg, path)
    return report, path


def evaluate_adapter(run_dir: Path, step: int | None, split: str,
                     samples: int | None = None) -> tuple[Row, Path]:
    """A finished run's adapter at checkpoint `step` (None: its final adapter) on `split` of its manifest,
    greedy and sampled as its eval section says (`samples` replaces eval.samples), on the study's shared
    rollout workers (services.evaluation.run.evaluate_run); predictions in RUN_DIR/eval/<label>-<split>.jsonl.
    Returns (the report row, the predictions file)."""
    from services.config import load_run_config
    from services.evaluation.run import evaluate_run

    pool = _SharedPool.get(load_run_config(run_dir))
    return evaluate_run(run_dir, step, None, None, split=split, samples=samples, pool=pool)


def _predictions(row: Row, key: str) -> Path:
    """The predictions file a run's row names under `key` (an `after` hook's), else for `final_predictions`
    the run's last evaluation (eval/step-N.jsonl with the largest N)."""
    from services.evaluation import eval_files

    if row.get(key):
        return Path(row[key])
    files = eval_files(Path(row["run_dir"])) if key == "final_predictions" else []
    if not files:
        raise FileNotFoundError(f"{row['run_dir']} has no {key} (nor eval/step-N.jsonl); the arm did not "
                                "finish")
    return files[-1]


def _final_ious(row: Row, key: str = "final_predictions") -> dict[str, float]:
    """IoU by held-out record id of the run's final evaluation (`_predictions`)."""
    from services.evaluation import read_ious

    return read_ious(_predictions(row, key))


def _final_sampled(row: Row, key: str = "final_predictions") -> dict[str, tuple[float, ...]]:
    """The k sampled IoUs by held-out record id of the run's final evaluation (empty: it sampled none)."""
    from services.evaluation import read_sampled_ious

    return read_sampled_ious(_predictions(row, key))


def _paired(study: Study, per_arm: dict[str, list[Row]], ref: str) -> Row:
    """`paired_on` the runs' final held-out evaluations (the study's `paired` section)."""
    return paired_on(per_arm, ref)


def paired_on(per_arm: dict[str, list[Row]], ref: str, key: str = "final_predictions") -> Row:
    """Every arm against the arm `ref`, image by image on the same images (the predictions files the rows
    name under `key`, `_predictions`): per seed the paired change (arm - ref) of A@0.3/0.5/0.8 and mIoU with
    its standard error, and pooled over seeds; when both runs' evaluations sampled (eval.samples > 0), the
    same for sampled pass@1 under `sampled`. Runs pair by seed: an arm run on fewer seeds (`Arm.seeds`) pairs
    on those; a seed `ref` lacks is skipped."""
    from services.evaluation.metrics import paired_changes, paired_sampled_changes

    out: Row = {}
    for name, rows in per_arm.items():
        if name == ref:
            continue
        per_seed, sampled = {}, {}
        refs = {r["seed"]: r for r in per_arm[ref]}
        for row in rows:
            ref_row = refs.get(row["seed"])
            if ref_row is None:
                continue
            per_seed[str(row["seed"])] = paired_changes(_final_ious(ref_row, key), _final_ious(row, key))
            s_before, s_after = _final_sampled(ref_row, key), _final_sampled(row, key)
            if s_before and s_after:
                sampled[str(row["seed"])] = paired_sampled_changes(s_before, s_after)
        if not per_seed:
            continue
        metrics = next(iter(per_seed.values())).keys()
        out[name] = {"per_seed": per_seed,
                     "pooled": {m: pooled_change([c[m] for c in per_seed.values()]) for m in metrics}}
        if len(sampled) == len(per_seed):
            out[name]["sampled"] = {"per_seed": sampled, "pooled": {
                m: pooled_change([c[m] for c in sampled.values()]) for m in metrics}}
    return out


def _paired_table(paired: Row, reference: str, part: str | None = None) -> str:
    """The pooled paired changes against `reference` (greedy; `part="sampled"`: sampled pass@1)."""
    what = "" if part is None else f" ({part})"
    head = f"| arm - {reference}{what} | A@0.3 | A@0.5 | A@0.8 | mIoU | A@0.5 by seed |"
    rows = [head, "|---|---:|---:|---:|---:|---|"]
    for name, whole in paired.items():
        p = whole if part is None else whole[part]
        cells = [f"{p['pooled'][m][0]:+.{3 if m == 'mIoU' else 1}f} ± "
                 f"{p['pooled'][m][1]:.{3 if m == 'mIoU' else 1}f}"
                 for m in ("A@0.3", "A@0.5", "A@0.8", "mIoU")]
        seeds = ", ".join(f"{c['A@0.5'][0]:+.1f} ± {c['A@0.5'][1]:.1f}" for c in p["per_seed"].values())
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(rows)


def _equal_time(tree: Row, study: Study, arm: Arm, matched: Row, calibration: Row) -> tuple[Row, Row]:
    """Give an SFT arm the training seconds its matched arm took: steps = seconds / (SFT seconds per step),
    the latter measured once per study by a short run of the same stage (its first step, which pays for
    start-up effects, left out)."""
    from services.training.metrics import read_metrics

    if not calibration:
        probe = apply_overrides(tree, ["stages.0.steps=9", "eval.every=0", "eval.max_samples=1",
                                       "checkpoint.every=0", "eval.overlays=0", "seed=0"])
        run_dir = RUNS / study.name / f"{arm.name}-calibration"
        train({**probe, "name": f"{study.name}-{arm.name}-calibration"}, run_dir)  # kept when finished
        step_s = [r["time/step_s"] - r.get("time/eval_s", 0.0)
                  for r in read_metrics(run_dir / "metrics.jsonl") if "time/step_s" in r][1:]
        calibration = {"sft_step_s": sorted(step_s)[len(step_s) // 2], "steps_measured": len(step_s)}
    steps = max(1, round(matched["train_s"] / calibration["sft_step_s"]))
    log.info("arm %s: %d SFT steps in the %.0f s %s trained", arm.name, steps, matched["train_s"],
             arm.equal_time_as)
    return apply_overrides(tree, [f"stages.0.steps={steps}"]), calibration


@dataclass
class Session:
    """What a study's runs share: the base config, the held-out images' relative areas (for size buckets),
    the warm starts done, each arm's rows so far and the SFT step time measured for equal-time arms."""

    base: Row
    study: Study
    areas: dict[str, float]
    cache: dict[str, tuple[Path, Row]] = field(default_factory=dict)
    per_arm: dict[str, list[Row]] = field(default_factory=dict)
    calibration: Row = field(default_factory=dict)


def run_study(study: Study, out_stem: str, columns: Sequence[tuple[str, str, int]],
              prepare: Callable[[Row], None], description: str, deviations: Sequence[str],
              finish: Callable[[Row], tuple[Row, list[str]]] | None = None) -> Row:
    """Run every arm x seed, write bench/results/<out_stem>.json/.md and plots; return the result.
    `finish`: the study's own keys computed from the result (e.g. paired changes on another split, a
    summary) and Markdown lines, merged into the result and appended to the .md before they are written."""
    import ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    base = yaml.safe_load(Path(study.config).read_text())
    prepare(base)
    session = Session(base, study, _held_out_areas(base) if study.size_edges else {},
                       per_arm={a.name: [] for a in study.arms})
    started, record = time.perf_counter(), machine.start()
    temp = machine.start_ray()
    try:
        for seed, arm in run_order(study):
            session.per_arm[arm.name].append(_run_arm(session, arm, seed))
    finally:
        _SharedPool.close_all()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    total = time.perf_counter() - started
    result = study_result(session, description, deviations, total, machine.finish(record))
    more, lines = finish(result) if finish is not None else ({}, [])
    result.update(more)
    write_study(result, out_stem, columns, lines)
    return result


def run_order(study: Study) -> list[tuple[int, Arm]]:
    """(seed, arm) in the order they run: seed by seed, the arms in their order; an arm with `seeds` set runs
    on the study's first `seeds` seeds only."""
    return [(seed, arm) for i, seed in enumerate(study.seeds) for arm in study.arms
            if arm.seeds is None or i < arm.seeds]


def _held_out_areas(base: Row) -> dict[str, float]:
    """Relative target area by held-out record id (the study's own size buckets split on it)."""
    from services.data.manifest import load_manifest

    held_out = load_manifest(base["data"]["manifest"]).with_sizes().select(split=base["data"]["eval_split"])
    return {r.id: r.relative_area() or 0.0 for r in held_out}


def _run_arm(s: Session, arm: Arm, seed: int) -> Row:
    """One arm x seed: its warm start (cached), then its run (an arm that does not train: the warm start's or
    the model's own evaluation); its summary row."""
    from services.training.metrics import read_metrics

    study = s.study
    if study.warm_stages:
        ckpt, warm = _warm(s.base, study, arm, seed, s.cache)
        start: str | None = str(ckpt.resolve())
    else:  # arms start from the (pretrained) model itself
        ckpt, warm, start = None, {"wall_s": 0.0}, None
    run_dir = RUNS / study.name / f"{arm.name}-s{seed}"
    if not arm.train:
        return _untrained_row(s, arm, seed, run_dir, ckpt, warm)
    tree = arm_tree(s.base, study, arm, seed, start)
    if arm.equal_time_as is not None:
        tree, s.calibration = _equal_time(tree, study, arm, s.per_arm[arm.equal_time_as][-1], s.calibration)
    tree = {**tree, "name": f"{study.name}-{arm.name}-s{seed}"}
    log.info("arm %s seed %d", arm.name, seed)
    wall = train(tree, run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    summary = summarise(rows, study.metrics)
    summary.update(seed=seed, wall_s=wall, warm_wall_s=warm["wall_s"], train_s=training_seconds(rows),
                   run_dir=str(run_dir))
    if study.after is not None:
        summary.update(study.after(AfterRun(arm, seed, run_dir, tuple(rows), tree,
                                            partial(evaluate_adapter, run_dir))))
    if study.size_edges:
        summary["final"].update(size_bucket_metrics(_final_ious(summary), s.areas, study.size_edges))
    if study.extra is not None:
        summary["extra"] = study.extra(run_dir)
    log.info("arm %s seed %d: %s in %.0f s", arm.name, seed, summary["headline"], wall)
    return summary


def _untrained_row(s: Session, arm: Arm, seed: int, run_dir: Path, ckpt: Path | None, warm: Row) -> Row:
    """An arm that runs no stage: the warm start's summary, or (no warm stages) the model's own evaluation."""
    study = s.study
    row = warm if study.warm_stages else _model_row(_evaluate_model(s.base, study, seed, run_dir)[0], study)
    row = {**row, "seed": seed, "wall_s": 0.0, "warm_wall_s": warm["wall_s"], "run_dir": str(run_dir)}
    if study.after is not None:
        evaluate: Evaluate = (partial(evaluate_adapter, ckpt.parent.parent) if ckpt is not None else
                              lambda _step, split, _k: _evaluate_model(s.base, study, seed, run_dir, split))
        tree = apply_overrides(s.base, [*study.common, *seed_overrides(seed)])
        row.update(study.after(AfterRun(arm, seed, run_dir, (), tree, evaluate)))
    if study.size_edges and not study.warm_stages:
        row["final"] = {**row["final"], **size_bucket_metrics(_final_ious(row), s.areas, study.size_edges)}
    if study.extra is not None and ckpt is not None:
        row["extra"] = study.extra(ckpt.parent.parent)  # the warm run's directory
    return row


def _model_row(report: Row, study: Study) -> Row:
    """The summary row of the model's own evaluation (no step ran)."""
    return {"final": report, "headline": {m: report.get(m) for m in study.metrics}, "grpo_steps": 0,
            "sft_steps": 0, "zero_variance_fraction": None, "tau_final": None, "tau_raises": None,
            "tau_window_final": {}, "step_s_median": None,
            "path": {"tau": [], "zero_variance": [], "reward_acc": [], "reward_iou": [], "eval": []}}


def study_result(s: Session, description: str, deviations: Sequence[str], total: float,
                 record: Row) -> Row:
    """The study's JSON: its set-up, every run's summary, the aggregates over seeds and the paired changes."""
    study, per_arm = s.study, s.per_arm
    return {
        "study": study.name, "description": description, "config": study.config, "seeds": list(study.seeds),
        "common_overrides": list(study.common), "deviations": list(deviations),
        "arms": [{"name": a.name, "overrides": list(a.overrides), "warm_overrides": list(a.warm),
                  "stages": list(a.stages) if a.stages else None, "trains": a.train, "note": a.note}
                 for a in study.arms],
        "aggregate": {name: aggregate(rows) for name, rows in per_arm.items()}, "runs": per_arm,
        "wall_s_total": total, "wall_s_per_arm_run": {n: [r["wall_s"] for r in rs] for n,
                                                      rs in per_arm.items()},
        "equal_time_calibration": s.calibration,
        "size_edges": list(study.size_edges),
        "paired_against": list(study.paired_against),
        "paired": {ref: _paired(study, per_arm, ref) for ref in study.paired_against},
        "machine": record,
    }


def write_study(result: Row, out_stem: str, columns: Sequence[tuple[str, str, int]],
                more: Sequence[str] = ()) -> None:
    """bench/results/<out_stem>.json, .md (the table, the deviations, the paired changes, then the lines
    `more`) and plots."""
    machine.write_json(result, machine.results_path(out_stem))
    table = markdown_table([(a["name"], result["aggregate"][a["name"]]) for a in result["arms"]], columns)
    paired = {ref: _paired_table(p, ref) for ref, p in result["paired"].items()}
    paired |= {f"{ref} sampled": _paired_table(p, ref, "sampled") for ref, p in result["paired"].items()
               if p and all("sampled" in q for q in p.values())}
    md = [f"# {out_stem}", "", result["description"], "", table, "",
          f"Seeds {result['seeds']}; cells are mean ± sample "
          "std over seeds; wall "
          f"{result['wall_s_total'] / 60:.1f} min on "
          f"{machine.describe(result['machine'])}. "
          "Deviations:", *[f"- {d}" for d in result["deviations"]], ""]
    for ref, paired_table in paired.items():
        kind = "sampled pass@1, mean over an image's k samples" if ref.endswith(" sampled") else "greedy"
        md += [f"Paired changes ({kind}) against `{ref.removesuffix(' sampled')}` on the same held-out "
               "images: mean over seeds ± its standard error (per seed: mean of per-image differences ± "
               "their standard error).", "", paired_table, ""]
    machine.results_path(out_stem, suffix=".md").write_text("\n".join([*md, *more]))
    plot_study(result, machine.RESULTS / out_stem)
    print(table)
    for paired_table in paired.values():
        print(paired_table)
    print(f"wrote {machine.results_path(out_stem)} ({result['wall_s_total'] / 60:.1f} min)")


def ensure_inputs(tree: Row, preset: str, **knobs: Any) -> None:
    """The study's model and data set, built when missing (services.training.launch.ensure_inputs on its
    config)."""
    from services.config import RunConfig
    from services.training.launch import ensure_inputs as ensure

    ensure(RunConfig.model_validate(tree), preset, **knobs)
