"""Shared helpers of the tappa-convert tests (no tests here): profiles built for the tiny
models, running the CLI in-process, and llama.cpp / transformers logits."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tappa_local.localmodels import TinyModel
from tappa_local.profile import Profile, Provenance

# f32 weights and an f32 KV cache: llama.cpp and transformers agree to float rounding (test_chain.py)
TOL_F32_KV = 1e-5


def make_profile(model: TinyModel, seed: int = 0, *, n_layer: int | None = None, hashes: bool = True,
                 qstats: bool = True, beta: float = 0.25, arch: str | None = None) -> Profile:
    """A profile with the tiny model's geometry, random measurements and (optionally) its real
    weight/tokenizer manifests. ``beta`` 0.25 is exact in float32."""
    from tappa_convert.identity import checkpoint_hashes

    spec = model.spec
    L = n_layer if n_layer is not None else spec.num_layers
    H, Hkv, D = spec.num_heads, spec.num_kv_heads, spec.hidden_size // spec.num_heads
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.uniform(0.05, 0.95, shape).astype(np.float32)  # noqa: E731
    qsim = f(L)
    score = f(L)
    frac = (1.0 - qsim) / (1.0 - qsim).sum()
    h = checkpoint_hashes(model.hf_dir) if hashes else None
    return Profile(
        arch=arch or {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[spec.arch],
        n_layer=L, n_head=H, n_head_kv=Hkv, head_dim=D,
        layer_map=np.arange(L, dtype=np.int32),
        qsim_window=32, qsim_layer=qsim, qsim_head=f(L, H), qsim_kv_head=f(L, Hkv),
        qsim_prune_layer=f(L), qsim_prune_head=f(L, H), bi_layer=f(L),
        prune_beta=beta, prune_score=score, prune_order=np.argsort(score, kind="stable").astype(np.int32),
        budget_layer_frac=frac.astype(np.float32), budget_allocation="tappa",
        provenance=Provenance(
            model_id=str(model.hf_dir),
            weights_sha256=h.weights_sha256 if h else f"{seed:064x}",
            tokenizer_sha256=h.tokenizer_sha256 if h else f"{seed + 1:064x}",
            corpus_sha256="ab" * 32, n_samples=8, n_tokens=8 * 256, seq_len=256,
            versions={"tappa-local": "test"}, created="2026-01-01T00:00:00Z",
        ),
        qstats_mean=rng.normal(size=(L, H, D)).astype(np.float32) if qstats else None,
        qstats_var=rng.uniform(0.1, 2.0, (L, H, D)).astype(np.float32) if qstats else None,
        budget_total=L * 96, budget_window=16, budget_n_sink=2,
    )


def run_convert(*args: object) -> tuple[int, str, str]:
    """``tappa-convert ARGS`` in-process: (exit code, stdout, stderr)."""
    from tappa_convert.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args] + ["--no-progress"])
    return rc, out.getvalue(), err.getvalue()


def assert_clean_failure(rc: int, err: str, out_path: Path, *needles: str) -> None:
    """Exit code 2, one error line naming the problem, no output file and no scratch left behind."""
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tappa-convert: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not out_path.exists()
    assert not [p for p in out_path.parent.iterdir() if p.name.endswith(".tappa-tmp")], "scratch directory left behind"


def prompt_ids(vocab: int, n: int = 200, seed: int = 1) -> list[int]:
    rng = np.random.default_rng(seed)
    return [1, *rng.integers(3, vocab, size=n - 1).tolist()]


def llama_logits(path: Path, ids: Sequence[int]) -> np.ndarray:
    """All-position logits from llama.cpp (f32 KV cache)."""
    from tappa_local.loading import open_llama

    llm = open_llama(path, n_ctx=512, n_batch=256, logits_all=True, n_threads=2, seed=0, type_k=0, type_v=0)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def hf_logits_without(model: TinyModel, drop: Sequence[int], ids: Sequence[int]) -> np.ndarray:
    """transformers logits of the tiny model with decoder layers ``drop`` deleted."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model.hf_dir, dtype=torch.float32).eval()
    keep = [i for i in range(len(hf.model.layers)) if i not in set(drop)]
    hf.model.layers = torch.nn.ModuleList([hf.model.layers[i] for i in keep])
    for new, layer in enumerate(hf.model.layers):
        layer.self_attn.layer_idx = new
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new
    hf.config.num_hidden_layers = len(keep)
    if getattr(hf.config, "layer_types", None):
        hf.config.layer_types = [hf.config.layer_types[i] for i in keep]
    with torch.no_grad():
        return hf(torch.tensor([list(ids)]), use_cache=False).logits[0].numpy()
