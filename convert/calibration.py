"""The bridge to the calibrator (:mod:`tappa_local.calibrate`), imported only when calibrating."""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tappa_local.profile import Profile

from .errors import ConvertError


@dataclass(frozen=True)
class CalibrationOptions:
    """Calibration settings from the command line; None leaves the calibrator's default."""

    corpus: tuple[Path, ...] = ()
    n_samples: int | None = None
    seq_len: int | None = None
    window: int | None = None
    beta: float | None = None
    n_sink: int | None = None
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None

    def given(self) -> dict[str, Any]:
        """The settings the user set (everything but the corpus)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "corpus" and getattr(self, f.name) is not None}

    @property
    def requested(self) -> bool:
        return bool(self.corpus) or bool(self.given())


@dataclass(frozen=True)
class CalibrationResult:
    profile: Profile
    seconds: float


def calibrate_model(model: str, opts: CalibrationOptions, progress: bool) -> CalibrationResult:
    """Run ``tappa_local.calibrate.calibrate`` on ``model`` with ``opts``."""
    if importlib.util.find_spec("tappa_local.calibrate") is None:
        raise ConvertError("this tappa-local has no calibrator (tappa_local.calibrate); pass --profile PROFILE.safetensors")
    if not opts.corpus:
        raise ConvertError("calibration needs a corpus: pass --corpus PATH (text files, folders, .jsonl or a saved dataset), or --profile")
    missing = [str(p) for p in opts.corpus if not p.exists()]
    if missing:
        raise ConvertError(f"corpus path(s) not found: {', '.join(missing)}")
    from tappa_local.calibrate import CalibrationConfig, calibrate  # noqa: PLC0415 - heavy (torch, transformers)

    known = {f.name for f in dataclasses.fields(CalibrationConfig)}
    unknown = sorted(set(opts.given()) - known)
    if unknown:
        raise ConvertError(f"this calibrator does not take {', '.join(unknown)}")
    config = CalibrationConfig(**opts.given())
    t0 = time.perf_counter()
    profile = calibrate(model, [str(p) for p in opts.corpus], config, progress=progress)
    return CalibrationResult(profile, time.perf_counter() - t0)
