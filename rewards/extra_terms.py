"""Reward terms a user adds (`reward.extra_terms`): loading `package.module:function` and checking what it
returns (docs/algorithms.md, "Reward terms you add").

A term is a pure function `(completions, targets) -> list[float]`, called once per scored batch with two
lists of equal length N: `completions[i]` is a `ScoredCompletion` (completion i's text and the columns
medground parsed from it) and `targets[i]` the `RewardTarget` of its prompt. It returns one finite number
per completion, 0.0 where it does not apply. Anything else (an exception, the wrong length, None, NaN, a
string) stops the step with one line naming the term, the row and the value: nothing is silently zeroed.
As TRL's `reward_funcs`, verl's `custom_reward_function` and EasyR1's `path.py:fn`, the function runs in
the reward actor, so its module must import there (an installed package, or on PYTHONPATH).
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from rewards.frames import Box
from rewards.parse import Task

TermFn = Callable[[Sequence["ScoredCompletion"], Sequence[Any]], Sequence[float]]


class RewardTermError(ValueError):
    """A user's reward term failed or returned something that is not one finite number per completion."""


@dataclass(frozen=True)
class ScoredCompletion:
    """What a user's reward term sees of one completion (all boxes in original-image pixels).

    text: the completion as generated; think: its reasoning, the text inside `<think>...</think>` or,
    without those tags, the text outside the answer block (what the recitation reward reads); task: its
    prompt's task; group: the index of its prompt group in the batch; format_ok: the answer format held
    (tags in order and a parsable payload); box: the parsed answer box after clipping, or None;
    iou: best IoU of `box` over the target's boxes (0 when none or not grounding); r_acc: the accuracy term
    under the batch's tau (0/1, or the IoU in raw_iou mode); r_grade: the grade (MFRS) or label-match term.
    """

    text: str
    think: str
    task: Task
    group: int
    format_ok: bool
    box: Box | None
    iou: float
    r_acc: float
    r_grade: float


def load_term(spec: str, where: str = "reward.extra_terms") -> TermFn:
    """Import `package.module:function` and check it can be called with two positional arguments; every
    failure is a one-line ValueError naming `where`, the spec and the fix."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{where}: fn {spec!r} is not 'package.module:function'; name the module, a colon "
                         "and the function, e.g. 'deploy.examples.box_terms:oversized_box_penalty'")
    try:
        obj: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # any import failure of user code (a sys.exit at import too)
        raise ValueError(f"{where}: fn {spec!r} does not import ({type(exc).__name__}: {exc}); make "
                         f"{module_name!r} importable where the run starts and in the reward actor (an "
                         "installed package, or on PYTHONPATH)") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{where}: fn {spec!r}: module {module_name!r} has no {attr!r}; check the name "
                             "after the colon") from None
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{where}: fn {spec!r} is an object of type {type(obj).__name__}, not a function; "
                         "name a function after the colon")
    try:
        signature = inspect.signature(obj)
    except ValueError:  # a builtin without an introspectable signature: nothing to check before calling it
        return obj  # type: ignore[no-any-return]
    try:
        signature.bind(None, None)
    except TypeError:
        raise ValueError(f"{where}: fn {spec!r} has signature {signature}, which cannot take the two "
                         "positional arguments (completions, targets)") from None
    return obj  # type: ignore[no-any-return]


def term_values(name: str, spec: str, fn: TermFn, completions: Sequence[ScoredCompletion],
                targets: Sequence[Any]) -> npt.NDArray[np.float64]:
    """Call a term on a batch and return its ``[N]`` values, or raise RewardTermError in one line."""
    n = len(completions)
    try:
        values = fn(completions, targets)
    except Exception as exc:  # user code: reported with the term's name, never swallowed
        raise RewardTermError(f"reward term {name!r} ({spec}) raised {type(exc).__name__}: {exc} on a batch "
                              f"of {n} completions") from exc
    try:
        count = len(values)
    except TypeError:
        raise RewardTermError(f"reward term {name!r} ({spec}) returned a {type(values).__name__}, not a list "
                              f"of {n} numbers") from None
    if count != n:
        raise RewardTermError(f"reward term {name!r} ({spec}) returned {count} values for {n} completions; "
                              "return one number per completion (0.0 where the term does not apply)")
    out = np.empty(n)
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            c = completions[i]
            raise RewardTermError(f"reward term {name!r} ({spec}) returned {v!r} for row {i} (group "
                                  f"{c.group}, task {c.task}): every completion needs a finite number, 0.0 "
                                  "where the term does not apply")
        out[i] = float(v)
    return out
