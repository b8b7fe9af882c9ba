"""Prompt building: per-task templates in the model's coordinate convention, VLM-R1 think/answer format,
and VRFT-Aug prior-knowledge injection (docs/algorithms.md, "Rewards" and "VRFT-Aug").

Pure: the chat template itself is applied by the processor (rollout/processing.py), so that the text the
engine reads and the ids the learner trains on come from one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from rollout.contracts import RolloutRequest, Task
from rollout.images import Convention, load_image
from rollout.knowledge import KnowledgeBase

FORMAT_INSTRUCTION = (
    "First output the thinking process in <think> </think> tags and then output the final answer in "
    "<answer> </answer> tags. Output the final answer in JSON format."
)
_BOX_SENTENCE: dict[Convention, str] = {
    "input_pixels": 'Give the box as {"bbox_2d": [x1, y1, x2, y2]} in pixels of this image.',
    "norm1000": 'Give the box as {"bbox_2d": [x1, y1, x2, y2]} in 0-1000 normalised coordinates.',
}
# stage.multi_box (issue 31): the answer is a set, the form Qwen2.5-VL / Qwen3-VL answer natively.
_BOXES_SENTENCE: dict[Convention, str] = {
    "input_pixels": 'Give every region as a list [{"bbox_2d": [x1, y1, x2, y2]}, ...] in pixels of this '
                    "image, one object per region, or [] if it is not present.",
    "norm1000": 'Give every region as a list [{"bbox_2d": [x1, y1, x2, y2]}, ...] in 0-1000 normalised '
                "coordinates, one object per region, or [] if it is not present.",
}
_ANSWER_SENTENCE: dict[Task, str] = {
    "classification": 'Answer as {"label": "<label>"}.',
    "grading": 'Answer as {"grade": <integer grade>}.',
}


@dataclass(frozen=True)
class Prompt:
    """A request turned into chat messages: `user_text` (the whole user turn after the image),
    `injected_knowledge` (the text prepended, or None) and the loaded RGB `image` (original size)."""

    prompt_id: str
    task: Task
    user_text: str
    injected_knowledge: str | None
    image: Image.Image
    seed: int | None = None

    def messages(self) -> list[dict[str, Any]]:
        """Chat messages for `processor.apply_chat_template`: one user turn, the image first."""
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.user_text}]}]


def task_instruction(task: Task, convention: Convention, multi_box: bool = False) -> str:
    """The answer-format sentence of a task; grounding names the coordinate convention, and with `multi_box`
    asks for a list of boxes, `[]` when the finding is absent."""
    if task == "grounding":
        return (_BOXES_SENTENCE if multi_box else _BOX_SENTENCE)[convention]
    return _ANSWER_SENTENCE[task]


def user_text(question: str, task: Task, convention: Convention, knowledge_text: str | None,
              multi_box: bool = False) -> str:
    """[Prior knowledge: <text>\\n] <question> <format instruction> <task sentence>."""
    if not question.strip():
        raise ValueError("a rollout request needs a non-empty question (the phrase to ground or the "
                         "question)")
    body = f"{question.strip()} {FORMAT_INSTRUCTION} {task_instruction(task, convention, multi_box)}"
    return f"Prior knowledge: {knowledge_text}\n{body}" if knowledge_text else body


def build_prompt(request: RolloutRequest, convention: Convention, knowledge: KnowledgeBase | None,
                 inject_knowledge: bool) -> Prompt:
    """The prompt of one request; knowledge is injected when on and the request names a key."""
    injected: str | None = None
    if inject_knowledge and request.knowledge_key is not None:
        if knowledge is None:
            raise ValueError(f"request {request.prompt_id!r} names knowledge {request.knowledge_key!r} but "
                             "the worker has no knowledge base; pass one to the pool or set "
                             "inject_knowledge=false")
        injected = knowledge.text(request.knowledge_key)
    return Prompt(prompt_id=request.prompt_id, task=request.task,
                  user_text=user_text(request.question, request.task, convention, injected,
                                      request.multi_box),
                  injected_knowledge=injected, image=load_image(request.image), seed=request.seed)
