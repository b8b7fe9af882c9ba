"""Collation of TrainSamples: padding, loss-mask alignment, image inputs, micro-batches and sharding."""

from __future__ import annotations

import pytest
import torch

from learner.batch import TrainSample, collate, contiguous_shards, micro_batches, shard


def _image_sample(prompt_len: int, completion: tuple[int, ...], patches: int) -> TrainSample:
    types = tuple([0] + [1] * (prompt_len - 2) + [0])  # image pads between two text tokens
    return TrainSample(prompt_ids=tuple(range(10, 10 + prompt_len)), completion_ids=completion, advantage=0.5,
                       pixel_values=torch.full((patches, 6), float(patches)),
                       image_grid_thw=torch.tensor([[1, 2, patches // 2]]), mm_token_type_ids=types)


def test_collate_aligns_loss_mask_with_completion_tokens() -> None:
    a = TrainSample(prompt_ids=(1, 2, 3), completion_ids=(7, 8), advantage=1.0,
                    sampling_logprobs=(-0.1, -0.2))
    b = TrainSample(prompt_ids=(4,), completion_ids=(9,), advantage=-1.0)
    out = collate([a, b], pad_id=0)
    # L = max(3 + 2, 1 + 1) = 5, T = 4. Completion 7 sits at position 3, predicted from position 2.
    assert out.input_ids.tolist() == [[1, 2, 3, 7, 8], [4, 9, 0, 0, 0]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert out.loss_mask.tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]
    # targets = input_ids[:, 1:]: where loss_mask is 1 they are exactly the completion tokens.
    targets = out.input_ids[:, 1:]
    assert targets[out.loss_mask.bool()].tolist() == [7, 8, 9]
    torch.testing.assert_close(out.sampling_logprobs[0], torch.tensor([0.0, 0.0, -0.1, -0.2]))
    assert out.sampling_mask.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0]]
    assert out.advantages.tolist() == [1.0, -1.0]
    assert out.pixel_values is None


def test_collate_images_and_mm_token_types() -> None:
    s1, s2 = _image_sample(4, (5, 6), patches=8), _image_sample(6, (), patches=4)
    text = TrainSample(prompt_ids=(3, 3), completion_ids=(4,))
    out = collate([s1, text, s2], pad_id=0)
    assert out.pixel_values.shape == (12, 6)  # 8 + 4 patches, images in sample order
    assert out.pixel_values[:8].eq(8.0).all() and out.pixel_values[8:].eq(4.0).all()
    assert out.image_grid_thw.tolist() == [[1, 2, 4], [1, 2, 2]]
    # Modality ids: the prompt's own, zeros over completion and padding (L = 6).
    assert out.mm_token_type_ids.tolist() == [[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 0]]
    assert out.loss_mask[2].sum() == 0  # an empty completion carries no loss


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"prompt_ids": ()}, "prompt_ids is empty"),
    ({"sampling_logprobs": (0.1,)}, "one per token"),
    ({"pixel_values": torch.zeros(4, 6)}, "both or neither"),
    ({"pixel_values": torch.zeros(4, 6), "image_grid_thw": torch.tensor([[1, 2, 2]])}, "mm_token_type_ids"),
    ({"mm_token_type_ids": (0,)}, "prompt tokens"),
])
def test_train_sample_rejects_inconsistent_fields(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"prompt_ids": (1, 2), "completion_ids": (3, 4)}
    with pytest.raises(ValueError, match=match):
        TrainSample(**{**base, **kwargs})  # type: ignore[arg-type]


def test_micro_batches_and_shard() -> None:
    samples = [TrainSample(prompt_ids=(i,), completion_ids=(i,)) for i in range(1, 8)]
    assert [len(m) for m in micro_batches(samples, 3)] == [3, 3, 1]
    shards = shard(samples, 3)
    assert [len(s) for s in shards] == [3, 2, 2]
    assert [x.prompt_ids[0] for s in shards for x in s] == list(range(1, 8))  # order preserved
    with pytest.raises(ValueError, match="at least one sample per rank"):
        shard(samples[:1], 2)


def test_contiguous_shards() -> None:
    # 5 over 2: sizes 3 and 2; 2 over 3: two shards of one, the empty third dropped
    assert contiguous_shards(5, 2) == [range(0, 3), range(3, 5)]
    assert contiguous_shards(2, 3) == [range(0, 1), range(1, 2)]
    assert contiguous_shards(0, 2) == []
    with pytest.raises(ValueError, match="at least one part"):
        contiguous_shards(3, 0)
