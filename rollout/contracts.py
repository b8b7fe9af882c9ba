"""Contracts that leave rollout: what a request carries in and what a group of completions carries out.

Image inputs are numpy arrays on the CPU (they cross Ray's object store without copies); the learner
turns them into tensors. Ground truth never appears here: rollout cannot leak labels into prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from rollout.images import ImageFrame

Task = Literal["grounding", "classification", "grading"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class RolloutRequest:
    """One prompt to sample a group for.

    `image` is display pixels as a PIL image (8-bit grey or RGB; services read files); `question` is the task
    text (the phrase to
    ground, or the question to answer); `knowledge_key` ("<modality>/<finding>") selects the prior
    knowledge injected when injection is on (None: nothing injected). `seed`, when given, fixes this
    request's sampling whatever worker serves it (so a resumed run samples what the original would).
    `multi_box` (a stage's `multi_box`): the prompt asks for a list of boxes, `[]` when absent.
    """

    prompt_id: str
    image: Image.Image
    question: str
    task: Task = "grounding"
    knowledge_key: str | None = None
    seed: int | None = None
    multi_box: bool = False


@dataclass(frozen=True)
class Completion:
    """One sampled completion.

    `token_ids` shape (L,), the generated ids (a final end-of-sequence id included when `finish_reason`
    is "stop"); `logprobs` shape (L,), float, the behaviour log-probability of each generated token: of the
    distribution it was sampled from (the vision-token bias, min-tokens masking and temperature applied),
    which the learner recomputes (docs/algorithms.md, "GRPO"); `text` the decoded ids without special tokens.
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason


@dataclass(frozen=True, eq=False)
class RolloutGroup:
    """G completions for one prompt plus everything the reward and the learner need about the prompt.

    - `prompt_token_ids`: int64 (P,), the prompt as the processor expanded it (image pads included);
      the engine saw exactly these ids (checked per call by the vLLM engine).
    - `pixel_values`: float32 (num_patches, 3 * 2 * patch * patch; patch 14 or 16 by family);
      `image_grid_thw`: int64 (1, 3);
      `mm_token_type_ids`: int64 (P,), 1 on image tokens (extend with zeros over completion tokens).
    - `injected_knowledge`: the prior-knowledge text put in the prompt (recitation reward), or None.
    - `adapter_version`: the LoRA adapter version that sampled the group (0: the base model).
    """

    prompt_id: str
    task: Task
    completions: tuple[Completion, ...]
    prompt_token_ids: np.ndarray
    frame: ImageFrame
    injected_knowledge: str | None
    adapter_version: int
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    mm_token_type_ids: np.ndarray
