"""What tappa-convert writes still runs the same model: annotation is invisible to llama.cpp,
pruning equals deleting the layers in transformers, quantization keeps the profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tappa_local import schema as S
from tappa_local.localmodels import TinyModel
from tappa_local.modelfile import read_gguf_metadata

from .test_convert_support import TOL_F32_KV, hf_logits_without, llama_logits, make_profile, prompt_ids, run_convert

pytestmark = pytest.mark.native


def _annotated(model: TinyModel, tmp: Path, seed: int = 0) -> Path:
    prof = tmp / "profile.safetensors"
    make_profile(model, seed=seed).save(prof)
    out = tmp / "annotated.gguf"
    rc, _, err = run_convert("--annotate", model.gguf_path, "--profile", prof, "-o", out)
    assert rc == 0, err
    return out


def test_annotated_logits_are_bit_identical(tiny_llama: TinyModel, tmp_path: Path) -> None:
    annotated = _annotated(tiny_llama, tmp_path)
    ids = prompt_ids(tiny_llama.spec.vocab_size)
    plain = llama_logits(tiny_llama.gguf_path, ids)
    got = llama_logits(annotated, ids)
    assert got.shape == plain.shape
    assert got.tobytes() == plain.tobytes()


@pytest.mark.parametrize("arch,seed", [("llama", 7), ("qwen2", 4)])  # seeds whose prune order starts with [0, 2] / [1, 3]
def test_pruned_logits_match_transformers_without_those_layers(arch: str, seed: int, request: pytest.FixtureRequest,
                                                              tmp_path: Path) -> None:
    from tappa_convert.ggufinfo import read_gguf_info

    model: TinyModel = request.getfixturevalue(f"tiny_{arch}")
    annotated = _annotated(model, tmp_path, seed=seed)
    full = read_gguf_info(annotated).profile()
    assert full is not None
    pruned = tmp_path / "pruned.gguf"
    rc, out, err = run_convert(annotated, "--drop-layers", "2", "-o", pruned)
    assert rc == 0, err
    drop = sorted(full.prune_order[:2].tolist())
    assert f"removed layers {drop}" in out

    info = read_gguf_info(pruned)
    keep = [i for i in range(full.n_layer) if i not in drop]
    assert info.n_layer == len(keep) == 2
    names_full = _tensor_names(annotated)
    n_global = len([n for n in names_full if not n.startswith("blk.")])
    assert info.n_tensors == n_global + _blk_tensors_per_layer(annotated) * len(keep)
    meta = read_gguf_metadata(pruned, keep_arrays=True)
    for key in S.PER_LAYER_KEYS:
        assert len(meta[key]) == info.n_layer, key
    p = info.profile()
    assert p is not None
    assert p.layer_map.tolist() == keep and list(p.removed_layers) == drop
    assert p.qsim_layer.tobytes() == full.qsim_layer[keep].tobytes()
    assert p.qsim_head.tobytes() == full.qsim_head[keep].tobytes()
    assert p.qstats_mean.tobytes() == full.qstats_mean[keep].tobytes()
    assert p.bi_layer.tobytes() == full.bi_layer[keep].tobytes()
    assert p.prune_order.tolist() == [keep.index(i) for i in full.prune_order.tolist() if i in keep]
    assert abs(float(p.budget_layer_frac.sum()) - 1.0) < 1e-6
    assert sorted(int(t.split(".")[1]) for t in _tensor_names(pruned) if t.startswith("blk.")) == sorted(
        [i for i in range(len(keep)) for _ in range(_blk_tensors_per_layer(model.gguf_path))]
    )

    ids = prompt_ids(model.spec.vocab_size, n=160)
    ref = hf_logits_without(model, drop, ids)
    got = llama_logits(pruned, ids)
    err_max = float(np.abs(got - ref).max())
    print(f"{arch}: pruned {drop}, max|dlogit| = {err_max:.3g}")
    assert err_max < TOL_F32_KV
    # and it is a different model from the unpruned one
    assert float(np.abs(llama_logits(annotated, ids) - got).max()) > 1e-3


def _tensor_names(path: Path) -> list[str]:
    from tappa_convert.ggufpy import gguf

    return [t.name for t in gguf().GGUFReader(path).tensors]


def _blk_tensors_per_layer(path: Path) -> int:
    names = [n for n in _tensor_names(path) if n.startswith("blk.0.")]
    return len(names)


def test_quantized_output_keeps_metadata_and_loads(tiny_llama: TinyModel, tmp_path: Path) -> None:
    from tappa_convert.ggufinfo import read_gguf_info

    annotated = _annotated(tiny_llama, tmp_path, seed=12)
    q8 = tmp_path / "q8.gguf"
    rc, out, err = run_convert(annotated, "--quantize", "Q8_0", "-o", q8)
    assert rc == 0, err
    src_kv = {k: v for k, v in read_gguf_metadata(annotated, keep_arrays=True).items() if k.startswith("tappa.")}
    q_kv = {k: v for k, v in read_gguf_metadata(q8, keep_arrays=True).items() if k.startswith("tappa.")}
    assert q_kv == src_kv
    info = read_gguf_info(q8)
    assert info.file_type_name == "Q8_0"
    assert info.size < 0.5 * read_gguf_info(annotated).size
    ids = prompt_ids(tiny_llama.spec.vocab_size, n=64)
    got = llama_logits(q8, ids)
    ref = llama_logits(annotated, ids)
    assert np.isfinite(got).all()
    assert float(np.abs(got - ref).max()) < 0.05  # 8-bit weights: close, not equal
