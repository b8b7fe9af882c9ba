"""RolloutConfig rules that span fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rollout.config import RolloutConfig, SamplingConfig


def test_pixel_budget_order() -> None:
    with pytest.raises(ValidationError, match="exceeds max_pixels"):
        RolloutConfig(min_pixels=112 * 112, max_pixels=56 * 56)


def test_min_new_tokens_within_max() -> None:
    assert SamplingConfig(max_new_tokens=16, min_new_tokens=16).min_new_tokens == 16
    assert SamplingConfig().min_new_tokens == 0  # off by default: completions may end early
    with pytest.raises(ValidationError, match="min_new_tokens"):
        SamplingConfig(max_new_tokens=8, min_new_tokens=9)
