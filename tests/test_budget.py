"""Per-layer budgets: the Python rules and the native ones agree exactly, and the rules hold."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from tappa_local import capi
from tappa_local.budget import BudgetSpec, allocate, layer_budgets, pyramid_weights, split_integer
from tappa_local.errors import BudgetError


def _native(lib, weights: np.ndarray, spec: BudgetSpec) -> list[int] | str:
    n = len(weights)
    w = (ctypes.c_float * n)(*weights.tolist())
    out = (ctypes.c_int32 * n)()
    rc = lib.llama_tappa_split_budget(w, n, spec.total, spec.n_sink, spec.window, spec.min_layer_budget,
                                      -1 if spec.max_layer_budget is None else spec.max_layer_budget, out)
    return capi.last_error(lib) if rc < 0 else list(out)


@pytest.mark.native
def test_python_and_native_budgets_agree(native_lib) -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(400):
        n = int(rng.integers(1, 40))
        kind = trial % 4
        w = rng.random(n).astype(np.float32)
        if kind == 1:
            w[rng.random(n) < 0.3] = 0.0  # some layers want nothing
        elif kind == 2:
            w = np.asarray(pyramid_weights(n, float(rng.uniform(1.5, 30))), dtype=np.float32)
        elif kind == 3:
            w = (rng.random(n) ** 8).astype(np.float32)  # very uneven: clamps bite
        spec = BudgetSpec(
            total=int(rng.integers(0, 5000)),
            n_sink=int(rng.integers(0, 8)),
            window=int(rng.integers(0, 64)),
            min_layer_budget=int(rng.integers(0, 120)),
            max_layer_budget=None if trial % 3 == 0 else int(rng.integers(60, 800)),
        )
        try:
            want: list[int] | str = layer_budgets([float(x) for x in w], spec)
        except BudgetError as exc:
            want = str(exc)
        got = _native(native_lib.lib, w, spec)
        if isinstance(want, str):
            assert isinstance(got, str), (spec, got)
        else:
            assert got == want, (spec, w)
            cap = n * spec.max_layer_budget if spec.max_layer_budget is not None else spec.total
            assert sum(got) == min(spec.total, cap)  # exact, unless every layer is full
            checked += 1
    assert checked > 100


def test_budgets_sum_exactly_and_respect_clamps() -> None:
    spec = BudgetSpec(total=1000, n_sink=4, window=16, min_layer_budget=50, max_layer_budget=300)
    b = layer_budgets([10.0, 1.0, 1.0, 0.0, 1.0], spec)
    assert sum(b) == 1000
    assert all(50 <= x <= 300 for x in b)
    assert b[0] == 300  # the greedy layer is capped, its surplus goes to the others


def test_tappa_allocation_follows_one_minus_qsim() -> None:
    spec = BudgetSpec(total=4 * 200, n_sink=4, window=16)
    b = allocate("tappa", 4, spec, qsim_layer=[0.9, 0.5, 0.1, 0.5])
    assert b[2] > b[1] == b[3] > b[0]
    assert sum(b) == 800
    with pytest.raises(BudgetError, match="q-similarity"):
        allocate("tappa", 4, spec)


def test_impossible_budgets_are_refused() -> None:
    with pytest.raises(BudgetError, match="needs >= 80"):
        layer_budgets([1.0] * 4, BudgetSpec(total=79, n_sink=4, window=16))
    with pytest.raises(BudgetError, match="below the sum"):
        split_integer([1, 1], 3, [2, 2], [5, 5])
    with pytest.raises(BudgetError, match="beta must be > 1"):
        pyramid_weights(4, 1.0)
