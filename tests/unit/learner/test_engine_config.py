"""The DeepSpeed config the engine builds: every setting that matters is explicit."""

from __future__ import annotations

from learner.config import LearnerConfig
from learner.distributed import deepspeed_config


def test_defaults_are_explicit_zero2_with_clipping() -> None:
    ds = deepspeed_config(LearnerConfig(micro_batch_size=4), world_size=2, bf16=False)
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["gradient_clipping"] == 1.0  # stated, never DeepSpeed's implicit default
    assert ds["bf16"] == {"enabled": False}
    # Our own accumulation: step() is the only boundary, so DeepSpeed never divides by its own GAS.
    assert ds["gradient_accumulation_steps"] == 1 and ds["managed_gradient_accumulation"] is False
    assert ds["train_batch_size"] == 4 * 2  # DeepSpeed checks micro * GAS * world


def test_zero3_offload_and_bf16() -> None:
    cfg = LearnerConfig(zero_stage=3, offload_optimizer=True, gradient_clipping=0.5)
    ds = deepspeed_config(cfg, world_size=1, bf16=True)
    assert ds["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    # torch AdamW under offload (DeepSpeed's Adam JIT-compiles)
    assert ds["zero_force_ds_cpu_optimizer"] is False
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True}
