"""A reward actor that hangs (SIGSTOP) mid-batch: the client replaces it from the state after the last batch
within `reward.call_timeout_s`, and the MedLoc-R1 schedule continues exactly as without the fault (issue 21,
fault 5); a dead actor the same way."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import ray

from bench.faults.helpers import gone
from bench.faults.inputs import REWARD_BATCHES
from rewards import RewardConfig, RewardScorer, ScheduleConfig
from services.cluster.reward_client import RewardClient

pytestmark = pytest.mark.integration
CONFIG = RewardConfig(schedule=ScheduleConfig(window=4), call_timeout_s=3.0)


def _pid(actor: Any) -> int:
    return int(ray.get(actor.__ray_call__.remote(lambda self: os.getpid())))


@pytest.mark.parametrize("fault", ["hang", "death"])
def test_a_hung_or_dead_reward_actor_is_replaced_with_the_schedule_intact(
        ray_local: None, fault: str) -> None:
    reference = RewardScorer(CONFIG)
    expected = [reference.score_batch(b, step=i) for i, b in enumerate(REWARD_BATCHES)]
    client = RewardClient(CONFIG)
    try:
        got = [client.score(b, i, 0.0) for i, b in enumerate(REWARD_BATCHES[:3])]
        victim = _pid(client._actor)
        os.kill(victim, signal.SIGSTOP if fault == "hang" else signal.SIGKILL)
        t = time.monotonic()
        got.append(client.score(REWARD_BATCHES[3], 3, 0.0))
        waited = time.monotonic() - t
        got += [client.score(b, i, 0.0) for i, b in enumerate(REWARD_BATCHES[4:], start=4)]
        faults = client.take_faults()
        assert faults == ({"reward/actor_timeouts": 1, "reward/actor_deaths": 0, "reward/requests_resent": 3}
                          if fault == "hang" else
                          {"reward/actor_timeouts": 0, "reward/actor_deaths": 1, "reward/requests_resent": 3})
        if fault == "hang":  # detected at the deadline, scored again by a new actor within seconds of it
            assert CONFIG.call_timeout_s <= waited < CONFIG.call_timeout_s + 10.0, waited
        for mine, ref in zip(got, expected, strict=True):  # every batch scored once, under the same schedule
            assert mine.groups == ref.groups and mine.schedule == ref.schedule and mine.raises == ref.raises
        assert any(b.raises
                   for b in expected[3:]), "tau must rise after the fault for the test to mean anything"
        assert client.state == reference.state_dict()
        assert _pid(client._actor) != victim
        assert gone(victim), "the stopped actor's process was not ended"
    finally:
        client.kill()
