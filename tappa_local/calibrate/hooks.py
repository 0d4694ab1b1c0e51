"""Forward hooks that turn one forward pass into accumulator updates.

Per decoder layer ``l`` the events of one forward pass arrive in this order, and each hook
reads only what the model itself computed:

1. pre-hook on the decoder layer: ``h_in`` (the residual stream entering the layer);
2. pre-hook on the attention module: ``position_embeddings = (cos, sin)``, produced by the
   model's own rotary embedding;
3. hook on ``q_proj``: the pre-RoPE projection ``[B, T, H*D]`` -> pruning-form q-similarity;
4. hook on ``q_norm`` if the attention has one (Qwen3), else on ``q_proj`` again: the
   query as it enters RoPE -> query statistics, then rotated with the model's own
   ``apply_rotary_pos_emb(q, k, cos, sin)`` -> windowed q-similarity;
5. hook on the decoder layer: ``h_out`` -> Block Influence; the layer's scratch is dropped.

Nothing is monkeypatched, and every tensor is moved to the device of the tensor it meets,
so layers may live on different devices or be offloaded by accelerate (whose own hooks run
inside ``forward``, after the pre-hooks and before the post-hooks registered here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from .accumulators import CalibrationAccumulators
from .architecture import AttentionSite, ModelGeometry
from .errors import CalibrationError, UnsupportedModelError
from .metrics import allpairs_qsim, block_influence, windowed_qsim


@dataclass
class _Scratch:
    """What one layer has seen so far in the current forward pass."""

    h_in: torch.Tensor | None = None
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None


def _first_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    raise CalibrationError(f"expected a tensor output, got {type(x).__name__}")


def compute_dtype_for(device: torch.device) -> torch.dtype:
    """float64 for the per-batch reductions, except where the device has none (mps)."""
    return torch.float32 if device.type == "mps" else torch.float64


class CalibrationHooks:
    """Context manager: hooks registered on enter, removed (and scratch dropped) on exit."""

    def __init__(self, geometry: ModelGeometry, acc: CalibrationAccumulators, window: int, n_sink: int) -> None:
        self.geometry = geometry
        self.acc = acc
        self.window = window
        self.n_sink = n_sink
        self._scratch = [_Scratch() for _ in range(geometry.n_layer)]
        self._handles: list[RemovableHandle] = []

    # ------------------------------------------------------------------ registration

    def __enter__(self) -> "CalibrationHooks":
        for site in self.geometry.sites:
            self._register(site)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._scratch = [_Scratch() for _ in range(self.geometry.n_layer)]

    def _register(self, site: AttentionSite) -> None:
        i = site.index
        add = self._handles.append
        add(site.layer.register_forward_pre_hook(lambda m, a, k: self._on_layer_in(i, a, k), with_kwargs=True))
        add(site.attn.register_forward_pre_hook(lambda m, a, k: self._on_attn_in(i, a, k), with_kwargs=True))
        add(site.q_proj.register_forward_hook(lambda m, a, o: self._on_q_proj(i, o, site.q_norm is None)))
        if site.q_norm is not None:
            add(site.q_norm.register_forward_hook(lambda m, a, o: self._on_query(i, o)))
        add(site.layer.register_forward_hook(lambda m, a, o: self._on_layer_out(i, o)))

    def live_tensors(self) -> int:
        """Tensors held between forward passes (0 once a pass is complete)."""
        return sum(t is not None for s in self._scratch for t in (s.h_in, s.cos, s.sin))

    # ------------------------------------------------------------------ hooks

    def _on_layer_in(self, i: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        h = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(h, torch.Tensor):
            raise CalibrationError(f"layer {i}: could not find the input hidden states")
        self._scratch[i].h_in = h.detach()

    def _on_attn_in(self, i: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        pe = kwargs.get("position_embeddings")
        if pe is None and len(args) > 1:
            pe = args[1]
        if not (isinstance(pe, (tuple, list)) and len(pe) == 2 and all(isinstance(t, torch.Tensor) for t in pe)):
            raise UnsupportedModelError(
                f"unsupported: {self.geometry.arch} layer {i}: the attention received no RoPE position_embeddings (cos, sin)"
            )
        self._scratch[i].cos, self._scratch[i].sin = pe[0].detach(), pe[1].detach()

    def _heads(self, out: Any) -> torch.Tensor:
        """``[B, T, H*D]`` or ``[B, T, H, D]`` -> ``[B, H, T, D]``."""
        t = _first_tensor(out).detach()
        B, T = t.shape[0], t.shape[1]
        return t.reshape(B, T, self.geometry.n_head, self.geometry.head_dim).transpose(1, 2)

    def _on_q_proj(self, i: int, out: Any, is_query: bool) -> None:
        q = self._heads(out)
        self.acc.add_prune(i, allpairs_qsim(q, compute_dtype_for(q.device)))
        if is_query:
            self._on_query(i, out)

    def _on_query(self, i: int, out: Any) -> None:
        s = self._scratch[i]
        if s.cos is None or s.sin is None:
            raise CalibrationError(f"layer {i}: query seen before the RoPE position embeddings")
        q = self._heads(out)
        dt = compute_dtype_for(q.device)
        B, H, T, D = q.shape
        cos, sin = s.cos.to(q.device), s.sin.to(q.device)
        rotary_dim = int(cos.shape[-1])
        self.acc.add_queries(i, q[:, :, self.n_sink :].transpose(1, 2).reshape(-1, H, D), rotary_dim, dt)
        rotated = self.geometry.apply_rope(q, q[:, :1], cos, sin)[0]
        self.acc.add_windows(i, windowed_qsim(rotated, self.window, self.n_sink, dt))

    def _on_layer_out(self, i: int, out: Any) -> None:
        s = self._scratch[i]
        if s.h_in is None:
            raise CalibrationError(f"layer {i}: output seen without its input")
        h_out = _first_tensor(out).detach()
        self.acc.add_bi(i, block_influence(s.h_in.to(h_out.device), h_out, compute_dtype_for(h_out.device)))
        self._scratch[i] = _Scratch()
