"""MedgroundReward inside a real TRL GRPOTrainer (trl is in the `dev` extra): TRL's call shape and grouping,
and rows of a mixed-task dataset without a target scored None (TRL's "does not apply")."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewards import ImageFrame, MedgroundReward, RewardConfig, RewardTarget, ScheduleConfig

pytestmark = [
    pytest.mark.integration,
    # trl 1.16 warns at import that it was tested up to vLLM 0.31; we use only its trainer, not its vLLM path.
    pytest.mark.filterwarnings("ignore:TRL currently supports vLLM versions:UserWarning"),
]


def test_grpo_trainer_calls_the_reward_per_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # accelerate warns (an error under -W error) when OMP_NUM_THREADS is unset on CPU, which depends on what
    # earlier tests left in the environment: set it explicitly.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from services.models.tiny import build_tokenizer

    tok = build_tokenizer(512, seed=0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    target = RewardTarget("grounding", boxes=((10.0, 10.0, 50.0, 50.0),),
                          frame=ImageFrame(100.0, 100.0, 112.0, 112.0, "input_pixels"))
    data = Dataset.from_list([{"prompt": f"find the nodule {i}", "reward_target": target.to_dict()}
                              for i in range(4)])
    reward = MedgroundReward(RewardConfig(w_recite=0.0, schedule=ScheduleConfig(window=4)))
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, use_cpu=True, report_to="none", logging_steps=1,
                      save_strategy="no",
                      seed=0)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward], args=args,
                          train_dataset=data)
    trainer.train()

    # One prompt x 4 generations per step -> one group per call -> one window entry per step.
    assert reward.last_batch is not None and reward.last_batch.columns.offsets.tolist() == [0, 4]
    assert reward.scorer.schedule.stats().window_len == 2
    logged = [h for h in trainer.state.log_history if "rewards/medground_reward/mean" in h]
    assert len(logged) == 2 and all(h["medground/tau"] == pytest.approx(0.3) for h in logged)


def test_mixed_task_rows_without_a_target_are_none_inside_grpo_trainer(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: E501
    """Half the prompts carry no reward_target (another task's rows): the reward returns None for them,
    TRL skips them in its nan-aware mean, and the other reward function scores them."""
    import math

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from services.models.tiny import build_tokenizer

    tok = build_tokenizer(512, seed=0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=128, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    target = RewardTarget("grounding", boxes=((10.0, 10.0, 50.0, 50.0),),
                          frame=ImageFrame(100.0, 100.0, 112.0, 112.0, "input_pixels"))
    data = Dataset.from_list([{"prompt": f"find the nodule {i}", "reward_target": target.to_dict()
                               if i % 2 else None}
                              for i in range(4)])
    reward = MedgroundReward(RewardConfig(w_recite=0.0, schedule=ScheduleConfig(window=4)))

    def other_task(prompts: list[str], completions: list[str], **kwargs: object) -> list[float]:
        return [0.0] * len(completions)

    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, use_cpu=True, report_to="none", logging_steps=1,
                      save_strategy="no",
                      seed=0, shuffle_dataset=False)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward, other_task], args=args,
                          train_dataset=data)
    trainer.train()
    # 2 prompts x 4 generations in the batch; only the 4 rows of the prompt with a target were scored.
    assert reward.last_batch is not None and reward.last_batch.columns.offsets.tolist() == [0, 4]
    logged = [h for h in trainer.state.log_history if "rewards/medground_reward/mean" in h]
    assert logged and math.isfinite(logged[0]["rewards/medground_reward/mean"])
