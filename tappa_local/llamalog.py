"""Capture llama.cpp's log lines so failures can quote llama.cpp's own reason."""

from __future__ import annotations

import contextlib
import ctypes
from collections import deque
from collections.abc import Iterator

from .native import NativeLib


@contextlib.contextmanager
def capture_llama_log(lib: NativeLib, keep: int = 200, echo: bool = False) -> Iterator[deque[str]]:
    """Route llama.cpp's log into a bounded list for the duration of the block.

    llama-cpp-python's own callback is restored afterwards. ``echo`` also forwards
    warnings and errors to the previous callback (so ``verbose`` users still see them).
    """
    llama_cpp = lib.llama_cpp
    lines: deque[str] = deque(maxlen=keep)
    from llama_cpp import _logger  # noqa: PLC0415 - the bindings' default callback

    previous = _logger.llama_log_callback

    @llama_cpp.llama_log_callback
    def _cb(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        s = text.decode("utf-8", errors="replace")
        if level == 5 and lines:  # GGML_LOG_LEVEL_CONT
            lines[-1] += s
        else:
            lines.append(s)
        if echo and level in (2, 3):
            previous(level, text, user_data)

    llama_cpp.llama_log_set(_cb, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(previous, ctypes.c_void_p(0))


def error_lines(lines: deque[str] | list[str], n: int = 6) -> str:
    """The last lines that look like errors (or the last lines at all)."""
    errs = [ln.strip() for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    pick = errs[-n:] if errs else [ln.strip() for ln in list(lines)[-n:]]
    return "\n".join(x for x in pick if x)
