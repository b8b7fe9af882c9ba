"""The family registry: each family's model_type, cell, convention and patch size, as train, eval and serve
read them (rollout.images.FAMILIES), and the reward side's smart_resize with a family's cell equal to the
released image processor's resize."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import rewards
from rollout.images import FAMILIES, convention_of, family_of, frame_from_grid


@pytest.mark.parametrize(("family", "cell", "convention"), [("qwen2_5_vl", 28, "input_pixels"),
                                                            ("qwen2_vl", 28, "norm1000"),
                                                            ("qwen3_vl", 32, "norm1000")])
def test_family_registry(tmp_path: Path, family: str, cell: int, convention: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": family}))
    assert family_of(tmp_path) == family
    assert FAMILIES[family].cell == cell and convention_of(family) == convention  # type: ignore[arg-type]
    # a 300x200 image whose grid is (1, 6, 8) patches was resized to 8 and 6 patch sides
    patch = cell // 2
    frame = frame_from_grid((300, 200), (1, 6, 8), family)  # type: ignore[arg-type]
    assert (frame.input_width, frame.input_height) == (8 * patch, 6 * patch)


def test_unknown_model_type_names_the_supported_families(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match=r"'llava' is not supported.*qwen3_vl"):
        family_of(tmp_path)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reward_side_resize_is_the_processors(family: str) -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    cell = FAMILIES[family].cell  # type: ignore[index]
    rng = random.Random(cell)
    for _ in range(300):
        h = rng.randint(16, 3000)
        w = rng.randint(max(8, h // 150), min(3000, h * 150))
        lo = rng.choice([32 * 32, 56 * 56, 128 * 32 * 32])
        hi = lo * rng.choice([1, 4, 64])
        assert rewards.smart_resize(h, w, cell, lo, hi) == smart_resize(h, w, cell, lo, hi)
