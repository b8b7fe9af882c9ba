"""The reward actor: a thin Ray wrapper over `RewardScorer` (the only Ray import in rewards/).

`num_cpus=0`: scoring is light and must not take one of a small machine's CPUs from rollout or learner.
Crash recovery: the driver keeps the last `state_dict()` (it is in every checkpoint) and calls
`create_reward_actor(config, state)` to get an actor that continues the schedule exactly. The actor is
always placed on the caller's node, the driver's (a lost worker node then never takes the reward with it). The
affinity is hard: with `soft=True` Ray placed 8 of 12 such 0-CPU actors on another node of a two-node cluster
(Ray 2.60), and the lost-node test lost its reward actor with that node.
A user's reward terms (`reward.extra_terms`) import in the actor as they import where the run starts: the
caller's working directory and PYTHONPATH go with it (a job's working_dir is on every actor's path anyway).
"""

from __future__ import annotations

import os
from typing import Any

import ray

from rewards.config import RewardConfig
from rewards.scorer import RewardScorer

RewardActor = ray.remote(num_cpus=0, max_restarts=0)(RewardScorer)


def create_reward_actor(
    config: RewardConfig, state: dict[str, Any] | None = None, name: str | None = None
) -> Any:
    """Start a RewardActor, restored from `state` when given; returns the actor handle once it is ready."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {} if name is None else {"name": name}
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    options["scheduling_strategy"] = here
    if config.extra_terms:  # `package.module:function` resolves in the actor as it did in validate-config
        path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
        options["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    handle: Any = RewardActor.options(**options).remote(config)  # type: ignore[attr-defined]
    if state is not None:
        ray.get(handle.load_state_dict.remote(state))
    else:
        ray.get(handle.snapshot.remote())  # surface construction errors here, not at the first batch
    return handle
