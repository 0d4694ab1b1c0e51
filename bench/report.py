"""Writing benchmark reports: one JSON with everything, one Markdown table to read, PNG plots.

Every report carries the machine it ran on, because these numbers only mean something next
to each other (ratios measured side by side in one run).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """Where reports go: ``$TAPPA_BENCH_RESULTS`` if set (``python -m bench --out``), else bench/results."""
    return Path(os.environ.get("TAPPA_BENCH_RESULTS") or RESULTS)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent, timeout=10)
        info["git"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def write(name: str, data: dict[str, Any], markdown: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``out_dir`` (default bench/results)."""
    d = out_dir or results_dir()
    d.mkdir(parents=True, exist_ok=True)
    j = d / f"{name}.json"
    m = d / f"{name}.md"
    j.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=float) + "\n")
    m.write_text(markdown.rstrip() + "\n")
    return j, m
