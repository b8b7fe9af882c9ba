"""Coordinate frames: smart_resize equals transformers', conversions round-trip, hand-computed cases."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import ImageFrame, from_original, smart_resize, to_original


def test_smart_resize_matches_transformers_on_random_sizes() -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

    rng = random.Random(0)
    budgets = [{}, {"min_pixels": 32 * 32, "max_pixels": 112 * 112},
               {"min_pixels": 3136, "max_pixels": 401408}]
    checked = 0
    for _ in range(400):
        h = rng.choice([rng.randint(1, 64), rng.randint(28, 1000), rng.randint(500, 5000)])
        w = rng.choice([rng.randint(1, 64), rng.randint(28, 1000), rng.randint(500, 5000)])
        if max(h, w) / min(h, w) > 200:
            continue
        kwargs = rng.choice(budgets)
        assert smart_resize(h, w, **kwargs) == hf_smart_resize(h, w, **kwargs), (h, w, kwargs)
        checked += 1
    assert checked > 300


def test_smart_resize_hand_values() -> None:
    # 1000 x 500 (h x w): round(1000/28)=36 -> 1008, round(500/28)=18 -> 504; 1008*504 = 508032 <= 1003520.
    assert smart_resize(1000, 500) == (1008, 504)
    # A 1955 x 1841 radiograph: 70*28 x 66*28 = 1960 x 1848 = 3.6M px > 1003520, so beta =
    # sqrt(1955*1841/1003520)
    # = 1.8938; floor(1955/1.8938/28) = 36 -> 1008, floor(1841/1.8938/28) = 34 -> 952.
    assert smart_resize(1955, 1841) == (1008, 952)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)


def test_conversion_hand_values() -> None:
    pix = ImageFrame(1000.0, 500.0, 560.0, 280.0, "input_pixels")
    # x scale 1000/560, y scale 500/280: (56, 28, 112, 56) -> (100, 50, 200, 100).
    assert to_original((56.0, 28.0, 112.0, 56.0), pix) == pytest.approx((100.0, 50.0, 200.0, 100.0))
    norm = ImageFrame(1000.0, 500.0, 560.0, 280.0, "norm1000")
    # 0..1000 units: x * 1000/1000, y * 500/1000.
    assert to_original((100.0, 100.0, 200.0, 200.0), norm) == pytest.approx((100.0, 50.0, 200.0, 100.0))
    assert norm.model_extent == (1000.0, 1000.0) and pix.model_extent == (560.0, 280.0)


def test_frame_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="finite and > 0"):
        ImageFrame(0.0, 10.0, 28.0, 28.0, "input_pixels")
    with pytest.raises(ValueError, match="convention"):
        ImageFrame(10.0, 10.0, 28.0, 28.0, "pixels")  # type: ignore[arg-type]


sizes = st.integers(min_value=8, max_value=4096)
coord = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(deadline=None)  # a shared 2-core box: timing is not what these test
@given(w=sizes, h=sizes, conv=st.sampled_from(["input_pixels", "norm1000"]),
       fx=st.tuples(coord, coord), fy=st.tuples(coord, coord))
def test_round_trip(w: int, h: int, conv: str, fx: tuple[float, float], fy: tuple[float, float]) -> None:
    if max(w, h) / min(w, h) > 200:
        return
    frame = ImageFrame.for_image(w, h, conv)  # type: ignore[arg-type]
    box = (fx[0] * w, fy[0] * h, fx[1] * w, fy[1] * h)
    back = to_original(from_original(box, frame), frame)
    assert back == pytest.approx(box, rel=1e-12, abs=1e-9)
    model = from_original(box, frame)
    mw, mh = frame.model_extent
    assert all(0.0 <= v <= mw * (1 + 1e-12) for v in model[0::2])
    assert all(0.0 <= v <= mh * (1 + 1e-12) for v in model[1::2])
