"""Images for rollout: loading, and the coordinate frame of what the model actually sees.

The frame is read from the processor's output (`image_grid_thw` x patch size), never recomputed here, so
it cannot drift from the resize the model saw. The family decides the box convention (ARCHITECTURE.md,
"Coordinate frames"): Qwen2.5-VL answers in pixels of the resized input, Qwen2-VL in 0..1000 units.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

Convention = Literal["input_pixels", "norm1000"]
Family = Literal["qwen2_5_vl", "qwen2_vl"]

PATCH_SIZE = 14  # Qwen2/2.5-VL vision patch side in pixels; the grid counts patches before merging

_CONVENTIONS: dict[str, Convention] = {"qwen2_5_vl": "input_pixels", "qwen2_vl": "norm1000"}


@dataclass(frozen=True)
class ImageFrame:
    """Where a box answer lives: original image size, model input size (pixels) and the convention.

    `input_width`/`input_height` are the resized image the vision tower saw (multiples of 28);
    `convention` is "input_pixels" (answer in input pixels) or "norm1000" (answer in 0..1000 units).
    """

    original_width: int
    original_height: int
    input_width: int
    input_height: int
    convention: Convention


def family_of(model_dir: str | Path) -> Family:
    """The model family from `config.json`'s model_type; unknown types are an error naming the file."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; point rollout at a HF model directory")
    model_type = json.loads(path.read_text()).get("model_type")
    if model_type == "qwen2_5_vl":
        return "qwen2_5_vl"
    if model_type == "qwen2_vl":
        return "qwen2_vl"
    raise ValueError(f"{path}: model_type {model_type!r} is not supported; expected one of {sorted(_CONVENTIONS)}")


def convention_of(family: Family) -> Convention:
    """The box convention a model family answers in."""
    return _CONVENTIONS[family]


def load_image(image: Image.Image) -> Image.Image:
    """An RGB PIL image from display pixels (8-bit "L", "RGB", ...).

    Rollout never opens files: services read every stored image with their one reader (windowing, palettes,
    DICOM) and send pixels, so train, eval and serve see the same image. Deeper-than-8-bit modes are refused
    because choosing their window is the reader's job, not the prompt builder's.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"rollout takes a PIL image, got {type(image).__name__}; read files with the data "
                        "layer's image reader and send its pixels")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        raise ValueError(f"a {image.mode} image has more than 8 bits per pixel; window it to 8 bits first (the "
                         "data layer's image reader does)")
    return image.convert("RGB") if image.mode != "RGB" else image


def frame_from_grid(original_size: tuple[int, int], grid_thw: tuple[int, int, int], family: Family,
                    patch_size: int = PATCH_SIZE) -> ImageFrame:
    """The frame of one image from the processor's `image_grid_thw` row (t, h, w in patches).

    Example: a 300x200 image with grid (1, 6, 8) was resized to 8*14 = 112 wide and 6*14 = 84 high.
    """
    _, grid_h, grid_w = grid_thw
    width, height = original_size
    return ImageFrame(original_width=int(width), original_height=int(height),
                      input_width=int(grid_w) * patch_size, input_height=int(grid_h) * patch_size,
                      convention=convention_of(family))
