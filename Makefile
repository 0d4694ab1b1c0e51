# tappa-local: one-command set-up, demo and tests.
#
#   make demo    set everything up (venv, native build, models) and run the demo
#   make test    set everything up and run the test suite
#   make bench   set everything up and run the benchmark suite (about an hour on 2 cores)
#
# Everything is idempotent: a second run reuses the venv, the cached sdist, the
# native build directory and the cached models. Pass native build options with
# CMAKE_ARGS, e.g.  make native CMAKE_ARGS="-DGGML_CUDA=ON".

PYTHON          ?= python3
VENV            ?= .venv
BUILD           ?= build
CMAKE_ARGS      ?=
JOBS            ?= $(shell nproc 2>/dev/null || echo 2)
TAPPA_CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tappa-local
PYTEST_ARGS     ?=
BENCH_ARGS      ?=

PY        := $(VENV)/bin/python
SDIST     := $(TAPPA_CACHE_DIR)/llama_cpp_python-0.3.36.tar.gz
GENERATOR := $(if $(shell command -v ninja 2>/dev/null),-G Ninja,)

export TAPPA_CACHE_DIR

.PHONY: setup native configure check-tools demo test bench sanitize clean

setup: $(VENV)/.tappa-deps native

check-tools:
	@command -v cmake >/dev/null 2>&1 || { echo "error: cmake not found. Install it (Debian: apt install cmake) and re-run." >&2; exit 1; }
	@command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 || \
	  { echo "error: no C++ compiler found. Install one (Debian: apt install build-essential) and re-run." >&2; exit 1; }
	@command -v patch >/dev/null 2>&1 || { echo "error: 'patch' not found (Debian: apt install patch)." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "error: $(PYTHON) must be Python >= 3.10" >&2; exit 1; }

$(PY): | check-tools
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip

# configure every time: it takes a second, applies new CMAKE_ARGS and fetches the sdist once
configure: $(PY) check-tools
	cmake -S . -B $(BUILD) $(GENERATOR) -DCMAKE_BUILD_TYPE=Release -DTAPPA_PYTHON=$(abspath $(PY)) \
	  -DTAPPA_CACHE_DIR=$(TAPPA_CACHE_DIR) $(CMAKE_ARGS) > $(BUILD).configure.log 2>&1 || \
	  { cat $(BUILD).configure.log >&2; exit 1; }

native: configure
	cmake --build $(BUILD) -j $(JOBS)

# the bindings come from the same cached sdist, installed without their own compile
$(VENV)/.tappa-deps: pyproject.toml | configure
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(PY) -m pip install -q --disable-pip-version-check "$(SDIST)"
	$(PY) -m pip install -q --disable-pip-version-check ./$(BUILD)/llama.cpp/gguf-py
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

demo: setup
	$(VENV)/bin/tappa-local demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# the benchmark suite on the bundled model; reports in bench/results/ (BENCH_ARGS=--quick for a smoke run)
bench: setup
	$(PY) -m bench $(BENCH_ARGS)

# native tests under AddressSanitizer + UndefinedBehaviorSanitizer (separate build dir)
sanitize: $(VENV)/.tappa-deps
	$(MAKE) native BUILD=build-asan CMAKE_ARGS="-DTAPPA_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_ARGS)"
	TAPPA_BUILD_DIR=$(abspath build-asan) LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:quarantine_size_mb=8:thread_local_quarantine_size_kb=64 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(PY) -m pytest -m native -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(BUILD) build-asan $(BUILD).configure.log
