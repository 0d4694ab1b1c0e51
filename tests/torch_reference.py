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
        # post-RoPE queries of the newest tokens, per layer: position -> [n_head, head_dim]
        self.queries: list[dict[int, torch.Tensor]] = [{} for _ in range(self.n_layer)]

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
            for t in range(n):
                self.queries[layer][pos0 + t] = q[t]
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


# --------------------------------------------------------------------------- scoring references


def window_attention(dec: TorchDecoder, cache: list[LayerCache], layer: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of the last `window` recorded queries over each KV head's cached keys,
    causal by position: A[h_q, w, j] (query head, window row, cache entry of its KV head)."""
    qs = dec.queries[layer]
    qpos = sorted(qs)[-window:]
    group = dec.n_head // dec.n_head_kv
    c = cache[layer]
    rows = []
    for hq in range(dec.n_head):
        g = hq // group
        q = torch.stack([qs[p][hq] for p in qpos])  # [W, D]
        s = (q @ c.k[g].T) * dec.head_dim**-0.5
        s = s.masked_fill(c.pos[g][None, :] > torch.tensor(qpos)[:, None], float("-inf"))
        rows.append(torch.softmax(s, -1))
    return torch.stack(rows), torch.tensor(qpos)


def pool_by_position(score: torch.Tensor, pos: torch.Tensor, kernel: int) -> torch.Tensor:
    """Average-pool a score along positions (out-of-range neighbours excluded)."""
    if kernel <= 1:
        return score
    order = torch.argsort(pos)
    pooled = torch.nn.functional.avg_pool1d(score[order][None, None, :], kernel, 1, kernel // 2, count_include_pad=False)[0, 0]
    out = torch.empty_like(score)
    out[order] = pooled
    return out


def window_scores(dec: TorchDecoder, cache: list[LayerCache], layer: int, window: int, gamma: float, kernel: int) -> list[torch.Tensor]:
    """SnapKV (gamma = 0) / CAKE token scores per KV head."""
    a, _ = window_attention(dec, cache, layer, window)
    s = a.mean(1) + gamma * a.var(1, unbiased=False)  # [n_head, T]
    group = dec.n_head // dec.n_head_kv
    return [pool_by_position(s[g * group : (g + 1) * group].mean(0), cache[layer].pos[g], kernel) for g in range(dec.n_head_kv)]


def expected_attention_scores(dec: TorchDecoder, cache: list[LayerCache], layer: int, mean: torch.Tensor, var: torch.Tensor,
                              horizon: int, value_norm: bool) -> list[torch.Tensor]:
    """Expected Attention per KV head from pre-RoPE query statistics mean/var [n_head, D]."""
    c = cache[layer]
    pos_max = max(int(p.max()) for p in c.pos)
    fut = torch.arange(pos_max + 1, pos_max + 1 + horizon)
    mu_rot = torch.stack([dec._rope(mean.to(dec.dtype)[None].expand(1, -1, -1), fut[t : t + 1])[0] for t in range(horizon)]).mean(0)
    scale = dec.head_dim**-0.5
    group = dec.n_head // dec.n_head_kv
    out = []
    for g in range(dec.n_head_kv):
        k = c.k[g]
        probs = []
        for hq in range(g * group, (g + 1) * group):
            z = scale * (k @ mu_rot[hq]) + 0.5 * scale**2 * (k.pow(2) @ var[hq].to(dec.dtype))
            probs.append(torch.softmax(z, -1))
        s = torch.stack(probs).mean(0)
        if value_norm:
            s = s * c.v[g].norm(dim=-1)
        out.append(s)
    return out


def select(cache: list[LayerCache], layer: int, scores: list[torch.Tensor], budget: int, n_sink: int, window: int,
           headwise: bool = True) -> list[list[int]]:
    """Kept positions per KV head: sinks + recent window + best scores (ties: newer first)."""
    c = cache[layer]
    pos_max = max(int(p.max()) for p in c.pos)
    if not headwise:
        total = sum(scores)
        scores = [total] * len(scores)
    kept = []
    for g in range(len(c.pos)):
        pos = c.pos[g].tolist()
        sc = scores[g].tolist()
        forced = [i for i, p in enumerate(pos) if p < n_sink or p > pos_max - window]
        rest = [i for i, p in enumerate(pos) if not (p < n_sink or p > pos_max - window)]
        rest.sort(key=lambda i: (-sc[i], -pos[i]))
        chosen = forced + rest[: max(0, min(budget, len(pos)) - len(forced))]
        kept.append(sorted(pos[i] for i in chosen))
    return kept


def apply_keep(cache: list[LayerCache], layer: int, kept: list[list[int]]) -> None:
    c = cache[layer]
    for g, positions in enumerate(kept):
        m = torch.isin(c.pos[g], torch.tensor(positions))
        c.k[g], c.v[g], c.pos[g] = c.k[g][m], c.v[g][m], c.pos[g][m]


def window_stats(dec: TorchDecoder, cache: list[LayerCache], layer: int, window: int) -> tuple[float, float, float]:
    """CAKE entropy and variance of the window attention to non-window tokens, and the online
    q-similarity (mean off-diagonal cosine of the window queries, averaged over heads)."""
    a, qpos = window_attention(dec, cache, layer, window)
    c = cache[layer]
    pos_max = max(int(p.max()) for p in c.pos)
    group = dec.n_head // dec.n_head_kv
    ent = 0.0
    var = 0.0
    for hq in range(dec.n_head):
        keep = (c.pos[hq // group] <= pos_max - window).to(a.dtype)
        x = a[hq] * keep[None, :]
        ent += float(-(x * torch.log(x + 1e-10)).sum())
        var += float(x.var(0, unbiased=False).sum())
    qs = dec.queries[layer]
    q = torch.stack([qs[int(p)] for p in qpos], 1)  # [n_head, W, D]
    qn = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    sim = qn @ qn.transpose(1, 2)
    w = q.shape[1]
    qsim = float(((sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)) / (w * (w - 1))).mean())
    return ent, var, qsim
