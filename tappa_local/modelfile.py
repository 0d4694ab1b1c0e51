"""Checks on GGUF files before llama.cpp sees them, so a bad file gets a specific message."""

from __future__ import annotations

import struct
from pathlib import Path

from .errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
SUPPORTED_GGUF_VERSIONS = (2, 3)
_HEADER = struct.Struct("<4sIqq")  # magic, version, n_tensors, n_kv


def check_gguf_header(path: str | Path) -> tuple[int, int, int]:
    """Validate the fixed GGUF header; return ``(version, n_tensors, n_kv)``.

    Catches the common mistakes (wrong path, a directory, an HF checkpoint, a truncated
    download, a file of another format) with a message that names the problem.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file")
    if p.is_dir():
        hint = " (it looks like a transformers checkpoint: convert it with `tappa-convert`)" if (p / "config.json").exists() else ""
        raise ModelLoadError(f"{p} is a directory, not a GGUF file{hint}")
    size = p.stat().st_size
    if size < _HEADER.size:
        raise ModelLoadError(f"{p} is {size} bytes: too short to be a GGUF file (truncated?)")
    with p.open("rb") as f:
        magic, version, n_tensors, n_kv = _HEADER.unpack(f.read(_HEADER.size))
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{p} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    if version not in SUPPORTED_GGUF_VERSIONS:
        raise ModelLoadError(f"{p} has GGUF version {version}; supported: {SUPPORTED_GGUF_VERSIONS}")
    if n_tensors < 0 or n_kv < 0 or n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise ModelLoadError(f"{p} has a corrupt GGUF header (n_tensors={n_tensors}, n_kv={n_kv})")
    return version, n_tensors, n_kv
