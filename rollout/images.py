"""Images for rollout: loading, the model families, and the coordinate frame of what the model sees.

The frame is read from the processor's output (`image_grid_thw` x patch size), never recomputed here, so
it cannot drift from the resize the model saw. The family decides the box convention (docs/architecture.md,
"Coordinate frames"): Qwen2.5-VL answers in pixels of the resized input, Qwen2-VL and Qwen3-VL in
0..1000 units.

`FAMILIES` is the one place a model family is decided: `family_of` reads it from a model directory, and
train, eval and serve all take patch size, resize cell, box convention, vision tokens and LoRA module
names from its `FamilySpec`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

Convention = Literal["input_pixels", "norm1000"]
Family = Literal["qwen2_5_vl", "qwen2_vl", "qwen3_vl"]

# Model-side vision tokens of every Qwen-VL generation: a random or young policy can emit them and they
# break the learner's next forward pass, so both engines forbid them.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# The language model's linear layers in transformers' and vLLM's Qwen2/2.5/3-VL (vLLM packs q/k/v into
# qkv_proj and gate/up into gate_up_proj and maps these names onto them: its `packed_modules_mapping`).
LM_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FamilySpec:
    """What differs between Qwen-VL generations, as their released processors and configs define it.

    `patch_size`: vision patch side in pixels (`image_grid_thw` counts these); `merge_size`: patches merged
    per side into one language-model token, so smart_resize makes sides multiples of `cell` pixels;
    `convention`: where box answers live; `vision_tokens`: token strings generation must suppress;
    `lora_modules`: language-model module names a LoRA adapter may target (vLLM accepts exactly these).
    """

    model_type: str
    patch_size: int
    merge_size: int
    convention: Convention
    vision_tokens: tuple[str, ...] = VISION_TOKENS
    lora_modules: tuple[str, ...] = LM_LINEAR_MODULES

    @property
    def cell(self) -> int:
        """Side in pixels of one language-model image token: the smart_resize factor (28 or 32)."""
        return self.patch_size * self.merge_size


FAMILIES: dict[Family, FamilySpec] = {
    # Qwen2-VL and Qwen2.5-VL: 14 px patches merged 2x2 (28 px cells). Qwen2.5-VL answers in absolute
    # pixels of the resized input (Qwen2.5-VL technical report, section 2.1); Qwen2-VL in 0..1000.
    "qwen2_5_vl": FamilySpec("qwen2_5_vl", patch_size=14, merge_size=2, convention="input_pixels"),
    "qwen2_vl": FamilySpec("qwen2_vl", patch_size=14, merge_size=2, convention="norm1000"),
    # Qwen3-VL: 16 px patches merged 2x2 (32 px cells), boxes in 0..1000 relative units.
    "qwen3_vl": FamilySpec("qwen3_vl", patch_size=16, merge_size=2, convention="norm1000"),
}
PATCH_SIZE = FAMILIES["qwen2_5_vl"].patch_size  # the default family's patch side, for callers without one


@dataclass(frozen=True)
class ImageFrame:
    """Where a box answer lives: original image size, model input size (pixels) and the convention.

    `input_width`/`input_height` are the resized image the vision tower saw (multiples of the family's
    cell: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL);
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
    for family, spec in FAMILIES.items():
        if spec.model_type == model_type:
            return family
    raise ValueError(f"{path}: model_type {model_type!r} is not supported; expected one of "
                     f"{sorted(FAMILIES)} (Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoints)")


def convention_of(family: Family) -> Convention:
    """The box convention a model family answers in."""
    return FAMILIES[family].convention


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
        raise ValueError(f"a {image.mode} image has more than 8 bits per pixel; window it to 8 bits first "
                         "(the data layer's image reader does)")
    return image.convert("RGB") if image.mode != "RGB" else image


def frame_from_grid(original_size: tuple[int, int], grid_thw: tuple[int, int, int],
                    family: Family) -> ImageFrame:
    """The frame of one image from the processor's `image_grid_thw` row (t, h, w in patches).

    Example: a 300x200 image with grid (1, 6, 8) was resized to 8*14 = 112 wide and 6*14 = 84 high by a
    Qwen2.5-VL processor (14 px patches), to 8*16 = 128 by 6*16 = 96 by a Qwen3-VL one (16 px patches).
    """
    patch_size = FAMILIES[family].patch_size
    _, grid_h, grid_w = grid_thw
    width, height = original_size
    return ImageFrame(original_width=int(width), original_height=int(height),
                      input_width=int(grid_w) * patch_size, input_height=int(grid_h) * patch_size,
                      convention=convention_of(family))
