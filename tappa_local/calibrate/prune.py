"""TAPPA layer-prune order (reference: ``Prune/prune/orders.py`` of MIRALab-USTC/LLM-TAPPA).

    x_norm = (x - min x) / (max x - min x)          (all zeros when max == min)
    score_l = BI_norm_l + beta * (1 - q_norm_l)

with ``q`` the pruning-form (pre-RoPE, all-pairs) layer q-similarity. Layers are pruned in
increasing score; ties go to the lower layer index first. beta = 0 gives ShortGPT's BI order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def minmax_normalise(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("cannot normalise an empty score list")
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


@dataclass(frozen=True)
class PrunePlan:
    beta: float
    score: np.ndarray  # [L] float64
    order: np.ndarray  # [L] int32, pruned first first


def tappa_prune_plan(bi: Sequence[float], qsim_prune: Sequence[float], beta: float) -> PrunePlan:
    bi_a = np.asarray(bi, dtype=np.float64)
    q_a = np.asarray(qsim_prune, dtype=np.float64)
    if bi_a.shape != q_a.shape or bi_a.ndim != 1:
        raise ValueError(f"BI and q-similarity must be 1-D of equal length, got {bi_a.shape} and {q_a.shape}")
    score = minmax_normalise(bi_a) + float(beta) * (1.0 - minmax_normalise(q_a))
    order = np.array(sorted(range(score.size), key=lambda i: (score[i], i)), dtype=np.int32)
    return PrunePlan(float(beta), score, order)
