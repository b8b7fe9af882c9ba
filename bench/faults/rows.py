"""A fault's row in the bench's table (what was injected, the time to detect and to recover, the requests and
steps lost, the outcome), how lost requests are counted, and the table itself."""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]


def row(fault: str, injected: str, detect_s: float | None, recover_s: float | None, requests_lost: int | None,
        steps_lost: int | None, outcome: str, deadline_s: float | None = None, **extra: Any) -> Row:
    return {"fault": fault, "injected": injected, "deadline_s": deadline_s, "detect_s": detect_s,
            "recover_s": recover_s, "requests_lost": requests_lost, "steps_lost": steps_lost,
            "outcome": outcome, **extra}


def requests_lost(reqs: list[Any], want: list[Any], got: list[Any]) -> int:
    """Requests unanswered, answered twice, or answered differently from the fault-free call (every request
    carries its own sampling seed, so the answers must be identical)."""
    answered = {g.prompt_id: g for g in got}
    changed = sum(bool(answered[w.prompt_id].completions != w.completions)
                  for w in want if w.prompt_id in answered)
    return len(reqs) - len(answered) + changed + len(got) - len(answered)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def table(rows: list[Row]) -> str:
    head = "| fault | deadline s | time to detect s | time to recover s | requests lost | steps lost |\n" \
           "|---|---|---|---|---|---|"
    cells = ("deadline_s", "detect_s", "recover_s", "requests_lost", "steps_lost")
    lines = [f"| {r['fault']} | " + " | ".join(_fmt(r[c]) for c in cells) + " |" for r in rows]
    return "\n".join([head, *lines])
