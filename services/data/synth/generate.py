"""Seeded synthetic datasets: phantoms + findings + phrases -> PNG images and a manifest.

Each image has its own random stream, `SeedSequence([seed, crc32(split), index])`, so a dataset is
byte-for-byte reproducible and the first N images of a split do not depend on how many are written.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.data.manifest import write_manifest
from services.data.records import Attribute, Record, RecordMeta, Task
from services.data.synth.lesions import FINDINGS, Lesion, draw_lesion, knowledge_key, phrase
from services.data.synth.multi import REPEATABLE, multi_records, synth_multi
from services.data.synth.phantom import Scene, rasterise, render_anatomy, sample_anatomy, to_uint8

NO_FINDING = "no finding"
CLASSIFY_QUESTION = "Which finding is present in this chest radiograph?"
TASK_KNOWLEDGE = "cxr/chest-radiograph"  # task-level knowledge: a finding's key would leak the label


class SynthSpec(BaseModel):
    """The knobs of a synthetic dataset; presets in PRESETS, overridable from the CLI."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(112, ge=32, le=4096, description="Side of the square image in pixels.")
    splits: dict[str, int] = Field({"train": 3000, "val": 96, "test": 96}, description="Images per split.")
    area_buckets: tuple[tuple[float, float], ...] = Field(
        ((0.02, 0.035), (0.05, 0.08), (0.11, 0.20)),
        description="Target relative box areas (box / image, 0..1); image i uses bucket i mod n, "
                    "log-uniform inside.",
    )
    contrast: tuple[float, float] = Field((0.28, 0.40),
                                          description="Lesion attenuation change, uniform in range (0..1).")
    noise_std: float = Field(0.02, ge=0.0, le=0.5,
                             description="Gaussian quantum noise std in attenuation units.")
    blur: float = Field(0.7, ge=0.0, le=10.0, description="Point-spread blur radius in pixels (0: none).")
    distractors: tuple[int, int] = Field((0, 0),
                                         description="Inclusive range of non-target lesions per image.")
    findings: tuple[str, ...] = Field(
        ("mass", "consolidation", "pleural effusion", "pneumothorax"),
        description="Target findings (lesions.FINDINGS)."
    )
    normal_fraction: float = Field(0.0, ge=0.0, lt=1.0,
                                   description="Share of images with no finding (no grounding record).")
    paraphrase: bool = Field(False, description="Vary phrase templates; off keeps demo phrases canonical.")
    tasks: tuple[Task, ...] = Field(("grounding",), min_length=1, description="Records written per image.")
    grade_thresholds: tuple[float, ...] = Field(
        (0.04, 0.095), description="Relative areas separating grades 1|2|3; grade 0 is no finding."
    )
    hybrid: bool = Field(False,
                         description="Paste findings into the real RG1 radiograph (needs pydicom-data).")
    lesions: tuple[int, int] = Field(
        (1, 1), description="Inclusive range of target lesions per abnormal image (issue 31). Other than "
        "(1, 1): one repeatable finding (nodule, mass, consolidation) drawn that many times without overlap, "
        "a grounding record asking for every one of them, and normal images (normal_fraction) written as "
        "negatives (no box); "
        "services/data/synth/multi.py. (1, 1): one lesion, as before.")

    @model_validator(mode="after")
    def _valid(self) -> SynthSpec:
        unknown = [f for f in self.findings if f not in FINDINGS]
        if unknown:
            raise ValueError(f"unknown findings {unknown}; choose from {sorted(FINDINGS)}")
        for low, high in self.area_buckets:
            if not 0.0 < low <= high <= 0.5:
                raise ValueError(f"area bucket ({low}, {high}) must satisfy 0 < low <= high <= 0.5")
            if not any(FINDINGS[f][1] <= high and low <= FINDINGS[f][2] for f in self.findings):
                raise ValueError(f"no finding in {list(self.findings)} can be drawn at areas ({low}, {high})")
        for name, (low, high) in (("contrast", self.contrast), ("distractors", self.distractors),
                                  ("lesions", self.lesions)):
            if low > high:
                raise ValueError(f"{name} ({low}, {high}) must be (low, high) with low <= high")
        if self.multi:
            if not 1 <= self.lesions[0] <= self.lesions[1] <= 3 or self.tasks != ("grounding",):
                raise ValueError(f"lesions {self.lesions} must lie in 1..3 and tasks be [grounding]; "
                                 "normal images come from normal_fraction")
            if not set(self.findings) & set(REPEATABLE):
                raise ValueError(f"lesions {self.lesions} needs one of {REPEATABLE} in findings")
        return self

    @property
    def multi(self) -> bool:
        """Several lesions per image and negative records (services/data/synth/multi.py)."""
        return self.lesions != (1, 1)

    @property
    def max_grade(self) -> int:
        return len(self.grade_thresholds) + 1

    def grade(self, relative_area: float | None) -> int:
        """0 for no finding, else 1 + the number of thresholds the area reaches."""
        if relative_area is None:
            return 0
        return 1 + sum(relative_area >= t for t in self.grade_thresholds)

    @property
    def choices(self) -> tuple[str, ...]:
        return self.findings + ((NO_FINDING,) if self.normal_fraction > 0 else ())


