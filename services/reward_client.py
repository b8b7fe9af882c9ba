"""The driver's handle on the reward actor: scores batches and recreates the actor after a crash.

The actor's state (the MedLoc-R1 window and tau) is read back after every call, so a replacement actor
continues the schedule exactly where the dead one stopped (docs/algorithms.md, "MedLoc-R1").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import ray

from rewards.actor import create_reward_actor
from rewards.config import RewardConfig
from rewards.scorer import ScoredBatch
from rewards.scoring import RewardTarget, ScheduleSnapshot

log = logging.getLogger(__name__)


class RewardClient:
    def __init__(self, config: RewardConfig, state: dict[str, Any] | None = None) -> None:
        self.config = config
        self.state = state
        self._actor = create_reward_actor(config, state)

    def score(self, groups: Sequence[tuple[Sequence[str], RewardTarget]], step: int, progress: float,
              under: ScheduleSnapshot | None = None) -> ScoredBatch:
        """Score a batch (under the current tau, or `under`); if the actor died, start a new one from the last
        state and score again."""
        try:
            scored, state = self._call(groups, step, progress, under)
        except ray.exceptions.RayActorError as exc:
            log.warning("reward actor died (%s); recreating it from the state after the last batch", exc)
            self._actor = create_reward_actor(self.config, self.state)
            scored, state = self._call(groups, step, progress, under)
        self.state = state
        return scored

    def _call(self, groups: Sequence[tuple[Sequence[str], RewardTarget]], step: int, progress: float,
              under: ScheduleSnapshot | None) -> tuple[ScoredBatch, dict[str, Any]]:
        scored_ref = self._actor.score_batch.remote(list(groups), step, progress, under)
        state_ref = self._actor.state_dict.remote()  # actor calls run in order: the state after this batch
        scored, state = ray.get([scored_ref, state_ref])
        return scored, state
