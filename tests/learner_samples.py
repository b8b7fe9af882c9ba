"""Learner test samples from the real processor of a generated tiny model (unit, integration and GPU
tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from learner.batch import TrainSample

COMPLETIONS = ('<think>round opacity</think><answer>{"bbox_2d": [10, 12, 40, 44]}</answer>',
               "<answer>[3, 4, 50, 60]</answer>", "lesion left upper", "grade 2", "no finding")

# No word shared between completions: with shared tokens a short negative completion can outweigh a long
# positive one on those tokens (sequence-mean weighting), which is correct GRPO but blurs a sign test.
DISJOINT_COMPLETIONS = ("effusion effusion", "nodule nodule", "mass mass", "opacity opacity")


def make_samples(model_dir: Path, advantages: list[float], image_every: int = 2,
                 completions: tuple[str, ...] = COMPLETIONS) -> list[TrainSample]:
    """Prompts from the real processor (every ``image_every``-th with an image), short text completions."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir))
    rng = np.random.default_rng(0)
    out = []
    for i, adv in enumerate(advantages):
        with_image = i % image_every == 0
        content = ([{"type": "image"}] if with_image
                   else []) + [{"type": "text", "text": f"Locate nodule {i}"}]
        text = processor.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True,
                                             tokenize=False)
        image = Image.fromarray(rng.integers(0, 255, (56 + 28 * (i % 2), 84, 3), dtype=np.uint8))
        enc = processor(text=[text], images=[image] if with_image else None, return_tensors="pt")
        completion = processor.tokenizer(completions[i % len(completions)])["input_ids"]
        out.append(TrainSample(
            prompt_ids=tuple(enc["input_ids"][0].tolist()), completion_ids=tuple(completion), advantage=adv,
            sampling_logprobs=tuple([-2.0] * len(completion)),
            pixel_values=enc["pixel_values"] if with_image else None,
            image_grid_thw=enc["image_grid_thw"] if with_image else None,
            mm_token_type_ids=tuple(enc["mm_token_type_ids"][0].tolist()) if with_image else None))
    return out


def group_samples(model_dir: Path) -> list[TrainSample]:
    """Three groups of three completions of mixed lengths (2 to 10 tokens): two with an image, one without."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir))
    rng = np.random.default_rng(0)
    out = []
    for g, with_image in enumerate([True, False, True]):
        content = ([{"type": "image"}] if with_image
                   else []) + [{"type": "text", "text": f"Locate nodule {g}"}]
        text = processor.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True,
                                             tokenize=False)
        image = Image.fromarray(rng.integers(0, 255, (56 + 28 * g, 84, 3), dtype=np.uint8))
        enc = processor(text=[text], images=[image] if with_image else None, return_tensors="pt")
        for j in range(3):
            out.append(TrainSample(
                prompt_ids=tuple(enc["input_ids"][0].tolist()),
                completion_ids=tuple(int(t) for t in rng.integers(10, 500, 2 + 3 * j + g)),
                advantage=float(rng.standard_normal()),
                pixel_values=enc["pixel_values"] if with_image else None,
                image_grid_thw=enc["image_grid_thw"] if with_image else None,
                mm_token_type_ids=tuple(enc["mm_token_type_ids"][0].tolist()) if with_image else None))
    return out
