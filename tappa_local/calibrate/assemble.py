"""Assembling the :class:`~tappa_local.profile.Profile` from the finished measurements."""

from __future__ import annotations

import numpy as np

from ..profile import Profile, Provenance
from .accumulators import LayerResults
from .architecture import ModelGeometry
from .config import CalibrationConfig
from .prune import tappa_prune_plan


def build_profile(geometry: ModelGeometry, results: LayerResults, config: CalibrationConfig, provenance: Provenance) -> Profile:
    """The profile: float32 arrays, the TAPPA prune plan, and the default budget plan.

    ``budget_layer_frac`` comes from :meth:`Profile.with_budget` (i.e. :mod:`tappa_local.budget`:
    ``tappa`` = proportional to ``1 - qsim_layer`` clipped at 0, normalised to sum 1).
    """
    plan = tappa_prune_plan(results.bi_layer, results.qsim_prune_layer, config.beta)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    L = geometry.n_layer
    base = Profile(
        arch=geometry.arch,
        n_layer=L,
        n_head=geometry.n_head,
        n_head_kv=geometry.n_head_kv,
        head_dim=geometry.head_dim,
        layer_map=np.arange(L, dtype=np.int32),
        qsim_window=config.window,
        qsim_layer=f32(results.qsim_layer),
        qsim_head=f32(results.qsim_head),
        qsim_kv_head=f32(results.qsim_kv_head),
        qsim_prune_layer=f32(results.qsim_prune_layer),
        qsim_prune_head=f32(results.qsim_prune_head),
        bi_layer=f32(results.bi_layer),
        prune_beta=float(np.float32(config.beta)),
        prune_score=f32(plan.score),
        prune_order=plan.order.astype(np.int32),
        budget_layer_frac=np.full(L, 1.0 / L, dtype=np.float32),
        budget_allocation="uniform",
        provenance=provenance,
        qstats_mean=f32(results.qstats_mean),
        qstats_var=f32(results.qstats_var),
        qstats_n_sink_skipped=config.n_sink,
    )
    return base.with_budget(config.budget_allocation, total=config.budget_total, window=config.budget_window, n_sink=config.budget_n_sink)
