"""Where the calibrator hooks into a transformers decoder, and which models it refuses.

A model is supported when it is a decoder whose every layer has an attention module with a
``q_proj`` linear projection and which receives RoPE ``position_embeddings = (cos, sin)``
from the model's rotary embedding, and whose modeling module defines
``apply_rotary_pos_emb`` (the function the attention itself applies). Llama, Mistral,
Qwen2 and Qwen3 (with ``q_norm``) are of this kind. GPT-2 (fused ``c_attn``), OPT (learned
absolute positions), BLOOM/MPT (ALiBi) and the like get :class:`UnsupportedModelError`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import UnsupportedModelError

#: attribute paths (from the top-level model) where decoder layer lists live
LAYER_LIST_PATHS = ("model.layers", "model.model.layers", "model.language_model.layers", "transformer.h", "transformer.layers",
                    "gpt_neox.layers", "model.decoder.layers", "transformer.blocks", "layers", "h")
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
NON_ROPE_POSITION_TYPES = ("absolute", "learned", "alibi", "relative_key", "relative_key_query", "sinusoidal")

ApplyRope = Callable[..., tuple[Any, Any]]


@dataclass(frozen=True)
class AttentionSite:
    """The modules of one decoder layer that the calibrator hooks."""

    index: int
    layer: nn.Module
    attn: nn.Module
    q_proj: nn.Module
    q_norm: nn.Module | None  # per-head query norm applied before RoPE (Qwen3), if any


@dataclass(frozen=True)
class ModelGeometry:
    """Attention geometry shared by all layers."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    sites: tuple[AttentionSite, ...]
    apply_rope: ApplyRope

    @property
    def group(self) -> int:
        """Query heads per KV head (query head h reads KV head h // group, as in HF repeat_kv)."""
        return self.n_head // self.n_head_kv


def _get_path(root: Any, dotted: str) -> Any:
    obj = root
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def arch_name(model: nn.Module) -> str:
    archs = getattr(getattr(model, "config", None), "architectures", None) or []
    return str(archs[0]) if archs else type(model).__name__


def _find_layers(model: nn.Module, arch: str) -> nn.ModuleList:
    for path in LAYER_LIST_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise UnsupportedModelError(f"unsupported: {arch} has no recognisable list of decoder layers")


def _find_attention(layer: nn.Module, arch: str, index: int) -> nn.Module:
    for name in ATTENTION_NAMES:
        attn = getattr(layer, name, None)
        if isinstance(attn, nn.Module):
            return attn
    raise UnsupportedModelError(f"unsupported: {arch} layer {index} has no attention module (looked for {', '.join(ATTENTION_NAMES)})")


def _has_rotary_module(model: nn.Module) -> bool:
    return any("rotary" in type(m).__name__.lower() for m in model.modules())


def _check_positions(model: nn.Module, arch: str) -> None:
    cfg = getattr(model, "config", None)
    pos_type = getattr(cfg, "position_embedding_type", None)
    if isinstance(pos_type, str) and pos_type.lower() in NON_ROPE_POSITION_TYPES:
        raise UnsupportedModelError(f"unsupported: {arch} uses {pos_type} position embeddings, not RoPE")
    if getattr(cfg, "alibi", False) or getattr(getattr(cfg, "attn_config", None), "alibi", False):
        raise UnsupportedModelError(f"unsupported: {arch} uses ALiBi positions, not RoPE")
    if not _has_rotary_module(model):
        raise UnsupportedModelError(
            f"unsupported: {arch} has no rotary position embedding (RoPE); the q-similarity is defined on RoPE queries"
        )


def inspect_model(model: nn.Module) -> ModelGeometry:
    """Find the hook sites and the attention geometry, or raise :class:`UnsupportedModelError`."""
    arch = arch_name(model)
    cfg = getattr(model, "config", None)
    if getattr(cfg, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"unsupported: {arch} is an encoder-decoder model, not a decoder-only LM")
    layers = _find_layers(model, arch)
    attns = [_find_attention(layer, arch, i) for i, layer in enumerate(layers)]
    for i, attn in enumerate(attns):
        if not isinstance(getattr(attn, "q_proj", None), nn.Module):
            fused = [n for n in ("c_attn", "qkv_proj", "query_key_value", "Wqkv", "qkv") if hasattr(attn, n)]
            why = f" (it uses a fused projection `{fused[0]}`)" if fused else ""
            raise UnsupportedModelError(f"unsupported: {arch} attention (layer {i}, {type(attn).__name__}) has no q_proj{why}")
    _check_positions(model, arch)
    module = sys.modules.get(type(attns[0]).__module__)
    apply_rope = getattr(module, "apply_rotary_pos_emb", None)
    if not callable(apply_rope):
        raise UnsupportedModelError(
            f"unsupported: {arch}: {type(attns[0]).__module__} defines no apply_rotary_pos_emb to rotate the queries with"
        )

    n_head = int(getattr(cfg, "num_attention_heads", 0) or getattr(attns[0], "num_heads", 0) or 0)
    n_head_kv = int(getattr(cfg, "num_key_value_heads", None) or n_head)
    head_dim = int(
        getattr(attns[0], "head_dim", None)
        or getattr(cfg, "head_dim", None)
        or (int(getattr(cfg, "hidden_size", 0)) // n_head if n_head else 0)
    )
    if n_head <= 0 or head_dim <= 0 or n_head_kv <= 0 or n_head % n_head_kv != 0:
        raise UnsupportedModelError(f"unsupported: {arch}: cannot determine the attention geometry (heads={n_head}, kv={n_head_kv}, head_dim={head_dim})")
    sites = []
    for i, (layer, attn) in enumerate(zip(layers, attns)):
        out = getattr(attn.q_proj, "out_features", None)
        if out is not None and int(out) != n_head * head_dim:
            raise UnsupportedModelError(
                f"unsupported: {arch} layer {i}: q_proj has {out} outputs, expected {n_head} heads x {head_dim}"
            )
        q_norm = getattr(attn, "q_norm", None)
        sites.append(AttentionSite(i, layer, attn, attn.q_proj, q_norm if isinstance(q_norm, nn.Module) else None))
    return ModelGeometry(arch, len(layers), n_head, n_head_kv, head_dim, tuple(sites), apply_rope)
