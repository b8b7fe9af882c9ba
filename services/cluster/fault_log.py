"""What the rollout pool and the reward client did about faults: one event per detection, a log line
naming the worker, and per-step counts for the driver's metrics row (README, "Reliability").

Each event carries wall-clock time, so benchmarks (bench/faults/) measure time to detect against the
moment they injected the fault.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultEvent:
    """`kind`: what was detected (one of the log's kinds); `who`: the worker or actor, e.g. "rollout worker 3
    (pid 4242 on node 10.0.0.2)"; `requests`: requests (or groups) sent again because of it; `at`:
    time.time()."""

    kind: str
    who: str
    detail: str
    requests: int = 0
    at: float = field(default_factory=time.time)


class FaultLog:
    """Events of one component, `prefix/kind` counts since the last `take()` (zeros included, so every
    metrics row has every key)."""

    def __init__(self, prefix: str, kinds: tuple[str, ...]) -> None:
        self.prefix, self.kinds = prefix, kinds
        self.events: list[FaultEvent] = []
        self._taken = 0

    def record(self, kind: str, who: str, detail: str, requests: int = 0) -> FaultEvent:
        if kind not in self.kinds:
            raise ValueError(f"unknown fault kind {kind!r} for {self.prefix}; known: {self.kinds}")
        event = FaultEvent(kind, who, detail, requests)
        self.events.append(event)
        log.warning("%s %s: %s: %s", self.prefix, kind.replace("_", " "), who, detail)
        return event

    def take(self) -> dict[str, int]:
        """Counts of the events since the last call, as metrics: `<prefix>/<kind>s` and
        `<prefix>/requests_resent`."""
        new = self.events[self._taken:]
        self._taken = len(self.events)
        counts = Counter(e.kind for e in new)
        row = {f"{self.prefix}/{kind}s": counts[kind] for kind in self.kinds}
        return row | {f"{self.prefix}/requests_resent": sum(e.requests for e in new)}
