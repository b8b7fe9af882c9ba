"""Conversions between the packages' contracts: the only place where one package's type becomes another's.

record -> RolloutRequest (no ground truth crosses), record -> the prepared prompt a rollout worker builds,
record + group -> RewardTarget, group + rewards -> TrainSamples (GRPO), record -> TrainSample with the
reference answer (SFT), rollout frame -> rewards frame,
(the learner's LoraArtefact reaches rollout workers as it is: they accept its shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import rewards.frames as rf
from learner.batch import SamplingSpec, TrainSample
from rewards.scoring import RewardTarget
from rollout.config import SamplingConfig
from rollout.contracts import RolloutGroup, RolloutRequest
from rollout.engines import stop_token_ids, vision_token_ids
from rollout.images import ImageFrame as RolloutFrame
from rollout.images import convention_of, family_of
from rollout.knowledge import KnowledgeBase
from rollout.processing import PreparedPrompt, PromptProcessor
from rollout.prompts import build_prompt
from services.data.medimage import MedicalImageError, read_image
from services.data.records import Record


def rollout_request(record: Record, image_path: Path, seed: int | None = None,
                    multi_box: bool = False) -> RolloutRequest:
    """What rollout may see of a record: the image, the phrase/question, the task and knowledge key
    (never boxes, labels or `meta`, which holds ground truth). The image is read here by the data layer's
    one reader (DICOM windowed with the record's window) and travels as pixels, so rollout never opens a
    file. A record whose stated size differs from its image is refused: its boxes would be in another
    frame (MedicalImageError naming the record, both sizes and the fix). `multi_box`: the prompt asks for a
    list of boxes (a stage's `multi_box`)."""
    image = read_image(image_path, window=record.meta.window)
    if record.width is not None and record.height is not None and image.size != (record.width, record.height):
        raise MedicalImageError(
            f"record {record.id!r}: the manifest says {record.width}x{record.height} but {image_path} is "
            f"{image.size[0]}x{image.size[1]} pixels, so its boxes are in another frame than the image; "
            "convert again with the images in place (`medground data convert` scales boxes onto a resized "
            "copy) or point the record at the image the boxes were drawn on; changing width/height alone "
            "would keep wrong boxes")
    return RolloutRequest(prompt_id=record.id, image=image.to_pil(), question=record.phrase,
                          task=record.task, knowledge_key=record.knowledge_key, seed=seed,
                          multi_box=multi_box)


def reward_frame(frame: RolloutFrame) -> rf.ImageFrame:
    return rf.ImageFrame(original_width=frame.original_width, original_height=frame.original_height,
                         input_width=frame.input_width, input_height=frame.input_height,
                         convention=frame.convention)


def reward_target(record: Record, frame: RolloutFrame, injected_knowledge: str | None) -> RewardTarget:
    """The ground truth a group is scored against (boxes in original pixels, the frame of the prompt)."""
    return RewardTarget(task=record.task, boxes=tuple(tuple(map(float, b)) for b in record.boxes),  # type: ignore[misc]
                        label=record.label, grade=record.grade, max_grade=record.max_grade,
                        knowledge=injected_knowledge or "",
                        frame=reward_frame(frame))


def _image_inputs(group: RolloutGroup | PreparedPrompt) -> dict[str, Any]:
    # Arrays that came through Ray's object store are read-only views: copy them into tensors.
    return {"pixel_values": torch.tensor(group.pixel_values),
            "image_grid_thw": torch.tensor(group.image_grid_thw),
            "mm_token_type_ids": tuple(int(t) for t in group.mm_token_type_ids)}


def sampling_spec(sampling: SamplingConfig, model_dir: str | Path, tokenizer: Any) -> SamplingSpec:
    """The rollout engines' sampling distribution as the learner recomputes it: temperature, the vision
    tokens both engines suppress, and the end tokens `min_new_tokens` forbids."""
    suppressed = tuple(vision_token_ids(tokenizer, family_of(model_dir)))
    return SamplingSpec(temperature=sampling.temperature, suppressed_token_ids=suppressed,
                        min_new_tokens=sampling.min_new_tokens,
                        eos_token_ids=stop_token_ids(model_dir, tokenizer))


def grpo_samples(group: RolloutGroup, advantages: Sequence[float]) -> list[TrainSample]:
    """One TrainSample per completion of a group, with its advantage, behaviour log-probs, the adapter version
    that sampled it and whether it was truncated. The samples are consecutive and share one image tensor: a
    remote call pickles it once, and the shared-prefix learner packs them as one prompt
    (learner/packing.py)."""
    if len(advantages) != len(group.completions):
        raise ValueError(f"{len(advantages)} advantages for {len(group.completions)} completions of "
                         f"{group.prompt_id}")
    prompt = tuple(int(t) for t in group.prompt_token_ids)
    image = _image_inputs(group)
    return [TrainSample(prompt_ids=prompt, completion_ids=c.token_ids, advantage=float(a),
                        sampling_logprobs=c.logprobs, adapter_version=group.adapter_version,
                        truncated=c.finish_reason == "length", **image)
            for c, a in zip(group.completions, advantages, strict=True)]


def prepared_prompt(record: Record, image_path: Path, processor: PromptProcessor,
                    knowledge: KnowledgeBase | None,
                    inject_knowledge: bool, multi_box: bool = False) -> PreparedPrompt:
    """The prompt a rollout worker builds for `record` (rollout.core: build_prompt, then the processor), built
    here with the same processor: the SFT sample's prompt, and what a benchmark feeding another trainer
    (bench/vs_trl.py) gives it. `prepared.prompt` holds the messages, the image and the injected knowledge."""
    prompt = build_prompt(rollout_request(record, image_path, multi_box=multi_box),
                          convention_of(processor.family), knowledge,
                          inject_knowledge)
    return processor.prepare(prompt)


def sft_sample(prepared: PreparedPrompt, answer: str, tokenizer: Any) -> TrainSample:
    """Prompt ids as the processor expanded them, then the answer's ids and the end-of-turn token."""
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return TrainSample(prompt_ids=tuple(int(t) for t in prepared.prompt_token_ids),
                       completion_ids=(*answer_ids, end), **_image_inputs(prepared))

