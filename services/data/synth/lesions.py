"""Synthetic findings: placement, rendering into the phantom, their boxes, and the phrase grammar.

Boxes come from the lesion's geometry, never from thresholding the noisy rendering, so a box does not move
with contrast or noise: the analytic extent for round lesions and blobs, the support mask for effusion and
pneumothorax (the box a segmentation mask of the finding would give).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rewards.boxes import clip_box, mask_box
from services.data.synth.phantom import F32, Lung, Mask, Scene, grid, smooth_noise, window

Box = tuple[float, float, float, float]

# finding name -> (renderer, smallest and largest relative box area it is drawn at).
FINDINGS: dict[str, tuple[str, float, float]] = {
    "nodule": ("round", 0.0005, 0.02),
    "mass": ("round", 0.02, 0.20),
    "consolidation": ("blob", 0.002, 0.20),
    "pleural effusion": ("effusion", 0.01, 0.15),
    "pneumothorax": ("pneumothorax", 0.01, 0.12),
}


def knowledge_key(finding: str) -> str:
    """'pleural effusion' -> 'cxr/pleural-effusion' (deploy/knowledge/cxr.yaml)."""
    return "cxr/" + finding.replace(" ", "-")


@dataclass(frozen=True)
class Lesion:
    """A drawn finding: its name, patient side, lung zone and box in stored-image pixels."""

    finding: str
    side: str
    zone: str
    box: Box

    def relative_area(self, height: int, width: int) -> float:
        x1, y1, x2, y2 = self.box
        return (x2 - x1) * (y2 - y1) / (height * width)


def _zone(lung: Lung, v_centre: float) -> str:
    third = (v_centre - lung.top) / (lung.bottom - lung.top)
    return "upper" if third < 1 / 3 else "middle" if third < 2 / 3 else "lower"


def _clip_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> Box:
    # Rounded to 1/1000 px: exact enough for any IoU, and manifests stay readable.
    cx1, cy1, cx2, cy2 = clip_box((x1, y1, x2, y2), width, height)
    return (round(cx1, 3), round(cy1, 3), round(cx2, 3), round(cy2, 3))


def _pick_centre(rng: np.random.Generator, field: Mask, half_w: float, half_h: float) -> tuple[float, float]:
    """A pixel of `field` (preferring ones whose box stays inside the image), as a float centre (x, y)."""
    height, width = field.shape
    ys, xs = np.nonzero(field)
    inside = (xs >= half_w) & (xs <= width - half_w) & (ys >= half_h) & (ys <= height - half_h)
    if inside.any():
        ys, xs = ys[inside], xs[inside]
    if ys.size == 0:
        return width / 2, height / 2
    i = int(rng.integers(ys.size))
    return float(xs[i]) + float(rng.random()), float(ys[i]) + float(rng.random())


def _soft_ellipse(a: F32, cx: float, cy: float, rx: float, ry: float, gain: float | F32) -> None:
    """Add `gain` x (1 inside, 0 outside, soft over the outer 35 % of the radius) to `a`, in its window."""
    height, width = a.shape
    u, v = grid(height, width)
    rows, cols = window(cx, cy, rx, ry, height, width)
    r = np.sqrt(np.square((u[rows, cols] - cx) / rx) + np.square((v[rows, cols] - cy) / ry))
    g = gain if isinstance(gain, float) else gain[rows, cols]
    a[rows, cols] += g * np.clip((1.0 - r) / 0.35, 0.0, 1.0) ** 0.7


def draw_lesion(rng: np.random.Generator, a: F32, scene: Scene, finding: str, side_index: int,
                area: float, contrast: float) -> Lesion | None:
    """Draw `finding` into the attenuation map `a` (in place) in lung `side_index` (0: patient right).

    `area` is the wanted relative box area and `contrast` the attenuation change (0..1). Returns None when
    the finding cannot be placed at that size (the caller resamples).
    """
    height, width = a.shape
    u, v = grid(height, width)
    lung = scene.anatomy.lungs[side_index]
    field = scene.fields[side_index]
    kind = FINDINGS[finding][0]
    if kind in ("round", "blob"):
        aspect = float(rng.uniform(0.75, 1.33))
        box_w = math.sqrt(area * height * width * aspect)
        box_h = area * height * width / box_w
        cx, cy = _pick_centre(rng, field, box_w / 2, box_h / 2)
        cx = min(max(cx, box_w / 2), width - box_w / 2)
        cy = min(max(cy, box_h / 2), height - box_h / 2)
        nu, nv, rx, ry = cx / width, cy / height, box_w / 2 / width, box_h / 2 / height
        if kind == "round":
            _soft_ellipse(a, nu, nv, rx, ry, contrast)
        else:
            # A blob: the bounding ellipse modulated by smooth noise, so its outline is irregular but the box
            # stays the analytic extent of the bounding ellipse.
            texture = 0.65 + 0.35 * np.clip(smooth_noise(rng, height, width, 12), -1.0, 1.0)
            _soft_ellipse(a, nu, nv, rx, ry, contrast * texture)
        box = _clip_box(cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2, width, height)
        return Lesion(finding, lung.side, _zone(lung, nv), box)
    if kind == "effusion":
        return _effusion(a, field, lung, area, contrast, u, v)
    return _pneumothorax(a, field, lung, area, contrast, u, v)


def _level_for_area(field: Mask, area: float, from_bottom: bool) -> int | None:
    """Row where a fluid level (from the bottom) or air cap (from the top) gives box area closest to
    `area`."""
    height, width = field.shape
    rows = np.flatnonzero(field.any(axis=1))
    if rows.size == 0:
        return None
    cols_min = np.where(field.any(axis=1), field.argmax(axis=1), width)
    cols_max = np.where(field.any(axis=1), width - field[:, ::-1].argmax(axis=1), 0)
    lo_rows, hi_rows = rows[0], rows[-1] + 1
    lo_c, hi_c = cols_min[lo_rows:hi_rows], cols_max[lo_rows:hi_rows]
    if from_bottom:  # span [level, bottom]: suffix min/max of the column extents
        lo = np.minimum.accumulate(lo_c[::-1])[::-1]
        hi = np.maximum.accumulate(hi_c[::-1])[::-1]
        rows_in = hi_rows - np.arange(lo_rows, hi_rows)
    else:  # span [top, level]: prefix min/max
        lo = np.minimum.accumulate(lo_c)
        hi = np.maximum.accumulate(hi_c)
        rows_in = np.arange(lo_rows, hi_rows) - lo_rows + 1
    box_area = (hi - lo) * rows_in / (height * width)
    err = np.abs(np.log(np.maximum(box_area, 1e-9) / area))
    return int(lo_rows + int(np.argmin(err)))


def _effusion(a: F32, field: Mask, lung: Lung, area: float, contrast: float, u: F32, v: F32) -> Lesion | None:
    height, _ = a.shape
    level = _level_for_area(field, area, from_bottom=True)
    if level is None:
        return None
    # Meniscus: the fluid climbs the lateral chest wall.
    lateral = np.clip(np.abs(u - lung.cx) / lung.rx, 0.0,
                      1.0) * (np.sign(u - lung.cx) == (-1 if lung.side == "right" else 1))
    mask = field & (v >= (level / height) - 0.03 * lateral**2)
    box = mask_box(mask)
    if box is None:
        return None
    a[mask] = np.maximum(a[mask], np.float32(0.14 + contrast + 0.2))
    return Lesion("pleural effusion", lung.side, "lower", box)


def _pneumothorax(a: F32, field: Mask, lung: Lung, area: float, contrast: float, u: F32,
                  v: F32) -> Lesion | None:
    height, _ = a.shape
    level = _level_for_area(field, area, from_bottom=False)
    if level is None:
        return None
    # The collapsed lung edge is convex downwards: the air cap is deepest laterally.
    lateral = np.clip(np.abs(u - lung.cx) / lung.rx, 0.0, 1.0)
    edge = (level / height) + 0.02 * lateral**2
    mask = field & (v <= edge)
    box = mask_box(mask)
    if box is None:
        return None
    # No lung markings beyond the pleural line: the cap is flat and darker; the line itself is bright.
    a[mask] = np.float32(max(0.03, 0.14 - 0.3 * contrast))
    line = field & (np.abs(v - edge) < 1.2 / height)
    a[line] = np.float32(0.14 + contrast)
    return Lesion("pneumothorax", lung.side, "upper", box)


SIZE_WORDS = ((0.005, "tiny"), (0.02, "small"), (0.10, "moderate"), (float("inf"), "large"))


def size_word(relative_area: float) -> str:
    """Size adjective from relative box area: tiny < 0.5 %, small < 2 %, moderate < 10 %, else large."""
    return next(word for bound, word in SIZE_WORDS if relative_area < bound)


def phrase(lesion: Lesion, relative_area: float, rng: np.random.Generator | None = None) -> str:
    """A referring phrase from the grammar [size] finding [side] [zone]; `rng` picks a paraphrase.

    Sides are the patient's ("right" is on the image's left).
    """
    size = size_word(relative_area)
    if lesion.finding == "pleural effusion":
        forms = [f"{size} {lesion.side} pleural effusion", f"{lesion.side} pleural effusion, {size}",
                 f"there is a {size} {lesion.side} pleural effusion"]
    elif lesion.finding == "pneumothorax":
        forms = [f"{size} {lesion.side} apical pneumothorax", f"{lesion.side} apical pneumothorax, {size}",
                 f"there is a {size} {lesion.side} apical pneumothorax"]
    else:
        forms = [f"{size} {lesion.finding} in the {lesion.side} {lesion.zone} zone",
                 f"{lesion.side} {lesion.zone} zone {lesion.finding}, {size}",
                 f"there is a {size} {lesion.finding} in the {lesion.side} {lesion.zone} zone"]
    return forms[0] if rng is None else forms[int(rng.integers(len(forms)))]
