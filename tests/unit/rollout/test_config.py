"""RolloutConfig rules that span fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rollout.config import RolloutConfig, SamplingConfig


def test_tensor_parallel_needs_one_gpu_per_shard() -> None:
    assert RolloutConfig(tensor_parallel_size=2, gpus_per_worker=2).tensor_parallel_size == 2
    with pytest.raises(ValidationError, match="needs gpus_per_worker=2"):
        RolloutConfig(tensor_parallel_size=2, gpus_per_worker=1)


def test_pixel_budget_order() -> None:
    with pytest.raises(ValidationError, match="exceeds max_pixels"):
        RolloutConfig(min_pixels=112 * 112, max_pixels=56 * 56)


def test_min_new_tokens_within_max() -> None:
    assert SamplingConfig(max_new_tokens=16, min_new_tokens=16).min_new_tokens == 16
    assert SamplingConfig().min_new_tokens == 0  # off by default: completions may end early
    with pytest.raises(ValidationError, match="min_new_tokens"):
        SamplingConfig(max_new_tokens=8, min_new_tokens=9)
