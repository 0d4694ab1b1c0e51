"""Shared fixtures: the patched native library and the locally made tiny models.

Models are built once per machine (cached under $TAPPA_CACHE_DIR, keyed by their spec)
and reused by every test session.
"""

from __future__ import annotations

import pytest

from tappa_local import native
from tappa_local.localmodels import TinyModel, TinyModelSpec, ensure_tiny_model


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "native: exercises the patched llama.cpp library (run under sanitizers by `make sanitize`)")


@pytest.fixture(scope="session")
def native_lib() -> native.NativeLib:
    return native.load()


@pytest.fixture(scope="session")
def tiny_llama(native_lib: native.NativeLib) -> TinyModel:
    return ensure_tiny_model(TinyModelSpec(arch="llama"))


@pytest.fixture(scope="session")
def tiny_qwen2(native_lib: native.NativeLib) -> TinyModel:
    return ensure_tiny_model(TinyModelSpec(arch="qwen2"))


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model(request: pytest.FixtureRequest, native_lib: native.NativeLib) -> TinyModel:
    return ensure_tiny_model(TinyModelSpec(arch=request.param))
