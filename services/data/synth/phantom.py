"""A chest-radiograph-like phantom: body, lungs, heart, spine, ribs, clavicles, lung markings.

The scene is an attenuation map in [0, 1] (1 = dense = white, as displayed). Display follows the
radiological convention: the patient's right lung is on the image's left. Everything is numpy on a
per-size cached grid, so a 112x112 phantom costs well under a millisecond of array work.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

F32 = NDArray[np.float32]
Mask = NDArray[np.bool_]


@lru_cache(maxsize=8)
def grid(height: int, width: int) -> tuple[F32, F32]:
    """Pixel-centre coordinates normalised to [0, 1]: (u, v), each of shape (H, W); u across, v down."""
    v, u = np.meshgrid((np.arange(height, dtype=np.float32) + 0.5) / height,
                       (np.arange(width, dtype=np.float32) + 0.5) / width, indexing="ij")
    u32, v32 = np.asarray(u, dtype=np.float32), np.asarray(v, dtype=np.float32)
    u32.setflags(write=False)
    v32.setflags(write=False)
    return u32, v32


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> F32:
    """Zero-mean, unit-ish low-frequency noise (H, W): a cells x cells Gaussian grid, bilinearly upsampled."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32)


def window(cx: float, cy: float, rx: float, ry: float, height: int, width: int) -> tuple[slice, slice]:
    """Row and column slices covering the normalised box [cx - rx, cx + rx] x [cy - ry, cy + ry] (+1 px)."""
    r0, r1 = max(0, int((cy - ry) * height) - 1), min(height, int((cy + ry) * height) + 2)
    c0, c1 = max(0, int((cx - rx) * width) - 1), min(width, int((cx + rx) * width) + 2)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


@dataclass(frozen=True)
class Lung:
    """One lung as a super-ellipse tapered towards the apex, in normalised units; `side` is the patient's."""

    side: str  # "right" (image left) or "left" (image right)
    cx: float
    cy: float
    rx: float
    ry: float

    @property
    def top(self) -> float:
        return self.cy - self.ry

    @property
    def bottom(self) -> float:
        return self.cy + self.ry

    def mask(self, height: int, width: int) -> Mask:
        """(H, W) boolean; computed only inside the lung's bounding window (the costly part of a phantom)."""
        out = np.zeros((height, width), dtype=bool)
        rows, cols = window(self.cx, self.cy, self.rx, self.ry, height, width)
        u, v = grid(height, width)
        u, v = u[rows, cols], v[rows, cols]
        # The lung narrows towards the apex: the horizontal radius grows from 60 % to 100 % over the top 60 %.
        taper = np.clip((v - self.top) / (1.2 * self.ry), 0.0, 1.0) * 0.4 + 0.6
        du = np.abs(u - self.cx) / (self.rx * taper)
        dv = np.abs(v - self.cy) / self.ry
        out[rows, cols] = du * du * du + dv * dv * dv <= 1.0
        return out


@dataclass(frozen=True)
class Anatomy:
    """The sampled geometry of one phantom (normalised units); `lungs[0]` is the patient's right lung."""

    lungs: tuple[Lung, Lung]
    heart: tuple[float, float, float, float]  # cx, cy, rx, ry


@dataclass(frozen=True)
class Scene:
    """An anatomy rasterised at one size: the masks that rendering and lesion placement share, (H, W) each."""

    anatomy: Anatomy
    lungs: tuple[Mask, Mask]
    heart: Mask

    @property
    def fields(self) -> tuple[Mask, Mask]:
        """Visible lung of each side (heart removed): where intrapulmonary lesions may be placed."""
        return (self.lungs[0] & ~self.heart, self.lungs[1] & ~self.heart)


def rasterise(anatomy: Anatomy, height: int, width: int) -> Scene:
    """Masks of the lungs and the heart at (height, width)."""
    u, v = grid(height, width)
    cx, cy, rx, ry = anatomy.heart
    rows, cols = window(cx, cy, rx, ry, height, width)
    heart = np.zeros((height, width), dtype=bool)
    du, dv = (u[rows, cols] - cx) / rx, (v[rows, cols] - cy) / ry
    heart[rows, cols] = du * du + dv * dv <= 1.0
    return Scene(anatomy, (anatomy.lungs[0].mask(height, width), anatomy.lungs[1].mask(height, width)), heart)


