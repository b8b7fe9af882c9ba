"""Synthetic images with zero, one or several lesions of one finding (issue 31; `SynthSpec.lesions`).

Each image draws a count in `lesions` (a `normal_fraction` share of images have none), one finding that
can occur several times (nodule, mass, consolidation), and that many non-overlapping lesions of it. Its
grounding record asks for every lesion of that finding ("every mass in the lungs") with all their boxes;
a normal image's record asks the same of a finding it lacks, with no box (a negative).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from rewards.boxes import iou
from services.data.records import Attribute, Record, RecordMeta
from services.data.synth.lesions import FINDINGS, Lesion, draw_lesion, knowledge_key
from services.data.synth.phantom import Scene, rasterise, render_anatomy, sample_anatomy, to_uint8

if TYPE_CHECKING:
    from services.data.synth.generate import SynthSpec

REPEATABLE = ("nodule", "mass", "consolidation")  # findings an image can hold several of
_TRIES = 12  # placements tried per lesion before the image keeps fewer


def multi_phrase(finding: str) -> str:
    """The question of a multi-lesion record: every lesion of `finding`, however many (none included)."""
    return f"every {finding} in the lungs"


def synth_multi(spec: SynthSpec, rng: np.random.Generator, index: int,
                base: tuple[NDArray[np.float32], Scene] | None = None,
                ) -> tuple[NDArray[np.uint8], str, list[Lesion], dict[str, float]]:
    """One image (H, W) uint8, its finding, its lesions (none for a normal image) and facts for the record.

    Lesions do not overlap (a placement whose box meets an earlier one is drawn again elsewhere), so each
    box is one visible lesion.
    """
    if base is None:
        scene = rasterise(sample_anatomy(rng), spec.size, spec.size)
        a = render_anatomy(rng, scene)
    else:
        a, scene = base[0].copy(), base[1]
    findings = [f for f in spec.findings if f in REPEATABLE]
    finding = findings[int(rng.integers(len(findings)))]
    normal = spec.normal_fraction > 0 and rng.random() < spec.normal_fraction
    count = 0 if normal else int(rng.integers(spec.lesions[0], spec.lesions[1] + 1))
    contrast = float(rng.uniform(*spec.contrast))
    lesions: list[Lesion] = []
    for k in range(count):
        low, high = spec.area_buckets[(index + k) % len(spec.area_buckets)]
        low, high = max(low, FINDINGS[finding][1]), min(high, FINDINGS[finding][2])
        for _ in range(_TRIES):
            area = math.exp(rng.uniform(math.log(low), math.log(max(low, high))))
            trial = a.copy()
            lesion = draw_lesion(rng, trial, scene, finding, int(rng.integers(2)), area, contrast)
            if lesion is not None and all(iou(lesion.box, other.box) == 0.0 for other in lesions):
                a = trial
                lesions.append(lesion)
                break
    facts = {"n_lesions": float(len(lesions)), "contrast": round(contrast, 4)}
    return to_uint8(a, rng, spec.noise_std, spec.blur), finding, lesions, facts


def multi_records(spec: SynthSpec, split: str, index: int, image: str, finding: str, lesions: list[Lesion],
                  facts: dict[str, float]) -> Iterator[Record]:
    """The grounding record of one multi-lesion image: all its boxes, or none for a normal image."""
    size = spec.size
    areas = [lesion.relative_area(size, size) for lesion in lesions]
    attributes: dict[str, Attribute] = {"index": index, "finding": finding, **facts}
    if areas:
        attributes["relative_area"] = round(max(areas), 6)
    yield Record(id=f"synth-{split}-{index:05d}-grounding", task="grounding", image=image, width=size,
                 height=size, split=split, phrase=multi_phrase(finding),
                 boxes=tuple(lesion.box for lesion in lesions),
                 knowledge_key=knowledge_key(finding), source="synthetic_cxr_multi",
                 meta=RecordMeta(modality="cxr", orientation="radiological", attributes=attributes))