# Small-target benchmark: the four SIZE_BUCKETS, floored at 0.05 % and capped at 20 % (the range).
SMALL_TARGET_BUCKETS = ((0.0005, 0.005), (0.005, 0.02), (0.02, 0.10), (0.10, 0.20))

PRESETS: dict[str, SynthSpec] = {
    # One clearly visible lesion per 112 px image, areas 2-20 % in three separated grade bands.
    "demo": SynthSpec(),
    # MedLoc-R1's sparse regime on the demo base: targets of 1.4-2.8 % of the 112 px image, where at T = 1.0
    # a fixed IoU threshold of 0.5 pays about 1 sample in 7 and half the groups have no reward spread
    # (docs/RESULTS.md, "MedLoc-R1's sparse regime: the gate"). `make demo` and bench-medloc-sparse use it.
    "demo-sparse": SynthSpec(area_buckets=((0.014, 0.028),)),
    "small-target": SynthSpec(
        size=512, splits={"train": 2000, "val": 200, "test": 400}, area_buckets=SMALL_TARGET_BUCKETS,
        contrast=(0.10, 0.30), noise_std=0.03, distractors=(0, 2),
        findings=("nodule", "mass", "consolidation", "pleural effusion", "pneumothorax"), paraphrase=True,
    ),
    # The VRFT-Aug variants on demo images: which finding (classification) and how large (grade 0..3).
    "demo-classification": SynthSpec(tasks=("classification",), normal_fraction=0.2),
    "demo-grading": SynthSpec(tasks=("grading",), normal_fraction=0.2),
    # Issue 31: 0-3 masses, nodules or consolidations per 112 px image, a quarter of the images normal.
    "multibox": SynthSpec(splits={"train": 2000, "val": 96, "test": 96}, normal_fraction=0.25, lesions=(1, 3),
                          findings=("nodule", "mass", "consolidation"),
                          area_buckets=((0.012, 0.02), (0.02, 0.04), (0.04, 0.07))),
    "hybrid": SynthSpec(size=512, splits={"train": 200, "val": 32, "test": 32}, contrast=(0.12, 0.25),
                        findings=("nodule", "mass", "consolidation"), area_buckets=SMALL_TARGET_BUCKETS[:3],
                        hybrid=True),
}


def make_spec(preset: str, **overrides: object) -> SynthSpec:
    """A preset with the given knobs replaced (None values are ignored); errors name the preset or knob."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        return SynthSpec.model_validate(PRESETS[preset].model_dump() | changes)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e['input']!r})" if e["loc"]
            else str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"invalid synth knobs for preset {preset!r}: {problems}") from None


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def _sample_target(rng: np.random.Generator, spec: SynthSpec, index: int) -> tuple[str, float]:
    low, high = spec.area_buckets[index % len(spec.area_buckets)]
    for _ in range(100):
        area = math.exp(rng.uniform(math.log(low), math.log(high)))
        fits = [f for f in spec.findings if FINDINGS[f][1] <= area <= FINDINGS[f][2]]
        if fits:
            return fits[int(rng.integers(len(fits)))], area
    raise ValueError(f"no finding of {spec.findings} fits areas ({low}, {high}); widen the bucket")


def _draw_distractors(rng: np.random.Generator, spec: SynthSpec, a: NDArray[np.float32], scene: Scene,
                      target: str, target_side: int) -> int:
    """Non-target lesions; one with the target's finding goes to the other lung so the phrase stays unique."""
    n = int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))
    drawn = 0
    for _ in range(n):
        finding = ("nodule", "consolidation")[int(rng.integers(2))]
        side = 1 - target_side if finding == target else int(rng.integers(2))
        area = math.exp(rng.uniform(math.log(0.001), math.log(0.015)))
        contrast = float(rng.uniform(*spec.contrast))
        drawn += draw_lesion(rng, a, scene, finding, side, area, contrast) is not None
    return drawn


