"""The per-layer KV cache inside llama.cpp: exactness, eviction against a torch reference,
memory accounting, chunked prefill budgets and refused operations."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from tappa_local import capi
from tappa_local.errors import BudgetError, ProfileError, TappaError
from tappa_local.localmodels import TinyModel
from tappa_local.runtime import TappaLlama

from .torch_reference import TorchDecoder, keep_sink_recent, used

pytestmark = pytest.mark.native

F32 = 0


def _ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1, *rng.integers(3, vocab, size=n - 1).tolist()]


def _logits(llm: TappaLlama, ids: list[int]) -> np.ndarray:
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "no-fa"])
def test_feature_off_is_the_stock_cache(native_lib, tiny_model: TinyModel, flash_attn: bool) -> None:
    """compress=False gives bitwise the logits of llama_cpp.Llama on the same build, even in
    a process that used the tappa cache before."""
    ids = _ids(300, tiny_model.spec.vocab_size)
    kw = dict(n_ctx=512, n_batch=64, logits_all=True, type_k=F32, type_v=F32, flash_attn=flash_attn, verbose=False, seed=0)
    stock = native_lib.Llama(model_path=str(tiny_model.gguf_path), **kw)
    try:
        ref = _logits(stock, ids)
    finally:
        stock.close()
    used_before = TappaLlama(str(tiny_model.gguf_path), kv_budget=64, window=8, **kw)
    _logits(used_before, ids)
    assert used_before.compressed and used_before.kv_stats().layers[0].n_evictions > 0
    used_before.close()
    off = TappaLlama(str(tiny_model.gguf_path), compress=False, **kw)
    try:
        assert not off.compressed
        got = _logits(off, ids)
    finally:
        off.close()
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "no-fa"])
def test_budget_at_least_context_is_exact(native_lib, tiny_model: TinyModel, flash_attn: bool) -> None:
    """With budgets >= the context no token is ever evicted and the logits equal the stock cache."""
    n_ctx = 512
    ids = _ids(400, tiny_model.spec.vocab_size, seed=1)
    kw = dict(n_ctx=n_ctx, n_batch=64, logits_all=True, type_k=F32, type_v=F32, flash_attn=flash_attn, verbose=False)
    stock = native_lib.Llama(model_path=str(tiny_model.gguf_path), **kw)
    try:
        ref = _logits(stock, ids)
    finally:
        stock.close()
    llm = TappaLlama(str(tiny_model.gguf_path), kv_budget=n_ctx, **kw)
    try:
        assert llm.compressed
        got = _logits(llm, ids)
        assert all(layer.n_evictions == 0 and layer.used == len(ids) for layer in llm.kv_stats().layers)
    finally:
        llm.close()
    assert np.array_equal(got, ref)


def test_eviction_matches_torch_reference(tiny_model: TinyModel) -> None:
    """Chunked prefill with evictions between chunks, then decoding after an explicit eviction:
    every logit equals a plain torch decoder that attends to exactly the kept tokens."""
    n_batch, n_sink, window = 32, 4, 8
    budgets = [48, 40, 56, 64]  # explicit per-layer budgets
    ids = _ids(260, tiny_model.spec.vocab_size, seed=2)
    llm = TappaLlama(
        str(tiny_model.gguf_path), layer_budgets=budgets, n_sink=n_sink, window=window, n_ctx=1024, scorer="sink_recent",
        n_batch=n_batch, n_ubatch=n_batch, logits_all=True, type_k=F32, type_v=F32, flash_attn=False, verbose=False,
    )
    ref = TorchDecoder(tiny_model.hf_dir)
    cache = ref.new_cache()
    caps = [b + n_batch for b in budgets]
    try:
        got = _logits(llm, ids)  # evicts after the prompt
        want = []
        for c0 in range(0, len(ids), n_batch):
            chunk = ids[c0 : c0 + n_batch]
            if any(u + len(chunk) > cap for u, cap in zip(used(cache), caps)):
                keep_sink_recent(cache, budgets, n_sink)
            want.append(ref.forward(chunk, c0, cache))
        keep_sink_recent(cache, budgets, n_sink)  # evict_after_prompt
        want_np = torch_cat(want)
        err = float(np.abs(got - want_np).max())
        assert err < 1e-4, f"prefill logits differ by {err}"

        # the kept sets are the same, layer by layer and head by head
        for layer in range(4):
            for h in range(tiny_model.spec.num_kv_heads):
                assert llm.kept_positions(layer, h) == sorted(cache[layer].pos[h].tolist())

        # decoding: single tokens appended after the eviction
        pos = len(ids)
        for t in _ids(5, tiny_model.spec.vocab_size, seed=3)[1:]:
            llm.eval([t])
            row = np.array(llm.scores[pos], dtype=np.float32)
            want_row = ref.forward([t], pos, cache)[0].numpy()
            assert float(np.abs(row - want_row).max()) < 1e-4
            pos += 1
    finally:
        llm.close()


def torch_cat(parts: list) -> np.ndarray:
    import torch

    return torch.cat(parts).numpy().astype(np.float32)


def test_kv_memory_follows_the_formula(native_lib, tiny_llama: TinyModel) -> None:
    """Allocated KV bytes (llama.cpp's own accounting) = sum over layers of capacity x bytes/token."""
    n_ctx, n_batch = 4096, 128
    llm = TappaLlama(str(tiny_llama.gguf_path), kv_budget=256, n_ctx=n_ctx, n_batch=n_batch, verbose=False, scorer="sink_recent")
    stock = native_lib.Llama(model_path=str(tiny_llama.gguf_path), n_ctx=n_ctx, n_batch=n_batch, verbose=False)
    snap = TappaLlama(str(tiny_llama.gguf_path), kv_budget=256, window=32, n_ctx=n_ctx, n_batch=n_batch, verbose=False, scorer="snapkv")
    try:
        s = llm.kv_stats()
        bpt = llm.geometry.kv_bytes_per_token()  # f16 K + V
        assert [layer.capacity for layer in s.layers] == [layer.budget + n_batch for layer in s.layers]
        assert s.kv_bytes == sum(layer.capacity for layer in s.layers) * bpt
        assert s.kv_bytes == sum(layer.kv_bytes for layer in s.layers)
        # window scorers also keep each layer's last `window` queries (f32)
        g = llm.geometry
        ring = g.n_layer * 32 * g.n_head * g.head_dim_k * 4
        assert snap.kv_stats().kv_bytes == s.kv_bytes + ring
        stock_bytes = native_lib.lib.llama_tappa_kv_bytes(stock._ctx.ctx)
        assert stock_bytes == n_ctx * llm.geometry.n_layer * bpt == s.full_kv_bytes
        print(f"KV bytes: tappa {s.kv_bytes} vs stock {stock_bytes} ({stock_bytes / s.kv_bytes:.1f}x)")
    finally:
        llm.close()
        stock.close()
        snap.close()


@pytest.mark.parametrize("flash_attn", [True, False], ids=["fa", "no-fa"])
def test_16k_context_with_1k_budget_is_under_an_eighth(native_lib, tiny_llama: TinyModel, flash_attn: bool) -> None:
    n_ctx, n_batch, budget = 16384, 256, 1024
    kw = dict(n_ctx=n_ctx, n_batch=n_batch, flash_attn=flash_attn, verbose=False)
    llm = TappaLlama(str(tiny_llama.gguf_path), kv_budget=budget, scorer="sink_recent", **kw)
    stock = TappaLlama(str(tiny_llama.gguf_path), compress=False, **kw)
    try:
        s, full = llm.kv_stats(), stock.kv_stats()
        bpt = llm.geometry.kv_bytes_per_token()
        headroom = llm.geometry.n_layer * n_batch * bpt
        assert full.kv_bytes == s.full_kv_bytes
        assert s.kv_bytes <= s.full_kv_bytes / 8 + headroom
        assert s.kv_bytes - headroom == llm.geometry.n_layer * budget * bpt
        # attention spans no more than a layer's capacity, so the compute buffers shrink too
        assert s.compute_bytes < full.compute_bytes
        print(f"16K ctx, budget 1K ({'fa' if flash_attn else 'no fa'}): KV {s.kv_mib:.2f} vs {full.kv_mib:.2f} MiB, "
              f"compute {s.compute_bytes / 2**20:.2f} vs {full.compute_bytes / 2**20:.2f} MiB")
    finally:
        llm.close()
        stock.close()


def test_chunked_prefill_never_exceeds_capacity(native_lib, tiny_llama: TinyModel) -> None:
    """A prompt ~20x the budget streams through; after every chunk each layer holds at most its
    capacity, each eviction leaves exactly the budget, and positions stay exact."""
    n_batch = 64
    llm = TappaLlama(str(tiny_llama.gguf_path), kv_budget=96, window=16, allocation="pyramid",
                     n_ctx=8192, n_batch=n_batch, verbose=False, evict_after_prompt=False)
    lib = native_lib.lib
    try:
        ids = _ids(2000, tiny_llama.spec.vocab_size, seed=4)
        budgets = [layer.budget for layer in llm.kv_stats().layers]
        assert len(set(budgets)) > 1  # pyramid: per-layer budgets differ
        mem = native_lib.llama_cpp.llama_get_memory(llm._ctx.ctx)
        evictions_seen = 0
        for c0 in range(0, len(ids), n_batch):
            llm.eval(ids[c0 : c0 + n_batch])
            s = llm.kv_stats()
            for layer in s.layers:
                assert layer.used <= layer.capacity
                assert layer.used <= layer.budget + n_batch
            assert native_lib.llama_cpp.llama_memory_seq_pos_max(mem, 0) == c0 + len(ids[c0 : c0 + n_batch]) - 1
            evictions_seen = max(evictions_seen, s.layers[0].n_evictions)
        assert evictions_seen >= 10
        dropped = lib.llama_tappa_evict(llm._ctx.ctx)
        assert dropped > 0
        assert [layer.used for layer in llm.kv_stats().layers] == budgets
        # sinks and the window survive in every layer and head
        for layer in range(llm.geometry.n_layer):
            kept = llm.kept_positions(layer, 0)
            assert kept[:4] == [0, 1, 2, 3]
            assert kept[-16:] == list(range(len(ids) - 16, len(ids)))
    finally:
        llm.close()


def test_bad_budgets_are_refused(tiny_llama: TinyModel) -> None:
    path = str(tiny_llama.gguf_path)
    with pytest.raises(BudgetError, match="needs >= "):
        TappaLlama(path, kv_budget=10, window=16, n_ctx=512, verbose=False)
    with pytest.raises(BudgetError, match="smaller than n_batch"):
        TappaLlama(path, kv_budget=100, headroom=32, n_ctx=512, n_batch=128, verbose=False)
    with pytest.raises(BudgetError, match="layer_budgets has 3 entries"):
        TappaLlama(path, layer_budgets=[64, 64, 64], n_ctx=512, verbose=False)
    with pytest.raises(BudgetError, match="below n_sink"):
        TappaLlama(path, layer_budgets=[64, 64, 8, 64], window=16, n_ctx=512, verbose=False)
    with pytest.raises(BudgetError, match="unknown allocation"):
        TappaLlama(path, kv_budget=64, allocation="magic", n_ctx=512, verbose=False)
    with pytest.raises(BudgetError, match="stores no default KV budget"):
        TappaLlama(path, compress=True, n_ctx=512, verbose=False)
    with pytest.raises(ProfileError, match="tappa.qsim.layer"):
        TappaLlama(path, kv_budget=64, allocation="tappa", n_ctx=512, verbose=False)
    with pytest.raises(BudgetError, match="MiB holds"):
        TappaLlama(path, kv_budget_mib=0.01, n_ctx=512, verbose=False)


def test_mib_budget_bounds_kv_memory(tiny_llama: TinyModel) -> None:
    llm = TappaLlama(str(tiny_llama.gguf_path), kv_budget_mib=0.5, n_ctx=8192, n_batch=128, verbose=False, scorer="sink_recent")
    try:
        s = llm.kv_stats()
        assert s.kv_bytes <= 0.5 * 2**20
        assert s.kv_bytes > 0.45 * 2**20
    finally:
        llm.close()


def test_multiple_sequences_are_refused(native_lib, tiny_llama: TinyModel) -> None:
    lc = native_lib.llama_cpp
    lib = native_lib.lib
    mp = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(str(tiny_llama.gguf_path).encode(), mp)
    assert model
    try:
        p = lib.llama_tappa_default_params()
        p.total_budget = 256
        assert lib.llama_tappa_model_set_params(model, ctypes.byref(p)) == 0
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max = 1024, 2
        assert not lc.llama_init_from_model(model, cp)
        assert "one sequence" in capi.last_error(lib)
        cp.n_seq_max = 1
        ctx = lc.llama_init_from_model(model, cp)
        assert ctx and lib.llama_tappa_enabled(ctx) == 1
        lc.llama_free(ctx)
        # removing the model's params brings back the stock cache
        assert lib.llama_tappa_model_set_params(model, None) == 0
        ctx = lc.llama_init_from_model(model, cp)
        assert ctx and lib.llama_tappa_enabled(ctx) == 0
        lc.llama_free(ctx)
    finally:
        lc.llama_model_free(model)


def test_context_shift_and_state_are_refused(native_lib, tiny_llama: TinyModel) -> None:
    lc = native_lib.llama_cpp
    llm = TappaLlama(str(tiny_llama.gguf_path), kv_budget=64, window=8, n_ctx=1024, n_batch=64, verbose=False)
    try:
        llm.eval(_ids(300, tiny_llama.spec.vocab_size))
        mem = lc.llama_get_memory(llm._ctx.ctx)
        assert not lc.llama_memory_can_shift(mem)
        # removing a middle range after an eviction is refused, not half-done
        assert not lc.llama_memory_seq_rm(mem, 0, 10, 20)
        # a shift anyway: every later batch is refused until the sequence is cleared
        lc.llama_memory_seq_add(mem, 0, 100, 300, -50)
        assert "not supported" in capi.last_error(native_lib.lib)
        with pytest.raises(RuntimeError):
            llm.eval([5])
        llm.clear()
        llm.eval(_ids(10, tiny_llama.spec.vocab_size))
        assert llm.n_tokens == 10
        with pytest.raises(TappaError, match="state"):
            llm.save_state()
    finally:
        llm.close()


def test_unrelated_prompts_start_from_an_empty_cache(tiny_llama: TinyModel) -> None:
    """After an eviction, a prompt that does not continue the cached sequence is not answered
    from the compressed cache of another one; a continuation is."""
    path = str(tiny_llama.gguf_path)
    kw = dict(n_ctx=4096, n_batch=64, verbose=False, seed=0)
    long_a = "def alpha(x):\n    return x * 2\n" * 60
    long_b = "class Beta:\n    pass\n" * 80

    fresh = TappaLlama(path, kv_budget=64, window=8, **kw)
    want = fresh.create_completion(long_b, max_tokens=8, temperature=0)["choices"][0]["text"]
    fresh.close()

    llm = TappaLlama(path, kv_budget=64, window=8, **kw)
    try:
        first = llm.create_completion(long_a, max_tokens=8, temperature=0)
        assert llm.kv_stats().layers[0].n_evictions > 0
        got = llm.create_completion(long_b, max_tokens=8, temperature=0)["choices"][0]["text"]
        assert got == want
        # continuing the cached sequence reuses it: only the new tokens are evaluated
        evals: list[int] = []
        orig = llm.eval
        llm.eval = lambda toks: (evals.append(len(toks)), orig(toks))[1]  # type: ignore[method-assign]
        seen = llm.n_tokens
        cont = long_b + got + "\n"
        n_cont = len(llm.tokenize(cont.encode()))
        llm.create_completion(cont, max_tokens=1, temperature=0)
        assert evals[0] == n_cont - seen < 10
        assert first["usage"]["prompt_tokens"] > 100
    finally:
        llm.close()
