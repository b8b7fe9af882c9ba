"""The loss presets expand to explicit fields (written out here from the papers, not read from the table),
a field the config sets wins, and contradictions are refused with one line naming the fix."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from learner.config import GRPOConfig, LearnerConfig

# (aggregation, scale_rewards, ratio_level, eps_low, eps_high) as each source defines its loss.
EXPECTED = {
    "grpo": ("grpo", "group", "token", 0.2, 0.2),  # DeepSeekMath / VLM-R1: sequence mean, group std
    "dapo": ("dapo", "group", "token", 0.2, 0.2),  # DAPO eq. 8 token-level mean (TRL loss_type="dapo")
    "dr_grpo": ("dr_grpo", "none", "token", 0.2, 0.2),  # Dr. GRPO: constant normaliser, no std
    "gspo": ("grpo", "group", "sequence", 3e-4, 4e-4),  # GSPO v2 section 5.1: clip ranges 3e-4 / 4e-4
}


def _fields(g: GRPOConfig) -> tuple[object, ...]:
    return (g.aggregation, g.scale_rewards, g.ratio_level, g.eps_low, g.eps_high)


@pytest.mark.parametrize("loss", list(EXPECTED))
def test_presets_expand(loss: str) -> None:
    extra = {"constant_length": 64} if loss == "dr_grpo" else {}
    g = GRPOConfig.model_validate({"loss": loss, **extra})
    assert _fields(g) == EXPECTED[loss]
    assert g.beta == 0.04 and g.rollout_correction == "none"  # presets leave the KL and the correction alone


def test_default_is_the_seeds_grpo() -> None:
    assert GRPOConfig().loss == "grpo" and _fields(GRPOConfig()) == EXPECTED["grpo"]
    assert LearnerConfig().grpo == GRPOConfig()


def test_explicit_fields_win_over_the_preset() -> None:
    g = GRPOConfig.model_validate({"loss": "gspo", "eps_high": 1e-3, "scale_rewards": "none"})
    assert (g.eps_low, g.eps_high, g.scale_rewards, g.ratio_level) == (3e-4, 1e-3, "none", "sequence")
    g = GRPOConfig.model_validate({"loss": "dr_grpo", "constant_length": 32, "scale_rewards": "group"})
    assert (g.aggregation, g.scale_rewards, g.constant_length) == ("dr_grpo", "group", 32)
    # The field order in the input does not matter: explicit beats preset either way.
    g = GRPOConfig.model_validate({"aggregation": "dapo", "loss": "grpo"})
    assert g.aggregation == "dapo"


@pytest.mark.parametrize(("fields", "message"), [
    ({"loss": "gspo", "rollout_correction": "token_mask"}, "use rollout_correction=sequence_mask"),
    ({"loss": "gspo", "rollout_correction": "token_truncate"}, "use rollout_correction=sequence_mask"),
    ({"loss": "gspo", "aggregation": "dapo"}, "set aggregation=grpo"),
    ({"rollout_correction": "token_truncate", "rollout_correction_low": 0.5}, "use a \\*_mask mode"),
    ({"loss": "dr_grpo"}, "needs constant_length"),
    ({"constant_length": 64}, "only dr_grpo divides by it"),
    ({"rollout_correction_cap": 0.5}, "greater than or equal to 1"),
    ({"rollout_correction": "sequence_mask", "rollout_correction_low": 1.5}, "less than or equal to 1"),
    ({"rollout_correction": "sequence_truncate", "rollout_correction_cap": math.inf}, "finite number"),
    ({"beta": math.inf}, "finite number"),
    ({"eps_high": math.inf}, "finite number"),
    ({"eps_low": 1.5}, "less than 1"),  # a lower clip bound of 1 - 1.5 < 0 never clips
])
def test_contradictions_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as err:
        GRPOConfig.model_validate(fields)
    assert len(err.value.errors()) == 1


def test_gspo_combines_with_sequence_corrections() -> None:
    for mode in ("sequence_mask", "sequence_truncate", "none"):
        assert GRPOConfig.model_validate({"loss": "gspo",
                                          "rollout_correction": mode}).ratio_level == "sequence"


def test_stochastic_train_forward() -> None:
    assert LearnerConfig().stochastic_train_forward  # MLAE's default stochastic mask at p = 0.5
    assert not LearnerConfig(adapter="lora").stochastic_train_forward
    assert not LearnerConfig.model_validate({"mlae": {"mask": "fixed"}}).stochastic_train_forward
    assert not LearnerConfig.model_validate({"mlae": {"p": 0.0}}).stochastic_train_forward


def test_preset_departures_name_the_defining_fields_set_otherwise() -> None:
    # a resolved grpo config given loss=gspo keeps its explicit token ratio and 0.2 clips: not gspo
    fields = ("aggregation", "scale_rewards", "ratio_level", "eps_low", "eps_high")
    resolved = {**dict(zip(fields, EXPECTED["grpo"], strict=True)), "loss": "gspo",
                "rollout_correction": "sequence_mask"}
    assert GRPOConfig.model_validate(resolved).preset_departures() == {
        "ratio_level": ("token", "sequence"), "eps_low": (0.2, 3e-4), "eps_high": (0.2, 4e-4)}
    # DAPO's own clip-higher is not a departure from the dapo preset; a sequence-mean normaliser is
    assert GRPOConfig.model_validate({"loss": "dapo", "eps_high": 0.28}).preset_departures() == {}
    assert GRPOConfig.model_validate({"loss": "dapo", "aggregation": "grpo"}).preset_departures() == {
        "aggregation": ("grpo", "dapo")}
    for loss in EXPECTED:
        extra = {"constant_length": 48} if loss == "dr_grpo" else {}
        assert GRPOConfig.model_validate({"loss": loss, **extra}).preset_departures() == {}, loss