def synth_image(spec: SynthSpec, seed: int, split: str, index: int,
                base: tuple[NDArray[np.float32], Scene] | None = None,
                ) -> tuple[NDArray[np.uint8], Lesion | None, dict[str, float]]:
    """One image (H, W) uint8, its target lesion (None for a normal image) and facts for the record.

    `base` replaces the phantom by a real radiograph (attenuation in [0, 1]) and its lung geometry.
    """
    rng = image_rng(seed, split, index)
    if base is None:
        scene = rasterise(sample_anatomy(rng), spec.size, spec.size)
        a = render_anatomy(rng, scene)
    else:
        a, scene = base[0].copy(), base[1]
    normal = spec.normal_fraction > 0 and rng.random() < spec.normal_fraction
    finding, area = _sample_target(rng, spec, index)
    side = int(rng.integers(2))
    facts: dict[str, float] = {}
    facts["n_distractors"] = _draw_distractors(rng, spec, a, scene, "" if normal else finding, side)
    lesion = None
    if not normal:
        contrast = float(rng.uniform(*spec.contrast))
        for _ in range(5):  # a level-based finding can miss its bucket; try again, then accept
            lesion = draw_lesion(rng, a, scene, finding, side, area, contrast)
            if lesion is not None:
                break
        facts["contrast"] = round(contrast, 4)
    return to_uint8(a, rng, spec.noise_std, spec.blur), lesion, facts


def _records(spec: SynthSpec, split: str, index: int, image: str, lesion: Lesion | None,
             facts: dict[str, float], rng: np.random.Generator) -> Iterator[Record]:
    size = spec.size
    area = None if lesion is None else lesion.relative_area(size, size)
    attributes: dict[str, Attribute] = {"index": index, **facts}
    if lesion is not None and area is not None:
        attributes |= {"finding": lesion.finding, "side": lesion.side, "zone": lesion.zone,
                       "relative_area": round(area, 6)}
    meta = RecordMeta(modality="cxr", orientation="radiological", attributes=attributes)
    base_id = f"synth-{split}-{index:05d}"
    common = {"image": image, "width": size, "height": size, "split": split, "meta": meta,
              "source": "synthetic_cxr_hybrid" if spec.hybrid else "synthetic_cxr"}
    for task in spec.tasks:
        if task == "grounding" and lesion is not None and area is not None:
            yield Record(id=f"{base_id}-grounding", task="grounding", boxes=(lesion.box,),
                         phrase=phrase(lesion, area, rng if spec.paraphrase else None),
                         knowledge_key=knowledge_key(lesion.finding), **common)
        elif task == "classification":
            yield Record(id=f"{base_id}-classification", task="classification", phrase=CLASSIFY_QUESTION,
                         label=NO_FINDING if lesion is None else lesion.finding, choices=spec.choices,
                         knowledge_key=TASK_KNOWLEDGE, **common)
        elif task == "grading":
            question = (f"Grade the size of the largest abnormality from 0 (none) to {spec.max_grade} "
                        "(large).")
            yield Record(id=f"{base_id}-grading", task="grading", phrase=question, grade=spec.grade(area),
                         max_grade=spec.max_grade, knowledge_key=TASK_KNOWLEDGE, **common)


def write_dataset(spec: SynthSpec, out_dir: str | Path, seed: int,
                  manifest_name: str = "manifest.jsonl") -> Path:
    """Write `images/<split>/<index>.png` and the manifest under `out_dir`; return the manifest path."""
    out = Path(out_dir)
    base = None
    if spec.hybrid:
        from services.data.synth.hybrid import real_chest_base

        base = real_chest_base(spec.size)
    records: list[Record] = []
    for split, count in spec.splits.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            if spec.multi:
                rng = image_rng(seed, split, index)
                pixels, finding, lesions, facts = synth_multi(spec, rng, index, base)
                rel = f"images/{split}/{index:05d}.png"
                Image.fromarray(pixels, mode="L").save(out / rel, optimize=False)
                records.extend(multi_records(spec, split, index, rel, finding, lesions, facts))
                continue
            pixels, lesion, facts = synth_image(spec, seed, split, index, base)
            rel = f"images/{split}/{index:05d}.png"
            Image.fromarray(pixels, mode="L").save(out / rel, optimize=False)
            phrase_rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index, 1])
            records.extend(_records(spec, split, index, rel, lesion, facts, phrase_rng))
    return write_manifest(records, out / manifest_name)
