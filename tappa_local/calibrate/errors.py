"""Errors raised by the calibrator. All derive from :class:`tappa_local.errors.TappaError`,
so the CLI turns them into one line and exit code 2.

Architecture problems use :class:`tappa_local.errors.UnsupportedModelError` (re-exported here).
"""

from __future__ import annotations

from ..errors import TappaError, UnsupportedModelError

__all__ = ["CalibrationError", "CalibrationConfigError", "CorpusError", "ModelSourceError", "UnsupportedModelError"]


class CalibrationError(TappaError):
    """Calibration could not run or produced no usable measurement."""


class CalibrationConfigError(CalibrationError):
    """A :class:`~tappa_local.calibrate.config.CalibrationConfig` value is invalid."""


class CorpusError(CalibrationError):
    """The calibration corpus is missing, empty, malformed, or too short."""


class ModelSourceError(CalibrationError):
    """The model directory / hub id could not be found or loaded."""
