"""bench/machine.py: every bench records the machine under one key schema, and names results one way."""

from __future__ import annotations

import json
from pathlib import Path

from bench import machine

KEYS = {"platform", "python", "cpu_model", "cores", "gpu", "versions", "load_before", "load_after"}


def test_record_has_one_schema(tmp_path: Path) -> None:
    record = machine.finish(machine.start())
    assert set(record) == KEYS
    assert set(record["versions"]) == set(machine.PACKAGES)
    assert record["versions"]["torch"] is not None  # installed in every environment that runs the benches
    assert len(record["load_before"]) == len(record["load_after"]) == 3
    out = machine.write_json({"x": 1, "machine": record}, tmp_path / "r" / "x.json")
    assert json.loads(out.read_text())["machine"] == record


def test_describe_says_whether_the_machine_was_shared() -> None:
    record = {"cpu_model": "CPU", "cores": 2, "gpu": None, "load_before": [0.3, 0.2, 0.1]}
    assert "2 cores, no GPU; quiet at the start (1-min load 0.30)" in machine.describe(record)
    busy = machine.describe({**record, "load_before": [3.0, 2.0, 1.0]})
    assert "other work was running" in busy and "upper bounds" in busy


def test_results_paths() -> None:
    assert machine.results_path("learner") == machine.RESULTS / "learner.json"
    assert machine.results_path("learner", gpu=True).name == "learner_gpu.json"
    assert machine.results_path("study", suffix=".md").name == "study.md"


def test_check_reads_the_load_of_either_schema() -> None:
    from bench.studies.check import load_before

    assert load_before({"machine": {"load_before": [1.0, 2.0, 3.0]}}) == [1.0, 2.0, 3.0]
    assert load_before({"machine": "x86_64, 2 CPUs", "loadavg_1_5_15": [0.5, 0.4, 0.3]}) == [0.5, 0.4, 0.3]
