"""Per-layer KV budgets from a total: the allocation rules shared with the native patch.

A layer's *budget* B_l is the number of tokens it keeps after an eviction, its ``n_sink``
first tokens and its ``window`` most recent tokens included. Like the TAPPA/CAKE reference
code, an allocation splits only the part above ``n_sink + window``::

    B_l = n_sink + window + extra_l,   sum_l extra_l = total - L * (n_sink + window)

with ``extra_l`` proportional to a per-layer weight, clamped to ``[lo, hi]`` (surplus
redistributed to the unclamped layers) and rounded to integers by largest remainder so the
budgets sum *exactly* to ``total``. native/src/llama-tappa-budget.cpp implements the same
arithmetic in the same order; tests/test_budget.py checks that both agree bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from .errors import BudgetError


class Allocation(str, Enum):
    UNIFORM = "uniform"
    PYRAMID = "pyramid"
    TAPPA = "tappa"


@dataclass(frozen=True)
class BudgetSpec:
    """How to turn a total into per-layer budgets."""

    total: int  # tokens kept after an eviction, summed over layers (sinks and window included)
    n_sink: int = 4
    window: int = 32
    min_layer_budget: int = 0  # floor per layer, sinks and window included
    max_layer_budget: int | None = None  # ceiling per layer (e.g. the context length); None: unbounded
    pyramid_beta: float = 20.0


def split_integer(weights: Sequence[float], total: int, lo: Sequence[int], hi: Sequence[int]) -> list[int]:
    """Integers ``x_l`` in ``[lo_l, hi_l]`` summing to ``total``, proportional to ``weights``.

    Layers whose proportional share falls below ``lo`` (then above ``hi``) are pinned there and
    the rest is re-split among the others; fractional parts go to the largest remainders
    (ties: lower layer index first). Negative weights count as 0; all-zero weights split evenly.
    """
    n = len(weights)
    if not (len(lo) == len(hi) == n) or n == 0:
        raise BudgetError("weights, lo and hi must have the same non-zero length")
    if any(lo[i] > hi[i] for i in range(n)):
        raise BudgetError("a layer's minimum budget exceeds its maximum")
    if sum(lo) > total:
        raise BudgetError(f"total {total} is below the sum of the per-layer minimums ({sum(lo)})")
    if sum(hi) <= total:
        return [int(h) for h in hi]

    w = [max(0.0, float(x)) for x in weights]
    if sum(w) == 0.0:
        w = [1.0] * n
    fixed: dict[int, float] = {}
    x = [0.0] * n
    while True:
        free = [i for i in range(n) if i not in fixed]
        rest = float(total)
        for i in range(n):
            if i in fixed:
                rest -= fixed[i]
        wsum = 0.0
        for i in free:
            wsum += w[i]
        for i in free:
            x[i] = rest / len(free) if wsum == 0.0 else rest * w[i] / wsum
        low = [i for i in free if x[i] < lo[i]]
        if low:
            for i in low:
                fixed[i] = float(lo[i])
            continue
        high = [i for i in free if x[i] > hi[i]]
        if high:
            for i in high:
                fixed[i] = float(hi[i])
            continue
        break
    for i, v in fixed.items():
        x[i] = v

    base = [int(math.floor(v)) for v in x]
    rem = total - sum(base)
    frac = [x[i] - base[i] for i in range(n)]
    up = sorted(range(n), key=lambda i: (-frac[i], i))
    down = sorted(range(n), key=lambda i: (frac[i], -i))
    while rem > 0:
        moved = False
        for i in up:
            if rem == 0:
                break
            if base[i] < hi[i]:
                base[i] += 1
                rem -= 1
                moved = True
        if not moved:  # pragma: no cover - excluded by sum(hi) > total
            raise BudgetError("cannot place the remaining budget")
    while rem < 0:
        moved = False
        for i in down:
            if rem == 0:
                break
            if base[i] > lo[i]:
                base[i] -= 1
                rem += 1
                moved = True
        if not moved:  # pragma: no cover - excluded by sum(lo) <= total
            raise BudgetError("cannot remove the excess budget")
    return base


def pyramid_weights(n_layer: int, beta: float) -> list[float]:
    """PyramidKV: linear from ``2 - 1/beta`` (bottom) to ``1/beta`` (top), mean 1."""
    if beta <= 1.0:
        raise BudgetError(f"pyramid beta must be > 1, got {beta}")
    if n_layer == 1:
        return [1.0]
    top = 1.0 / beta
    bottom = 2.0 - top
    return [bottom - (bottom - top) * i / (n_layer - 1) for i in range(n_layer)]


def tappa_weights(qsim_layer: Sequence[float]) -> list[float]:
    """TAPPA: layers with predictable (self-similar) queries need fewer tokens: 1 - q-sim."""
    return [1.0 - float(q) for q in qsim_layer]


def layer_budgets(weights: Sequence[float], spec: BudgetSpec) -> list[int]:
    """Budgets ``B_l`` (sinks and window included) that sum exactly to ``spec.total``."""
    n = len(weights)
    keep = spec.n_sink + spec.window
    if spec.n_sink < 0 or spec.window < 0:
        raise BudgetError("n_sink and window must be >= 0")
    floor_extra = max(0, spec.min_layer_budget - keep)
    if spec.max_layer_budget is not None and spec.max_layer_budget < keep + floor_extra:
        raise BudgetError(
            f"max layer budget {spec.max_layer_budget} is below n_sink + window (+ minimum) = {keep + floor_extra}"
        )
    need = n * (keep + floor_extra)
    if spec.total < need:
        raise BudgetError(
            f"total budget {spec.total} cannot give each of {n} layers its {spec.n_sink} sinks + {spec.window} "
            f"window tokens" + (f" + {floor_extra} minimum" if floor_extra else "") + f" (needs >= {need})"
        )
    cap = 2**62 if spec.max_layer_budget is None else spec.max_layer_budget - keep
    extra = split_integer(weights, spec.total - n * keep, [floor_extra] * n, [cap] * n)
    return [keep + e for e in extra]


def allocate(allocation: Allocation | str, n_layer: int, spec: BudgetSpec, qsim_layer: Sequence[float] | None = None) -> list[int]:
    """Budgets for a named allocation."""
    kind = Allocation(allocation)
    if kind is Allocation.UNIFORM:
        w = [1.0] * n_layer
    elif kind is Allocation.PYRAMID:
        w = pyramid_weights(n_layer, spec.pyramid_beta)
    else:
        if qsim_layer is None:
            raise BudgetError("the tappa allocation needs per-layer q-similarity (a calibrated profile)")
        if len(qsim_layer) != n_layer:
            raise BudgetError(f"profile has q-similarity for {len(qsim_layer)} layers, the model has {n_layer}")
        w = tappa_weights(qsim_layer)
    return layer_budgets(w, spec)
