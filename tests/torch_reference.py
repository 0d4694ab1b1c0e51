"""An independent plain-torch decoder with an explicit, per-layer and per-KV-head cache.

It reads a transformers Llama/Qwen2 checkpoint's weights and runs the forward pass itself
(RMSNorm, projections, RoPE, attention, SwiGLU MLP), attending only to the (layer, head)
cache entries it is given. Tests use it as the reference for what llama.cpp computes after
an eviction: same kept tokens -> same logits. Nothing here calls tappa-local or llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class LayerCache:
    k: list[torch.Tensor] = field(default_factory=list)  # per KV head: [T, D] post-RoPE keys
    v: list[torch.Tensor] = field(default_factory=list)  # per KV head: [T, D]
    pos: list[torch.Tensor] = field(default_factory=list)  # per KV head: [T] positions


class TorchDecoder:
    def __init__(self, hf_dir: Path, dtype: torch.dtype = torch.float64) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(hf_dir)
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        self.sd = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
        self.dtype = dtype
        self.n_layer = cfg.num_hidden_layers
        self.n_head = cfg.num_attention_heads
        self.n_head_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        rope = getattr(cfg, "rope_parameters", None) or {}
        self.theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        self.eps = cfg.rms_norm_eps
        self.lm_head = self.sd.get("lm_head.weight", self.sd["model.embed_tokens.weight"])

    def new_cache(self) -> list[LayerCache]:
        return [
            LayerCache(
                k=[torch.zeros(0, self.head_dim, dtype=self.dtype) for _ in range(self.n_head_kv)],
                v=[torch.zeros(0, self.head_dim, dtype=self.dtype) for _ in range(self.n_head_kv)],
                pos=[torch.zeros(0, dtype=torch.long) for _ in range(self.n_head_kv)],
            )
            for _ in range(self.n_layer)
        ]

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        d = self.head_dim
        inv = 1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=self.dtype) / d))
        ang = pos.to(self.dtype)[:, None] * inv[None, :]
        cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
        sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
        half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
        return x * cos + half * sin

    def _lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        y = x @ self.sd[name + ".weight"].T
        b = self.sd.get(name + ".bias")
        return y + b if b is not None else y

    def forward(self, ids: list[int], pos0: int, cache: list[LayerCache]) -> torch.Tensor:
        """Logits [n, vocab] for ``ids`` at positions pos0.., appending their K/V to ``cache``."""
        n = len(ids)
        positions = torch.arange(pos0, pos0 + n)
        x = self.sd["model.embed_tokens.weight"][torch.tensor(ids)]
        group = self.n_head // self.n_head_kv
        scale = self.head_dim**-0.5
        for layer in range(self.n_layer):
            pre = f"model.layers.{layer}."
            h = self._rms(x, self.sd[pre + "input_layernorm.weight"])
            q = self._rope(self._lin(h, pre + "self_attn.q_proj").view(n, self.n_head, self.head_dim), positions)
            k = self._rope(self._lin(h, pre + "self_attn.k_proj").view(n, self.n_head_kv, self.head_dim), positions)
            v = self._lin(h, pre + "self_attn.v_proj").view(n, self.n_head_kv, self.head_dim)
            c = cache[layer]
            out = torch.zeros(n, self.n_head, self.head_dim, dtype=self.dtype)
            for g in range(self.n_head_kv):
                keys = torch.cat([c.k[g], k[:, g]])
                vals = torch.cat([c.v[g], v[:, g]])
                kpos = torch.cat([c.pos[g], positions])
                masked = kpos[None, :] > positions[:, None]  # causal by position
                for hq in range(g * group, (g + 1) * group):
                    s = (q[:, hq] @ keys.T) * scale
                    s = s.masked_fill(masked, float("-inf"))
                    out[:, hq] = torch.softmax(s, -1) @ vals
                c.k[g], c.v[g], c.pos[g] = keys, vals, kpos
            x = x + self._lin(out.reshape(n, -1), pre + "self_attn.o_proj")
            h = self._rms(x, self.sd[pre + "post_attention_layernorm.weight"])
            gate = self._lin(h, pre + "mlp.gate_proj")
            x = x + self._lin(torch.nn.functional.silu(gate) * self._lin(h, pre + "mlp.up_proj"), pre + "mlp.down_proj")
        x = self._rms(x, self.sd["model.norm.weight"])
        return x @ self.lm_head.T


def keep_sink_recent(cache: list[LayerCache], budgets: list[int], n_sink: int) -> None:
    """StreamingLLM: every head of layer l keeps its n_sink oldest and (budget_l - n_sink) newest tokens."""
    for layer, c in enumerate(cache):
        b = budgets[layer]
        for g in range(len(c.pos)):
            if len(c.pos[g]) <= b:
                continue
            order = torch.argsort(c.pos[g])
            keep = torch.cat([order[:n_sink], order[len(order) - (b - n_sink) :]])
            keep = keep.sort().values
            c.k[g], c.v[g], c.pos[g] = c.k[g][keep], c.v[g][keep], c.pos[g][keep]


def used(cache: list[LayerCache]) -> list[int]:
    return [len(c.pos[0]) for c in cache]
