"""MedLoc-R1 schedule: hand-computed tau paths, each ablation switch, refresh rules, exact resume."""

from __future__ import annotations

import json
import math

import pytest

from rewards import ScheduleConfig, ThresholdSchedule

# Groups of 4 completions. At tau = 0.30 (P = 0.80, S = 0.20, margin >= 0.10):
LOW = [0.5, 0.5, 0.2, 0.2]  # reward (2 >= 0.3)/4 = 0.5, mean IoU 0.35
MID = [0.5] * 4  # reward 1.0, mean IoU 0.5
GOOD = [0.7] * 4  # reward 1.0, mean IoU 0.7
BEST = [0.9] * 4  # reward 1.0, mean IoU 0.9
MIXED = [0.9, 0.9, 0.9, 0.5]  # at tau 0.70: reward 0.75, mean IoU 0.8

# Entry by entry, window N = 4 (stats over the window after appending; "x" = blocked by):
#  1 LOW   window 1 (not full)                                            tau 0.30
#  2 LOW   window 2 (not full)
#  3 MID   window 3 (not full)
#  4 MID   r = [.5,.5,1,1]: r_bar .75 < P .80                    x reward
#  5 MID   r = [.5,1,1,1]: r_bar .875; sigma = sqrt(3/64) = .2165 > S .20  x std
#  6 MID   r = [1,1,1,1], sigma 0, margin .5 - .3 = .2  -> RAISE 0.30 -> 0.45 (+0.15); keep newest 2 (MID, MID)  # noqa: E501
#  7 GOOD  window 3 (not full)
#  8 GOOD  IoUs [.5,.5,.7,.7] mean .6, margin .6 - .45 = .15 -> RAISE 0.45 -> 0.60 (+0.15); keep (GOOD, GOOD)
#  9 BEST  window 3
# 10 BEST  IoUs [.7,.7,.9,.9] mean .8, margin .8 - .6 = .2, P .75, S .35 -> RAISE 0.60 -> 0.70 (+0.10); keep
# (BEST, BEST)
# 11 MIXED window 3; at tau .7 its reward is 0.75
# 12 MIXED r = [1,1,.75,.75]: r_bar .875 >= .75, sigma .125 <= .35, IoUs [.9,.9,.8,.8] mean .85, margin .15
#          -> RAISE 0.70 -> 0.80 (+0.10, at the target cap)
# 13 BEST  at target: no more updates
SEQUENCE = [LOW, LOW, MID, MID, MID, MID, GOOD, GOOD, BEST, BEST, MIXED, MIXED, BEST]
EXPECTED_RAISES = {6: (0.30, 0.45), 8: (0.45, 0.60), 10: (0.60, 0.70), 12: (0.70, 0.80)}


def run(schedule: ThresholdSchedule, groups: list[list[float]], first_entry: int = 1) -> list[float]:
    """Feed groups (entry numbers from first_entry), return tau after each entry."""
    path = []
    for k, g in enumerate(groups, start=first_entry):
        schedule.observe(g, step=k)
        path.append(schedule.tau)
    return path


def test_hand_computed_path() -> None:
    s = ThresholdSchedule(ScheduleConfig(window=4))
    raised_at = [k for k, g in enumerate(SEQUENCE, start=1) if s.observe(g, step=k)]
    assert raised_at == [6, 8, 10, 12]
    assert [(r.step, r.old_tau, r.new_tau)
            for r in s.history] == [(k, *v) for k, v in EXPECTED_RAISES.items()]
    assert s.tau == 0.8 and s.version == 4 and s.at_target
    # The audit records carry the statistics, as computed in the comments above.
    first, _, _, last = s.history
    assert (first.r_bar, first.sigma, first.margin) == pytest.approx((1.0, 0.0, 0.2))
    assert (last.r_bar, last.sigma, last.margin) == pytest.approx((0.875, 0.125, 0.15))


def test_taus_are_exact_decimals() -> None:
    # 0.3 + 0.15 is 0.44999999999999996 in floating point; the schedule rounds so the table's 0.45 is hit.
    s = ThresholdSchedule(ScheduleConfig(window=4))
    taus = sorted(set(run(s, SEQUENCE)))
    assert taus == [0.3, 0.45, 0.6, 0.7, 0.8]


