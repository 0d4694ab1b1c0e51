"""Human-readable summary of a calibrated profile (the CLI's final table)."""

from __future__ import annotations

import numpy as np

from ..profile import Profile


def layer_table(profile: Profile) -> str:
    """One row per layer: windowed q-sim, pruning-form q-sim, BI, prune score and rank, budget share."""
    rank = np.empty(profile.n_layer, dtype=np.int64)
    rank[np.asarray(profile.prune_order)] = np.arange(1, profile.n_layer + 1)
    head = f"{'layer':>5}  {'qsim(W=' + str(profile.qsim_window) + ')':>11}  {'qsim_prune':>10}  {'BI':>8}  {'score':>7}  {'prune#':>6}  {'budget':>7}"
    lines = [head, "-" * len(head)]
    for i in range(profile.n_layer):
        lines.append(
            f"{int(profile.layer_map[i]):>5}  {profile.qsim_layer[i]:>11.4f}  {profile.qsim_prune_layer[i]:>10.4f}  "
            f"{profile.bi_layer[i]:>8.4f}  {profile.prune_score[i]:>7.4f}  {int(rank[i]):>6}  {100 * profile.budget_layer_frac[i]:>6.2f}%"
        )
    p = profile.provenance
    lines.append("-" * len(head))
    lines.append(
        f"{profile.arch}: {profile.n_layer} layers, {profile.n_head} heads / {profile.n_head_kv} KV heads, head_dim {profile.head_dim}; "
        f"{p.n_samples} samples x {p.seq_len} tokens = {p.n_tokens} tokens; beta={profile.prune_beta:g}; "
        f"budget allocation {profile.budget_allocation}"
    )
    lines.append("prune# 1 is pruned first (lowest BI_norm + beta*(1 - qsim_prune_norm)); budget = share of the KV budget")
    return "\n".join(lines)
