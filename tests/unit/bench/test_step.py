"""bench/step.py: the orchestration overhead is the share of a step with no work phase running."""

from __future__ import annotations

import pytest

from bench.step import busy_share


def test_busy_share_merges_overlapping_work_across_lanes_and_clips_to_the_step() -> None:
    spans = [["producer", "generate", 0.0, 4.0],   # overlaps the learner: counted once
             ["driver", "learner", 3.0, 6.0],
             ["driver", "sync", 6.0, 7.0],        # orchestration, not work
             ["producer", "reward", 8.0, 8.5],
             ["producer", "generate", 9.0, 12.0]]  # runs past the window: clipped at 10
    assert busy_share(0.0, 10.0, spans) == pytest.approx((6.0 + 0.5 + 1.0) / 10.0)
    assert busy_share(6.0, 7.0, spans) == 0.0
    assert busy_share(2.0, 5.0, spans) == 1.0
