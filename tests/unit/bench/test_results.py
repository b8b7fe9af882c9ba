"""Every committed result says where it comes from: each file in bench/results/ is in docs/RESULTS.md's table
of the commands that write them, and each file in bench/results/probes/ has its recipe in the probes'
README (and the README names no file that is not there)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "bench" / "results"


def named_in_tables(markdown: str) -> set[str]:
    """File names in the first column of the Markdown tables: "`x.json`, `.md`, `_paths.png`" names x.json,
    x.md and x_paths.png (a name that starts with "." or "_" extends the first one's stem)."""
    names: set[str] = set()
    for line in markdown.splitlines():
        if not line.startswith("| `"):
            continue
        cells = re.findall(r"`([^`]+)`", line.split("|")[1])
        stem = cells[0].rsplit(".", 1)[0]
        names |= {stem + c if c[0] in "._" else c for c in cells}
    return names


def test_the_table_syntax_expands_suffixes() -> None:
    table = "| `a.json`, `.md`, `_paths.png` | cmd `x.json` |\n| `b.png` | y |\n| file | z |"
    assert named_in_tables(table) == {"a.json", "a.md", "a_paths.png", "b.png"}


def test_every_result_file_has_the_command_that_writes_it() -> None:
    files = {p.name for p in RESULTS.iterdir() if p.is_file()}
    named = named_in_tables((ROOT / "docs" / "RESULTS.md").read_text())
    assert files, "bench/results/ is empty"
    assert not files - named, f"in bench/results/ but not in docs/RESULTS.md's table: {sorted(files - named)}"


def test_every_probe_has_its_recipe_and_every_recipe_its_file() -> None:
    files = {p.name for p in (RESULTS / "probes").iterdir() if p.is_file()} - {"README.md"}
    named = named_in_tables((RESULTS / "probes" / "README.md").read_text())
    assert files == named, f"no recipe: {sorted(files - named)}; no file: {sorted(named - files)}"
