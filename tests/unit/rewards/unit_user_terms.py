"""Reward terms a user might write, good and bad, for tests/unit/rewards/test_reward_terms.py (imported by
name through `reward.extra_terms`, as a user's module is)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NOT_A_FUNCTION = 3


def think_length(completions: Sequence[Any], targets: Sequence[Any]) -> list[float]:
    """The think's length in characters / 100."""
    return [len(c.think) / 100 for c in completions]


def nan_on_the_second_row(completions: Sequence[Any], targets: Sequence[Any]) -> list[float]:
    return [float("nan") if i == 1 else 0.0 for i in range(len(completions))]


def one_argument(completions: Sequence[Any]) -> list[float]:
    return [0.0] * len(completions)


def keyword_targets(completions: Sequence[Any], *, targets: Sequence[Any]) -> list[float]:
    return [0.0] * len(completions)


SEEN: list[tuple[Any, Any]] = []


def record(completions: Sequence[Any], targets: Sequence[Any]) -> list[float]:
    """Keeps what it was given (the last batch) and scores 0."""
    SEEN[:] = list(zip(completions, targets, strict=True))
    return [0.0] * len(completions)
