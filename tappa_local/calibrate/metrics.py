"""The per-batch measurements, as pure tensor functions (no model, no state).

Notation: a query tensor ``q`` has shape ``[B, H, T, D]`` (batch, query heads, positions,
head dimension). Cosines use unit rows ``u_t = q_t / max(||q_t||, EPS)`` (the reference's
``clamp_min(1e-8)``), so for any set S of positions

    sum_{i != j in S} cos(q_i, q_j) = || sum_{i in S} u_i ||^2 - sum_{i in S} ||u_i||^2

which is what the functions below evaluate: O(T*D) instead of O(T^2*D), exact up to
rounding. (``||u_i||^2`` is 1, or 0 for an all-zero query.)
"""

from __future__ import annotations

import torch

EPS = 1e-8


def unit_rows(x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``x / max(||x||, EPS)`` along the last dimension, computed in ``dtype``."""
    x = x.to(dtype)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def offdiag_cos_sum(u: torch.Tensor, token_dim: int = -2) -> torch.Tensor:
    """``sum_{i != j} u_i . u_j`` over the positions along ``token_dim`` of unit rows ``u``."""
    total = u.sum(dim=token_dim)
    return total.pow(2).sum(-1) - u.pow(2).sum(dim=(-1, token_dim))


def windowed_qsim(q: torch.Tensor, window: int, offset: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """KV-compression q-similarity of every window: ``[B, H, n_windows]``.

    Windows tile positions ``offset, offset+1, ...`` of each sequence without overlap:
    window ``k`` is positions ``[offset + k*W, offset + (k+1)*W)``, for
    ``k = 0 .. (T - offset) // W - 1``; the ``(T - offset) % W`` trailing positions that do
    not fill a window are not used. A window's score is the mean off-diagonal cosine
    ``1/(W(W-1)) * sum_{i != j in window} cos(q_i, q_j)`` (all W(W-1) ordered pairs, as in
    the reference's ``compute_q_sim_torch`` on its last-W-token window).
    """
    B, H, T, D = q.shape
    n_win = (T - offset) // window
    if n_win <= 0:
        return q.new_zeros((B, H, 0), dtype=dtype)
    u = unit_rows(q[:, :, offset : offset + n_win * window], dtype).reshape(B, H, n_win, window, D)
    return offdiag_cos_sum(u, token_dim=-2) / (window * (window - 1))


def allpairs_qsim(q: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Pruning-form q-similarity of every sequence: ``[B, H]``.

    The mean off-diagonal cosine over all ``T(T-1)`` ordered pairs of positions of the
    sequence (the reference's ``_accumulate_q_similarity`` on one chunk).
    """
    T = q.shape[2]
    if T < 2:
        raise ValueError("all-pairs q-similarity needs at least two positions")
    return offdiag_cos_sum(unit_rows(q, dtype), token_dim=-2) / (T * (T - 1))


def block_influence(h_in: torch.Tensor, h_out: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ShortGPT Block Influence per token: ``1 - cos(h_in_t, h_out_t)``, shape ``h_in.shape[:-1]``.

    ``cos(x, y) = x.y / (max(||x||, EPS) * max(||y||, EPS))``.
    """
    a = h_in.to(dtype)
    b = h_out.to(dtype)
    cos = (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(EPS) * b.norm(dim=-1).clamp_min(EPS))
    return 1.0 - cos
