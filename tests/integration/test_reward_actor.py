"""The reward actor under local Ray: one call per batch, checkpoint, kill, recreate, identical
continuation."""

from __future__ import annotations

import json
import time

import pytest

from bench.faults.inputs import REWARD_BATCHES
from rewards import RewardConfig, RewardScorer, ScheduleConfig

pytestmark = pytest.mark.integration


def actor_died(handle: object, attempts: int = 50) -> bool:
    """ray.kill is asynchronous: a call made right after it may still be served, so poll until calls fail."""
    import ray

    for _ in range(attempts):
        try:
            ray.get(handle.snapshot.remote(), timeout=10)  # type: ignore[attr-defined]
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.1)
    return False


def test_actor_scores_checkpoints_and_recovers(ray_local: None) -> None:
    import ray

    from rewards.actor import create_reward_actor

    cfg = RewardConfig(schedule=ScheduleConfig(window=4))
    reference = RewardScorer(cfg)
    expected = [reference.score_batch(b, step=i) for i, b in enumerate(REWARD_BATCHES)]

    actor = create_reward_actor(cfg)
    got = [ray.get(actor.score_batch.remote(b, i)) for i, b in enumerate(REWARD_BATCHES[:3])]
    state = json.loads(json.dumps(ray.get(actor.state_dict.remote())))  # what a checkpoint stores
    ray.kill(actor, no_restart=True)
    assert actor_died(actor)
    revived = create_reward_actor(cfg, state=state)
    got += [ray.get(revived.score_batch.remote(b, i)) for i, b in enumerate(REWARD_BATCHES[3:], start=3)]

    for mine, ref in zip(got, expected, strict=True):
        assert mine.groups == ref.groups and mine.schedule == ref.schedule and mine.raises == ref.raises
    # tau rises after the restart too: the resume is tested for real
    assert any(b.raises for b in expected[3:])
    ray.kill(revived, no_restart=True)


def test_a_user_term_that_refuses_a_row_stops_the_batch_with_one_line(ray_local: None) -> None:
    """reward.extra_terms run inside the actor; a term's error reaches the driver as its own one line
    (RewardTermError naming the term, the row and the value), not the actor's traceback."""
    from rewards.extra_terms import RewardTermError
    from services.cluster.reward_client import RewardClient

    term = {"fn": "tests.integration.user_terms:nan_on_the_second_row", "name": "bad"}
    cfg = RewardConfig.model_validate({"extra_terms": [term]})
    client = RewardClient(cfg)
    try:
        with pytest.raises(RewardTermError) as refused:
            client.score(REWARD_BATCHES[0], step=0, progress=0.0)
        assert "\n" not in str(refused.value) and "bad" in str(refused.value) and "nan" in str(refused.value)
        assert client.take_faults() == {"reward/actor_deaths": 0, "reward/actor_timeouts": 0,  # not a crash
                                        "reward/requests_resent": 0}
    finally:
        client.kill()
