"""Pure helpers of bench/vs_trl.py (tests/unit/bench/test_vs_trl.py): step-time summaries, the ratio of
medians, and the baton that makes training loops in threads take one step each in turn."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Sequence


def summarise(xs: Sequence[float]) -> dict[str, float]:
    """Median and spread of step times: n, median, min, max, q1, q3 (inclusive quartiles)."""
    if not xs:
        raise ValueError("no step times to summarise; run at least one round after the warm-up")
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "q1": q[0], "q3": q[2]}


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Ratio of median step times (> 1: the numerator's framework is slower per step)."""
    return statistics.median(numerator) / statistics.median(denominator)


def phase_medians(steps: Sequence[dict[str, float]]) -> dict[str, float]:
    """Median of each phase over steps; a phase missing from a step counts as 0 there."""
    names = sorted({k for s in steps for k in s if k != "step"})
    return {k: statistics.median(s.get(k, 0.0) for s in steps) for k in names}


class Baton:
    """Threads take turns, one step each, in a fixed order (A B C A B C ...); `done` drops a finished arm.
    `abort` wakes every waiter with an error, so one failing arm stops the others instead of hanging them."""

    def __init__(self, names: Sequence[str]) -> None:
        self._active = list(names)
        self._current: str | None = self._active[0] if self._active else None
        self._cond = threading.Condition()
        self._aborted: str | None = None

    def wait(self, name: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._current == name or self._aborted is not None)
            if self._aborted is not None:
                raise RuntimeError(f"stopped: {self._aborted}")

    def pass_on(self, name: str) -> None:
        """End `name`'s turn and wait for its next one."""
        with self._cond:
            self._check_turn(name)
            self._current = self._active[(self._active.index(name) + 1) % len(self._active)]
            self._cond.notify_all()
        self.wait(name)

    def done(self, name: str) -> None:
        with self._cond:
            self._check_turn(name)
            i = self._active.index(name)
            self._active.remove(name)
            self._current = self._active[i % len(self._active)] if self._active else None
            self._cond.notify_all()

    def abort(self, reason: str) -> None:
        with self._cond:
            self._aborted = reason
            self._cond.notify_all()

    def _check_turn(self, name: str) -> None:
        if self._current != name:
            raise RuntimeError(f"{name} ended a turn that belongs to {self._current}")
