"""bench/learner.py's result file: a run of some cases keeps the other cases already in the file."""

from __future__ import annotations

import json
from pathlib import Path

from bench.learner import ARMS, CASES, kept_cases


def test_a_partial_run_keeps_the_cases_it_did_not_measure(tmp_path: Path) -> None:
    path = tmp_path / "learner.json"
    assert kept_cases(path, {"demo": {}}) == {}
    path.write_text(json.dumps({"cases": {"demo": {"old": 1}, "3b-cut": {"kept": 2}}}))
    assert kept_cases(path, {"demo": {"new": 1}}) == {"3b-cut": {"kept": 2}}


def test_the_demo_case_times_both_paths_with_and_without_the_kl_term() -> None:
    assert CASES["demo"].kl_free and not CASES["3b-cut"].kl_free
    assert {a for a, (_, free) in ARMS.items() if free} == {"plain_kl_free", "shared_kl_free"}
