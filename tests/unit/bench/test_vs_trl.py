"""bench/vs_trl's pure parts: step-time summaries, the ratio of medians, the turn-taking baton, token
means."""

from __future__ import annotations

import threading

import pytest

from bench._turns import Baton, phase_medians, ratio, summarise
from bench.vs_trl import Recorder, equal_length_kwargs


def test_summarise_by_hand() -> None:
    # sorted 1, 2, 4, 10: median (2 + 4) / 2 = 3; inclusive quartiles 1 + 0.75 * (2 - 1) = 1.75 and
    # 4 + 0.25 * (10 - 4) = 5.5
    s = summarise([4.0, 1.0, 10.0, 2.0])
    assert s == {"n": 4, "median": 3.0, "min": 1.0, "max": 10.0, "q1": 1.75, "q3": 5.5}
    assert summarise([2.5]) == {"n": 1, "median": 2.5, "min": 2.5, "max": 2.5, "q1": 2.5, "q3": 2.5}
    with pytest.raises(ValueError, match="after the warm-up"):
        summarise([])


def test_ratio_is_of_medians_not_means() -> None:
    # medians 3 and 2 -> 1.5; the outlier 100 moves the mean, not the median
    assert ratio([1.0, 3.0, 100.0], [2.0, 2.0, 2.0]) == pytest.approx(1.5)


def test_phase_medians_count_missing_phases_as_zero() -> None:
    steps = [{"step": 5.0, "generate": 1.0, "sync": 0.2}, {"step": 6.0, "generate": 3.0},
             {"step": 7.0, "generate": 2.0, "sync": 0.4}]
    assert phase_medians(steps) == {"generate": 2.0, "sync": pytest.approx(0.2)}


def test_baton_runs_arms_one_step_each_in_turn_and_drops_finished_ones() -> None:
    log: list[str] = []
    baton = Baton(["a", "b", "c"])
    steps = {"a": 3, "b": 1, "c": 2}

    def arm(name: str) -> None:
        baton.wait(name)
        for i in range(steps[name]):
            log.append(name)
            if i < steps[name] - 1:
                baton.pass_on(name)
        baton.done(name)

    threads = [threading.Thread(target=arm, args=(n,)) for n in "cba"]  # start order does not matter
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert log == ["a", "b", "c", "a", "c", "a"]


def test_baton_abort_wakes_waiters_with_the_reason() -> None:
    baton = Baton(["a", "b"])
    errors: list[str] = []

    def waiter() -> None:
        try:
            baton.wait("b")
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=waiter)
    t.start()
    baton.abort("a failed: boom")
    t.join(timeout=10)
    assert errors == ["stopped: a failed: boom"]
    with pytest.raises(RuntimeError, match="belongs to a"):
        Baton(["a", "b"]).pass_on("b")


def test_equal_length_kwargs_speak_each_engines_terms() -> None:
    # vLLM SamplingParams: min_tokens + a -100 logit bias; transformers GenerationConfig: min_new_tokens +
    # suppress_tokens (what medground's vLLM and hf engines do for the same two rules)
    assert equal_length_kwargs(64, [7, 9], use_vllm=True) == {"min_tokens": 64,
                                                              "logit_bias": {7: -100.0, 9: -100.0}}
    assert equal_length_kwargs(64, [7, 9], use_vllm=False) == {"min_new_tokens": 64,
                                                               "suppress_tokens": [7, 9]}


def test_recorder_token_means() -> None:
    # 2 prompts of 30 and 34 tokens, 4 completions of 8 tokens: means 32 and 8 (equal work: 8 = --tokens)
    rec = Recorder([], prompts=2, prompt_tokens=64, completions=4, completion_tokens=32)
    assert rec.tokens() == {"completion_tokens_mean": 8.0, "prompt_tokens_mean": 32.0}
    assert Recorder([]).tokens() == {"completion_tokens_mean": 0.0, "prompt_tokens_mean": 0.0}
