"""The calibration loop: load, sample, stream batches through the hooked model, assemble."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..profile import Profile, Provenance
from . import provenance as prov
from .accumulators import CalibrationAccumulators
from .architecture import ModelGeometry, inspect_model
from .assemble import build_profile
from .config import CalibrationConfig
from .data import Document, TokenSamples, build_samples, check_sources, iter_documents, iter_texts, require_text
from .hooks import CalibrationHooks
from .loading import LoadedModel, load, wrap


@dataclass
class CalibrationRun:
    """Everything a run measured, for callers that want more than the profile (tests, bench)."""

    profile: Profile
    samples: TokenSamples
    accumulators: CalibrationAccumulators
    geometry: ModelGeometry


def _forward_kwargs(model: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1  # the logits are not needed: skip the [B, T, vocab] projection
    return kwargs


def stream(loaded: LoadedModel, geometry: ModelGeometry, samples: TokenSamples, config: CalibrationConfig,
           progress: bool = True) -> CalibrationAccumulators:
    """Run every batch through the hooked model; only the accumulators survive a batch."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    acc = CalibrationAccumulators(geometry.n_layer, geometry.n_head, geometry.n_head_kv, geometry.head_dim)
    fwd = _forward_kwargs(loaded.model)
    torch.manual_seed(config.seed)
    bar = tqdm(total=samples.n_tokens, unit="tok", desc="calibrating", disable=not progress, dynamic_ncols=True)
    try:
        with CalibrationHooks(geometry, acc, config.window, config.n_sink), torch.inference_mode():
            for batch in samples.batches(config.batch_size):
                loaded.model(input_ids=batch.to(loaded.input_device), **fwd)
                bar.update(batch.numel())
    finally:
        bar.close()
    return acc


def run_calibration(loaded: LoadedModel, documents: Iterable[Document], config: CalibrationConfig,
                    progress: bool = True, describe: str = "the corpus") -> CalibrationRun:
    """Calibrate an already loaded model on ``documents``."""
    geometry = inspect_model(loaded.model)
    samples = build_samples(loaded.tokenizer, documents, config.n_samples, config.seq_len, config.add_bos, describe)
    acc = stream(loaded, geometry, samples, config, progress)
    provenance = Provenance(
        model_id=loaded.model_id,
        weights_sha256=prov.weights_sha256(loaded.local_dir, loaded.model) if config.hash_weights else "",
        tokenizer_sha256=prov.tokenizer_sha256(loaded.local_dir),
        corpus_sha256=samples.sha256,
        n_samples=samples.n_samples,
        n_tokens=samples.n_tokens,
        seq_len=samples.seq_len,
        versions=prov.versions(),
        created=prov.utc_now(),
    )
    profile = build_profile(geometry, acc.results(), config, provenance)
    return CalibrationRun(profile, samples, acc, geometry)


def calibrate(model: str | Path, corpus: Sequence[str | Path], config: CalibrationConfig | None = None,
              progress: bool = True) -> Profile:
    """Calibrate ``model`` (local directory or hub id) on ``corpus`` (paths) and return its profile.

    ``corpus`` entries: ``.txt`` files, folders of ``.txt``/``.jsonl`` files, ``.jsonl`` files
    (field ``config.text_field``) or datasets saved with ``save_to_disk``. The corpus paths are
    checked before the model is loaded. See :mod:`tappa_local.calibrate` for the definitions.
    """
    config = config or CalibrationConfig()
    sources = check_sources(corpus)
    require_text(iter_documents(sources, config.text_field, config.dataset_split))  # fail before loading the model
    loaded = load(model, config)
    documents = iter_documents(sources, config.text_field, config.dataset_split)
    return run_calibration(loaded, documents, config, progress, describe="the corpus").profile


def calibrate_texts(model: Any, texts: Iterable[str], config: CalibrationConfig | None = None, progress: bool = True,
                    tokenizer: Any = None, model_id: str | None = None) -> Profile:
    """Calibrate on raw strings. ``model`` is a path / hub id, or an already loaded
    transformers model (then ``tokenizer`` is required and ``model_id`` names it)."""
    config = config or CalibrationConfig()
    if isinstance(model, (str, Path)):
        loaded = load(model, config)
    else:
        if tokenizer is None:
            raise TypeError("calibrate_texts(model=<loaded model>) needs tokenizer=")
        loaded = wrap(model, tokenizer, model_id or type(model).__name__)
    return run_calibration(loaded, iter_texts(texts), config, progress, describe="the texts").profile
