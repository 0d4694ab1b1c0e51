"""The tables and digests tappa-convert relies on agree with their sources of truth:
the calibrator's provenance manifests, the pinned converter's architecture registry and the
native KV cache's list of supported architectures."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tappa_local.localmodels import TinyModel
from tappa_local.native import find_build

REPO = Path(__file__).resolve().parent.parent


def test_manifests_equal_the_calibrators(tiny_llama: TinyModel, tmp_path: Path) -> None:
    from tappa_convert.identity import WEIGHT_SUFFIXES, checkpoint_hashes
    from tappa_local.calibrate import provenance as prov

    mine = checkpoint_hashes(tiny_llama.hf_dir)
    assert mine.weights_sha256 == prov.manifest_sha256(tiny_llama.hf_dir, prov.weight_files(tiny_llama.hf_dir))
    assert mine.tokenizer_sha256 == prov.tokenizer_sha256(tiny_llama.hf_dir)
    assert tuple(prov.WEIGHT_SUFFIXES) == WEIGHT_SUFFIXES
    # and a changed byte changes the digest
    (tmp_path / "model.safetensors").write_bytes((tiny_llama.hf_dir / "model.safetensors").read_bytes()[:-1] + b"\0")
    assert checkpoint_hashes(tmp_path).weights_sha256 != mine.weights_sha256


def test_arch_table_matches_the_pinned_converter() -> None:
    from tappa_convert.archs import GGUF_ARCHS, HF_TO_GGUF
    from tappa_convert.ggufpy import gguf

    g = gguf()
    src = str(find_build().llama_cpp_source_dir)
    sys.path.insert(0, src)
    try:
        from conversion import get_model_class
    finally:
        sys.path.remove(src)
    for hf, gguf_arch in HF_TO_GGUF.items():
        cls = get_model_class(hf)
        assert g.MODEL_ARCH_NAMES[cls.model_arch] == gguf_arch, hf
    assert set(HF_TO_GGUF.values()) <= GGUF_ARCHS


def test_gguf_archs_match_the_native_kv_cache() -> None:
    from tappa_convert.archs import GGUF_ARCHS

    cpp = (REPO / "native" / "src" / "llama-kv-cache-tappa.cpp").read_text()
    body = cpp[cpp.index("tappa_arch_supported(llm_arch arch)"):]
    body = body[: body.index("default:")]
    enums = re.findall(r"case (LLM_ARCH_\w+):", body)
    names = dict(re.findall(r"\{\s*(LLM_ARCH_\w+),\s*\"([^\"]+)\"\s*\}",
                            (find_build().llama_cpp_source_dir / "src" / "llama-arch.cpp").read_text()))
    assert enums
    assert {names[e] for e in enums} == set(GGUF_ARCHS)
