"""Run the model's HF processor once per request: chat text, expanded prompt ids and image inputs.

The learner trains on exactly these ids and image tensors; the vLLM engine reads the same chat text and
image with the same processor settings and checks that it expanded the prompt to the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rollout.images import Family, ImageFrame, frame_from_grid
from rollout.prompts import Prompt


@dataclass(frozen=True, eq=False)
class PreparedPrompt:
    """A prompt ready for an engine. Shapes: `prompt_token_ids` int64 (P,), `pixel_values` float32
    (num_patches, 3 * 2 * patch * patch: 1176 for Qwen2/2.5-VL, 1536 for Qwen3-VL), `image_grid_thw`
    int64 (1, 3), `mm_token_type_ids` int64 (P,)."""

    prompt: Prompt
    chat_text: str
    prompt_token_ids: np.ndarray
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    mm_token_type_ids: np.ndarray
    frame: ImageFrame


def image_size_kwargs(min_pixels: int, max_pixels: int) -> dict[str, Any]:
    """The resize budget in the processor's own terms; the vLLM engine passes the same dict."""
    if min_pixels > max_pixels:
        raise ValueError(f"rollout.min_pixels ({min_pixels}) exceeds rollout.max_pixels ({max_pixels})")
    return {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}


class PromptProcessor:
    """Wraps `AutoProcessor` of a model directory with a fixed pixel budget."""

    def __init__(self, model_dir: str | Path, family: Family, min_pixels: int, max_pixels: int) -> None:
        from transformers import AutoProcessor

        self.family = family
        self.size_kwargs = image_size_kwargs(min_pixels, max_pixels)
        self.processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            str(model_dir), **self.size_kwargs)
        self.tokenizer = self.processor.tokenizer

    def chat_text(self, prompt: Prompt) -> str:
        """The prompt as the chat template renders it, ending with the assistant turn's header."""
        text = self.processor.apply_chat_template(prompt.messages(),
                                                  add_generation_prompt=True, tokenize=False)
        return str(text)

    def prepare(self, prompt: Prompt) -> PreparedPrompt:
        """Tokenise and preprocess one prompt (one image)."""
        text = self.chat_text(prompt)
        out = self.processor(text=[text], images=[prompt.image], return_tensors="np")
        grid = np.asarray(out["image_grid_thw"], dtype=np.int64)  # (1, 3): t, h, w in patches
        ids = np.asarray(out["input_ids"][0], dtype=np.int64)  # (P,)
        mm = out.get("mm_token_type_ids")
        mm_types = (np.asarray(mm[0], dtype=np.int64) if mm is not None
                    else (ids == self.tokenizer.convert_tokens_to_ids("<|image_pad|>")).astype(np.int64))
        image: Image.Image = prompt.image
        t, h, w = (int(v) for v in grid[0])
        return PreparedPrompt(prompt=prompt, chat_text=text, prompt_token_ids=ids,
                              pixel_values=np.asarray(out["pixel_values"], dtype=np.float32),
                              image_grid_thw=grid, mm_token_type_ids=mm_types,
                              frame=frame_from_grid(image.size, (t, h, w), self.family))
