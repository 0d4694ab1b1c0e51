"""Progress bars on stderr (tqdm), switched off for pipes unless asked for."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProgressConfig:
    enabled: bool

    @classmethod
    def auto(cls, requested: bool | None) -> "ProgressConfig":
        """``requested`` None: bars only when stderr is a terminal."""
        return cls(enabled=sys.stderr.isatty() if requested is None else requested)


def bar(cfg: ProgressConfig, desc: str, total: float | None, unit: str = "it", **kw: Any) -> Any:
    """A tqdm bar (a disabled one when progress is off, so callers never branch)."""
    from tqdm import tqdm  # noqa: PLC0415

    scale = unit == "B"
    return tqdm(
        desc=desc,
        total=total,
        unit=unit,
        unit_scale=scale,
        unit_divisor=1024 if scale else 1000,
        disable=not cfg.enabled,
        file=sys.stderr,
        leave=True,
        dynamic_ncols=True,
        **kw,
    )


def say(cfg: ProgressConfig, msg: str) -> None:
    """A one-line status message (shown whenever progress is on)."""
    if cfg.enabled:
        print(msg, file=sys.stderr, flush=True)
