"""Prompt templates, knowledge injection, image frames and loading, adapter specs (pure, no engine)."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from PIL import Image

from rollout.contracts import RolloutRequest
from rollout.engines import AdapterSpec
from rollout.images import family_of, frame_from_grid, load_image
from rollout.knowledge import KnowledgeBase, KnowledgeEntry
from rollout.prompts import FORMAT_INSTRUCTION, build_prompt, user_text

KB = KnowledgeBase(
    entries=MappingProxyType({"ct/mass": KnowledgeEntry("CT", "mass", "A soft tissue lump.", "the liver")}),
    sources=MappingProxyType({"ct/mass": "fixture.yaml"}))
IMAGE = Image.new("RGB", (60, 40))


def _request(key: str | None = "ct/mass", task: str = "grounding") -> RolloutRequest:
    return RolloutRequest(prompt_id="p", image=IMAGE, question="Locate the mass.", task=task,  # type: ignore[arg-type]
                          knowledge_key=key)


def test_grounding_prompt_orders_question_format_and_convention() -> None:
    text = user_text("Locate the mass.", "grounding", "input_pixels", None)
    assert text.startswith("Locate the mass. " + FORMAT_INSTRUCTION)
    assert text.endswith("in pixels of this image.")
    assert "0-1000 normalised coordinates" in user_text("Locate the mass.", "grounding", "norm1000", None)


def test_classification_and_grading_ask_for_their_json_keys() -> None:
    assert '{"label": ' in user_text("Which finding?", "classification", "input_pixels", None)
    assert '{"grade": ' in user_text("Which grade?", "grading", "norm1000", None)


def test_knowledge_injection_on_and_off() -> None:
    on = build_prompt(_request(), "input_pixels", KB, inject_knowledge=True)
    assert on.injected_knowledge == "mass on CT: A soft tissue lump. Typically the liver."
    assert on.user_text.startswith(f"Prior knowledge: {on.injected_knowledge}\nLocate the mass.")
    off = build_prompt(_request(), "input_pixels", KB, inject_knowledge=False)
    assert off.injected_knowledge is None and "Prior knowledge" not in off.user_text
    no_key = build_prompt(_request(key=None), "input_pixels", None, inject_knowledge=True)
    assert no_key.injected_knowledge is None
    assert on.messages()[0]["content"][0] == {"type": "image"}


def test_injection_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="no knowledge base"):
        build_prompt(_request(), "input_pixels", None, inject_knowledge=True)
    with pytest.raises(KeyError, match="no prior knowledge"):
        build_prompt(_request(key="mr/cyst"), "input_pixels", KB, inject_knowledge=True)
    with pytest.raises(ValueError, match="non-empty question"):
        user_text("  ", "grounding", "input_pixels", None)


def test_frame_from_grid() -> None:
    # grid (1, 6, 8) patches of 14 px: the input was 8*14 = 112 wide and 6*14 = 84 high
    frame = frame_from_grid((300, 200), (1, 6, 8), "qwen2_5_vl")
    assert (frame.original_width, frame.original_height, frame.input_width,
            frame.input_height) == (300, 200, 112, 84)
    assert frame.convention == "input_pixels"
    assert frame_from_grid((300, 200), (1, 6, 8), "qwen2_vl").convention == "norm1000"


def test_family_of_reads_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    assert family_of(tmp_path) == "qwen2_vl"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama' is not supported"):
        family_of(tmp_path)


def test_load_image_takes_display_pixels_only(tmp_path: Path) -> None:
    grey = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    rgb = load_image(grey)
    assert rgb.mode == "RGB" and rgb.size == (4, 3) and rgb.getpixel((3, 2)) == (11, 11, 11)
    # Files and deeper-than-8-bit pixels are the data layer's reader's job (one window rule everywhere).
    with pytest.raises(TypeError, match="image reader"):
        load_image(tmp_path / "scan.png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more than 8 bits"):
        load_image(Image.fromarray(np.zeros((3, 4), np.uint16)))


def test_adapter_spec_rules() -> None:
    assert AdapterSpec(0, None).version == 0
    with pytest.raises(ValueError, match="version 0 means no adapter"):
        AdapterSpec(0, "/some/dir")
    with pytest.raises(ValueError, match="need a PEFT adapter directory"):
        AdapterSpec(2, None)
