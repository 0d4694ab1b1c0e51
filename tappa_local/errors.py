"""Exceptions raised by tappa-local. Every user-facing failure maps to one of these."""

from __future__ import annotations


class TappaError(Exception):
    """Base class of every error tappa-local raises on purpose."""


class NativeLibraryError(TappaError):
    """The patched llama.cpp library is missing, stale, or not the one the bindings loaded."""


class ModelLoadError(TappaError):
    """A GGUF file could not be loaded by llama.cpp."""


class ToolchainError(TappaError):
    """A build tool (compiler, cmake, pip) needed for a local model or build is missing."""


class UnsupportedModelError(TappaError):
    """The model architecture cannot be handled (e.g. no q_proj, no RoPE)."""


class ProfileError(TappaError):
    """A TAPPA profile is malformed or belongs to another model."""


class BudgetError(TappaError):
    """A KV budget or allocation request cannot be satisfied."""
