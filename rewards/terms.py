"""Reward terms other than accuracy: recitation (BLEU), graded MFRS, classification match (docs/algorithms.md,
"Rewards")."""

from __future__ import annotations

import re
import string
from functools import lru_cache
from typing import Any, Literal

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=1)
def _bleu() -> Any:
    # Imported on first use: sacrebleu is only needed when the recitation weight is non-zero.
    try:
        from sacrebleu.metrics.bleu import BLEU
    except ImportError as err:
        raise ImportError("the recitation reward needs sacrebleu: `pip install sacrebleu` (in "
                          "medground[train]), or set reward.w_recite=0 to switch the term off") from err

    # effective_order: a short think text is not zeroed just for lacking 4-grams (sentence-level BLEU).
    return BLEU(effective_order=True)


def recitation(think: str, knowledge: str) -> float:
    """VRFT-Aug recitation: sentence BLEU of the reasoning against the injected knowledge, without the
    brevity penalty, in [0, 1]: how much of the think repeats the knowledge (docs/algorithms.md, "Rewards").

    The geometric mean of the think's 1- to 4-gram precisions against the knowledge (sacrebleu, 13a
    tokenisation, effective order, exp smoothing); 0 when either text is empty. The sign lives in the weight
    w_recite. BLEU's brevity penalty is left out because it scores the think's length against the
    knowledge's, not what it quotes. Against the 67-word chest-radiograph knowledge, the think "A frontal
    radiograph shows air-filled lungs as dark. left lung, upper zone." (its first 8 words quoted) scores 0.007
    with the penalty and 0.54 without; "left lung, upper zone." scores 0.00005 and 0.11.
    """
    if not think.strip() or not knowledge.strip():
        return 0.0
    bleu = _bleu()
    stats = bleu.sentence_score(think, [knowledge])
    # The same n-gram statistics with the reference length set to the think's: brevity penalty 1.
    score = bleu.compute_bleu(stats.counts, stats.totals, stats.sys_len, stats.sys_len,
                              smooth_method=bleu.smooth_method,
                              smooth_value=bleu.smooth_value, effective_order=True).score / 100.0
    return min(max(float(score), 0.0), 1.0)


def grade_reward(pred: int | None, true: int, formula: Literal["exp2", "inverse_square"] = "exp2") -> float:
    """VRFT-Aug multi-grade fuzzy reward for d = |pred - true|: 2^(-2d), or 1/(2(d^2+1)) for d >= 1.

    exp2: 1, 0.25, 0.0625, ...; inverse_square: 1, 0.25, 0.1, 0.05, ... (1 at d = 0). No grade: 0.
    """
    if pred is None:
        return 0.0
    d = abs(pred - true)
    if formula == "exp2":
        return float(2.0 ** (-2.0 * d))
    return 1.0 if d == 0 else 1.0 / (2.0 * (d * d + 1))


def normalise_label(label: str, mode: Literal["normalised", "exact"] = "normalised") -> str:
    """`normalised`: case-folded, punctuation removed, whitespace collapsed; `exact`: stripped only."""
    if mode == "exact":
        return label.strip()
    return _SPACES.sub(" ", _PUNCT.sub(" ", label.casefold())).strip()


def label_match(pred: str | None, true: str, mode: Literal["normalised", "exact"] = "normalised") -> float:
    """1.0 if the labels match after normalisation, else 0.0 (no label: 0)."""
    if pred is None:
        return 0.0
    return 1.0 if normalise_label(pred, mode) == normalise_label(true, mode) else 0.0
