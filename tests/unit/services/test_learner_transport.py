"""What crosses to the learner ranks: a group's image once, not once per completion (issue 30)."""

from __future__ import annotations

import numpy as np

from learner.batch import TrainBatch
from learner.packing import shard_groups
from rollout.contracts import Completion, RolloutGroup
from rollout.images import ImageFrame
from services.convert import grpo_samples


def _group(prompt_id: str, g: int, patches: int) -> RolloutGroup:
    return RolloutGroup(
        prompt_id=prompt_id, task="grounding",
        completions=tuple(Completion(f"c{j}", (5, 6 + j), (-1.0, -1.0), "stop") for j in range(g)),
        prompt_token_ids=np.arange(1, 6), frame=ImageFrame(8, 8, 8, 8, "input_pixels"),
        injected_knowledge=None,
        adapter_version=0,
        pixel_values=np.random.default_rng(ord(prompt_id)).random((patches, 1176), dtype=np.float32),
        image_grid_thw=np.array([[1, 32, 32]]), mm_token_type_ids=np.zeros(5, np.int64))


def test_a_groups_image_is_pickled_once_for_all_its_completions() -> None:
    import ray.cloudpickle as cloudpickle  # what Ray serialises a remote call's arguments with (protocol 5)

    samples = grpo_samples(_group("a", 8, 1024), [0.5] * 8)
    assert all(s.pixel_values is samples[0].pixel_values for s in samples)  # one tensor, shared
    image_bytes = 1024 * 1176 * 4  # 4.8 MB of float32 patches
    sent = len(cloudpickle.dumps(TrainBatch(tuple(samples)), protocol=5))
    assert image_bytes < sent < 1.05 * image_bytes  # 8 completions, one image's bytes (8x would be 38.5 MB)


def test_groups_go_to_ranks_whole() -> None:
    samples = [*grpo_samples(_group("a", 4, 16), [0.0] * 4), *grpo_samples(_group("b", 4, 16), [0.0] * 4),
               *grpo_samples(_group("c", 4, 16), [0.0] * 4)]
    shards = shard_groups(samples, 2)
    assert [len(s) for s in shards] == [8, 4]  # groups a, b | c: no group's image goes to two ranks
    assert {id(s.pixel_values) for s in shards[1]} == {id(samples[8].pixel_values)}
