"""ctypes prototypes for the C API in native/include/llama-tappa.h.

Kept in one place so a change to the header is mirrored by a change here; ``bind``
is called once by :func:`tappa_local.native.load` on the already-loaded libllama.
"""

from __future__ import annotations

import ctypes


def bind(lib: ctypes.CDLL) -> None:
    """Attach argtypes/restype to every tappa symbol of ``lib``."""
    lib.llama_tappa_version.argtypes = []
    lib.llama_tappa_version.restype = ctypes.c_char_p
    lib.llama_tappa_api_version.argtypes = []
    lib.llama_tappa_api_version.restype = ctypes.c_int32
