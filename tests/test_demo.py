"""The README's main command: `tappa-local demo` on the bundled model, as a user runs it (a real process)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tappa_local.defaultmodel import ensure_default_gguf
from tappa_local.modelfile import read_gguf_metadata

pytestmark = pytest.mark.native


def test_default_gguf_carries_profile_and_budget() -> None:
    gguf = ensure_default_gguf()
    meta = read_gguf_metadata(gguf, keep_arrays=frozenset({"tappa.qsim.layer", "tappa.budget.layer_frac"}))
    n_layer = int(meta["tappa.n_layer"])
    assert len(meta["tappa.qsim.layer"]) == n_layer
    assert abs(sum(meta["tappa.budget.layer_frac"]) - 1.0) < 1e-5
    assert int(meta["tappa.budget.total"]) == 256 * n_layer
    assert meta["tappa.budget.allocation"] == "tappa"
    assert ensure_default_gguf() == gguf  # cached: the second call converts nothing


def test_demo_runs_on_the_bundled_model() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tappa_local.cli", "demo", "--context", "1000", "--budget", "96"],
        capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "TAPPA profile" in out
    # one row per depth with the expected answer and both caches' verdicts
    rows = [line for line in out.splitlines() if re.match(r"\s+0\.\d\s", line)]
    assert len(rows) == 5, out
    m = re.search(r"KV MiB\s+([\d.]+)\s+([\d.]+)\s+\(([\d.]+)x smaller\)", out)
    assert m, out
    full, comp = float(m.group(1)), float(m.group(2))
    assert comp < full / 2
