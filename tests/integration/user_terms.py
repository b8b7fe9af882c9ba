"""Reward terms a user might write (reward.extra_terms), for integration tests that run them in the reward
actor: imported there as `tests.integration.user_terms:<name>` from the run's working directory. Not
collected (no test_ prefix); no imports of other test helpers, so the actor can import it alone."""

from __future__ import annotations

from typing import Any


def nan_on_the_second_row(completions: Any, targets: Any) -> list[float]:
    """No value for row 1 of every batch: the step must stop naming the term, the row and the value."""
    return [float("nan") if i == 1 else 0.0 for i in range(len(completions))]
