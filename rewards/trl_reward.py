"""Use medground's rewards and MedLoc-R1 schedule as a TRL `GRPOTrainer` reward function.

TRL calls a reward function as `f(prompts=..., completions=..., completion_ids=..., **columns)` with each
extra dataset column passed as a list (one value per completion), plus `trainer_state` and `log_metric`,
and expects one float per completion, or None where the reward does not apply (trl 1.16,
`GRPOTrainer._calculate_rewards`): rows whose target is None get None. The G generations of
a prompt arrive consecutively, so consecutive rows with the same prompt and target form one group, one
window entry. (With several processes TRL may split a group across them; each part then counts as a group.)

    from trl import GRPOTrainer
    from rewards import MedgroundReward, RewardTarget
    dataset = dataset.map(lambda r: {"reward_target": make_target(r).to_dict()})
    trainer = GRPOTrainer(model=..., reward_funcs=[MedgroundReward()], train_dataset=dataset, ...)

No TRL import here: the adapter is a plain callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rewards.config import RewardConfig
from rewards.scorer import RewardScorer, ScoredBatch
from rewards.scoring import RewardTarget


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string, or conversational messages whose assistant content is joined."""
    if isinstance(completion, str):
        return completion
    parts: list[str] = []
    for message in completion:
        if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content", "")
        if isinstance(content, str):
            parts.append(content)
        else:  # multimodal content: a list of {"type": "text", "text": ...} parts
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict)
                         and p.get("type") == "text")
    return "".join(parts)


class MedgroundReward:
    """Callable TRL reward: total reward per completion from a `reward_target` column (RewardTarget.to_dict(),
    or None for rows this reward does not score, which get None).

    The scorer (and so the schedule) lives in this object; pass `scorer` to share one, and keep
    `self.scorer.state_dict()` with TRL's checkpoints to resume the schedule. `last_batch` holds the
    latest ScoredBatch (breakdowns, tau, raises) for logging.
    """

    def __init__(
        self,
        config: RewardConfig | None = None,
        target_column: str = "reward_target",
        scorer: RewardScorer | None = None,
        name: str = "medground_reward",
    ) -> None:
        self.scorer = scorer if scorer is not None else RewardScorer(config)
        self.target_column = target_column
        self.__name__ = name  # TRL names the reward's metrics after it
        self.last_batch: ScoredBatch | None = None

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 **kwargs: Any) -> list[float | None]:
        if self.target_column not in kwargs:
            raise ValueError(
                f"the dataset has no column {self.target_column!r}; add one with RewardTarget(...).to_dict() "
                "per row, or pass target_column= naming the column that holds it (got columns "
                f"{sorted(kwargs)})"
            )
        raw_targets = kwargs[self.target_column]
        if len(raw_targets) != len(completions) or len(prompts) != len(completions):
            raise ValueError(f"expected one prompt and target per completion, got {len(prompts)} prompts, "
                             f"{len(raw_targets)} targets, {len(completions)} completions")
        # A row without a target (a mixed-task dataset) is not this reward's to score: None, TRL's convention
        # for "does not apply" (GRPOTrainer turns it into NaN and its nan-aware sums skip it).
        targets = [None if t is None else t if isinstance(t, RewardTarget) else RewardTarget.from_dict(t)
                   for t in raw_targets]
        rows = [(i, t) for i, t in enumerate(targets) if t is not None]
        out: list[float | None] = [None] * len(completions)
        if not rows:
            return out
        groups: list[tuple[list[str], RewardTarget]] = []
        previous: tuple[Any, RewardTarget] | None = None
        for i, target in rows:
            prompt = prompts[i]
            if previous is None or previous[0] != prompt or previous[1] != target:
                groups.append(([], target))
                previous = (prompt, target)
            groups[-1][0].append(completion_text(completions[i]))
        step, progress = _step_and_progress(kwargs.get("trainer_state"))
        batch = self.scorer.score_batch(groups, step=step, progress=progress)
        self.last_batch = batch
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if callable(log_metric) and batch.schedule.tau is not None:
            log_metric("medground/tau", batch.schedule.tau)
        for (i, _), value in zip(rows, batch.columns.total.tolist(), strict=True):
            out[i] = float(value)
        return out


def _step_and_progress(state: Any) -> tuple[int, float]:
    """(global_step, fraction of max_steps done) from a transformers TrainerState, or (-1, 0.0)."""
    if state is None:
        return -1, 0.0
    step = int(getattr(state, "global_step", 0) or 0)
    max_steps = int(getattr(state, "max_steps", 0) or 0)
    return step, (min(step / max_steps, 1.0) if max_steps > 0 else 0.0)
