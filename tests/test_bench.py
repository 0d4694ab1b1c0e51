"""The benchmark command runs end to end: `python -m bench --quick` on the bundled model, every part.

The numbers of a quick run mean nothing (tiny settings); this checks that every part runs, writes its
JSON, Markdown and plots, and that the index reports them. The full results are in bench/results/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.native, pytest.mark.slow]


def test_bench_quick_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    index = json.loads((out / "index.json").read_text())
    from bench.__main__ import PARTS

    assert [p["part"] for p in index["parts"]] == [p.name for p in PARTS]
    for part in index["parts"]:
        assert part["ok"], part
        for md in part["reports"]:
            assert (out / md).stat().st_size > 100, md
            assert json.loads((out / md).with_suffix(".json").read_text())
    # the curves are plotted
    for png in ("quality_policies.png", "quality_alternatives.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # the full-cache baseline is in the same run as every compressed configuration
    rows = json.loads((out / "quality_policies.json").read_text())["rows"]
    assert any(r["budget"] is None for r in rows) and any(r["budget"] is not None for r in rows)


def test_bench_rejects_unknown_parts() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "nonsense"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown part(s) nonsense" in proc.stderr
