"""MedLoc-R1 in its own regime (issue 28): small findings on which a fixed IoU threshold of 0.5 pays almost
nothing early. Does the schedule beat fixed tau 0.5 there (the paper's claim), does DAPO-style refill
replace it, and how do the GRPO arms compare with SFT on exactly the labeled images GRPO read (in-domain,
forgetting on the base's own larger findings, greedy and sampled)?

Every arm starts from the demo base itself (deploy/configs/bench_medloc_sparse.yaml: plain LoRA in every
arm, 24 GRPO steps of 8 prompts x G = 8, T = 1.0, no refill) and is evaluated on the same 300 test images of
the band AREA_BAND, greedy and with 2 samples per image, at the end (checkpoints at step 12 are kept; the
learning curve between is each step's sampled IoU on its fresh, never-seen training images). After each run:
the same
evaluation on the `forget` split (200 images of 11-20 %: forgetting) and the forward KL from the base on 100
held-out images (services.evaluation.kl). The SFT equal-data arm trains 4 epochs on the images the GRPO arms
of its seed read (a split `seen<N>-s<seed>` written for it), is evaluated on `val` after each epoch, and
reports its best epoch's checkpoint on `test`. Writes bench/results/medloc_sparse.json/.md and plots.

    python -m bench.studies.medloc_sparse                   # 7 arms, seeds 0 1 2 (make bench-medloc-sparse)
    python -m bench.studies.medloc_sparse --seeds 0 --arms schedule --steps 2 --images 20   # a smoke run

Finished arm runs (runs/bench/medloc_sparse/<arm>-s<seed>/) are reused by a later call (one seed a call).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.studies.arms import AfterRun, Arm, Row, Study
from services.config import apply_overrides
from services.data.synth import PRESETS

if TYPE_CHECKING:
    from services.data.manifest import Manifest
    from services.data.records import Record

CONFIG = "deploy/configs/bench_medloc_sparse.yaml"
# box area / image area of every train/val/test target (issue 28's gate): the `demo-sparse` preset's band
AREA_BAND: tuple[float, float] = PRESETS["demo-sparse"].area_buckets[0]
TEMPERATURE = 1.0  # rollout.sampling.temperature of the study (the gate's: docs/RESULTS.md)
STEPS = 24  # GRPO steps per arm run; checkpoints at half and at the end, evaluation at the end
PROMPTS = 8  # prompts per GRPO step (the config's)
EVAL_IMAGES = 300  # one SE of A@0.5 <= 2.5 points needs ~250-400 images
EVAL_SAMPLES = 2  # sampled pass@1 over 2 x 300 completions; 4 put a 3-seed study near 3 h
SPLITS = {"train": 600, "val": 100, "test": EVAL_IMAGES}  # train: enough for 3 seeds' fresh prompts
FORGET_BAND, FORGET_IMAGES = (0.11, 0.20), 200  # the base's own larger findings (forgetting)
SFT_EPOCHS, SFT_BATCH = 4, 16
KL_IMAGES, KL_SAMPLES = 100, 2

BASE, SCHEDULE, FIXED, RAW, REFILL = "base", "schedule", "fixed_0.5", "raw_iou", "fixed_0.5_refill"
SFT_DATA, SFT_TIME = "sft_equal_data", "sft_equal_time"
REFERENCES = (FIXED, SFT_DATA, BASE)  # paired comparisons: schedule vs fixed, GRPO vs SFT, every arm vs base
METRICS = ("eval/A@0.5", "eval/A@0.8", "eval/sampled/A@0.5", "eval/sampled/A@0.8", "eval/mIoU")


def seen_split(images: int, seed: int | str) -> str:
    """The manifest split holding the `images` train images the GRPO arms of `seed` read, in their order."""
    return f"seen{images}-s{seed}"


BASE_ARM = Arm(BASE, train=False, note="the demo base itself, no adapter")
GRPO_ARMS = (
    Arm(SCHEDULE, ("reward.accuracy=medloc",), note="MedLoc-R1 schedule (window 16), no refill"),
    Arm(FIXED, ("reward.accuracy=fixed", "reward.fixed_tau=0.5"), note="VLM-R1: IoU >= 0.5, no refill"),
    Arm(RAW, ("reward.accuracy=raw_iou",), note="continuous IoU reward, no refill"),
    Arm(REFILL, ("reward.accuracy=fixed", "reward.fixed_tau=0.5", "stages.0.refill_cap=2",
                 "stages.0.drop_zero_variance=true"),
        note="fixed 0.5 with DAPO-style dynamic sampling: zero-variance groups replaced by fresh prompts "
             "for up to 2 extra rounds"),
)


def arms(steps: int = STEPS) -> tuple[Arm, ...]:
    """The 7 arms for `steps` GRPO steps (the SFT arms' length depends on it); each sets every field it
    compares (reward, tau, refill) explicitly. Raises ValueError when `steps` is odd (a checkpoint at half) or
    an SFT epoch (steps x PROMPTS images) is not a whole number of batches."""
    images = steps * PROMPTS
    if steps < 2 or steps % 2 or images % SFT_BATCH:
        raise ValueError(f"--steps {steps}: use an even number >= 2 (a checkpoint at half and the end; "
                         f"the SFT arm's epoch of steps x {PROMPTS} images must be whole batches of "
                         f"{SFT_BATCH})")
    epoch = images // SFT_BATCH  # SFT steps per epoch
    sft = ("stages.0.kind=sft", f"stages.0.prompts_per_step={SFT_BATCH}")
    return (
        BASE_ARM, *GRPO_ARMS,
        Arm(SFT_DATA, (*sft, f"stages.0.steps={SFT_EPOCHS * epoch}",
                       f"stages.0.train_split={seen_split(images, '{seed}')}",
                       "data.eval_split=val", "eval.samples=0", f"eval.every={epoch}",
                       f"checkpoint.every={epoch}", f"checkpoint.keep={SFT_EPOCHS}"),
            note=f"SFT on exactly the {images} images its seed's GRPO arms read, {SFT_EPOCHS} epochs at "
                 f"batch {SFT_BATCH}; its best epoch by val greedy A@0.5, evaluated on test"),
        Arm(SFT_TIME, (*sft, "eval.every=0", "checkpoint.every=0"), equal_time_as=SCHEDULE, seeds=1,
            note="SFT on the train split for the seconds the schedule arm trained (equal wall-clock; the "
                 "first seed only, a side row)"),
    )


def study(seeds: tuple[int, ...] = (0, 1, 2), steps: int = STEPS, images: int = EVAL_IMAGES,
          band: tuple[float, float] = AREA_BAND, temperature: float = TEMPERATURE,
          only: Sequence[str] | None = None) -> Study:
    """The arms (or those named in `only`) on the sparse config; `images` test images evaluated. Raises
    ValueError for a name that is not an arm, an equal-time arm without its reference, or `images` above
    the EVAL_IMAGES written."""
    chosen = arms(steps)
    if only is not None:
        unknown = sorted(set(only) - {a.name for a in chosen})
        if unknown:
            raise ValueError(f"--arms {unknown}: not arms of this study (it has {[a.name for a in chosen]})")
        if SFT_TIME in only and SCHEDULE not in only:
            raise ValueError(f"--arms {SFT_TIME} trains for the seconds {SCHEDULE} took; name {SCHEDULE} too")
        chosen = tuple(a for a in chosen if a.name in only)
    if not 1 <= images <= EVAL_IMAGES:
        raise ValueError(f"--images {images}: the study writes {EVAL_IMAGES} test images; use "
                         f"1..{EVAL_IMAGES}")
    common = (f"stages.0.steps={steps}", f"eval.every={steps}", f"checkpoint.every={steps // 2}",
              f"eval.max_samples={images}", f"eval.samples={EVAL_SAMPLES}",
              f"rollout.sampling.temperature={temperature}", *_data_override(band))
    names = {a.name for a in chosen}
    return Study("medloc_sparse", CONFIG, chosen, seeds=seeds, warm_stages=(), common=common, metrics=METRICS,
                 after=after, paired_against=tuple(r for r in REFERENCES if r in names))


def _data_override(band: tuple[float, float]) -> tuple[str, ...]:
    """Another band's data set lives in its own folder (and so its runs in their own config keys)."""
    if band == AREA_BAND:
        return ()
    return (f"data.manifest=data/bench-medloc-sparse-{band[0]:g}-{band[1]:g}/manifest.jsonl",)


# -------------------------------------------------------------------------------------------------------
# The data set: train/val/test in the band, `forget` at 11-20 %, and each seed's `seen` split.


def prepare_for(s: Study, band: tuple[float, float]) -> Callable[[Row], None]:
    """`run_study`'s prepare step: the base and the data set (written once), then the `seen` splits."""

    def prepare(base: Row) -> None:
        tree = apply_overrides(base, list(s.common))
        write_data(tree, band)
        if any(a.name == SFT_DATA for a in s.arms):  # every GRPO arm without refill reads the schedule's list
            add_seen_splits(Path(tree["data"]["manifest"]), base, s, GRPO_ARMS[0])

    return prepare


def data_stamp(band: tuple[float, float]) -> Row:
    """What the study's data folder holds (written beside the manifest; a mismatch is refused)."""
    return {"preset": "demo", "seed": 0, "band": list(band), "splits": SPLITS,
            "forget_band": list(FORGET_BAND), "forget_images": FORGET_IMAGES}


def write_data(tree: Row, band: tuple[float, float]) -> None:
    """Build the demo base when missing and write the data set once: the demo preset's train/val/test
    (SPLITS) with every target in `band`, and a `forget` split of FORGET_IMAGES images at FORGET_BAND in the
    same manifest (written as a second data set into the same folder, images/forget/, and merged; one spec
    has one area band). Written into a `.partial` folder and renamed when whole. Raises ValueError when the
    folder holds a data set written for another band or split sizes."""
    from bench.studies.runner import ensure_inputs
    from services.data.manifest import load_manifest, write_manifest
    from services.data.synth import make_spec, write_dataset

    manifest = Path(tree["data"]["manifest"])
    stamp = manifest.parent / "study_data.json"
    if manifest.is_file():
        if not stamp.is_file() or json.loads(stamp.read_text()) != data_stamp(band):
            raise ValueError(f"{manifest.parent} holds another data set than this study writes (band "
                             f"{list(band)}, splits {SPLITS}; see {stamp.name}); delete the folder to "
                             "rewrite it")
        ensure_inputs(tree, "demo")  # the base only: the data set is there
        return
    partial = manifest.parent.with_name(manifest.parent.name + ".partial")
    ensure_inputs({**tree, "data": {**tree["data"], "manifest": str(partial / manifest.name)}}, "demo",
                  splits=SPLITS, area_buckets=(band,))
    forget = write_dataset(make_spec("demo", splits={"forget": FORGET_IMAGES}, area_buckets=(FORGET_BAND,)),
                           partial, seed=0, manifest_name="forget.jsonl")
    records = (*load_manifest(partial / manifest.name).records, *load_manifest(forget).records)
    write_manifest(records, partial / manifest.name)
    (partial / stamp.name).write_text(json.dumps(data_stamp(band), indent=2) + "\n")
    os.replace(partial, manifest.parent)


def grpo_images(manifest: Manifest, tree: Row, count: int) -> list[Record]:
    """The first `count` train records a GRPO run of `tree` reads, in its order (the driver's sampler,
    services.training.sampler.stage_sampler: a seeded permutation of the stage's split; without refill a
    run of S steps of P prompts reads exactly its first S x P)."""
    from services.config import RunConfig
    from services.training.sampler import stage_sampler

    return stage_sampler(manifest, RunConfig.model_validate(tree), 0).take(count)


def add_seen_splits(path: Path, base: Row, s: Study, grpo: Arm) -> None:
    """Append to the manifest, per seed of the study, the split `seen<N>-s<seed>`: copies of the N = steps x
    prompts train records the GRPO arm `grpo` of that seed reads (ids suffixed `@<split>`, the same images),
    unless it is there; the SFT equal-data arm trains on it."""
    from bench.studies.arms import arm_tree
    from services.data.manifest import load_manifest, write_manifest

    manifest = load_manifest(path)
    have = {r.split for r in manifest.records}
    added = []
    for seed in s.seeds:
        tree = arm_tree(base, s, grpo, seed, None)
        count = tree["stages"][0]["steps"] * tree["stages"][0]["prompts_per_step"]
        split = seen_split(count, seed)
        if split not in have:
            added += [r.model_copy(update={"id": f"{r.id}@{split}", "split": split})
                      for r in grpo_images(manifest, tree, count)]
    if added:
        tmp = path.with_suffix(".tmp.jsonl")
        write_manifest((*manifest.records, *added), tmp)
        os.replace(tmp, path)


# -------------------------------------------------------------------------------------------------------
# After each run: the checkpoint it reports, forgetting, the KL from the base, what it read.


def best_step(rows: Sequence[Row], key: str = "eval/A@0.5") -> int:
    """The step of the evaluation with the highest `key` (ties: the earliest). Raises ValueError when the
    rows hold no such evaluation."""
    evals = [r for r in rows if r.get(key) is not None and "step" in r]
    if not evals:
        raise ValueError(f"the run logged no {key}; its eval.every must divide its steps (one per SFT epoch)")
    top = max(r[key] for r in evals)
    return int(min(r["step"] for r in evals if r[key] == top))


def overall(report: Row, prefix: str) -> Row:
    """A report's overall greedy and sampled metrics (`eval_point`), `eval/` replaced by `prefix`."""
    from bench.studies.arms import eval_point

    return {prefix + k.removeprefix("eval/"): v for k, v in eval_point(report).items() if k != "step"}


def reading(rows: Sequence[Row], tree: Row, split_size: int) -> Row:
    """`prompts_read`: prompts a run generated for (GRPO: every round's groups, refill rounds included) or
    trained on (SFT: steps x prompts_per_step); `labeled_images`: distinct labeled images among them,
    min(prompts_read, split_size), since the sampler reads a fresh permutation of its split every epoch."""
    grpo = [r for r in rows if "batch/groups_seen" in r]
    if grpo:
        read = sum(int(r["batch/groups_seen"]) for r in grpo)
    else:
        read = sum(1 for r in rows if "time/step_s" in r) * int(tree["stages"][0]["prompts_per_step"])
    return {"prompts_read": read, "labeled_images": min(read, split_size)}


def split_size(tree: Row) -> int:
    """Labeled grounding records in the split the run's (first) stage trains on."""
    from services.data.manifest import load_manifest

    split = tree["stages"][0].get("train_split") or tree["data"]["train_split"]
    records = load_manifest(tree["data"]["manifest"]).select(split=split, task="grounding")
    return sum(1 for r in records if r.boxes)


def after(run: AfterRun) -> Row:
    """The study's hook after every arm x seed (bench.studies.runner): the SFT equal-data arm's best epoch
    (val greedy A@0.5) evaluated on test as its final metrics (`final`, `final_predictions`, `final_step`);
    for every arm the forgetting evaluation on the `forget` split (`forget/A@0.5`, `forget/sampled/A@0.5`,
    ..., `forget_predictions`) of the reported adapter (the best epoch, else the last step; the base: the
    model itself); for every trained arm the forward KL from the base on KL_IMAGES test images
    (`kl_from_base`: services.evaluation.kl) and what it read (`prompts_read`, `labeled_images`)."""
    out: Row = {"reported_step": None, "prompts_read": 0, "labeled_images": 0}
    if run.arm.name == SFT_DATA:
        step: int | None = best_step(run.rows)
        report, path = run.evaluate(step, "test", EVAL_SAMPLES)
        final = {k: v for k, v in report.items() if k.startswith("eval/")}
        out.update(final=final, headline={m: final.get(m) for m in METRICS}, final_predictions=str(path),
                   final_step=step, curve_split="val")
    else:
        step = max((int(r["step"]) for r in run.rows if "time/step_s" in r), default=None)
    forget, path = run.evaluate(step, "forget", EVAL_SAMPLES)
    out.update(overall(forget, "forget/"), forget_predictions=str(path))
    if run.rows:
        from services.evaluation.kl import kl_from_base

        out["kl_from_base"] = kl_from_base(run.run_dir, step=step, images=KL_IMAGES, samples=KL_SAMPLES,
                                           seed=run.seed, split="test")
        out.update(reading(run.rows, run.tree, split_size(run.tree)), reported_step=step)
    return out


# -------------------------------------------------------------------------------------------------------
# The study's own summary: the acceptance numbers per arm.

CHANGES = ("A@0.3", "A@0.5", "A@0.8", "mIoU")


def pooled(paired: Row, ref: str, arm: str) -> Row | None:
    """`arm` - `ref` image by image (a runner `paired` section), pooled over seeds as [mean, SE], greedy and
    (when both sampled) sampled, with the per-seed A@0.5 changes; None when either arm did not run."""
    entry = (paired.get(ref) or {}).get(arm)
    if entry is None:
        return None
    out: Row = {"greedy": {m: list(entry["pooled"][m]) for m in CHANGES},
                "A@0.5_per_seed": {s: list(c["A@0.5"]) for s, c in entry["per_seed"].items()}}
    if "sampled" in entry:
        out["sampled"] = {m: list(entry["sampled"]["pooled"][m]) for m in CHANGES}
        out["sampled_A@0.5_per_seed"] = {s: list(c["A@0.5"]) for s, c in entry["sampled"]["per_seed"].items()}
    return out


def _run_view(r: Row) -> Row:
    final = r.get("final", {})
    return {"seed": r.get("seed"), "reported_step": r.get("reported_step"),
            "greedy": {m: final.get(f"eval/{m}") for m in CHANGES},
            "sampled": {m: final.get(f"eval/sampled/{m}") for m in CHANGES},
            "forget": {k.removeprefix("forget/"): v for k, v in r.items() if k.startswith("forget/")},
            "zero_variance_fraction": r.get("path", {}).get("zero_variance", []),
            "tau": r.get("path", {}).get("tau", []), "tau_raises": r.get("tau_raises"),
            "kl_final": r.get("kl_final"), "kl_from_base": r.get("kl_from_base"),
            "labeled_images": r.get("labeled_images"), "prompts_read": r.get("prompts_read"),
            "curve": r.get("path", {}).get("eval", []), "curve_split": r.get("curve_split", "test")}


def by_arm(result: Row) -> Row:
    """Per arm: greedy and sampled A@0.3/0.5/0.8 and mIoU (spread over seeds); the paired changes against
    fixed_0.5, sft_equal_data and the base ([mean, SE] pooled over seeds, greedy and sampled); forgetting
    (the `forget` split's metrics and their paired change against the base); the forward KL from the base
    (nats per completion, spread over seeds); tau raises, labeled images and prompts read per seed; and each
    seed's run (`runs`: greedy, sampled, zero-variance fraction per step, tau path, kl_final, curve)."""
    from bench.studies.arms import spread

    out: Row = {}
    for name, runs in result["runs"].items():
        agg = result["aggregate"].get(name, {})
        out[name] = {
            "greedy": {m: agg.get(f"eval/{m}") for m in CHANGES},
            "sampled": {m: agg.get(f"eval/sampled/{m}") for m in CHANGES},
            **{f"vs_{ref}": pooled(result["paired"], ref, name) for ref in REFERENCES if ref != name},
            "forgetting": {"forget": {m: spread([r.get(f"forget/{m}") for r in runs])
                                      for m in ("A@0.5", "A@0.8", "mIoU", "sampled/A@0.5")},
                           "vs_base": pooled(result.get("paired_forget", {}), BASE, name)},
            "kl_from_base_nats": spread([(r.get("kl_from_base") or {}).get("kl_nats_per_completion")
                                         for r in runs]),
            "zero_variance_fraction": spread([r.get("zero_variance_fraction") for r in runs]),
            "tau_raises_per_seed": [r.get("tau_raises") for r in runs],
            "labeled_images_per_seed": [r.get("labeled_images") for r in runs],
            "prompts_read_per_seed": [r.get("prompts_read") for r in runs],
            "runs": [_run_view(r) for r in runs],
        }
    return out


def _pm(cell: Row | None, part: str, metric: str = "A@0.5") -> str:
    mean, se = cell[part][metric] if cell and part in cell else (None, None)
    return "-" if mean is None else f"{mean:+.1f} ± {se:.1f}"


def _mean(cell: Row | None, digits: int = 1) -> str:
    return "-" if not cell or cell.get("mean") is None else f"{cell['mean']:.{digits}f}"


def summary_markdown(summary: Row) -> list[str]:
    """The by-arm table: greedy and sampled A@0.5, the paired A@0.5 changes, forgetting, KL, tau raises."""
    head = ("| arm | greedy A@0.5 | sampled A@0.5 | vs fixed_0.5 greedy | vs fixed_0.5 sampled | vs "
            "sft_equal_data greedy | vs sft_equal_data sampled | forget A@0.5 | forget vs base | KL from "
            "base (nats) | tau raises | labeled images |")
    lines = ["## By arm (issue 28's acceptance numbers)", "",
             "Paired A@0.5 changes: mean over seeds ± its SE; forget: the 11-20 % `forget` split; KL: "
             "forward KL from the base per completion on held-out test images (T = 1).", "", head,
             "|---|" + "---:|" * 11]
    for name, a in summary.items():
        cells = [_mean(a["greedy"]["A@0.5"]), _mean(a["sampled"]["A@0.5"]),
                 _pm(a.get(f"vs_{FIXED}"), "greedy"), _pm(a.get(f"vs_{FIXED}"), "sampled"),
                 _pm(a.get(f"vs_{SFT_DATA}"), "greedy"), _pm(a.get(f"vs_{SFT_DATA}"), "sampled"),
                 _mean(a["forgetting"]["forget"]["A@0.5"]), _pm(a["forgetting"]["vs_base"], "greedy"),
                 _mean(a["kl_from_base_nats"], 4), str(a["tau_raises_per_seed"]),
                 str(a["labeled_images_per_seed"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def finish_for(band: tuple[float, float], temperature: float) -> Callable[[Row], tuple[Row, list[str]]]:
    """`run_study`'s finish step: the band and temperature, the forgetting changes paired against the base
    (`paired_forget.base`), the by-arm summary (`by_arm`) and its Markdown table."""

    def finish(result: Row) -> tuple[Row, list[str]]:
        from bench.studies.runner import paired_on

        runs = result["runs"]
        more: Row = {"area_band": list(band), "temperature": temperature,
                     "paired_forget": {BASE: paired_on(runs, BASE, "forget_predictions")} if BASE in runs
                     else {}}
        summary = by_arm({**result, **more})
        return {**more, "by_arm": summary}, summary_markdown(summary)

    return finish


COLUMNS = (("A@0.5", "eval/A@0.5", 1), ("A@0.8", "eval/A@0.8", 1), ("sampled A@0.5", "eval/sampled/A@0.5", 1),
           ("sampled A@0.8", "eval/sampled/A@0.8", 1), ("mIoU", "eval/mIoU", 3),
           ("zero-var groups", "zero_variance_fraction", 2), ("final tau", "tau_final", 2),
           ("raises", "tau_raises", 1))
DEVIATIONS = (
    "the demo base (a 3.6M-parameter Qwen2.5-VL pretrained on synthetic images, docs/miniature.md), not "
    "Qwen2.5-VL-3B; synthetic targets of the area band AREA_BAND, chosen by bench/sparse_gate.py",
    "window N = 16 prompt groups instead of the paper's 30 (2 steps of 8 prompts), for a budget of 24 GRPO "
    "steps, not 1000",
    "targets of 1.4-2.8 % of the image sampled at T = 1.0, the point of the gate's frontier nearest the gate "
    "(sampled A@0.3 39.1 +- 3.1 % where the gate asks 40; A@0.5 13.6 %; zero variance 0.24 at tau 0.3, 0.52 "
    "at tau 0.5; docs/RESULTS.md)",
    "format weight 0: a group's spread comes from the accuracy term alone, as in the gate and as in the "
    "paper once a 3B model's format saturates; here 17-23 % of the base's samples on these targets did not "
    "parse (T 0.6, a 2-step smoke run), so a format term would vary inside groups whose boxes all miss and "
    "hide the mechanism (an unparsable answer still earns no accuracy)",
    "plain LoRA rank 16 in every arm (the demo trains MLAE); no dynamic sampling but in fixed_0.5_refill "
    "(zero-variance groups dropped and replaced, refill_cap 2): the other arms keep them in the batch and "
    "in its loss mean, as the paper's baselines",
    "SFT equal data: the images its seed's GRPO arms read (steps x 8), 4 epochs at batch 16, best epoch by "
    "val greedy A@0.5 (100 val images); SFT equal time: batch 16 on the train split for the schedule arm's "
    "training seconds, on the first seed only (a side row, for the budget)",
    "held-out evaluation at the end only, with 2 samples per image (not 4), no step-12 evaluation, for the "
    "budget (3 seeds took 140 min on 2 cores, over the 2 h asked); the curve between is each step's mean "
    "sampled IoU on its fresh training images (never seen before, so held out when sampled)",
    "the paper's threshold table (P(0.3) = 0.8, S 0.2, margin 0.1) unchanged, so tau rises only if the "
    "policy learns to hit IoU 0.3 in 80 % of its T = 1.0 samples within 24 steps (the base: ~39 %)",
    "forward KL from the base: exact per-token KL along 2 samples at T = 1 on 100 test images "
    "(services.evaluation.kl), not the learner's k3 estimate (`kl_final`, kept beside it)",
)


def _band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--band {text!r}: give LOW,HIGH (box / image area), e.g. "
                                         "0.014,0.028") from None
    if not 0.0 < low < high <= 0.5:
        raise argparse.ArgumentTypeError(f"--band {text!r}: need 0 < LOW < HIGH <= 0.5")
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=None, help="a subset of the arms")
    parser.add_argument("--steps", type=int, default=STEPS, help="GRPO steps per arm run (even)")
    parser.add_argument("--images", type=int, default=EVAL_IMAGES, help="test images evaluated")
    parser.add_argument("--band", type=_band, default=AREA_BAND, help="target area band LOW,HIGH")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="sampling temperature")
    parser.add_argument("--replot", action="store_true",
                        help="only draw the learning-curve plots again from bench/results/medloc_sparse.json")
    args = parser.parse_args()
    from bench import machine
    from bench.studies.plots import plot_learning_curves

    if args.replot:
        saved = machine.RESULTS / "medloc_sparse.json"
        if not saved.is_file():
            parser.error(f"--replot: {saved} is missing; run the study first")
        plot_learning_curves(json.loads(saved.read_text()), machine.RESULTS / "medloc_sparse")
        return
    from bench.studies.runner import run_study

    s = study(tuple(args.seeds), args.steps, args.images, args.band, args.temperature, args.arms)
    desc = (f"MedLoc-R1 in its sparse regime on the demo base: targets {100 * args.band[0]:g}-"
            f"{100 * args.band[1]:g} % of the image, {args.steps} GRPO steps of {PROMPTS} prompts x G = 8 at "
            f"T = {args.temperature:g} from the base itself, plain LoRA, {len(s.seeds)} seed(s). Held-out "
            f"metrics on {args.images} test images in percent (mIoU in [0, 1]): greedy, and sampled pass@1 "
            f"(mean over {EVAL_SAMPLES} completions per image at T = {args.temperature:g}); sft_equal_data "
            "reports its best epoch (val greedy A@0.5) on test. zero-var groups: fraction of GRPO groups "
            "whose 8 task rewards were all equal; raises: tau raises of the schedule.")
    result = run_study(s, "medloc_sparse", COLUMNS, prepare_for(s, args.band), desc, DEVIATIONS,
                       finish=finish_for(args.band, args.temperature))
    plot_learning_curves(result, machine.RESULTS / "medloc_sparse")


if __name__ == "__main__":
    main()
