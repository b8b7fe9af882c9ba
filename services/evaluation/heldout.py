"""Held-out evaluation through the rollout pool (docs/algorithms.md, "Evaluation"): the greedy answer of each
record, and k samples per grounding record at the training temperature (pass@1, pass@k).

What is evaluated is what is served: the same prompt builder, parser and frame conversion. Grounding
metrics are reported overall and per target-size bucket; prediction overlays go to `samples/`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

import rewards
from rollout.config import SamplingConfig
from rollout.contracts import RolloutGroup
from rollout.images import ImageFrame as RolloutFrame
from services.config import RunConfig
from services.convert import reward_frame, rollout_request
from services.data.jsonl import BadLine, read_jsonl
from services.data.manifest import Manifest
from services.data.medimage import read_image
from services.data.records import Record
from services.evaluation.metrics import (
    classification_metrics,
    grading_metrics,
    grounding_report,
    sampled_metrics,
)
from services.evaluation.set_metrics import SetAnswer, set_report

GREEDY = SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=64)


@dataclass(frozen=True)
class Prediction:
    record: Record
    text: str
    box: rewards.Box | None  # original pixels
    iou: float
    label: str | None = None
    grade: int | None = None
    boxes: tuple[rewards.Box, ...] | None = None  # multi_box: every box (original pixels), () if none


def predict(pool: Any, manifest: Manifest, records: Sequence[Record], max_new_tokens: int,
            multi_box: bool = False) -> list[Prediction]:
    """Greedy answers for `records`, parsed and mapped into original pixels (`multi_box`: asked and read
    as sets of boxes)."""
    sampling = GREEDY.model_copy(update={"max_new_tokens": max_new_tokens})
    groups: list[RolloutGroup] = pool.generate(
        [rollout_request(r, manifest.image_path(r), multi_box=multi_box) for r in records],
        n=1, sampling=sampling)
    return [_prediction(r, g, multi_box) for r, g in zip(records, groups, strict=True)]


def evaluate(pool: Any, manifest: Manifest, records: Sequence[Record], cfg: RunConfig,
             path: Path) -> tuple[dict[str, Any], list[Prediction]]:
    """One held-out evaluation as a run configures it: greedy answers, `eval.samples` samples per grounding
    record at the training distribution (the same draws at every evaluation of a run), the report row, and
    the predictions written to `path`. A run with a `multi_box` stage is evaluated with set answers (asked
    for a list, scored by the set metrics). Returns (row, greedy predictions)."""
    multi = any(s.multi_box for s in cfg.stages)
    preds = predict(pool, manifest, records, cfg.rollout.sampling.max_new_tokens, multi)
    sampling = sample_config(cfg.rollout.sampling, cfg.eval.sample_temperature)
    sampled = predict_sampled(pool, manifest, records, cfg.eval.samples, sampling, cfg.seed, multi)
    write_predictions(preds, path, sampled)
    return report(preds, cfg.reward.label_match, sampled, multi), preds


def sample_config(sampling: SamplingConfig, temperature: float | None) -> SamplingConfig:
    """The sampled evaluation's distribution: training's (`rollout.sampling`), at `temperature` if given."""
    return sampling if temperature is None else sampling.model_copy(update={"temperature": temperature})


def predict_sampled(pool: Any, manifest: Manifest, records: Sequence[Record], k: int,
                    sampling: SamplingConfig,
                    seed: int, multi_box: bool = False) -> dict[str, tuple[float, ...]]:
    """The IoU of each of `k` completions sampled with `sampling` for every grounding record (0 when one does
    not parse), by record id. Request i's seed comes from (`seed`, i) alone, so every evaluation of these
    records draws with the same random numbers: two checkpoints, or two arms of a study, are compared on
    the same draws (a paired comparison, not two independent samples). `multi_box`: each sample's mean
    matched IoU (`rewards.set_iou`; a negative: 1 for "not present", else 0), positives only."""
    grounding = [r for r in records if r.task == "grounding" and (r.boxes or multi_box)]
    if not grounding or k < 1:
        return {}
    seeds = np.random.SeedSequence([seed, 0x5EED]).generate_state(len(grounding))
    groups: list[RolloutGroup] = pool.generate(
        [rollout_request(r, manifest.image_path(r), int(s), multi_box)
         for r, s in zip(grounding, seeds, strict=True)],
        n=k, sampling=sampling)
    if multi_box:
        return {r.id: tuple(_set_iou(grounding_boxes(c.text, g.frame), r.boxes) for c in g.completions)
                for r, g in zip(grounding, groups, strict=True)}
    return {r.id: tuple(rewards.best_iou(grounding_answer(c.text, g.frame)[1], r.boxes)
                        for c in g.completions)
            for r, g in zip(grounding, groups, strict=True)}


def _set_iou(pred: tuple[rewards.Box, ...] | None, truth: tuple[rewards.Box, ...]) -> float:
    return 0.0 if pred is None else rewards.set_iou(rewards.match_boxes(pred, truth), len(pred), len(truth))


def grounding_answer(text: str, frame: RolloutFrame, multi_box: bool = False,
                     ) -> tuple[rewards.ParsedAnswer | None, rewards.Box | None]:
    """The parsed answer (box in the model's convention, clipped) and its (first) box in original pixels,
    or None: the one path from model text to a box that evaluation and the Serve app share."""
    reward_side = reward_frame(frame)
    parsed = rewards.parse_answer(text, "grounding", reward_side, multi_box=multi_box)
    box = rewards.to_original(parsed.box,
                              reward_side) if parsed is not None and parsed.box is not None else None
    return parsed, box


def grounding_boxes(text: str, frame: RolloutFrame) -> tuple[rewards.Box, ...] | None:
    """Every box of a set answer in original pixels, () for "not present", None when it does not parse."""
    reward_side = reward_frame(frame)
    parsed = rewards.parse_answer(text, "grounding", reward_side, multi_box=True)
    if parsed is None or parsed.boxes is None:
        return None
    return tuple(rewards.to_original(b, reward_side) for b in parsed.boxes)


def _prediction(record: Record, group: RolloutGroup, multi_box: bool = False) -> Prediction:
    text = group.completions[0].text
    if record.task != "grounding":
        parsed = rewards.parse_answer(text, record.task, reward_frame(group.frame), record.max_grade)
        return Prediction(record, text, None, 0.0, label=parsed.label if parsed else None,
                          grade=parsed.grade if parsed else None)
    if multi_box:
        boxes = grounding_boxes(text, group.frame)
        first = boxes[0] if boxes else None
        return Prediction(record, text, first, rewards.best_iou(first, record.boxes), boxes=boxes)
    _, box = grounding_answer(text, group.frame)
    return Prediction(record, text, box, rewards.best_iou(box, record.boxes))


def report(predictions: Sequence[Prediction],
           label_mode: Literal["normalised", "exact"] = "normalised",
           sampled: Mapping[str, Sequence[float]] | None = None, multi_box: bool = False) -> dict[str, Any]:
    """Flat metric dict: `eval/A@0.5`, `eval/2-10%/mIoU`, `eval/accuracy`, ... . `label_mode` is the
    classification reward's rule (reward.label_match), so eval counts as right what the reward pays for.
    `sampled` (`predict_sampled`) adds `eval/sampled/A@0.5` (pass@1), `eval/sampled/pass@k/A@0.5`, ... .
    The A@t and mIoU of grounding are of the first box on positive records; `multi_box` adds the set
    metrics of every answer (`eval/sets/AP@0.5`, `eval/sets/negatives/fp_rate`, `eval/sets/multi/R@0.5`, ...:
    services/evaluation/set_metrics.py)."""
    out: dict[str, Any] = {}
    if sampled:
        out.update({f"eval/sampled/{k}": v for k, v in sampled_metrics(list(sampled.values())).items()})
    if multi_box:
        answers = [SetAnswer(p.boxes, p.record.boxes, p.record.relative_area())
                   for p in predictions if p.record.task == "grounding"]
        for bucket, metrics in (set_report(answers) if answers else {}).items():
            prefix = "eval/sets/" if bucket == "all" else f"eval/sets/{bucket}/"
            out.update({prefix + k: v for k, v in metrics.items()})
    grounding = [p for p in predictions if p.record.task == "grounding" and p.record.boxes]
    if grounding:
        areas = [p.record.relative_area() or 0.0 for p in grounding]
        rep = grounding_report([p.iou for p in grounding], [p.box is not None for p in grounding], areas)
        for bucket, metrics in rep.items():
            prefix = "eval/" if bucket == "all" else f"eval/{bucket}/"
            out.update({prefix + k: v for k, v in metrics.items()})
    cls = [p for p in predictions if p.record.task == "classification"]
    if cls:
        m = classification_metrics([p.label for p in cls], [p.record.label or "" for p in cls], label_mode)
        out.update({f"eval/cls/{k}": v for k, v in m.items()})
    grd = [p for p in predictions if p.record.task == "grading"]
    if grd:
        m = grading_metrics([p.grade for p in grd], [p.record.grade or 0 for p in grd])
        out.update({f"eval/grade/{k}": v for k, v in m.items()})
    return out


def centre_box_baseline(records: Sequence[Record], fraction: float = 0.5) -> dict[str, Any]:
    """Metrics of always answering the centred box covering `fraction` of each side: the floor that a
    model must beat to show it reads the image."""
    preds = []
    for r in records:
        if r.task != "grounding" or not r.boxes or r.width is None or r.height is None:
            continue
        w, h = r.width, r.height
        box = (w * (1 - fraction) / 2, h * (1 - fraction) / 2, w * (1 + fraction) / 2, h * (1 + fraction) / 2)
        preds.append(Prediction(r, "", box, rewards.best_iou(box, r.boxes)))
    return {k.replace("eval/", "baseline/centre/"): v for k, v in report(preds).items()}


def write_predictions(predictions: Sequence[Prediction], path: Path,
                      sampled: Mapping[str, Sequence[float]] | None = None) -> Path:
    """One JSON line per held-out sample: the model's greedy text, the parsed box (original pixels) and IoU,
    and the IoUs of its k sampled completions (`sampled_iou`, when sampled)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sampled = sampled or {}
    rows = [{"id": p.record.id, "text": p.text, "box": p.box, "iou": p.iou, "label": p.label,
             "grade": p.grade,
             "truth": list(p.record.boxes) or p.record.label or p.record.grade,
             **({"boxes": [list(b) for b in p.boxes]} if p.boxes is not None else {}),
             **({"sampled_iou": list(sampled[p.record.id])} if p.record.id in sampled else {})}
            for p in predictions]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def eval_files(run_dir: Path) -> list[Path]:
    """The held-out prediction files a training run wrote (eval/step-N.jsonl, `write_predictions`), in step
    order: the first is the run's starting point when it evaluated at its start, the last its end."""
    files = (run_dir / "eval").glob("step-*.jsonl")
    return sorted((p for p in files if p.stem.removeprefix("step-").isdigit()),
                  key=lambda p: int(p.stem.removeprefix("step-")))


def read_ious(path: Path) -> dict[str, float]:
    """The greedy IoU of each held-out grounding sample of a predictions file (`write_predictions`), by record
    id; an unparsable answer has IoU 0. Raises ValueError naming the line of a row that is not a
    prediction."""
    return {i: float(row["iou"] or 0.0) for i, row in _grounding_rows(path)}


def read_sampled_ious(path: Path) -> dict[str, tuple[float, ...]]:
    """The IoUs of each held-out grounding sample's k sampled completions (`write_predictions`), by record id;
    empty when the evaluation drew none (eval.samples = 0)."""
    return {i: tuple(float(v) for v in row["sampled_iou"]) for i, row in _grounding_rows(path)
            if "sampled_iou" in row}


def _grounding_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for number, row in read_jsonl(path):  # split at newline bytes only (services/data/jsonl.py)
        try:
            if isinstance(row, BadLine):
                raise ValueError(row.reason)
            if isinstance(row["truth"], list):
                float(row["iou"] or 0.0)
                out.append((str(row["id"]), row))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} line {number} is not a prediction row ({exc!r}); the file "
                             "was written by an evaluation: re-run it (medground eval) rather "
                             "than edit it") from exc
    return out