def test_stats_report_blocking_window() -> None:
    s = ThresholdSchedule(ScheduleConfig(window=4))
    run(s, SEQUENCE[:5])
    st = s.stats()
    # Entry 5's window, see the table: r_bar .875, sigma sqrt(3/64), IoUs [.35,.5,.5,.5] mean .4625 - .3.
    assert (st.r_bar, st.sigma, st.margin) == pytest.approx((0.875, math.sqrt(3 / 64), 0.1625))
    assert st.window_len == 4 and st.tau == 0.3 and st.version == 0 and not st.at_target


@pytest.mark.parametrize(
    ("switch", "groups", "default_raises", "ablated_raises"),
    [
        # Reward off: [.6,.6,.6,.2] -> reward .75 < P .80 every entry (sigma 0, margin .5 - .3 = .2).
        ("use_reward_condition", [[0.6, 0.6, 0.6, 0.2]] * 4, [], [4]),
        # Std off: rewards 1,1,1,.5 repeating -> every full window r_bar .875 >= .8 but sigma .2165 > .2;
        # [.6,.6,.2,.2] has reward .5, IoU .4; window IoU mean .55, margin .25.
        ("use_std_condition", [[0.6] * 4, [0.6] * 4, [0.6] * 4, [0.6, 0.6, 0.2, 0.2]], [], [4]),
        # Margin off: IoU .35 everywhere -> reward 1, sigma 0, margin .35 - .3 = .05 < .10.
        ("use_margin_condition", [[0.35] * 4] * 4, [], [4]),
        # Full window off: MID passes all three conditions from the first entry.
        ("require_full_window", [MID] * 4, [4], [1]),
    ],
)
def test_each_switch_changes_the_path(
    switch: str, groups: list[list[float]], default_raises: list[int], ablated_raises: list[int]
) -> None:
    for cfg, expected in ((ScheduleConfig(window=4), default_raises),
                          (ScheduleConfig(window=4, **{switch: False}), ablated_raises)):
        s = ThresholdSchedule(cfg)
        raised = [k for k, g in enumerate(groups, start=1) if s.observe(g)]
        assert raised == expected, (switch, cfg)
    assert s.history[0].old_tau == 0.3 and s.history[0].new_tau == 0.45


@pytest.mark.parametrize(("refresh", "kept"), [("half", 2), ("quarter", 3), ("full", 0)])
def test_refresh_keeps_newest(refresh: str, kept: int) -> None:
    # Window 4 full of MID raises at entry 4; half keeps 4 - 4//2 = 2, quarter 4 - 4//4 = 3, full 0.
    s = ThresholdSchedule(ScheduleConfig(window=4, refresh=refresh))  # type: ignore[arg-type]
    assert [s.observe(MID) for _ in range(4)] == [False, False, False, True]
    assert s.stats().window_len == kept


def test_step_rules_hand_values() -> None:
    pw = ThresholdSchedule(ScheduleConfig())
    assert [pw.step_size(t) for t in (0.3, 0.45, 0.55, 0.6, 0.75)] == [0.15, 0.15, 0.10, 0.10, 0.05]
    lin = ThresholdSchedule(ScheduleConfig(step="linear", tau0=0.2))
    cos = ThresholdSchedule(ScheduleConfig(step="cosine", tau0=0.2))
    # frac = (tau - 0.2) / 0.6: tau 0.2 -> 0, tau 0.5 -> 0.5, tau 0.74 -> 0.9.
    assert lin.step_size(0.2) == pytest.approx(0.2)  # 0.2 * (1 - 0)
    assert lin.step_size(0.5) == pytest.approx(0.1)  # 0.2 * (1 - 0.5)
    assert lin.step_size(0.74) == pytest.approx(0.05)  # 0.2 * 0.1 = 0.02 -> min_delta 0.05
    assert cos.step_size(0.2) == pytest.approx(0.2)  # 0.5 * 0.2 * (1 + cos 0)
    assert cos.step_size(0.5) == pytest.approx(0.1)  # 0.5 * 0.2 * (1 + cos pi/2)
    assert cos.step_size(0.74) == pytest.approx(0.05)  # 0.1 * (1 + cos 0.9 pi) = 0.0049 -> 0.05


