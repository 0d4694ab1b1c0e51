"""A 100K-token prompt streams through a small KV budget with flat memory."""

from __future__ import annotations

import numpy as np
import pytest

from tappa_local.localmodels import TinyModel
from tappa_local.runtime import TappaLlama

pytestmark = pytest.mark.native


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_100k_prompt_streams_with_flat_memory(tiny_llama: TinyModel) -> None:
    n_tokens, n_batch, budget = 100_000, 1024, 1024
    llm = TappaLlama(str(tiny_llama.gguf_path), kv_budget=budget, window=64, n_ctx=n_tokens + 1024,
                     n_batch=n_batch, verbose=False, evict_after_prompt=False)
    try:
        rng = np.random.default_rng(0)
        ids = [1, *rng.integers(3, tiny_llama.spec.vocab_size, size=n_tokens - 1).tolist()]
        samples: list[tuple[int, float, int]] = []
        for i, c0 in enumerate(range(0, n_tokens, n_batch)):
            llm.eval(ids[c0 : c0 + n_batch])
            if i % 8 == 0:
                s = llm.kv_stats()
                assert all(layer.used <= layer.capacity for layer in s.layers)
                samples.append((c0, _rss_mib(), s.kv_bytes))
        s = llm.kv_stats()
        assert s.tokens_seen == n_tokens
        assert s.layers[0].n_evicted >= n_tokens - budget - n_batch
        kv = {k for _, _, k in samples}
        assert len(kv) == 1, "KV bytes must not change while streaming"
        # after the first tenth (allocator warm-up), resident memory stays flat
        warm = [r for c0, r, _ in samples if c0 >= n_tokens // 10]
        growth = max(warm) - min(warm)
        print(f"100K tokens: KV {kv.pop() / 2**20:.2f} MiB (full cache would be {s.full_kv_mib:.1f} MiB), "
              f"RSS {min(warm):.1f}..{max(warm):.1f} MiB")
        assert growth < 16.0, f"RSS grew by {growth:.1f} MiB while streaming"
    finally:
        llm.close()
