"""The pinned llama.cpp tree's ``gguf-py``, imported from the native build's source tree.

The converter, the quantizer and this package must agree on the GGUF format, so we never use
a ``gguf`` wheel from the package index: the copy next to ``convert_hf_to_gguf.py`` is put at
the front of ``sys.path`` once.
"""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path
from types import ModuleType

from tappa_local.errors import ToolchainError


@functools.cache
def gguf() -> ModuleType:
    """``import gguf`` from ``<llama.cpp tree>/gguf-py`` of the native build."""
    from tappa_local.native import find_build  # noqa: PLC0415

    root = find_build().gguf_py_dir
    if not (root / "gguf" / "__init__.py").is_file():
        raise ToolchainError(f"{root} has no gguf package: the native build's llama.cpp tree is incomplete; re-run the CMake configure")
    loaded = sys.modules.get("gguf")
    if loaded is not None:
        where = Path(getattr(loaded, "__file__", "") or "").resolve()
        if root.resolve() not in where.parents:
            raise ToolchainError(f"a different gguf package is already imported from {where}; tappa-convert needs the pinned one in {root}")
        return loaded
    sys.path.insert(0, str(root))
    return importlib.import_module("gguf")
