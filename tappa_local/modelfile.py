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


# GGUF value types (gguf.h)
_SCALAR_FMT: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class _Reader:
    def __init__(self, f, path: Path) -> None:
        self.f, self.path = f, path

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise ModelLoadError(f"{self.path}: GGUF metadata is truncated")
        return b

    def scalar(self, t: int) -> object:
        fmt = _SCALAR_FMT[t]
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        (n,) = struct.unpack("<Q", self.read(8))
        if n > 1 << 30:
            raise ModelLoadError(f"{self.path}: corrupt GGUF string length {n}")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, t: int, keep_arrays: bool) -> object:
        if t == _GGUF_STRING:
            return self.string()
        if t == _GGUF_ARRAY:
            (at,) = struct.unpack("<I", self.read(4))
            (n,) = struct.unpack("<Q", self.read(8))
            if at == _GGUF_STRING:
                items = [self.string() for _ in range(n)]
                return items if keep_arrays else ArrayInfo("str", n)
            if at not in _SCALAR_FMT:
                raise ModelLoadError(f"{self.path}: unknown GGUF array type {at}")
            size = struct.calcsize(_SCALAR_FMT[at])
            raw = self.read(size * n)
            if not keep_arrays:
                return ArrayInfo(_SCALAR_FMT[at][1:], n)
            return list(struct.unpack(f"<{n}{_SCALAR_FMT[at][1:]}", raw))
        if t not in _SCALAR_FMT:
            raise ModelLoadError(f"{self.path}: unknown GGUF value type {t}")
        return self.scalar(t)


class ArrayInfo(tuple):
    """Placeholder for an array value that was not loaded: (element format, length)."""

    def __new__(cls, fmt: str, n: int) -> "ArrayInfo":
        return super().__new__(cls, (fmt, n))


def read_gguf_metadata(path: str | Path, keep_arrays: bool | frozenset[str] = False) -> dict[str, object]:
    """The key/value section of a GGUF file, without touching tensor data.

    ``keep_arrays``: False skips array contents (they become :class:`ArrayInfo`), True
    loads all, or a set of key names to load.
    """
    p = Path(path)
    check_gguf_header(p)
    out: dict[str, object] = {}
    with p.open("rb") as f:
        r = _Reader(f, p)
        _, _, _, n_kv = _HEADER.unpack(r.read(_HEADER.size))
        for _ in range(n_kv):
            key = r.string()
            (t,) = struct.unpack("<I", r.read(4))
            keep = keep_arrays if isinstance(keep_arrays, bool) else key in keep_arrays
            out[key] = r.value(t, keep)
    return out
