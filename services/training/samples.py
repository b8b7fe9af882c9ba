"""What the model said during GRPO, in a form a person reads: `samples/train-step-N.jsonl` every
`logging.samples_every` steps (the training counterpart of the held-out `eval/step-N.jsonl`).

One JSON line per completion of a few groups (the learner's kept groups first, then groups dynamic sampling
dropped): the prompt's record id and task, the completion's text and finish reason, the box parsed from it
in original pixels, its reward per term (the weighted total the advantage uses, each term unweighted, the
IoU, a user's terms), its advantage (null for a dropped group: the learner never saw it), the tau it was
scored under and the adapter version that sampled it. The advantages are the learner's own
(producer.kept_advantages). The file stays in the run directory; it reaches a tracker only with
logging.log_completions (it holds report text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from learner.config import GRPOConfig
from services.training.producer import kept_advantages

if TYPE_CHECKING:
    from rewards.scoring import RewardColumns
    from services.training.producer import GroupSelection

TERMS = ("total", "weighted", "acc", "format", "recite", "grade", "iou")  # RewardColumns fields, r_ dropped


def sample_rows(sel: GroupSelection, grpo: GRPOConfig, groups: int) -> list[dict[str, Any]]:
    """The rows of up to `groups` groups of one GRPO batch (see the module docstring)."""
    advantages = kept_advantages(sel.kept, grpo).tolist() if sel.kept else []  # [B][G]
    by_group = {id(k.group): a for k, a in zip(sel.kept, advantages, strict=True)}
    located = _locate(sel)
    order = [i for i, g in enumerate(sel.seen) if id(g) in by_group] + \
            [i for i, g in enumerate(sel.seen) if id(g) not in by_group]
    rows = []
    for i in order[:groups]:
        group, (cols, lo) = sel.seen[i], located[i]
        adv = by_group.get(id(group))
        for j, completion in enumerate(group.completions):
            n = lo + j
            box = cols.pred_box[n]  # [4], NaN when no box was parsed (the first box of a set answer)
            every = None if cols.sets is None else cols.sets.boxes_of(n)  # reward.boxes: set
            rows.append({
                "prompt_id": group.prompt_id, "task": group.task, "group": i, "completion": j,
                "kept": adv is not None, "text": completion.text, "finish_reason": completion.finish_reason,
                "box": None if np.isnan(box).any() else [round(float(v), 2) for v in box],
                **({} if cols.sets is None else
                   {"boxes": None if every is None else [[round(v, 2) for v in b] for b in every]}),
                "reward": {**{t: float(getattr(cols, t if t in ("total", "weighted", "iou") else "r_" + t)[n])
                              for t in TERMS}, **{k: float(v[n]) for k, v in cols.extra.items()}},
                "advantage": None if adv is None else float(adv[j]),
                "tau": cols.tau, "tau_version": cols.tau_version, "adapter_version": group.adapter_version})
    return rows


def _locate(sel: GroupSelection) -> list[tuple[RewardColumns, int]]:
    """For each seen group (in order), its round's reward columns and its first row in them."""
    out = []
    for cols in sel.columns:  # one per generation round; its groups follow the previous round's in `seen`
        out += [(cols, int(lo)) for lo in cols.offsets[:-1]]
    if len(out) != len(sel.seen):
        raise ValueError(f"{len(sel.seen)} groups seen but {len(out)} scored; the selection is inconsistent")
    return out


def write_samples(run_dir: Path, step: int, sel: GroupSelection, grpo: GRPOConfig, groups: int) -> Path:
    """`samples/train-step-<step>.jsonl` with `sample_rows`; returns the file."""
    path = run_dir / "samples" / f"train-step-{step}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(sel, grpo, groups)
    path.write_text("".join(json.dumps({"step": step, **r}) + "\n" for r in rows))
    return path
