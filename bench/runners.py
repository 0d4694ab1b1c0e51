"""The KV-cache configurations the benchmarks compare, behind one small interface.

A :class:`Runner` wraps one llama.cpp context configured one way and offers what the
benchmarks measure: greedy completion, per-token negative log-likelihood of a text streamed
through the cache, and the KV bytes it allocated. Configurations:

- ``full``       — llama.cpp's stock cache (our library with compression off);
- ``q8_0``/``q4_0`` — llama.cpp's quantized K and V cache, flash attention on;
- ``shift``      — uniform eviction with llama.cpp's public API, as its context shift does:
                   a stock cache of ``budget + n_batch`` cells; when full, ``llama_memory_seq_rm``
                   drops the oldest tokens after ``n_keep`` sinks and ``llama_memory_seq_add``
                   shifts the rest back (RoPE re-rotation), StreamingLLM-like;
- ``tappa:*``    — our per-layer cache with a scorer and an allocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tappa_local import native

GGML_TYPE = {"f16": 1, "q8_0": 8, "q4_0": 2}


@dataclass(frozen=True)
class Config:
    """One column of the comparison."""

    name: str
    kind: str  # full | quant | shift | tappa
    scorer: str | None = None
    allocation: str | None = None
    kv_type: str = "f16"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def budgeted(self) -> bool:
        return self.kind in ("shift", "tappa")


#: the policies of the quality table (issue: full, sink+recent, SnapKV uniform, pyramid, TAPPA,
#: CAKE, CAKE+TAPPA, EA, EA+TAPPA)
POLICIES: tuple[Config, ...] = (
    Config("full", "full"),
    Config("sink+recent", "tappa", scorer="sink_recent", allocation="uniform"),
    Config("SnapKV uniform", "tappa", scorer="snapkv", allocation="uniform"),
    Config("SnapKV pyramid", "tappa", scorer="snapkv", allocation="pyramid"),
    Config("SnapKV TAPPA", "tappa", scorer="snapkv", allocation="tappa"),
    Config("CAKE", "tappa", scorer="cake", allocation="cake"),
    Config("CAKE+TAPPA", "tappa", scorer="cake", allocation="tappa_cake"),
    Config("EA uniform", "tappa", scorer="expected_attention", allocation="uniform"),
    Config("EA TAPPA", "tappa", scorer="expected_attention", allocation="tappa"),
)

#: what users have today, beside ours
ALTERNATIVES: tuple[Config, ...] = (
    Config("llama.cpp full", "full"),
    Config("llama.cpp KV q8_0", "quant", kv_type="q8_0"),
    Config("llama.cpp KV q4_0", "quant", kv_type="q4_0"),
    Config("llama.cpp shift (public API)", "shift"),
    Config("tappa SnapKV TAPPA", "tappa", scorer="snapkv", allocation="tappa"),
    Config("tappa EA TAPPA", "tappa", scorer="expected_attention", allocation="tappa"),
)


class Runner:
    """One configured context. ``close()`` when done."""

    def __init__(self, config: Config, model: Path, n_ctx: int, budget: int | None, n_batch: int = 256,
                 window: int = 32, n_sink: int = 4, threads: int = 2, logits_all: bool = False) -> None:
        from tappa_local.runtime import TappaLlama

        self.config, self.budget, self.n_batch, self.n_sink = config, budget, n_batch, n_sink
        self.lib = native.load()
        kw: dict[str, Any] = dict(n_batch=n_batch, n_ubatch=n_batch, n_threads=threads, n_threads_batch=threads,
                                  verbose=False, seed=0, logits_all=logits_all)
        if config.kind == "full":
            self.llm = TappaLlama(str(model), compress=False, n_ctx=n_ctx, flash_attn=True, **kw)
        elif config.kind == "quant":
            t = GGML_TYPE[config.kv_type]
            self.llm = TappaLlama(str(model), compress=False, n_ctx=n_ctx, flash_attn=True, type_k=t, type_v=t, **kw)
        elif config.kind == "shift":
            assert budget is not None
            self.llm = TappaLlama(str(model), compress=False, n_ctx=budget + n_batch, flash_attn=True, **kw)
        else:
            assert budget is not None
            self.llm = TappaLlama(str(model), kv_budget=budget, window=window, n_sink=n_sink, n_ctx=n_ctx,
                                  scorer=config.scorer, allocation=config.allocation, **config.extra, **kw)

    # ------------------------------------------------------------------ memory

    def kv_bytes(self) -> int:
        return int(self.lib.lib.llama_tappa_kv_bytes(self.llm._ctx.ctx))

    # ------------------------------------------------------------------ evaluation

    def _shift_trim(self, keep_total: int) -> None:
        """Drop the oldest tokens after the sinks so that ``keep_total`` remain, shifting the
        rest back — what llama.cpp's context shift does with the public memory API."""
        n_discard = self.llm.n_tokens - keep_total
        if n_discard <= 0:
            return
        lc = self.lib.llama_cpp
        mem = lc.llama_get_memory(self.llm._ctx.ctx)
        keep, n = self.n_sink, self.llm.n_tokens
        lc.llama_memory_seq_rm(mem, 0, keep, keep + n_discard)
        lc.llama_memory_seq_add(mem, 0, keep + n_discard, n, -n_discard)
        ids = self.llm.input_ids
        ids[keep : n - n_discard] = ids[keep + n_discard : n].copy()
        if self.llm._logits_all:
            sc = self.llm.scores
            sc[keep : n - n_discard] = sc[keep + n_discard : n].copy()
        self.llm.n_tokens -= n_discard

    def _shift_eval(self, tokens: list[int]) -> None:
        """Evaluate tokens in n_batch chunks on the bounded stock cache; when a chunk does not
        fit, shift down to the budget first."""
        cap = self.llm.context_params.n_ctx
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i : i + self.n_batch]
            if self.llm.n_tokens + len(chunk) > cap:
                self._shift_trim(self.budget or 0)
            self.llm.eval(chunk)

    def complete(self, prompt: str, max_tokens: int = 8) -> str:
        """Greedy continuation of ``prompt`` (budgeted caches are cut to the budget after the prompt)."""
        if self.config.kind != "shift":
            out = self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
            return out["choices"][0]["text"]
        self.llm.reset()
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        self._shift_eval(self.llm.tokenize(prompt.encode()))
        self._shift_trim(self.budget or 0)
        out: list[int] = []
        for _ in range(max_tokens):
            tok = self._argmax()
            if tok == self.llm.token_eos():
                break
            out.append(tok)
            self._shift_eval([tok])
        return self.llm.detokenize(out).decode("utf-8", errors="replace")

    def _argmax(self) -> int:
        lc = self.lib.llama_cpp
        logits = lc.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(self.llm.n_vocab(),))))

    def nll(self, tokens: list[int]) -> np.ndarray:
        """Per-token negative log-likelihood (nats) of ``tokens[1:]``, streamed through the cache in
        n_batch chunks (each token sees the cache as it stands, as in long-context generation;
        budgeted caches evict only when a chunk does not fit)."""
        assert self.llm._logits_all, "create the runner with logits_all=True to measure NLL"
        lazy, self.llm.evict_after_prompt = self.llm.evict_after_prompt, False
        try:
            return self._nll(tokens)
        finally:
            self.llm.evict_after_prompt = lazy

    def _nll(self, tokens: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        out: list[float] = []
        for i in range(0, len(tokens) - 1, self.n_batch):
            chunk = tokens[i : min(i + self.n_batch, len(tokens) - 1)]
            start = self.llm.n_tokens
            if self.config.kind == "shift":
                self._shift_eval(chunk)
                start = self.llm.n_tokens - len(chunk)
            else:
                self.llm.eval(chunk)
            logits = np.asarray(self.llm.scores[start : start + len(chunk)], dtype=np.float64)
            logits -= logits.max(-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            nxt = tokens[i + 1 : i + 1 + len(chunk)]
            out.extend((-logp[np.arange(len(chunk)), nxt]).tolist())
        return np.asarray(out)

    def close(self) -> None:
        self.llm.close()


def tappa_eviction_stats(runner: Runner) -> dict[str, float]:
    return runner.llm.eviction_stats() if runner.config.kind == "tappa" else {}

