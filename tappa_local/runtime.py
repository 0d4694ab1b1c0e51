"""A drop-in for ``llama_cpp.Llama`` whose KV cache is compressed per layer inside llama.cpp.

``TappaLlama`` takes the same constructor arguments, and offers the same ``__call__``,
``create_completion``, ``create_chat_completion`` and streaming, plus the KV-budget options
below. The budgets default to the ones stored in the GGUF's ``tappa.*`` metadata; a GGUF
without them runs with the full cache unless a budget is given.

Each layer l keeps ``budget_l`` tokens after an eviction (its ``n_sink`` first tokens and its
``window`` most recent ones included) and has ``headroom`` (= ``n_batch``) more cells for new
tokens; a prompt longer than that streams through in ``n_batch`` chunks, evicting between
them, and generation evicts once every ``headroom`` tokens. After the prompt is evaluated
the cache is evicted down to the budgets, as in the paper's setting.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import capi, native
from .errors import BudgetError, ModelLoadError, TappaError, UnsupportedModelError
from .llamalog import capture_llama_log, error_lines
from .modelfile import check_gguf_header, read_gguf_metadata

_LIB = native.load()
_Llama = _LIB.llama_cpp.Llama

#: bytes per element of the KV types llama.cpp supports for K/V (ggml_type -> bytes)
KV_TYPE_BYTES: dict[int, float] = {0: 4.0, 1: 2.0, 30: 2.0, 8: 34 / 32, 2: 18 / 32, 3: 20 / 32, 6: 22 / 32, 7: 24 / 32, 20: 18 / 32}

ALLOCATIONS = {a.name.lower(): a for a in capi.AllocationKind}
SCORERS = {"sink_recent": capi.ScorerKind.SINK_RECENT, "snapkv": capi.ScorerKind.SNAPKV,
           "cake": capi.ScorerKind.CAKE, "expected_attention": capi.ScorerKind.EXPECTED}
#: scorer used when neither the caller nor the GGUF (tappa.budget.scorer) names one
DEFAULT_SCORER = "snapkv"


@dataclass(frozen=True)
class LayerKV:
    layer: int
    budget: int
    capacity: int
    used: int
    n_kv: int
    kv_bytes: int
    n_evictions: int
    n_evicted: int


@dataclass(frozen=True)
class KVStats:
    """Where the KV memory stands now."""

    enabled: bool
    kv_bytes: int  # allocated K/V bytes (llama.cpp's own accounting)
    compute_bytes: int  # compute buffers the scheduler holds
    full_kv_bytes: int  # what the stock cache takes for this n_ctx
    tokens_seen: int  # positions evaluated in the current sequence
    layers: tuple[LayerKV, ...]

    @property
    def kv_mib(self) -> float:
        return self.kv_bytes / 2**20

    @property
    def full_kv_mib(self) -> float:
        return self.full_kv_bytes / 2**20

    @property
    def used_tokens(self) -> int:
        return sum(layer.used for layer in self.layers)


@dataclass(frozen=True)
class ModelGeometry:
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ctx_train: int
    has_profile: bool
    default_total_budget: int  # tappa.budget.total, 0 if unset
    default_scorer: str | None = None  # tappa.budget.scorer
    has_query_stats: bool = False

    def kv_bytes_per_token(self, type_k: int = 1, type_v: int = 1) -> float:
        """K+V bytes one token takes in one layer."""
        try:
            return self.n_head_kv * (self.head_dim_k * KV_TYPE_BYTES[type_k] + self.head_dim_v * KV_TYPE_BYTES[type_v])
        except KeyError as exc:
            raise BudgetError(f"unsupported KV cache type {exc.args[0]}") from None


def model_geometry(path: str | Path) -> ModelGeometry:
    """Read what budgeting needs from the GGUF header (no tensor data is touched)."""
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelLoadError(f"{path}: no general.architecture in the GGUF metadata")

    def get(key: str, default: object = None) -> Any:
        v = meta.get(f"{arch}.{key}", default)
        return v

    n_layer = int(get("block_count", 0))
    n_head = get("attention.head_count", 0)
    n_head_kv = get("attention.head_count_kv", n_head)
    if isinstance(n_head, tuple) or isinstance(n_head_kv, tuple):
        raise UnsupportedModelError(f"{path}: per-layer head counts are not supported by the tappa KV cache")
    n_embd = int(get("embedding_length", 0))
    head_dim_k = int(get("attention.key_length", n_embd // max(1, int(n_head))))
    head_dim_v = int(get("attention.value_length", head_dim_k))
    return ModelGeometry(
        n_layer=n_layer,
        n_head=int(n_head),
        n_head_kv=int(n_head_kv),
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        n_ctx_train=int(get("context_length", 0)),
        has_profile="tappa.version" in meta,
        default_total_budget=int(meta.get("tappa.budget.total", 0) or 0),
        default_scorer=meta.get("tappa.budget.scorer") if isinstance(meta.get("tappa.budget.scorer"), str) else None,
        has_query_stats="tappa.qstats.mean" in meta,
    )


class TappaLlama(_Llama):  # type: ignore[misc, valid-type]
    """``llama_cpp.Llama`` with a per-layer compressed KV cache.

    Extra keyword arguments (all optional):
        kv_budget: average tokens kept per layer after an eviction (the papers' "KV budget").
        kv_budget_total: tokens kept summed over layers (alternative to kv_budget).
        kv_budget_mib: total KV memory in MiB, headroom included (alternative to the above).
        layer_budgets: explicit per-layer budgets (implies allocation="explicit").
        window: recent tokens every layer keeps (default: the GGUF's, else 32); also the number
            of recent queries the window scorers and prompt-adaptive allocations look at.
        n_sink: first tokens every layer keeps (default: the GGUF's, else 4).
        allocation: how the total is split over layers — "default" (the GGUF's plan, else
            uniform), "uniform", "pyramid", "tappa" (1 - calibrated q-sim), "explicit", and the
            prompt-adaptive "cake", "tappa_cake", "tappa_live" (re-split at every eviction).
        scorer: how tokens are ranked — "sink_recent", "snapkv", "cake", "expected_attention"
            (default: the GGUF's tappa.budget.scorer, else "snapkv").
        headwise: each KV head keeps its own tokens (default) or one set per layer.
        pool_kernel: SnapKV/CAKE pooling over neighbouring positions (odd, default 5).
        cake_gamma, cake_tau1, cake_tau2, cake_alpha: CAKE's token score and layer preference
            parameters, and the weight of (1 - q-sim) in "tappa_cake".
        qsim_prior_weight: "tappa_live": weight of the calibrated q-sim against the prompt's.
        ea_horizon, ea_value_norm: Expected Attention's future positions and ||v|| scaling.
        headroom: cells beyond the budget for new tokens between evictions (default: n_batch).
        pyramid_beta: PyramidKV's beta for allocation="pyramid".
        compress: False forces the stock cache; None (default) compresses when a budget is
            given or the GGUF stores one.
        evict_after_prompt: evict down to the budgets right after a prompt is evaluated.
    """

    def __init__(
        self,
        model_path: str,
        *args: Any,
        kv_budget: int | None = None,
        kv_budget_total: int | None = None,
        kv_budget_mib: float | None = None,
        layer_budgets: Sequence[int] | None = None,
        window: int | None = None,
        n_sink: int | None = None,
        allocation: str = "default",
        scorer: str | None = None,
        headwise: bool = True,
        pool_kernel: int = 5,
        cake_gamma: float = 200.0,
        cake_tau1: float = 1.0,
        cake_tau2: float = 1.0,
        cake_alpha: float = 1.0,
        qsim_prior_weight: float = 0.5,
        ea_horizon: int = 512,
        ea_value_norm: bool = True,
        headroom: int = 0,
        pyramid_beta: float = 20.0,
        min_layer_budget: int = 0,
        compress: bool | None = None,
        evict_after_prompt: bool = True,
        **kwargs: Any,
    ) -> None:
        check_gguf_header(model_path)
        self.geometry = model_geometry(model_path)
        self.evict_after_prompt = evict_after_prompt
        self.scorer: str | None = None
        self.allocation: str | None = None
        lib = _LIB.lib

        given = [x is not None for x in (kv_budget, kv_budget_total, kv_budget_mib, layer_budgets)]
        if sum(given) > 1:
            raise BudgetError("give at most one of kv_budget, kv_budget_total, kv_budget_mib, layer_budgets")
        if compress is None:
            compress = any(given) or self.geometry.default_total_budget > 0
        if compress and not any(given) and self.geometry.default_total_budget <= 0:
            raise BudgetError(f"{model_path} stores no default KV budget (tappa.budget.total): pass kv_budget or kv_budget_mib")

        n_batch = int(kwargs.get("n_batch", 512))
        if kwargs.get("n_ctx", 512) and n_batch > kwargs.get("n_ctx", 512):
            n_batch = int(kwargs.get("n_ctx", 512))  # llama-cpp-python clamps the same way

        params = lib.llama_tappa_default_params()
        params.enabled = 1 if compress else 0
        self._layer_budget_buf = None
        if compress:
            alloc = "explicit" if layer_budgets is not None else allocation
            if alloc not in ALLOCATIONS:
                raise BudgetError(f"unknown allocation {alloc!r}; choose from {sorted(ALLOCATIONS)}")
            scorer = scorer or self.geometry.default_scorer or DEFAULT_SCORER
            if scorer not in SCORERS:
                raise BudgetError(f"unknown scorer {scorer!r}; choose from {sorted(SCORERS)}")
            self.scorer = scorer
            self.allocation = alloc
            params.allocation = int(ALLOCATIONS[alloc])
            params.scorer = int(SCORERS[scorer])
            params.headwise = 1 if headwise else 0
            params.pool_kernel = int(pool_kernel)
            params.cake_gamma = float(cake_gamma)
            params.cake_tau1 = float(cake_tau1)
            params.cake_tau2 = float(cake_tau2)
            params.cake_alpha = float(cake_alpha)
            params.qsim_prior_weight = float(qsim_prior_weight)
            params.ea_horizon = int(ea_horizon)
            params.ea_value_norm = 1 if ea_value_norm else 0
            params.window = -1 if window is None else int(window)
            params.n_sink = -1 if n_sink is None else int(n_sink)
            params.headroom = int(headroom)
            params.pyramid_beta = float(pyramid_beta)
            params.min_layer_budget = int(min_layer_budget)
            if kv_budget is not None:
                params.total_budget = int(kv_budget) * self.geometry.n_layer
            elif kv_budget_total is not None:
                params.total_budget = int(kv_budget_total)
            elif kv_budget_mib is not None:
                params.total_budget = self._tokens_for_mib(float(kv_budget_mib), kwargs, headroom or n_batch)
            if layer_budgets is not None:
                if len(layer_budgets) != self.geometry.n_layer:
                    raise BudgetError(f"layer_budgets has {len(layer_budgets)} entries, the model has {self.geometry.n_layer} layers")
                self._layer_budget_buf = (ctypes.c_int32 * len(layer_budgets))(*[int(b) for b in layer_budgets])
                params.layer_budgets = self._layer_budget_buf
                params.n_layer_budgets = len(layer_budgets)
            # evicting moves whole K/V rows; with flash attention V needs no transpose per step
            kwargs.setdefault("flash_attn", True)

        # (a successful call also clears the thread's last error)
        if lib.llama_tappa_set_next_params(ctypes.byref(params)) != 0:
            capi.raise_last(lib)
        try:
            with capture_llama_log(_LIB, echo=bool(kwargs.get("verbose", True))) as log:
                try:
                    super().__init__(model_path, *args, **kwargs)
                except ValueError as exc:
                    if lib.llama_tappa_last_status() != 0:
                        capi.raise_last(lib, f"could not create a context for {model_path}: ")
                    reason = error_lines(log) or str(exc)
                    raise ModelLoadError(f"could not create a context for {model_path}: {reason}") from exc
        finally:
            lib.llama_tappa_set_next_params(None)
        self.compressed = bool(lib.llama_tappa_enabled(self._ctx.ctx))

    # ------------------------------------------------------------------ budgets

    def _tokens_for_mib(self, mib: float, kwargs: dict[str, Any], headroom: int) -> int:
        bpt = self.geometry.kv_bytes_per_token(int(kwargs.get("type_k") or 1), int(kwargs.get("type_v") or 1))
        tokens = int(mib * 2**20 // bpt) - self.geometry.n_layer * headroom
        if tokens <= 0:
            raise BudgetError(
                f"{mib} MiB holds {int(mib * 2**20 // bpt)} token-layers of KV, less than the "
                f"{self.geometry.n_layer} x {headroom} headroom cells; raise the budget or lower n_batch"
            )
        return tokens

    # ------------------------------------------------------------------ stats

    def kv_stats(self) -> KVStats:
        lib = _LIB.lib
        ctx = self._ctx.ctx
        layers: list[LayerKV] = []
        if self.compressed:
            st = capi.LayerStats()
            for i in range(lib.llama_tappa_n_layer(ctx)):
                if lib.llama_tappa_get_layer_stats(ctx, i, ctypes.byref(st)) != 0:
                    raise TappaError(capi.last_error(lib))
                layers.append(LayerKV(i, st.budget, st.capacity, st.used, st.n_kv, st.kv_bytes, st.n_evictions, st.n_evicted))
        bpt = self.geometry.kv_bytes_per_token(int(self.context_params.type_k), int(self.context_params.type_v))
        full = int(round(bpt * self.geometry.n_layer * self.context_params.n_ctx))
        return KVStats(
            enabled=self.compressed,
            kv_bytes=int(lib.llama_tappa_kv_bytes(ctx)),
            compute_bytes=int(lib.llama_tappa_compute_bytes(ctx)),
            full_kv_bytes=full,
            tokens_seen=int(self.n_tokens),
            layers=tuple(layers),
        )

    def eviction_stats(self) -> dict[str, float]:
        """Evictions so far and where their time went (microseconds)."""
        if not self.compressed:
            return {"n_evictions": 0}
        st = capi.EvictionStats()
        if _LIB.lib.llama_tappa_get_eviction_stats(self._ctx.ctx, ctypes.byref(st)) != 0:
            capi.raise_last(_LIB.lib)
        return {name: getattr(st, name) for name, _ in capi.EvictionStats._fields_}

    def kept_positions(self, layer: int, head: int) -> list[int]:
        """Positions KV head ``head`` of ``layer`` holds now, ascending."""
        lib = _LIB.lib
        n = lib.llama_tappa_kept_positions(self._ctx.ctx, layer, head, None, 0)
        if n < 0:
            raise TappaError(capi.last_error(lib))
        buf = (ctypes.c_int32 * max(1, n))()
        lib.llama_tappa_kept_positions(self._ctx.ctx, layer, head, buf, n)
        return list(buf[:n])

    def evict(self) -> int:
        """Evict every layer down to its budget now; returns the tokens dropped (over layers)."""
        if not self.compressed:
            return 0
        n = int(_LIB.lib.llama_tappa_evict(self._ctx.ctx))
        if n < 0:
            raise TappaError(f"eviction failed: {capi.last_error(_LIB.lib)}")
        return n

    def close(self) -> None:
        # __del__ calls close(); after a failed __init__ there is nothing to close
        if hasattr(self, "_stack"):
            super().close()

    def clear(self) -> None:
        """Forget the current sequence (KV memory included)."""
        self.reset()
        self._ctx.kv_cache_seq_rm(-1, 0, -1)

    # ------------------------------------------------------------------ llama_cpp.Llama overrides

    def _has_evicted(self) -> bool:
        return self.compressed and any(layer.n_evictions > 0 for layer in self.kv_stats().layers)

    def eval(self, tokens: Sequence[int]) -> None:
        super().eval(tokens)
        if self.compressed and self.evict_after_prompt and len(tokens) > 1:
            self.evict()

    def save_state(self) -> Any:
        if self.compressed:
            raise TappaError("state save/load is not supported with a compressed KV cache (tappa); use compress=False")
        return super().save_state()

    def load_state(self, state: Any) -> None:
        if self.compressed:
            raise TappaError("state save/load is not supported with a compressed KV cache (tappa); use compress=False")
        super().load_state(state)

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any):  # type: ignore[override]
        # after an eviction the cache only stands for the exact sequence it has seen: a
        # prompt that continues it may reuse it, anything else starts from an empty cache
        if self.n_tokens > 0 and self._has_evicted():
            cached = self._input_ids[: self.n_tokens].tolist()
            tokens = list(tokens)
            if tokens[: len(cached)] != cached:
                self.clear()
        return super().generate(tokens, *args, **kwargs)

