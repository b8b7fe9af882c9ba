"""What an SFT stage trains toward: the reference answer of a record (a think, then the answer in the
model's own convention, VLM-R1's format) and the think's text.

On a pretrained CPU base (services/models/pretrain.py) the think is the base's own reasoning as its
pretraining wrote it, quoting the record's knowledge for a fixed fraction of records; otherwise a short fixed
think (docs/algorithms.md, "SFT targets on a base").
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import rewards.frames as rf
from rollout.images import ImageFrame as RolloutFrame
from rollout.knowledge import KnowledgeBase
from services.convert import reward_frame
from services.data.records import Record

RECITED_WORDS = 8  # words of the knowledge's appearance sentence a reciting think opens with


def own_think(record: Any, knowledge: Any, recite: bool) -> str:
    """The base's short reasoning for a record: where it looks (the patient side and lung zone of synthetic
    records; else a grounding record's phrase, or "both lung fields." for an image-level question such as a
    grade of a normal image), sometimes opening with the first words of the appearance text of the record's
    knowledge entry (what VRFT-Aug's recitation reward measures)."""
    attrs = record.meta.attributes
    if "side" in attrs and "zone" in attrs:
        where = f"{attrs['side']} lung, {attrs['zone']} zone."
    else:
        where = f"{record.phrase}." if record.task == "grounding" else "both lung fields."
    if recite and record.knowledge_key is not None and record.knowledge_key in knowledge.entries:
        words = knowledge.entries[record.knowledge_key].appearance.split()
        return " ".join(words[:RECITED_WORDS]).rstrip(",;.") + ". " + where
    return where


def recites(record_id: str, fraction: float, seed: int) -> bool:
    """Whether the reference answer of an adapter SFT stage on a base quotes the knowledge: a fixed draw per
    (run seed, record), true for `fraction` of records (the recipe's recite_fraction), so a resumed run
    writes the same targets."""
    return zlib.crc32(f"{seed}:{record_id}".encode()) / 2**32 < fraction


# The warm start teaches the answer format and the box; a short fixed think keeps the target's tokens on
# what matters (repeating the phrase cost ~8 hard tokens per answer and taught nothing spatial).
SFT_THINK = "Locate the finding in the image."


def sft_think(record: Record, knowledge: KnowledgeBase, recite_fraction: float | None, seed: int) -> str:
    """The think text of an SFT stage's reference answer. On a pretrained CPU base (`recite_fraction` is its
    recipe's; None without `model.base`) every target keeps the base's own reasoning as its pretraining
    wrote it (own_think, quoting the knowledge for a fixed `recite_fraction` of records):
    the fixed SFT_THINK would pull the base toward another answer style (measured: 479 such SFT steps cost
    the study base 17 points of A@0.5, docs/RESULTS.md), and a policy whose thinks vary is one whose
    recitation a reward can change (VRFT-Aug). Otherwise SFT_THINK."""
    if recite_fraction is None:
        return SFT_THINK
    return own_think(record, knowledge, recites(record.id, recite_fraction, seed))


def reference_answer(record: Record, frame: RolloutFrame, think_text: str = SFT_THINK,
                     multi_box: bool = False) -> str:
    """The SFT target: a think block (default: a short fixed one) and the answer in the model's own
    convention (VLM-R1 format). `multi_box`: a grounding answer lists every box, `[]` for a negative record
    (issue 31); otherwise the first box as one object (a negative record has no single-box answer: error)."""
    think = f"<think>{think_text}</think>"
    if record.task == "grounding" and multi_box:
        boxes = [rf.from_original(b, reward_frame(frame)) for b in record.boxes]
        listed = [{"bbox_2d": [round(v) for v in box]} for box in boxes]
        return think + "<answer>" + json.dumps(listed) + "</answer>"
    if record.task == "grounding":
        if not record.boxes:
            raise ValueError(f"record {record.id!r} is a negative (no box): a single-box SFT target cannot "
                             "say 'not present'; train it in a stage with multi_box: true")
        box = rf.from_original(record.boxes[0], reward_frame(frame))
        return think + "<answer>" + json.dumps({"bbox_2d": [round(v) for v in box]}) + "</answer>"
    if record.task == "classification":
        return think + "<answer>" + json.dumps({"label": record.label}) + "</answer>"
    return think + "<answer>" + json.dumps({"grade": record.grade}) + "</answer>"
