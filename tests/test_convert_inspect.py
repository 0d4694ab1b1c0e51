"""``tappa-local inspect``: profile, prune plan and per-layer budgets, equal to the native runtime's."""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
from pathlib import Path

import pytest

from tappa_local import capi
from tappa_local.cli import main as tappa_local_main
from tappa_local.localmodels import TinyModel

from .test_convert_support import make_profile, run_convert


def _inspect(*args: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = tappa_local_main(["inspect", *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture()
def annotated(tiny_llama: TinyModel, tmp_path: Path) -> Path:
    prof = tmp_path / "p.safetensors"
    make_profile(tiny_llama, seed=31).save(prof)
    out = tmp_path / "annotated.gguf"
    rc, _, err = run_convert("--annotate", tiny_llama.gguf_path, "--profile", prof, "-o", out)
    assert rc == 0, err
    return out


def _native_budgets(native_lib, path: Path, allocation: str, total: int, n_ctx: int) -> list[int]:
    lc, lib = native_lib.llama_cpp, native_lib.lib
    model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
    assert model
    try:
        p = lib.llama_tappa_default_params()
        p.enabled = 1
        p.total_budget = total
        p.allocation = int(capi.AllocationKind[allocation.upper()])
        n = 64  # room for any tiny model
        out = (ctypes.c_int32 * n)()
        got = lib.llama_tappa_model_budgets(model, ctypes.byref(p), n_ctx, out, n)
        assert got > 0, capi.last_error(lib)
        return list(out[:got])
    finally:
        lc.llama_model_free(model)


@pytest.mark.native
@pytest.mark.parametrize("allocation", ["default", "uniform", "pyramid", "tappa"])
def test_budgets_equal_the_native_runtime(native_lib, annotated: Path, allocation: str) -> None:
    for total, n_ctx in ((4 * 100, 4096), (4 * 333 + 1, 4096), (4 * 300, 150)):
        rc, out, err = _inspect(annotated, "--budget", total, "--allocation", allocation, "--n-ctx", n_ctx, "--json")
        assert rc == 0, err
        data = json.loads(out)
        mine = data["budget"]["layers"]
        assert mine == _native_budgets(native_lib, annotated, allocation, total, n_ctx), (allocation, total, n_ctx)
        assert [r["budget"] for r in data["layers"]] == mine


def test_text_report(annotated: Path) -> None:
    from tappa_convert.ggufinfo import read_gguf_info

    prof = read_gguf_info(annotated).profile()
    rc, out, err = _inspect(annotated, "--kv-budget", 64)
    assert rc == 0, err
    assert "TAPPA profile v1: LlamaForCausalLM" in out
    assert f"prune plan (first pruned first): {prof.prune_order.tolist()}" in out
    assert "removed layers (original indices): none" in out
    assert "total 256 tokens (64.0 per layer), window 16, sinks 2; sum 256" in out
    # one row per layer, with q-sim as stored
    for i in range(4):
        assert any(line.split()[:2] == [str(i), str(i)] and f"{prof.qsim_layer[i]:.4f}" in line for line in out.splitlines())
    # the stored default total (tappa.budget.total = 4 * 96) is used when none is given
    rc, out, _ = _inspect(annotated, "--json")
    assert json.loads(out)["budget"]["total"] == 4 * 96


def test_pruned_file_shows_original_layers(annotated: Path, tmp_path: Path) -> None:
    pruned = tmp_path / "pruned.gguf"
    rc, _, err = run_convert(annotated, "--drop-layers", "1,2", "-o", pruned)
    assert rc == 0, err
    rc, out, err = _inspect(pruned, "--json")
    data = json.loads(out)
    assert data["model"]["n_layer"] == 2
    assert data["profile"]["removed_layers"] == [1, 2]
    assert [r["original"] for r in data["layers"]] == [0, 3]


def test_file_without_profile_and_bad_files(tiny_llama: TinyModel, tmp_path: Path) -> None:
    rc, out, err = _inspect(tiny_llama.gguf_path, "--budget", 400)
    assert rc == 0, err
    assert "no TAPPA profile" in out and "allocation default" in out
    rc, out, err = _inspect(tiny_llama.gguf_path, "--budget", 400, "--allocation", "tappa")
    assert rc == 2 and "needs tappa.qsim.layer" in err
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_llama.gguf_path.read_bytes()[:100_000])
    rc, out, err = _inspect(cut)
    assert rc == 2 and "truncated" in err and len(err.strip().splitlines()) == 1
    rc, out, err = _inspect(tmp_path / "missing.gguf")
    assert rc == 2 and "no such file" in err
