"""bench/faults/rows.py: how the fault bench counts lost requests and writes its table."""

from __future__ import annotations


def test_a_fault_row_counts_lost_requests_and_reads_as_a_table_row() -> None:
    """bench/faults/rows.py: unanswered, doubly answered and changed answers all count as lost."""
    from types import SimpleNamespace as Group

    from bench.faults.rows import requests_lost, row, table

    reqs = ["p0", "p1", "p2", "p3"]
    want = [Group(prompt_id=p, completions=[p]) for p in reqs]
    got = [Group(prompt_id="p0", completions=["p0"]), Group(prompt_id="p1", completions=["other"]),
           Group(prompt_id="p2", completions=["p2"]), Group(prompt_id="p2", completions=["p2"])]
    # p3 unanswered (1), p1 answered differently (1), p2 answered twice (1): 3
    assert requests_lost(reqs, want, got) == 3
    assert requests_lost(reqs, want, want) == 0
    line = table([row("worker hung", "SIGSTOP", 15.84, None, 0, 0, "replaced",
                      deadline_s=16.0)]).splitlines()[-1]
    assert line == "| worker hung | 16.0 | 15.8 | - | 0 | 0 |"
