"""The run plots read back: for a known metrics.jsonl, each plot's lines (data, labels, styles) and axes.

The old plotter looked up `key.replace("eval/", "baseline/centre/")`, which for a key outside `eval/` is the
key itself, so five of seven plots drew the key's first value as a grey "centre box" line, mislabelled.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from services.training.metrics import PLOTS, Y_LABELS, draw_plot, plot_run, read_metrics

BASE = {"baseline/centre/A@0.5": 0.5, "baseline/centre/A@0.8": 0.0, "baseline/centre/pseudo_mAP": 1.2,
        "baseline/centre/mIoU": 0.14}


def _known_run(tmp_path: Path) -> Path:
    """Three steps of one GRPO stage; held-out evaluation at steps 0 and 2, the centre baseline at step 0."""
    rows = []
    for step in range(3):
        row = {"step": step, "stage": "grpo", "reward/total": 0.5 + 0.1 * step,
               "reward/acc": 0.4 + 0.1 * step, "reward/format": 1.0, "tau/value": 0.3,
               "batch/zero_variance_fraction": 0.25,
               "time/generate_s": 2.0, "time/reward_s": 0.1, "time/learner_s": 3.0, "time/sync_s": 0.2,
               "time/other_s": 0.3, "learner/loss": 0.01 * step}
        if step in (0, 2):
            row |= {"eval/A@0.5": 40.0 + step, "eval/A@0.8": 5.0 + step, "eval/pseudo_mAP": 20.0 + step,
                    "eval/mIoU": 0.4 + 0.01 * step}
        if step == 0:
            row |= BASE
        rows.append(row)
    run = tmp_path / "known"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _lines(fig: object) -> dict[str, tuple[list[float], str, str]]:
    ax = fig.axes[0]  # type: ignore[attr-defined]
    return {str(line.get_label()): ([float(y) for y in line.get_ydata()], line.get_linestyle(),
                                     line.get_color())
            for line in ax.get_lines() if not str(line.get_label()).startswith("_")}


@pytest.mark.parametrize("name", list(PLOTS))
def test_each_plot_has_its_series_and_reference_lines_only_where_a_baseline_exists(tmp_path: Path,
                                                                                   name: str) -> None:
    rows = read_metrics(_known_run(tmp_path) / "metrics.jsonl")
    fig = draw_plot(rows, name, PLOTS[name], "known")
    try:
        lines = _lines(fig)
        expected = set(PLOTS[name])
        refs = {f"always-centre box: {k[5:]}" for k in PLOTS[name] if f"baseline/centre/{k[5:]}" in BASE
                and k.startswith("eval/")}
        assert set(lines) == expected | refs  # no reference line on reward, tau, loss, times, zero-variance
        for key in PLOTS[name]:
            assert lines[key][0] == [float(r[key]) for r in rows if key in r]
        ref_styles = {lines[r][1] for r in refs}
        assert len(ref_styles) == len(refs)  # distinct dash patterns
        for ref in refs:  # the reference line has its metric's value and colour
            metric = ref.removeprefix("always-centre box: ")
            assert set(lines[ref][0]) == {BASE[f"baseline/centre/{metric}"]}
            assert lines[ref][2] == lines[f"eval/{metric}"][2]
        ax = fig.axes[0]
        assert ax.get_ylabel() == Y_LABELS[name] and "(" in ax.get_ylabel()  # a unit in brackets
        assert ax.get_xlabel().startswith("optimiser step")
    finally:
        plt.close(fig)


def test_plot_run_writes_one_png_per_group(tmp_path: Path) -> None:
    run = _known_run(tmp_path)
    written = plot_run(run)
    assert sorted(p.stem for p in written) == sorted(PLOTS)
    assert all(p.stat().st_size > 1000 for p in written)
