"""The patched library is what got loaded, and bad set-ups fail with clear errors."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tappa_local import native
from tappa_local.errors import ModelLoadError, NativeLibraryError
from tappa_local.loading import open_llama

pytestmark = pytest.mark.native


def test_patched_library_is_loaded(native_lib: native.NativeLib) -> None:
    assert native_lib.version == f"tappa-local/{native.EXPECTED_API_VERSION} llama-cpp-python/{native.PINNED_LLAMA_CPP_PYTHON}"
    loaded = Path(native_lib.lib._name).resolve()
    assert loaded == (native_lib.build.lib_dir / "libllama.so").resolve()
    assert native_lib.llama_cpp.__version__ == native.PINNED_LLAMA_CPP_PYTHON
    # the vendored tree the build used carries the converter we run
    assert native_lib.build.convert_script.is_file()


def test_build_manifest_records_source_and_options(native_lib: native.NativeLib) -> None:
    data = json.loads((native_lib.build.build_dir / "tappa-build.json").read_text())
    assert data["llama_cpp_python_version"] == "0.3.36"
    assert len(data["sdist_sha256"]) == 64
    assert set(data["options"]) >= {"GGML_CUDA", "GGML_METAL", "GGML_NATIVE"}
    # the patch stamp proves the tree was extracted and patched by our CMake step
    assert (Path(data["llama_cpp_source_dir"]) / ".tappa-stamp").read_text().startswith("sdist=" + data["sdist_sha256"])


def test_stock_library_is_rejected(native_lib: native.NativeLib) -> None:
    """A real shared library without the tappa symbols is refused by name."""
    other = ctypes.CDLL(str(native_lib.build.lib_dir / "libggml-base.so"))
    with pytest.raises(NativeLibraryError, match="without the tappa-local patch"):
        native.verify_library(other, "libggml-base.so")


def test_missing_build_is_explained(tmp_path: Path) -> None:
    with pytest.raises(NativeLibraryError, match="no tappa-local native build found"):
        native.find_build(tmp_path)


def test_unbuilt_build_dir_is_explained(tmp_path: Path, native_lib: native.NativeLib) -> None:
    data = json.loads((native_lib.build.build_dir / "tappa-build.json").read_text())
    data["lib_dir"] = str(tmp_path / "bin")
    (tmp_path / "tappa-build.json").write_text(json.dumps(data))
    with pytest.raises(NativeLibraryError, match="configured but not built"):
        native.find_build(tmp_path)


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_version_mismatch_is_refused(tmp_path: Path, native_lib: native.NativeLib) -> None:
    """A build made from another llama-cpp-python release than the bindings is refused."""
    data = json.loads((native_lib.build.build_dir / "tappa-build.json").read_text())
    data["llama_cpp_python_version"] = "0.3.35"
    (tmp_path / "tappa-build.json").write_text(json.dumps(data))
    proc = _run_python("from tappa_local import native; native.load()", TAPPA_BUILD_DIR=str(tmp_path))
    assert proc.returncode != 0
    assert "version mismatch" in proc.stderr and "0.3.35" in proc.stderr


def test_bindings_imported_first_with_other_lib_is_refused(tmp_path: Path, native_lib: native.NativeLib) -> None:
    """If llama_cpp already loaded some other libllama, we say so instead of running on it."""
    other = tmp_path / "bin"
    shutil.copytree(native_lib.build.lib_dir, other, symlinks=True)
    code = "import llama_cpp\nfrom tappa_local import native\nnative.load()"
    proc = _run_python(code, LLAMA_CPP_LIB_PATH=str(other))
    assert proc.returncode != 0
    assert "imported before tappa_local" in proc.stderr


def test_cli_info_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "tappa_local.cli", "info", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["tappa_native"].startswith("tappa-local/")


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "too short"),
        (b"PK\x03\x04" + b"\0" * 100, "not a GGUF file"),
        (b"GGUF" + (99).to_bytes(4, "little") + b"\0" * 40, "GGUF version 99"),
    ],
    ids=["empty", "zip", "bad-version"],
)
def test_bad_gguf_header_is_explained(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match):
        open_llama(p)


def test_truncated_gguf_quotes_llama_cpp_reason(tmp_path: Path, tiny_llama) -> None:
    data = tiny_llama.gguf_path.read_bytes()
    p = tmp_path / "truncated.gguf"
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelLoadError, match="not within the file bounds"):
        open_llama(p)


def test_directory_instead_of_gguf(tiny_llama) -> None:
    with pytest.raises(ModelLoadError, match="transformers checkpoint"):
        open_llama(tiny_llama.hf_dir)
