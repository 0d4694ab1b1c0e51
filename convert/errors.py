"""Errors of ``tappa-convert`` that are not already a :mod:`tappa_local.errors` class."""

from __future__ import annotations

from tappa_local.errors import TappaError


class ConvertError(TappaError):
    """A conversion request that cannot be carried out (bad arguments, missing input, failed step)."""
