"""Running sums for every layer: the only state that outlives a batch.

Their size is O(L*H*D) (the query moments) plus O(L*H) and O(L): independent of the number
of samples and of the sequence length. Averages (see :meth:`CalibrationAccumulators.results`):

- ``qsim_head[l, h]``: mean, over every window of every sample, of the window score of
  :func:`~tappa_local.calibrate.metrics.windowed_qsim` (all windows have W positions, so every
  window weighs the same); ``qsim_layer[l]`` = mean over the H query heads;
  ``qsim_kv_head[l, g]`` = mean over the query heads ``g*G .. (g+1)*G - 1`` that share KV
  head g (G = H / Hkv).
- ``qsim_prune_head[l, h]``: mean over samples of :func:`~tappa_local.calibrate.metrics.allpairs_qsim`;
  ``qsim_prune_layer[l]`` = mean over heads (the reference averages heads per chunk, then
  chunks: the same number).
- ``bi_layer[l]``: mean over every token of every sample of ``1 - cos(h_in, h_out)``.
- ``qstats``: see :mod:`~tappa_local.calibrate.querystats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import CalibrationError
from .querystats import MomentAccumulator, tie_rope_pairs


@dataclass(frozen=True)
class LayerResults:
    """Finished per-layer measurements (float64 numpy)."""

    qsim_layer: np.ndarray  # [L]
    qsim_head: np.ndarray  # [L, H]
    qsim_kv_head: np.ndarray  # [L, Hkv]
    qsim_prune_layer: np.ndarray  # [L]
    qsim_prune_head: np.ndarray  # [L, H]
    bi_layer: np.ndarray  # [L]
    qstats_mean: np.ndarray  # [L, H, D]
    qstats_var: np.ndarray  # [L, H, D] tied across RoPE pairs
    n_windows: int  # windows per (layer, head)
    n_qstat_tokens: int  # tokens in the query statistics per layer


@dataclass
class CalibrationAccumulators:
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    win_sum: torch.Tensor = field(init=False)  # [L, H] sum of window scores
    win_count: torch.Tensor = field(init=False)  # [L] windows (per head)
    prune_sum: torch.Tensor = field(init=False)  # [L, H] sum of per-sample all-pairs scores
    prune_count: torch.Tensor = field(init=False)  # [L] samples
    bi_sum: torch.Tensor = field(init=False)  # [L] sum over tokens of 1 - cos
    bi_count: torch.Tensor = field(init=False)  # [L] tokens
    moments: list[MomentAccumulator] = field(init=False)  # per layer, [H, D]
    rotary_dim: list[int] = field(init=False)  # per layer, from the RoPE cos/sin seen (0: not yet)

    def __post_init__(self) -> None:
        L, H, D = self.n_layer, self.n_head, self.head_dim
        f64 = dict(dtype=torch.float64)
        self.win_sum = torch.zeros(L, H, **f64)
        self.win_count = torch.zeros(L, dtype=torch.int64)
        self.prune_sum = torch.zeros(L, H, **f64)
        self.prune_count = torch.zeros(L, dtype=torch.int64)
        self.bi_sum = torch.zeros(L, **f64)
        self.bi_count = torch.zeros(L, dtype=torch.int64)
        self.moments = [MomentAccumulator.empty(H, D) for _ in range(L)]
        self.rotary_dim = [0] * L

    # ------------------------------------------------------------------ updates (one batch, one layer)

    def add_windows(self, layer: int, scores: torch.Tensor) -> None:
        """``scores``: ``[B, H, n_windows]`` window q-similarities."""
        self.win_sum[layer] += scores.to("cpu", torch.float64).sum(dim=(0, 2))
        self.win_count[layer] += scores.shape[0] * scores.shape[2]

    def add_prune(self, layer: int, scores: torch.Tensor) -> None:
        """``scores``: ``[B, H]`` all-pairs q-similarities, one per sample."""
        self.prune_sum[layer] += scores.to("cpu", torch.float64).sum(dim=0)
        self.prune_count[layer] += scores.shape[0]

    def add_bi(self, layer: int, per_token: torch.Tensor) -> None:
        """``per_token``: ``[B, T]`` values of ``1 - cos(h_in, h_out)``."""
        self.bi_sum[layer] += per_token.to("cpu", torch.float64).sum()
        self.bi_count[layer] += per_token.numel()

    def add_queries(self, layer: int, q: torch.Tensor, rotary_dim: int, dtype: torch.dtype = torch.float64) -> None:
        """``q``: ``[N, H, D]`` pre-RoPE queries (sink positions already removed)."""
        if self.rotary_dim[layer] and self.rotary_dim[layer] != rotary_dim:
            raise CalibrationError(f"layer {layer}: the rotary dimension changed between batches")
        self.rotary_dim[layer] = rotary_dim
        self.moments[layer].update(q, dtype)

    # ------------------------------------------------------------------ results

    def nbytes(self) -> int:
        """Bytes held by the accumulators (O(L*H*D), independent of samples and sequence length)."""
        tensors = [self.win_sum, self.win_count, self.prune_sum, self.prune_count, self.bi_sum, self.bi_count]
        tensors += [t for m in self.moments for t in (m.mean, m.m2)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def results(self) -> LayerResults:
        for name, count in (("q-similarity windows", self.win_count), ("samples", self.prune_count), ("tokens", self.bi_count)):
            empty = [i for i, c in enumerate(count.tolist()) if c == 0]
            if empty:
                raise CalibrationError(f"no {name} reached layer(s) {empty}: the hooks did not fire")
        qsim_head = self.win_sum / self.win_count[:, None].to(torch.float64)
        G = self.n_head // self.n_head_kv
        qsim_kv = qsim_head.view(self.n_layer, self.n_head_kv, G).mean(dim=-1)
        prune_head = self.prune_sum / self.prune_count[:, None].to(torch.float64)
        bi = self.bi_sum / self.bi_count.to(torch.float64)
        mean = torch.stack([m.mean for m in self.moments])
        var = torch.stack([tie_rope_pairs(m.variance(), r) for m, r in zip(self.moments, self.rotary_dim)])
        return LayerResults(
            qsim_layer=qsim_head.mean(dim=1).numpy(),
            qsim_head=qsim_head.numpy(),
            qsim_kv_head=qsim_kv.numpy(),
            qsim_prune_layer=prune_head.mean(dim=1).numpy(),
            qsim_prune_head=prune_head.numpy(),
            bi_layer=bi.numpy(),
            qstats_mean=mean.numpy(),
            qstats_var=var.numpy(),
            n_windows=int(self.win_count[0]),
            n_qstat_tokens=int(self.moments[0].n),
        )
