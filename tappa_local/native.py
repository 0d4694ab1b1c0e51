"""Locate and load the patched llama.cpp build.

llama-cpp-python is installed without its own compile (``CMAKE_ARGS=-DLLAMA_BUILD=OFF``)
and loads ``libllama`` from ``$LLAMA_CPP_LIB_PATH``. This module points that variable at
our CMake build *before* ``llama_cpp`` is imported, then checks that what got loaded is
really the patched build and that it was built from the same llama-cpp-python release as
the installed bindings. Every failure is a :class:`NativeLibraryError` that says what to do.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import NativeLibraryError

#: the llama-cpp-python release whose vendored llama.cpp we patch and whose bindings we use
PINNED_LLAMA_CPP_PYTHON = "0.3.36"
#: must equal LLAMA_TAPPA_API_VERSION in native/include/llama-tappa.h
EXPECTED_API_VERSION = 2

BUILD_HINT = (
    "Build it with `make native` (or: cmake -S . -B build -G Ninja && cmake --build build) "
    "from the tappa-local checkout, or point TAPPA_BUILD_DIR at an existing build directory."
)


@dataclass(frozen=True)
class NativeBuild:
    """What CMake recorded in ``<build>/tappa-build.json``."""

    build_dir: Path
    lib_dir: Path
    llama_cpp_source_dir: Path
    llama_cpp_python_version: str
    options: dict[str, bool] = field(default_factory=dict)

    @property
    def convert_script(self) -> Path:
        return self.llama_cpp_source_dir / "convert_hf_to_gguf.py"

    @property
    def gguf_py_dir(self) -> Path:
        return self.llama_cpp_source_dir / "gguf-py"


def default_build_dir() -> Path:
    env = os.environ.get("TAPPA_BUILD_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parent.parent / "build"


def find_build(build_dir: Path | None = None) -> NativeBuild:
    """Read the build manifest; raise a clear error when there is no build."""
    bdir = build_dir or default_build_dir()
    manifest = bdir / "tappa-build.json"
    if not manifest.is_file():
        raise NativeLibraryError(f"no tappa-local native build found at {bdir} (missing {manifest.name}). {BUILD_HINT}")
    try:
        data = json.loads(manifest.read_text())
        build = NativeBuild(
            build_dir=bdir,
            lib_dir=Path(data["lib_dir"]),
            llama_cpp_source_dir=Path(data["llama_cpp_source_dir"]),
            llama_cpp_python_version=str(data["llama_cpp_python_version"]),
            options={k: bool(v) for k, v in data.get("options", {}).items()},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise NativeLibraryError(f"{manifest} is unreadable ({exc}); re-run the CMake configure step. {BUILD_HINT}") from exc
    lib = build.lib_dir / _lib_file_name("llama")
    if not lib.is_file():
        raise NativeLibraryError(f"{lib} does not exist: the build at {bdir} was configured but not built. {BUILD_HINT}")
    return build


def _lib_file_name(base: str) -> str:
    if sys.platform == "win32":
        return f"{base}.dll"
    if sys.platform == "darwin":
        return f"lib{base}.dylib"
    return f"lib{base}.so"


@dataclass(frozen=True)
class NativeLib:
    """The loaded patched library, the matching ``llama_cpp`` bindings and the build it came from."""

    build: NativeBuild
    llama_cpp: ModuleType
    lib: ctypes.CDLL
    version: str

    @property
    def Llama(self) -> Any:  # noqa: N802 - mirrors llama_cpp.Llama
        return self.llama_cpp.Llama


def _loaded_lib_path(llama_cpp_mod: ModuleType) -> Path | None:
    lib = getattr(getattr(llama_cpp_mod, "llama_cpp", None), "_lib", None)
    name = getattr(lib, "_name", None)
    return Path(name).resolve() if name else None


@functools.cache
def load(build_dir: Path | None = None) -> NativeLib:
    """Load the patched libllama through llama-cpp-python (once per process)."""
    build = find_build(build_dir)
    want = (build.lib_dir / _lib_file_name("llama")).resolve()

    if "llama_cpp" in sys.modules:
        mod = sys.modules["llama_cpp"]
        have = _loaded_lib_path(mod)
        if have != want:
            raise NativeLibraryError(
                f"llama_cpp was imported before tappa_local and loaded {have}, not the patched build {want}. "
                "Import tappa_local first, or set LLAMA_CPP_LIB_PATH to the build's lib dir before importing llama_cpp."
            )
    else:
        override = os.environ.get("LLAMA_CPP_LIB_PATH")
        if override and Path(override).resolve() != build.lib_dir.resolve():
            raise NativeLibraryError(
                f"LLAMA_CPP_LIB_PATH={override} points away from the tappa-local build at {build.lib_dir}; "
                "unset it or set TAPPA_BUILD_DIR to the build you want."
            )
        os.environ["LLAMA_CPP_LIB_PATH"] = str(build.lib_dir)
        try:
            import llama_cpp as mod  # noqa: PLC0415 - must happen after the env var is set
        except ImportError as exc:
            raise NativeLibraryError(
                f"llama-cpp-python=={PINNED_LLAMA_CPP_PYTHON} is not installed ({exc}). Install it without its own "
                f"compile: CMAKE_ARGS='-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF' pip install llama-cpp-python=={PINNED_LLAMA_CPP_PYTHON}"
            ) from exc
        except (OSError, RuntimeError, AttributeError) as exc:
            raise NativeLibraryError(f"llama_cpp could not load {want}: {exc}. {BUILD_HINT}") from exc

    bindings_version = getattr(mod, "__version__", "unknown")
    if bindings_version != PINNED_LLAMA_CPP_PYTHON or build.llama_cpp_python_version != PINNED_LLAMA_CPP_PYTHON:
        raise NativeLibraryError(
            f"version mismatch: installed llama-cpp-python bindings are {bindings_version}, the native build was made "
            f"from llama-cpp-python {build.llama_cpp_python_version}, tappa-local needs {PINNED_LLAMA_CPP_PYTHON} for both."
        )

    lib: ctypes.CDLL = mod.llama_cpp._lib
    version = verify_library(lib, str(_loaded_lib_path(mod)))
    return NativeLib(build=build, llama_cpp=mod, lib=lib, version=version)


def verify_library(lib: ctypes.CDLL, where: str) -> str:
    """Check that ``lib`` carries the tappa patch at our API version; bind and return its version string."""
    if not hasattr(lib, "llama_tappa_version") or not hasattr(lib, "llama_tappa_api_version"):
        raise NativeLibraryError(
            f"{where} is a stock libllama without the tappa-local patch (no llama_tappa_version symbol). {BUILD_HINT}"
        )
    # the version check comes before binding: an older library may lack newer symbols
    lib.llama_tappa_api_version.argtypes = []
    lib.llama_tappa_api_version.restype = ctypes.c_int32
    api = int(lib.llama_tappa_api_version())
    if api != EXPECTED_API_VERSION:
        raise NativeLibraryError(
            f"{where} speaks tappa API {api}, this Python package expects {EXPECTED_API_VERSION}: "
            f"rebuild the native library from this checkout. {BUILD_HINT}"
        )
    from . import capi  # noqa: PLC0415 - binds prototypes on the loaded library

    capi.bind(lib)
    return lib.llama_tappa_version().decode()
