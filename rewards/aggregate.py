"""How reward terms combine into the one reward the advantage is computed from (`reward.aggregation`).

`sum` (default): `total = sum_k w_k r_k`. `normalize_then_sum` (GDPO, "Group reward-Decoupled Normalization
Policy Optimization for multi-reward RL optimization", arXiv 2601.05242; TRL
`multi_objective_aggregation="normalize_then_sum"`): each term is standardised within its prompt group
first, `z_k = (r_k - mean_group r_k) / (std_group r_k + eps)` with the unbiased std, as the advantage is,
and `total = sum_k w_k z_k`. A term that saturates (the format term once every answer parses) then stops
setting the group's spread, and a rare term is not drowned by a frequent one. The advantage step then
standardises the total as configured (`learner.grpo.scale_rewards`; GDPO and TRL use the batch's std).

Here rather than in the learner: the reward actor has every term and the group offsets; the learner sees
only the total. Pure numpy (rewards/ never imports torch).
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def group_standardise(values: FloatArray, offsets: npt.NDArray[np.int64], eps: float) -> FloatArray:
    """``[N]`` values with groups at ``offsets [n_groups + 1]`` -> ``[N]`` ``(v - mean_g) / (std_g + eps)``.

    Unbiased std (ddof 1), as ``learner.grpo.group_advantages``; a group of one value, or of equal values,
    gives 0 (no spread to learn from).
    """
    out = np.zeros(len(values))
    for lo, hi in itertools.pairwise(offsets.tolist()):
        if hi - lo < 2:
            continue
        g = values[lo:hi]
        out[lo:hi] = (g - g.mean()) / (g.std(ddof=1) + eps)
    return out


def normalize_then_sum(terms: FloatArray, weights: FloatArray, offsets: npt.NDArray[np.int64],
                       eps: float) -> FloatArray:
    """GDPO's combination: ``terms [N, K]`` (one column per reward term), ``weights [K]``, group offsets
    ``[n_groups + 1]`` -> ``[N]`` ``sum_k w_k z_k`` with ``z_k`` the term standardised within its group."""
    if terms.ndim != 2 or terms.shape[1] != len(weights):
        raise ValueError(f"terms must be [N, K] with one weight per column, got {terms.shape} and "
                         f"{len(weights)} weights")
    total = np.zeros(terms.shape[0])
    for k, w in enumerate(weights.tolist()):
        if w != 0.0:
            total += w * group_standardise(terms[:, k], offsets, eps)
    return total
