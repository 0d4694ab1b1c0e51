"""The whole tappa-convert path from a transformers checkpoint: calibrate -> pinned converter ->
llama.cpp quantizer with layer removal -> tappa.* metadata, against calibrating directly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tappa_local import schema as S
from tappa_local.localmodels import TinyModel, stdlib_corpus
from tappa_local.modelfile import read_gguf_metadata

from .test_convert_support import llama_logits, prompt_ids, run_convert

pytestmark = pytest.mark.native

CALIB = ("--n-samples", "3", "--seq-len", "96", "--window", "16", "--beta", "0.5")


def test_calibrate_convert_prune_quantize(tiny_qwen2: TinyModel, tmp_path: Path) -> None:
    from tappa_convert.identity import checkpoint_hashes
    from tappa_convert.rewrite import as_stored
    from tappa_convert.ggufinfo import read_gguf_info
    from tappa_local.calibrate import CalibrationConfig, calibrate

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(stdlib_corpus(max_chars=60_000, skip=60)))
    out = tmp_path / "qwen2-q8-pruned.gguf"
    rc, stdout, err = run_convert(tiny_qwen2.hf_dir, "--corpus", corpus, *CALIB, "--outtype", "f32",
                                  "--drop-layers", "1", "--quantize", "Q8_0", "--budget-total", "300", "-o", out)
    assert rc == 0, err
    assert "profile: calibrated" in stdout and "Q8_0" in stdout

    # the same calibration run directly: the file holds exactly its profile, pruned
    direct = calibrate(str(tiny_qwen2.hf_dir), [str(corpus)],
                       CalibrationConfig(n_samples=3, seq_len=96, window=16, beta=0.5), progress=False)
    drop = [int(direct.prune_order[0])]
    expected = as_stored(direct.with_budget(direct.budget_allocation, total=300).pruned(drop))
    info = read_gguf_info(out)
    got = info.profile()
    assert got is not None and info.n_layer == 3 and info.file_type_name == "Q8_0"
    created = dataclasses.replace(expected.provenance, created=got.provenance.created)
    assert got.equals(dataclasses.replace(expected, provenance=created))
    assert got.removed_layers == tuple(drop)

    # the source checkpoint's manifests are recorded and equal the calibration's provenance
    meta = read_gguf_metadata(out)
    hashes = checkpoint_hashes(tiny_qwen2.hf_dir)
    assert meta[S.SOURCE_WEIGHTS_SHA256] == hashes.weights_sha256 == got.provenance.weights_sha256
    assert meta[S.SOURCE_TOKENIZER_SHA256] == hashes.tokenizer_sha256 == got.provenance.tokenizer_sha256

    # stock loading path works on the pruned, quantized file
    logits = llama_logits(out, prompt_ids(tiny_qwen2.spec.vocab_size, n=32))
    assert logits.shape == (32, tiny_qwen2.spec.vocab_size) and np.isfinite(logits).all()
