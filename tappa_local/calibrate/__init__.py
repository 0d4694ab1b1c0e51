"""The TAPPA calibrator: per-layer / per-head q-similarity, Block Influence, prune order,
query statistics and provenance of a transformers decoder, as a :class:`~tappa_local.profile.Profile`.

    from tappa_local.calibrate import CalibrationConfig, calibrate
    profile = calibrate("path/to/hf-model", ["corpus/"], CalibrationConfig(n_samples=64, seq_len=1024))
    profile.save("model.tappa.safetensors")

Definitions (exact formulas in the docstrings of the modules named):

- windowed q-similarity (KV-compression form, ``qsim_layer/head/kv_head``): post-RoPE queries,
  mean off-diagonal cosine inside non-overlapping windows of W positions starting after the
  ``n_sink`` first positions (:func:`metrics.windowed_qsim`), averaged over windows and samples,
  then over heads (layer) or GQA groups (KV head) (:mod:`accumulators`);
- pruning-form q-similarity (``qsim_prune_*``): ``q_proj`` output (pre-RoPE, before any q-norm),
  mean off-diagonal cosine over all pairs of a whole sample (:func:`metrics.allpairs_qsim`),
  averaged over samples, then heads;
- Block Influence: ``1 - cos(h_in, h_out)`` of each decoder layer, averaged over all tokens;
- prune order: ``BI_norm + beta * (1 - q_norm)``, lowest first (:mod:`prune`);
- query statistics: mean / population variance of the query entering RoPE (after q-norm where
  the model has one), positions ``>= n_sink``, variance tied across RoPE pairs (:mod:`querystats`);
- provenance (:mod:`provenance`) and the default budget plan (:mod:`assemble`).
"""

from __future__ import annotations

from ..errors import UnsupportedModelError
from .config import CalibrationConfig
from .core import CalibrationRun, calibrate, calibrate_texts, run_calibration
from .errors import CalibrationConfigError, CalibrationError, CorpusError, ModelSourceError

__all__ = [
    "CalibrationConfig",
    "CalibrationConfigError",
    "CalibrationError",
    "CalibrationRun",
    "CorpusError",
    "ModelSourceError",
    "UnsupportedModelError",
    "calibrate",
    "calibrate_texts",
    "run_calibration",
]
