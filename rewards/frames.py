"""Coordinate frames: where a box's numbers live, and the one conversion between them.

Ground truth is stored in pixels of the stored image (the *original* frame). The model sees a resized
image (Qwen-VL `smart_resize`: sides multiples of the family's cell, 28 px for Qwen2/2.5-VL and 32 px for
Qwen3-VL) and answers in its family's convention:

- `input_pixels` (Qwen2.5-VL): absolute pixels of the resized input, x in [0, input_width].
- `norm1000` (Qwen2-VL, Qwen3-VL): 0..1000 units of the image, whatever its size.

Boxes are `(x1, y1, x2, y2)` floats. IoU is always computed in the original frame (docs/architecture.md,
"Coordinate frames"). Pure: math only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Box = tuple[float, float, float, float]
Convention = Literal["input_pixels", "norm1000"]

# Qwen2/2.5-VL image processor defaults: 14 px patches merged 2x2, so sides are multiples of 28
# (Qwen3-VL: 16 px patches, factor 32; rollout's family registry passes the factor of the model's family).
QWEN_FACTOR = 28
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 14 * 14 * 4 * 1280
NORM_SCALE = 1000.0


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) Qwen-VL resize an image to: sides multiples of `factor`, area in budget.

    Same arithmetic as transformers' `qwen2_vl.image_processing_qwen2_vl.smart_resize` (a unit test checks
    it on random sizes), so the reward side knows the input frame without importing transformers.
    Raises ValueError for an aspect ratio above 200, as the processor does.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError("absolute aspect ratio must be smaller than 200, got "
                         f"{max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)  # no slots: slotted frozen dataclasses pickle ~2x slower (Ray calls)
class ImageFrame:
    """One image's frames: original size (pixels of the stored image), model input size, box convention."""

    original_width: float
    original_height: float
    input_width: float
    input_height: float
    convention: Convention

    def __post_init__(self) -> None:
        sizes = (self.original_width, self.original_height, self.input_width, self.input_height)
        if not all(math.isfinite(s) and s > 0 for s in sizes):
            raise ValueError(f"ImageFrame sizes must be finite and > 0, got {sizes}")
        if self.convention not in ("input_pixels", "norm1000"):
            raise ValueError("ImageFrame.convention must be 'input_pixels' or 'norm1000', got "
                             f"{self.convention!r}")

    @classmethod
    def for_image(cls, width: int, height: int, convention: Convention, **resize: int) -> ImageFrame:
        """The frame Qwen-VL sees for a `width` x `height` image; `resize` overrides smart_resize's budget
        and factor (`factor=32` for Qwen3-VL)."""
        in_h, in_w = smart_resize(height, width, **resize)
        return cls(float(width), float(height), float(in_w), float(in_h), convention)

    @property
    def model_extent(self) -> tuple[float, float]:
        """(width, height) of the image in the model's convention: the bounds a parsed box is clipped to."""
        if self.convention == "input_pixels":
            return float(self.input_width), float(self.input_height)
        return NORM_SCALE, NORM_SCALE

    @property
    def to_original_scale(self) -> tuple[float, float]:
        """(sx, sy): multiply a model-convention x (y) by sx (sy) to get original pixels."""
        mw, mh = self.model_extent
        return self.original_width / mw, self.original_height / mh


def to_original(box: Box, frame: ImageFrame) -> Box:
    """Model-convention box -> original-image pixels (a pure rescale; no clipping).

    >>> frame = ImageFrame.for_image(1000, 500, "input_pixels")  # smart_resize: 504 x 1008 input
    >>> (frame.input_width, frame.input_height)
    (1008.0, 504.0)
    >>> to_original((100.8, 50.4, 201.6, 100.8), frame)
    (100.0, 50.0, 200.0, 100.0)
    >>> to_original((100.0, 100.0, 200.0, 200.0), ImageFrame.for_image(1000, 500, "norm1000"))
    (100.0, 50.0, 200.0, 100.0)
    """
    sx, sy = frame.to_original_scale
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def from_original(box: Box, frame: ImageFrame) -> Box:
    """Original-image pixels -> the model's convention (for SFT targets and boxes shown to the model)."""
    mw, mh = frame.model_extent
    fx, fy = mw / frame.original_width, mh / frame.original_height
    return (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