def write_overlays(predictions: Sequence[Prediction], manifest: Manifest, out_dir: Path,
                   limit: int) -> list[Path]:
    """Ground truth in green, predictions in red, every box numbered (truths 1.., predictions 1.. in answer
    order); a legend at the top left says so, with the IoU ("not found" for an empty set answer) and the
    phrase (`legend_lines`); one PNG per sample.

    The image is read as training read it (the data layer's reader, the record's window); images under
    256 px are enlarged by a whole factor so boxes stay on pixel edges: a box (x1, y1, x2, y2) in stored
    pixels is drawn at (x1, y1, x2, y2) * scale."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for p in [p for p in predictions if p.record.task == "grounding"][:limit]:
        image = read_image(manifest.image_path(p.record), window=p.record.meta.window).to_pil().convert("RGB")
        scale = max(1, 256 // max(image.size))
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(image)
        predicted = p.boxes if p.boxes is not None else (() if p.box is None else (p.box,))
        for colour, boxes, corner in ((TRUTH_RGB, p.record.boxes, 0), (PREDICTION_RGB, predicted, 1)):
            for i, box in enumerate(boxes, start=1):
                xy = [v * scale for v in box]
                draw.rectangle(xy, outline=colour, width=2)
                # truths numbered at their top-left corner, predictions at their bottom-right
                at = (xy[0] + 2, xy[1] + 1) if corner == 0 else (xy[2] - 8, xy[3] - 12)
                draw.text(at, str(i), fill=colour)
        draw_legend(draw, legend_lines(p), image.width)
        path = out_dir / f"{p.record.id.replace('/', '_').replace(':', '_')}.png"
        image.save(path)
        written.append(path)
    return written


TRUTH_RGB, PREDICTION_RGB, TEXT_RGB = (0, 220, 0), (230, 30, 30), (255, 255, 0)


def legend_lines(p: Prediction) -> list[list[tuple[str, tuple[int, int, int]]]]:
    """The overlay's legend, line by line as (text, colour) runs: 'truth' in the truth colour, 'prediction'
    (or 'no box') in the prediction colour, the IoU; then the phrase the model was asked to locate."""
    if p.boxes == ():
        predicted = "prediction: not found"
    elif p.boxes is not None and len(p.boxes) > 1:
        predicted = f"{len(p.boxes)} predictions"
    else:
        predicted = "prediction" if p.box is not None else "prediction: no box"
    return [[("truth", TRUTH_RGB), ("  ", TEXT_RGB), (predicted, PREDICTION_RGB),
             (f"  IoU {p.iou:.2f}", TEXT_RGB)],
            [(p.record.phrase, (255, 255, 255))]]


Legend = list[list[tuple[str, tuple[int, int, int]]]]


def draw_legend(draw: ImageDraw.ImageDraw, lines: Legend, width: int) -> None:
    """Each line on a dark band from the top left (11 px a line), runs side by side, cut at the width."""
    for row, runs in enumerate(lines):
        y, x = 2 + 11 * row, 3
        text = "".join(t for t, _ in runs)
        draw.rectangle([0, y - 1, min(width, 6 + int(draw.textlength(text))), y + 10], fill=(0, 0, 0))
        for run, colour in runs:
            if x >= width:
                break
            draw.text((x, y), run, fill=colour)
            x += int(draw.textlength(run))
