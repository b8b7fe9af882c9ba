"""`make demo` (`medground demo`): build the demo's base and data when missing, train, and summarise where
everything is, with the held-out numbers at the start and the end of GRPO and their paired changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from services.config import load_config
from services.training.launch import ensure_inputs, train

DEMO_CONFIG = Path("deploy/configs/demo.yaml")


def demo(overrides: list[str]) -> dict[str, Any]:
    """Build the demo's base and data when missing, train, and summarise where everything is, with the
    held-out numbers at the start and the end of GRPO and their standard errors."""
    import time

    from services.training.metrics import read_metrics

    t0 = time.perf_counter()
    cfg = load_config(DEMO_CONFIG, overrides)
    ensure_inputs(cfg, "demo-sparse", splits={"train": 2000, "val": 200, "test": 0})
    run_dir = Path(cfg.output_dir) / cfg.name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts fresh
    train(DEMO_CONFIG, overrides, address=None, resume=None)
    rows = read_metrics(run_dir / "metrics.jsonl")
    evals = [r for r in rows if "eval/A@0.5" in r]
    summary = {"run": str(run_dir), "metrics": str(run_dir / "metrics.jsonl"),
               "plots": str(run_dir / "plots"),
               "adapter": str(run_dir / "adapter"), "samples": str(run_dir / "samples"),
               "held-out images": evals[-1].get("eval/n"),
               "A@0.3 start": _with_se(evals[0], "A@0.3"), "A@0.3 end": _with_se(evals[-1], "A@0.3"),
               "A@0.5 start": _with_se(evals[0], "A@0.5"), "A@0.5 end": _with_se(evals[-1], "A@0.5"),
               "A@0.8 start": _with_se(evals[0], "A@0.8"), "A@0.8 end": _with_se(evals[-1], "A@0.8"),
               "mIoU start": _with_se(evals[0], "mIoU", 3), "mIoU end": _with_se(evals[-1], "mIoU", 3),
               "centre-box A@0.5": rows[0].get("baseline/centre/A@0.5"),
               "centre-box mIoU": rows[0].get("baseline/centre/mIoU"),
               **_paired_changes(run_dir / "eval", evals[0]["step"], evals[-1]["step"]),
               **_sampled(evals[0], evals[-1], run_dir / "eval"),
               "minutes": round((time.perf_counter() - t0) / 60, 1)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _paired_changes(eval_dir: Path, first: int, last: int) -> dict[str, str]:
    """'change A@0.5': '-4.0 ± 2.3' from the per-image predictions of two evaluations (the same images)."""
    from services.evaluation.heldout import read_ious
    from services.evaluation.metrics import paired_changes

    changes = paired_changes(read_ious(eval_dir / f"step-{first}.jsonl"),
                             read_ious(eval_dir / f"step-{last}.jsonl"))
    digits = {"mIoU": 3}
    return {f"change {name}": f"{mean:+.{digits.get(name, 1)}f} ± {se:.{digits.get(name, 1)}f} (paired)"
            for name, (mean, se) in changes.items()}


def _sampled(first: dict[str, Any], last: dict[str, Any], eval_dir: Path) -> dict[str, str]:
    """Sampled pass@1 (k samples per image at the training temperature) at the start and the end, and their
    paired changes: where GRPO moves the samples before it moves the greedy answer."""
    from services.evaluation.heldout import read_sampled_ious
    from services.evaluation.metrics import paired_sampled_changes

    if "eval/sampled/A@0.5" not in last:
        return {}
    out = {f"sampled {m} {when}": _with_se(row, f"sampled/{m}", 3 if m == "mIoU" else 1)
           for m in ("A@0.3", "A@0.5", "A@0.8", "mIoU") for when, row in (("start", first), ("end", last))}
    before, after = (read_sampled_ious(eval_dir / f"step-{r['step']}.jsonl") for r in (first, last))
    for name, (mean, se) in paired_sampled_changes(before, after).items():
        digits = 3 if name == "mIoU" else 1
        out[f"change sampled {name}"] = f"{mean:+.{digits}f} ± {se:.{digits}f} (paired)"
    return out


def _with_se(row: dict[str, Any], metric: str, digits: int = 1) -> str:
    """'59.5 ± 3.5': a held-out metric and its standard error (services/evaluation/metrics.py)."""
    return f"{row[f'eval/{metric}']:.{digits}f} ± {row[f'eval/{metric}_se']:.{digits}f}"
