"""Shared-prefix packing (learner/packing.py): the plan by hand, and exactness against the plain path --
per-token log-probs and the adapter's gradients equal within 1e-5 (fp32) for the three Qwen-VL families,
with the stochastic MLAE masks drawn as the plain path draws them."""

from __future__ import annotations

import pytest
import torch
from learner_samples import group_samples

from learner import grpo, packing
from learner.batch import TrainSample, collate
from learner.config import LearnerConfig


def _text(prompt: tuple[int, ...], *completions: tuple[int, ...]) -> list[TrainSample]:
    return [TrainSample(prompt_ids=prompt, completion_ids=c, advantage=float(i)) for i,
            c in enumerate(completions)]


def test_prompt_runs_group_consecutive_equal_prompts() -> None:
    a, b = (1, 2, 3), (4, 5)
    samples = [*_text(a, (7,), (8,)), *_text(b, (9,)), *_text(a, (7,))]
    # A A B A: the last A is not next to the first two, so it is its own run
    assert packing.prompt_runs(samples) == [range(0, 2), range(2, 3), range(3, 4)]


def test_same_prompt_compares_images_by_value() -> None:
    pix = torch.ones(4, 6)
    grid = torch.tensor([[1, 2, 2]])
    one = TrainSample(prompt_ids=(1, 2), completion_ids=(3,), pixel_values=pix, image_grid_thw=grid,
                      mm_token_type_ids=(0, 1))
    copy = TrainSample(prompt_ids=(1, 2), completion_ids=(4,), pixel_values=pix.clone(),
                       image_grid_thw=grid.clone(),
                       mm_token_type_ids=(0, 1))
    other = TrainSample(prompt_ids=(1, 2), completion_ids=(4,), pixel_values=pix * 2, image_grid_thw=grid,
                        mm_token_type_ids=(0, 1))
    assert packing.same_prompt(one, copy)
    assert not packing.same_prompt(one, other)
    assert not packing.same_prompt(one, TrainSample(prompt_ids=(1, 2), completion_ids=(3,)))


def test_micro_batches_hold_whole_groups_and_split_only_an_oversized_one() -> None:
    runs = [range(0, 3), range(3, 5), range(5, 11), range(11, 12)]
    # size 4: 3 + 2 > 4 -> separate; the run of 6 is cut 4 + 2; its last piece (2) and the run of 1 share one
    assert packing.group_micro_batches(runs, 4) == [
        [range(0, 3)], [range(3, 5)], [range(5, 9)], [range(9, 11), range(11, 12)]]
    assert packing.group_micro_batches(runs, 12) == [runs]
    with pytest.raises(ValueError, match="micro-batch size must be >= 1"):
        packing.group_micro_batches(runs, 0)


def test_shard_groups_keeps_groups_whole_and_falls_back_to_an_even_split() -> None:
    samples = [*_text((1,), (2,), (3,), (4,)), *_text((5,), (6,), (7,)), *_text((8,), (9,))]
    shards = packing.shard_groups(samples, 2)
    assert [len(s) for s in shards] == [5, 1]  # runs of 3 | 2 | 1 samples -> 2 runs + 1 run
    assert [len(s) for s in packing.shard_groups(samples[:3], 2)] == [2, 1]  # one run, two ranks: split


def test_pack_by_hand() -> None:
    """Prompt (10, 11, 12), completions (20, 21) and (30,): one row 10 11 12 20 21 30."""
    samples = _text((10, 11, 12), (20, 21), (30,))
    packed = packing.pack(samples, [range(0, 2)], [-1], packing.rope_positions(None), pad_id=0)
    assert packed.input_ids.tolist() == [[10, 11, 12, 20, 21, 30]]
    # each completion continues from the prompt's end: 3 4 for the first, 3 again for the second
    assert packed.position_ids[0].tolist() == [[0, 1, 2, 3, 4, 3]]
    # token 30 (position 5) sees the prompt (0-2) and itself, not 20 21 (3-4)
    assert packed.allowed[0, 5].tolist() == [True, True, True, False, False, True]
    assert packed.allowed[0, 4].tolist() == [True, True, True, True, True, False]
    # predictors: 20 <- 12 (pos 2), 21 <- 20 (pos 3); 30 <- 12 (pos 2); kept positions {2, 3}
    assert packed.keep.tolist() == [2, 3]
    assert packed.predictor.tolist() == [[0, 1], [0, 0]]
    assert packed.targets.tolist() == [[20, 21], [30, 0]]
    assert packed.loss_mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert packed.advantages.tolist() == [0.0, 1.0]
    assert packed.tokens == 6  # plain: 5 + 4 = 9 tokens


@pytest.mark.parametrize("family", ["tiny_model_dir", "tiny_qwen2_model_dir", "tiny_qwen3_model_dir"])
def test_packed_logprobs_and_gradients_equal_the_plain_path(family: str,
                                                            request: pytest.FixtureRequest) -> None:
    from learner.policy import build_policy

    model_dir = request.getfixturevalue(family)
    samples = group_samples(model_dir)
    model = build_policy(model_dir, LearnerConfig(mlae={"p": 0.5}))  # type: ignore[arg-type]
    model.train()  # stochastic expert masks on
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(1)
    with torch.no_grad():
        for p in params:  # B starts at zero: move every adapter weight so the adapter shapes the output
            p.add_(0.05 * torch.randn_like(p))
    batches, features = packing.packed_micro_batches(model.get_base_model().model, samples, 6, 0,
                                                     torch.device("cpu"), torch.float32)
    plan = packing.plan(samples, 6)
    assert [len(mb) for mb in plan.micro_batches] == [2, 1]  # groups of 3 whole: (g0, g1), (g2)

    def backward(logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        (logp * mask * adv[:, None]).sum().backward()
        return [p.grad.clone() for p in params]  # type: ignore[union-attr]

    for pieces, packed in zip(plan.micro_batches, batches, strict=True):
        rows = [samples[i] for piece in pieces for i in piece]
        plain = collate(rows, 0)
        rng = torch.get_rng_state()  # both paths draw the same masks: one draw per layer per forward
        logits = model(**plain.model_inputs(torch.device("cpu"), torch.float32),
                       use_cache=False).logits[:, :-1]
        lp_plain = grpo.token_logprobs(logits, plain.targets)  # [B, T]
        g_plain = backward(lp_plain, plain.loss_mask, plain.advantages)
        torch.set_rng_state(rng)
        lp_packed = grpo.token_logprobs(packing.forward(model, packed, features, torch.device("cpu"),
                                                        torch.float32), packed.targets)  # [N, C]
        g_packed = backward(lp_packed, packed.loss_mask, packed.advantages)
        for n, s in enumerate(rows):
            start, lc = len(s.prompt_ids) - 1, len(s.completion_ids)
            torch.testing.assert_close(lp_packed[n, :lc], lp_plain[n, start : start + lc], rtol=0, atol=1e-5)
        assert max(float((a - b).abs().max()) for a, b in zip(g_plain, g_packed, strict=True)) < 1e-5
        assert max(float(g.abs().max()) for g in g_plain) > 1e-2  # the gradients compared are not all zero
        assert packed.tokens < int(plain.attention_mask.sum())
