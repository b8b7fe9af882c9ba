"""MedLoc-R1 performance-aware IoU threshold schedule (docs/algorithms.md, "MedLoc-R1"; arXiv 2603.28120).

The window holds one entry per prompt group: (mean binary accuracy reward at the tau current when the
group was observed, mean IoU). A raise needs, over a full window and for the current tau:
`r_bar >= P(tau)`, `sigma <= S(tau)` (population std) and `mean IoU - tau >= margin`. After a raise the
oldest half of the window is dropped ("semi-preserved" refresh); at the target the schedule stops.
Pure and deterministic: the same observations give the same path, also across state_dict round trips.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rewards.config import ScheduleConfig

_log = logging.getLogger(__name__)

# tau is rounded after each raise so that 0.3 + 0.15 is exactly the table's 0.45 and row boundaries
# (tau >= 0.60) compare as written, instead of landing on 0.44999999999999996.
_TAU_DECIMALS = 9


@dataclass(frozen=True, slots=True)
class ScheduleStats:
    """Window statistics at the current tau; the three statistics are None while the window is empty."""

    tau: float
    version: int
    window_len: int
    r_bar: float | None
    sigma: float | None
    margin: float | None
    raises: int
    at_target: bool


@dataclass(frozen=True, slots=True)
class RaiseRecord:
    """Audit of one raise: when (`step` as given by the caller, `entries_seen` groups observed so far)
    and the three statistics that allowed it, computed with `old_tau`."""

    step: int
    entries_seen: int
    old_tau: float
    new_tau: float
    r_bar: float
    sigma: float
    margin: float


def _row(table: Sequence[tuple[float, ...]], tau: float) -> tuple[float, ...]:
    """The last row whose first column is <= tau (tables start at 0.0, validated by the config)."""
    picked = table[0]
    for row in table:
        if row[0] <= tau:
            picked = row
    return picked


class ThresholdSchedule:
    """Stateful tau: `observe(group_ious)` once per prompt group, read `tau` and `version` to score.

    >>> s = ThresholdSchedule(ScheduleConfig(window=2))
    >>> [s.observe([0.6, 0.7]) for _ in range(2)]  # full window, r_bar 1, sigma 0, margin 0.35
    [False, True]
    >>> (s.tau, s.version, round(s.history[0].margin, 6))
    (0.45, 1, 0.35)
    """

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        self.config = config if config is not None else ScheduleConfig()
        self._tau = self.config.tau0
        self._version = 0
        self._entries_seen = 0
        self._window: deque[tuple[float, float]] = deque(maxlen=self.config.window)
        self._history: list[RaiseRecord] = []

    @property
    def tau(self) -> float:
        return self._tau

    @property
    def version(self) -> int:
        """Incremented by each raise; every scored completion records it."""
        return self._version

    @property
    def history(self) -> tuple[RaiseRecord, ...]:
        return tuple(self._history)

    @property
    def at_target(self) -> bool:
        return self._tau >= self.config.tau_target

    def thresholds(self, tau: float | None = None) -> tuple[float, float]:
        """(P, S) for `tau` (default: the current tau)."""
        _, p, s = _row(self.config.thresholds, self._tau if tau is None else tau)
        return p, s

    def step_size(self, tau: float | None = None) -> float:
        """delta(tau): piecewise table, one constant step, or linear/cosine decay from delta0 floored at
        min_delta."""
        cfg = self.config
        t = self._tau if tau is None else tau
        if cfg.step == "piecewise":
            return _row(cfg.piecewise_steps, t)[1]
        if cfg.step == "constant":  # the paper's "identical fixed step" ablation (0.05, 0.15, 0.25)
            return cfg.constant_delta
        span = cfg.tau_target - cfg.tau0
        frac = 1.0 if span <= 0.0 else min(max((t - cfg.tau0) / span, 0.0), 1.0)
        decay = (1.0 - frac) if cfg.step == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
        return max(cfg.delta0 * decay, cfg.min_delta)

    def _statistics(self) -> tuple[float, float, float] | None:
        if not self._window:
            return None
        n = len(self._window)
        rewards = [r for r, _ in self._window]
        r_bar = math.fsum(rewards) / n
        sigma = math.sqrt(math.fsum((r - r_bar) ** 2 for r in rewards) / n)  # population std [paper]
        margin = math.fsum(i for _, i in self._window) / n - self._tau  # current tau, also for old entries
        return r_bar, sigma, margin

    def observe(self, group_ious: Sequence[float], step: int = -1,
                matches: Sequence[tuple[Sequence[float], int]] | None = None) -> bool:
        """Record one prompt group's IoUs (one per completion, 0 for unparsable); True if tau was raised.

        The entry's reward is the group's mean of `IoU >= tau` at the current tau. `step` (the caller's
        training step) only labels the audit record. No-op once tau is at the target.
        `matches` (the set reward, issue 31): per completion its matched IoUs and n_pred + n_true; the
        completion's reward is then its F1 at the current tau, 2 * #(matched >= tau) / (n_pred + n_true), and
        `group_ious` are the mean matched IoUs. One box against one truth gives the same entry as without.
        """
        if matches is not None and len(matches) != len(group_ious):
            raise ValueError(f"{len(matches)} match lists for {len(group_ious)} completions; "
                             "give one per completion")
        if len(group_ious) == 0:
            raise ValueError("observe() needs the IoUs of a non-empty group; skip empty groups in the caller")
        if not all(0.0 <= v <= 1.0 for v in group_ious):  # NaN fails too: it would block the window N groups
            raise ValueError("group IoUs must lie in [0, 1] (0 for unparsable answers), got "
                             f"{list(group_ious)}")
        if self.at_target:
            return False
        n = len(group_ious)
        if matches is None:
            mean_reward = sum(1.0 for v in group_ious if v >= self._tau) / n
        else:
            mean_reward = math.fsum(2.0 * sum(1 for v in hit if v >= self._tau) / size if size > 0 else 0.0
                                    for hit, size in matches) / n
        mean_iou = math.fsum(float(v) for v in group_ious) / n
        self._window.append((mean_reward, mean_iou))
        self._entries_seen += 1
        return self._maybe_raise(step)

    def _maybe_raise(self, step: int) -> bool:
        cfg = self.config
        if cfg.require_full_window and len(self._window) < cfg.window:
            return False
        stats = self._statistics()
        if stats is None:
            return False
        r_bar, sigma, margin = stats
        p, s = self.thresholds()
        if cfg.use_reward_condition and not r_bar >= p:
            return False
        if cfg.use_std_condition and not sigma <= s:
            return False
        if cfg.use_margin_condition and not margin >= cfg.margin:
            return False
        old = self._tau
        self._tau = round(min(old + self.step_size(), cfg.tau_target), _TAU_DECIMALS)
        self._version += 1
        record = RaiseRecord(step, self._entries_seen, old, self._tau, r_bar, sigma, margin)
        self._history.append(record)
        _log.info("MedLoc-R1 tau raised %.3f -> %.3f at step %d (r_bar %.3f, sigma %.3f, margin %.3f)",
                  old, self._tau, step, r_bar, sigma, margin)
        n = len(self._window)
        keep = {"half": n - n // 2, "quarter": n - n // 4, "full": 0}[cfg.refresh]
        for _ in range(n - keep):  # drop the oldest entries, keep the newest
            self._window.popleft()
        return True

    def stats(self) -> ScheduleStats:
        st = self._statistics()
        r_bar, sigma, margin = (None, None, None) if st is None else st
        return ScheduleStats(
            self._tau, self._version, len(self._window), r_bar, sigma, margin,
            len(self._history), self.at_target
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; floats survive JSON exactly (repr round-trips)."""
        return {
            "config": self.config.model_dump(mode="json"),
            "tau": self._tau,
            "version": self._version,
            "entries_seen": self._entries_seen,
            "window": [list(e) for e in self._window],
            "history": [asdict(r) for r in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly; refuses a state saved under a different schedule config."""
        saved = ScheduleConfig.model_validate(state["config"])
        if saved != self.config:
            mine, theirs = self.config.model_dump(), saved.model_dump()
            diff = sorted(k for k in mine if mine[k] != theirs[k])
            raise ValueError(
                f"schedule state was saved with different settings {diff}; build ThresholdSchedule("
                f"ScheduleConfig.model_validate(state['config'])) to resume it, or start a fresh schedule"
            )
        self._tau = float(state["tau"])
        self._version = int(state["version"])
        self._entries_seen = int(state["entries_seen"])
        self._window = deque(((float(r), float(i)) for r, i in state["window"]), maxlen=self.config.window)
        self._history = [RaiseRecord(**r) for r in state["history"]]
