"""LearnerEngine's GRPO step wiring, without DeepSpeed: a fake engine whose "model" is one logit vector (plus
a random perturbation in training mode, as an MLAE mask draw is), driven through the real grpo_step. Checks
what the pure tests cannot: the correction uses the policy the engines sampled (eval mode), its statistics
reach StepMetrics, a step that drops every token stops before the optimiser moves, and beta = 0 keeps no
reference forward and no reference copy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from learner.adapter_copies import AdapterCopies
from learner.batch import SamplingSpec, TrainBatch, TrainSample
from learner.config import LearnerConfig
from learner.correction import RolloutCorrectionError
from learner.engine import LearnerEngine

V = 6  # vocabulary
COMPLETION = (1, 2, 3)


class FakeDeepSpeed:
    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.training = True
        self.optimizer = torch.optim.SGD(params, lr=0.1)
        self.steps = 0

    def train(self, mode: bool = True) -> None:
        self.training = mode

    def eval(self) -> None:
        self.training = False

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.steps += 1

    def get_global_grad_norm(self) -> float:
        return 0.0


def make_engine(cfg: LearnerConfig,
                noise: float = 1.0) -> tuple[LearnerEngine, torch.nn.Parameter, list[int]]:
    """An engine over one logit vector W [V]; a training-mode forward adds noise drawn from torch's RNG."""
    w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, V))
    eng = LearnerEngine.__new__(LearnerEngine)
    eng.cfg, eng.rank, eng.world_size, eng.device, eng.pad_id = cfg, 0, 1, torch.device("cpu"), 0
    eng.ds_engine = FakeDeepSpeed([w])
    eng.copies = AdapterCopies([w])
    eng.steps, eng._checked_version = 0, -1
    reference_forwards: list[int] = []

    def logits(batch: Any, sampling: SamplingSpec | None = None) -> torch.Tensor:
        b, t = batch.targets.shape
        out = w[None, None, :].expand(b, t, V)  # [B, T, V]
        if eng.ds_engine.training:
            out = out + noise * torch.randn(1, 1, V)  # one draw per forward, shared by the batch
        return out

    @contextlib.contextmanager
    def reference_policy() -> Iterator[None]:
        reference_forwards.append(1)
        yield

    eng._logits = logits  # type: ignore[method-assign]
    eng._reference_policy = reference_policy  # type: ignore[method-assign]
    return eng, w, reference_forwards


def samples(advantages: list[float], shifts: list[float], w: torch.Tensor) -> TrainBatch:
    """Samples whose behaviour log-probs are the noise-free policy's plus ``shift`` nats per token."""
    exact = torch.log_softmax(w.detach(), dim=0)
    out = [TrainSample(prompt_ids=(4, 5), completion_ids=COMPLETION, advantage=a,
                       sampling_logprobs=tuple(float(exact[c]) + s for c in COMPLETION))
           for a, s in zip(advantages, shifts, strict=True)]
    return TrainBatch(tuple(out))


def cfg(mlae: dict[str, Any] | None = None, **grpo: Any) -> LearnerConfig:
    # the plain path: the fake has no model to pack (the shared-prefix path's equality with it, correction
    # included, is tests/unit/learner/test_engine_shared_prefix.py on a real model)
    return LearnerConfig.model_validate({"micro_batch_size": 2, "shared_prefix": False,
                                         "grpo": {"beta": 0.0, "sync_alarm": "off", **grpo},
                                         "mlae": mlae or {}})


def test_correction_reads_the_eval_policy_and_reports_its_statistics() -> None:
    # The behaviour log-probs equal the eval-mode policy's; the training forwards carry noise of ~1 nat.
    # Compared with the training forward the ratios would be far from 1; with the sampled policy they are 1.
    eng, w, _ = make_engine(cfg(rollout_correction="sequence_mask"))
    m = eng.grpo_step(samples([1.0, -1.0, 0.5], [0.0, 0.0, 0.0], w))
    assert m.correction_ratio_min == pytest.approx(1.0, abs=1e-5)
    assert m.correction_ratio_max == pytest.approx(1.0, abs=1e-5)
    assert m.correction_kl == pytest.approx(0.0, abs=1e-6)
    assert (m.correction_token_fraction, m.correction_sequence_fraction) == (0.0, 0.0)
    assert eng.ds_engine.steps == 1


def test_sequence_mask_drops_one_sequence_and_keeps_the_normaliser() -> None:
    # Sample 2's engine log-probs are 2 nats per token below the learner's: sequence ratio e^6 > 3, dropped.
    # Its gradient share is then exactly zero, as if its advantage were 0, with the same normaliser.
    # A deterministic forward (no MLAE mask): logp_old is the training forward's own.
    eng, w, _ = make_engine(cfg({"mask": "none"}, rollout_correction="sequence_mask"), noise=0.0)
    m = eng.grpo_step(samples([1.0, -1.0, 0.5], [0.0, 0.0, -2.0], w))
    assert (m.correction_token_fraction, m.correction_sequence_fraction) == pytest.approx((1 / 3, 1 / 3))
    assert m.correction_ratio_max == pytest.approx(float(torch.exp(torch.tensor(6.0))), rel=1e-4)
    grad = w.grad.clone() if w.grad is not None else None
    plain, w2, _ = make_engine(cfg({"mask": "none"}), noise=0.0)
    plain.grpo_step(samples([1.0, -1.0, 0.0], [0.0, 0.0, 0.0], w2))
    assert grad is not None and w2.grad is not None
    torch.testing.assert_close(grad, w2.grad)
    assert torch.any(grad != 0)


def test_a_step_that_drops_every_token_stops_before_the_optimiser() -> None:
    eng, w, _ = make_engine(cfg(rollout_correction="token_mask"), noise=0.0)
    with pytest.raises(RolloutCorrectionError, match=r"rollout_correction_cap=3\.0"):
        eng.grpo_step(samples([1.0, -1.0], [-2.0, -2.0], w))  # every token ratio e^2 > 3
    assert eng.ds_engine.steps == 0


def test_no_correction_no_statistics() -> None:
    eng, w, _ = make_engine(cfg())
    m = eng.grpo_step(samples([1.0, -1.0], [0.0, 0.0], w))
    assert m.correction_ratio_mean is None and m.correction_kl is None


def test_beta_zero_runs_no_reference_forward_and_keeps_no_copy() -> None:
    eng, w, refs = make_engine(cfg())
    eng.begin_stage("grpo", 1e-3)
    assert eng.copies.reference is None
    eng.grpo_step(samples([1.0, -1.0, 0.5], [0.0, 0.0, 0.0], w))
    assert refs == []
    kl, w2, refs2 = make_engine(cfg(beta=0.04))
    kl.begin_stage("grpo", 1e-3)  # beta 0.04, reference stage_start: a copy, and one forward per micro-batch
    assert kl.copies.reference is not None
    kl.grpo_step(samples([1.0, -1.0, 0.5], [0.0, 0.0, 0.0], w2))
    assert len(refs2) == 2
    base = make_engine(cfg(beta=0.04, reference="base"))[0]
    base.copies.set_reference()  # an earlier stage's copy is dropped when no later stage needs one
    base.begin_stage("grpo", 1e-3)
    assert base.copies.reference is None
