"""Streaming query statistics for Expected-Attention scoring.

For each layer, query head and dimension: the mean and the (population) variance of the
pre-RoPE query, over every position ``t >= n_sink`` of every sample:

    mean = (1/N) sum_t q_t          var = (1/N) sum_t (q_t - mean)^2

Batches are merged with Chan et al.'s pairwise update (float64), so the result does not
depend on the batch size beyond rounding and no query is kept.

RoPE rotates the pair of dimensions ``(i, i + R/2)`` (HF ``rotate_half`` convention, R the
rotary dimension, normally D) by a position-dependent angle. A rotation-invariant variance
must be isotropic within each pair, so :func:`tie_rope_pairs` replaces both entries by their
average ``(var_i + var_{i+R/2}) / 2``. Dimensions beyond R (partial rotary) are left as they are.
The mean is not tied: at scoring time it is rotated, not averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MomentAccumulator:
    """Count, mean and sum of squared deviations (M2) per ``[H, D]``, merged batch by batch."""

    n: int
    mean: torch.Tensor  # [H, D] float64
    m2: torch.Tensor  # [H, D] float64

    @classmethod
    def empty(cls, n_head: int, head_dim: int) -> "MomentAccumulator":
        z = torch.zeros(n_head, head_dim, dtype=torch.float64)
        return cls(0, z, z.clone())

    def update(self, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> None:
        """Add the rows of ``x`` (shape ``[N, H, D]``)."""
        n_b = int(x.shape[0])
        if n_b == 0:
            return
        xb = x.to(dtype)
        mean_b = xb.mean(dim=0)
        m2_b = (xb - mean_b).pow(2).sum(dim=0)
        mean_b = mean_b.to("cpu", torch.float64)
        m2_b = m2_b.to("cpu", torch.float64)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        self.m2 += m2_b + delta.pow(2) * (self.n * n_b / n)
        self.n = n

    def variance(self) -> torch.Tensor:
        """Population variance ``M2 / N``."""
        if self.n == 0:
            raise ValueError("no query was accumulated")
        return self.m2 / self.n


def tie_rope_pairs(var: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Average ``var[..., i]`` and ``var[..., i + rotary_dim/2]`` for ``i < rotary_dim/2``."""
    if rotary_dim % 2 or rotary_dim > var.shape[-1]:
        raise ValueError(f"bad rotary dimension {rotary_dim} for head dimension {var.shape[-1]}")
    half = rotary_dim // 2
    out = var.clone()
    pair = (var[..., :half] + var[..., half:rotary_dim]) / 2
    out[..., :half] = pair
    out[..., half:rotary_dim] = pair
    return out