def test_linear_path() -> None:
    # tau0 0.2: steps 0.2 (-> 0.4), 0.2*(1 - 1/3) = 0.1333 (-> 0.5333), 0.2*(1 - 0.5556) = 0.0889 (-> 0.6222),
    # 0.2*(1 - 0.7037) = 0.0593 (-> 0.6815), then min_delta: 0.7315, 0.7815, 0.8 (capped).
    s = ThresholdSchedule(ScheduleConfig(step="linear", tau0=0.2, window=2, refresh="full",
                                         use_margin_condition=False))
    for _ in range(40):
        s.observe([1.0, 1.0])
    assert [r.new_tau for r in s.history] == pytest.approx([0.4, 0.53333333, 0.62222222,
                                                            0.68148148, 0.73148148,
                                                            0.78148148, 0.8])


def test_state_round_trip_mid_window() -> None:
    straight = ThresholdSchedule(ScheduleConfig(window=4))
    expected = run(straight, SEQUENCE)
    first = ThresholdSchedule(ScheduleConfig(window=4))
    path = run(first, SEQUENCE[:7])  # entry 7: tau .45, window of 3 (MID, MID, GOOD): mid-window
    state = json.loads(json.dumps(first.state_dict()))
    resumed = ThresholdSchedule(ScheduleConfig(window=4))
    resumed.load_state_dict(state)
    path += run(resumed, SEQUENCE[7:], first_entry=8)
    assert path == expected
    assert resumed.history == straight.history and resumed.version == straight.version


def test_load_refuses_other_config() -> None:
    state = ThresholdSchedule(ScheduleConfig(window=4)).state_dict()
    with pytest.raises(ValueError, match="window"):
        ThresholdSchedule(ScheduleConfig(window=5)).load_state_dict(state)


def test_observe_bad_input_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ThresholdSchedule().observe([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ThresholdSchedule().observe([0.5, float("nan")])


def test_raise_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    s = ThresholdSchedule(ScheduleConfig(window=4))
    with caplog.at_level("INFO", logger="rewards.schedule"):
        run(s, SEQUENCE[:6])  # entry 6 raises 0.30 -> 0.45 (table above)
    assert [r.getMessage() for r in caplog.records] == [
        "MedLoc-R1 tau raised 0.300 -> 0.450 at step 6 (r_bar 1.000, sigma 0.000, margin 0.200)"]


def test_config_tables_are_validated() -> None:
    from pydantic import ValidationError

    from rewards import RewardConfig

    with pytest.raises(ValidationError, match=r"schedule\.thresholds must start at tau_from=0\.0"):
        ScheduleConfig(thresholds=((0.6, 0.75, 0.35), (0.0, 0.8, 0.2)))
    with pytest.raises(ValidationError, match="P and S must lie in"):
        ScheduleConfig(thresholds=((0.0, 1.5, 0.2),))
    with pytest.raises(ValidationError, match="tau0"):
        ScheduleConfig(tau0=0.9, tau_target=0.8)
    with pytest.raises(ValidationError, match="stepped_stages"):
        RewardConfig(stepped_stages=((0.0, 0.3), (1.5, 0.5)))
    with pytest.raises(ValidationError, match="finite"):
        RewardConfig(w_acc=float("inf"))
    # YAML gives lists; they validate into the same tuples.
    assert ScheduleConfig.model_validate({"piecewise_steps": [[0.0, 0.2], [0.5, 0.1]]}).piecewise_steps == (
        (0.0, 0.2), (0.5, 0.1))


def test_constant_step_path() -> None:
    # The paper's identical-fixed-step ablation: delta 0.25 from tau0 0.3 -> 0.55, 0.8 (capped at the target).
    s = ThresholdSchedule(ScheduleConfig(step="constant", constant_delta=0.25, window=2, refresh="full",
                                         use_margin_condition=False))
    assert s.step_size(0.3) == s.step_size(0.75) == 0.25
    for _ in range(20):
        s.observe([1.0, 1.0])
    assert [r.new_tau for r in s.history] == pytest.approx([0.55, 0.8])