def sample_anatomy(rng: np.random.Generator, heart_scale: float = 1.0) -> Anatomy:
    """Jittered anatomy; `heart_scale` > 1 enlarges the heart (cardiomegaly-like scenes)."""
    j = rng.uniform(-1.0, 1.0, size=12).astype(float)
    right = Lung("right", 0.30 + 0.015 * j[0], 0.47 + 0.015 * j[1], 0.165 + 0.01 * j[2], 0.31 + 0.015 * j[3])
    left = Lung("left", 0.70 + 0.015 * j[4], 0.48 + 0.015 * j[5], 0.155 + 0.01 * j[6], 0.30 + 0.015 * j[7])
    heart = (0.555 + 0.01 * j[8], 0.66 + 0.01 * j[9], (0.15 + 0.01 * j[10]) * heart_scale,
             (0.13 + 0.01 * j[11]) * heart_scale)
    return Anatomy((right, left), heart)


def render_anatomy(rng: np.random.Generator, scene: Scene) -> F32:
    """Attenuation map (H, W) in [0, 1] of the normal chest, before lesions and quantum noise."""
    height, width = scene.heart.shape
    u, v = grid(height, width)
    bu, bv = np.square((u - 0.5) / 0.48), np.square((v - 0.6) / 0.58)
    body = bu * bu + bv * bv <= 1.0
    a = np.where(body, np.float32(0.42), np.float32(0.04))
    lungs = scene.lungs[0] | scene.lungs[1]
    # Lung markings: faint low-frequency texture, only inside the lungs.
    a = np.where(lungs, np.float32(0.14) + 0.035 * smooth_noise(rng, height, width, 10), a)
    # Ribs: 9 evenly spaced posterior arcs per side; the arc offset depends on the column only, so one
    # modulo over the grid finds the nearest rib (no loop over ribs).
    for lung in scene.anatomy.lungs:
        sign = -1.0 if lung.side == "right" else 1.0
        spacing = (lung.bottom - lung.top + 0.05) / 9.0
        thick = 0.010 + 0.003 * float(rng.random())
        rows, cols = window(lung.cx, lung.cy, lung.rx * 1.25, lung.ry + 0.06, height, width)
        su, sv = u[rows, cols], v[rows, cols]
        dx = (su - lung.cx) * sign / 0.2
        phase = (sv - (lung.top - 0.02 + 0.05 * dx * dx - 0.03 * dx)) / spacing
        near = np.abs(phase - np.round(phase)) * spacing < thick
        a[rows, cols] += np.float32(0.08) * (near & (phase > -0.5) & (phase < 8.5))
    # Spine and mediastinum: a vertical band; the heart lies in front of the left lung.
    a = np.where(np.abs(u - 0.5) < 0.04 + 0.025 * (v > 0.35), np.float32(0.52), a)
    a = np.where(scene.heart, np.float32(0.55), a)
    # Clavicles: bands rising slightly towards the shoulders.
    lateral = np.abs(u - 0.5)
    clav = (np.abs(v - (0.17 - 0.08 * lateral)) < 0.012) & (lateral > 0.05) & (lateral < 0.36)
    return np.asarray(a + np.float32(0.12) * clav, dtype=np.float32)


def to_uint8(attenuation: F32, rng: np.random.Generator, noise_std: float, blur: float) -> NDArray[np.uint8]:
    """Blur (point-spread, `blur` px), add Gaussian quantum noise (std in attenuation units), quantise."""
    grey = Image.fromarray(np.asarray(np.clip(attenuation * 255.0 + 0.5, 0, 255), dtype=np.uint8), mode="L")
    if blur > 0:
        grey = grey.filter(ImageFilter.GaussianBlur(blur))
    noise = rng.standard_normal(size=attenuation.shape, dtype=np.float32) * np.float32(255.0 * noise_std)
    noisy = np.asarray(grey, dtype=np.float32) + noise
    return np.asarray(np.clip(noisy + 0.5, 0, 255), dtype=np.uint8)
