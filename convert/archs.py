"""Which model architectures TAPPA handles, in transformers and in GGUF terms.

The set is the intersection of what the tappa KV cache runs (``tappa_arch_supported`` in
native/src/llama-kv-cache-tappa.cpp: one standard KV input per layer, RoPE attention) and
decoder families whose transformers attention has separate ``q_proj`` weights, which
calibration hooks. ``tests/test_convert_archs.py`` checks every entry against the pinned
converter's own class registry and GGUF architecture names, so the table cannot drift.
"""

from __future__ import annotations

from tappa_local.errors import UnsupportedModelError

#: transformers ``architectures[0]`` -> GGUF ``general.architecture`` written by the pinned converter
HF_TO_GGUF: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3moe",
    "GraniteForCausalLM": "granite",
}

#: GGUF architectures a profile may be attached to (the native KV cache's list)
GGUF_ARCHS: frozenset[str] = frozenset({"llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "mistral3", "granite"})


def gguf_arch_for(hf_arch: str, where: str) -> str:
    """The GGUF architecture of a supported transformers class, or a clear refusal."""
    try:
        return HF_TO_GGUF[hf_arch]
    except KeyError:
        raise UnsupportedModelError(
            f"{where}: architecture {hf_arch!r} is not supported by TAPPA; supported: {', '.join(sorted(HF_TO_GGUF))}"
        ) from None


def require_gguf_arch(arch: str, where: str) -> str:
    if arch not in GGUF_ARCHS:
        raise UnsupportedModelError(
            f"{where}: GGUF architecture {arch!r} is not supported by TAPPA; supported: {', '.join(sorted(GGUF_ARCHS))}"
        )
    return arch
