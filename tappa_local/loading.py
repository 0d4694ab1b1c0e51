"""Open a GGUF through llama-cpp-python with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .llamalog import capture_llama_log, error_lines
from .modelfile import check_gguf_header
from .native import NativeLib, load


def open_llama(path: str | Path, *, lib: NativeLib | None = None, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(model_path=path, **kwargs)`` on the patched library.

    A file llama.cpp cannot load raises :class:`ModelLoadError` quoting llama.cpp's reason
    instead of the bindings' bare "Failed to load model from file".
    """
    lib = lib or load()
    check_gguf_header(path)
    kwargs.setdefault("verbose", False)
    with capture_llama_log(lib, echo=bool(kwargs["verbose"])) as log:
        try:
            return lib.Llama(model_path=str(path), **kwargs)
        except ValueError as exc:
            reason = error_lines(log) or str(exc)
            raise ModelLoadError(f"llama.cpp could not load {path}:\n{reason}") from exc
