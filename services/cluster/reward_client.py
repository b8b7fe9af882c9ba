"""The driver's handle on the reward actor: scores batches and recreates the actor after a crash or a hang.

The actor's state (the MedLoc-R1 window and tau) is read back after every call, so a replacement actor
continues the schedule exactly where the dead one stopped (docs/algorithms.md, "MedLoc-R1").
A batch the actor has not answered within `reward.call_timeout_s` counts as a hang: the actor is killed and
its replacement scores the batch from the state before it, so the schedule sees every batch exactly once
(README, "Reliability"). After a node is lost, Ray may place the replacement on that node before it declares
the node dead; such an actor dies before it runs, and another is started (as the rollout pool replaces a
worker that dies before it is up).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from rewards.actor import create_reward_actor
from rewards.config import RewardConfig
from rewards.extra_terms import RewardTermError
from rewards.scorer import ScoredBatch
from rewards.scoring import RewardTarget, ScheduleSnapshot
from services.cluster.fault_log import FaultLog

FAULT_KINDS = ("actor_death", "actor_timeout")
STARTS = 3  # actors started for one (re)creation: a replacement may die with the node its predecessor was on


class RewardUnavailable(RuntimeError):
    """The reward actor failed twice on one batch (the original and its replacement)."""


class RewardClient:
    def __init__(self, config: RewardConfig, state: dict[str, Any] | None = None) -> None:
        self.config = config
        self.state = state
        self.faults = FaultLog("reward", FAULT_KINDS)
        self._actor = self._start()

    def take_faults(self) -> dict[str, int]:
        """Faults since the last call, as metrics (`reward/actor_timeouts`, ...; zeros included)."""
        return self.faults.take()

    def score(self, groups: Sequence[tuple[Sequence[str], RewardTarget]], step: int, progress: float,
              under: ScheduleSnapshot | None = None) -> ScoredBatch:
        """Score a batch (under the current tau, or `under`); if the actor died or hung, start a new one from
        the state after the last batch and score again (once: a second failure raises RewardUnavailable)."""
        try:
            scored, state = self._call(groups, step, progress, under)
        except (RayActorError, TimeoutError) as exc:
            kind, what = (("actor_timeout",
                           f"did not score {len(groups)} groups of step {step} within reward."
                           f"call_timeout_s={self.config.call_timeout_s:g} s")
                          if isinstance(exc, TimeoutError)
                          else ("actor_death", f"died scoring step {step} ({type(exc).__name__})"))
            # a no-op for a dead actor; ends a hung one (Ray also ends a stopped process)
            ray.kill(self._actor)
            self.faults.record(kind, self._name(),
                               f"{what}; recreated it from the state after the last batch",
                               len(groups))
            self._actor = self._start()
            try:
                scored, state = self._call(groups, step, progress, under)
            except (RayActorError, TimeoutError) as again:
                raise RewardUnavailable(f"the reward actor failed on step {step} twice ({exc}; "
                                        f"then {again}); check the actor's log (ray logs) and "
                                        "reward.call_timeout_s") from again
        self.state = state
        return scored

    def _start(self) -> Any:
        """A reward actor on the state after the last batch. One that dies before it runs (placed on a node
        Ray has not yet declared dead) is followed by another, up to STARTS in all, then RewardUnavailable;
        a constructor that raises (a bad config, a user's term that does not import) raises at once."""
        last: RayActorError | None = None
        for _ in range(STARTS):
            try:
                return create_reward_actor(self.config, self.state)
            except RayActorError as exc:
                if exc.actor_init_failed:
                    raise
                last = exc
                self.faults.record("actor_death", f"reward actor {exc.actor_id or '(new)'}",
                                   f"died before it ran ({type(exc).__name__})")
        raise RewardUnavailable(f"{STARTS} reward actors in a row died before they ran (last: {last}); check "
                                "that the cluster's nodes are healthy (ray status) and read the actors' "
                                "logs") from last

    def _call(self, groups: Sequence[tuple[Sequence[str], RewardTarget]], step: int, progress: float,
              under: ScheduleSnapshot | None) -> tuple[ScoredBatch, dict[str, Any]]:
        scored_ref = self._actor.score_batch.remote(list(groups), step, progress, under)
        state_ref = self._actor.state_dict.remote()  # actor calls run in order: the state after this batch
        done, _ = ray.wait([scored_ref, state_ref], num_returns=2, timeout=self.config.call_timeout_s)
        if len(done) < 2:
            raise TimeoutError(f"no answer within {self.config.call_timeout_s:g} s")
        try:
            scored, state = ray.get([scored_ref, state_ref])
        except RayTaskError as exc:  # a user's term refused a row: its one line, not the actor's traceback
            if isinstance(exc.cause, RewardTermError):
                raise RewardTermError(str(exc.cause)) from None
            raise
        return scored, state

    def _name(self) -> str:
        return f"reward actor {self._actor._actor_id.hex()}"

    def kill(self) -> None:
        """For tests and shutdown."""
        ray.kill(self._actor)
