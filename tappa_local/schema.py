"""The ``tappa.*`` GGUF metadata schema (version 1).

This module is the single source of truth for key names, types and shapes. The converter
writes these keys, ``tappa-local inspect`` reads them, and the native patch reads the ones
marked ``native`` (see native/src/llama-tappa-meta.cpp). The README's schema table is
generated from :data:`KEYS` (``python -m tappa_local.schema``), so the two cannot drift.

Conventions (mirroring gguf-py):
- every key lives under the ``tappa.`` namespace;
- per-layer arrays have exactly ``tappa.n_layer`` entries, indexed by the layer's position
  *in this file* (after any pruning); ``tappa.layer_map`` gives the original layer index;
- per-head arrays are flattened row-major ``[layer][head]`` (and ``[layer][head][dim]``);
- calibration data is stored only as metadata arrays, never as tensors: an extra tensor
  makes stock llama.cpp refuse the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

SCHEMA_VERSION = 1
NAMESPACE = "tappa."


class Kind(str, Enum):
    U32 = "u32"
    I32 = "i32"
    F32 = "f32"
    STR = "str"
    ARR_F32 = "f32[]"
    ARR_I32 = "i32[]"


@dataclass(frozen=True)
class KeySpec:
    name: str
    kind: Kind
    shape: str  # human-readable shape, in terms of L (n_layer), H (n_head), Hkv, D (head_dim)
    meaning: str
    required: bool = False
    native: bool = False  # read by the native patch at model load
    since: int = 1  # schema version that introduced the key


# ---- identity and validation
VERSION = "tappa.version"
N_LAYER = "tappa.n_layer"
N_HEAD = "tappa.n_head"
N_HEAD_KV = "tappa.n_head_kv"
HEAD_DIM = "tappa.head_dim"
ARCH = "tappa.arch"
LAYER_MAP = "tappa.layer_map"
# ---- q-similarity
QSIM_WINDOW = "tappa.qsim.window"
QSIM_LAYER = "tappa.qsim.layer"
QSIM_HEAD = "tappa.qsim.head"
QSIM_KV_HEAD = "tappa.qsim.kv_head"
QSIM_PRUNE_LAYER = "tappa.qsim_prune.layer"
QSIM_PRUNE_HEAD = "tappa.qsim_prune.head"
# ---- pruning
BI_LAYER = "tappa.bi.layer"
PRUNE_BETA = "tappa.prune.beta"
PRUNE_SCORE = "tappa.prune.score"
PRUNE_ORDER = "tappa.prune.order"
PRUNED_LAYERS = "tappa.prune.removed"
# ---- KV budgets
BUDGET_FRAC = "tappa.budget.layer_frac"
BUDGET_TOTAL = "tappa.budget.total"
BUDGET_WINDOW = "tappa.budget.window"
BUDGET_N_SINK = "tappa.budget.n_sink"
BUDGET_ALLOCATION = "tappa.budget.allocation"
BUDGET_SCORER = "tappa.budget.scorer"
# ---- Expected-Attention query statistics
QSTATS_MEAN = "tappa.qstats.mean"
QSTATS_VAR = "tappa.qstats.var"
QSTATS_N_SINK_SKIPPED = "tappa.qstats.n_sink_skipped"
# ---- provenance
PROV_MODEL_ID = "tappa.provenance.model_id"
PROV_WEIGHTS_SHA256 = "tappa.provenance.weights_sha256"
PROV_TOKENIZER_SHA256 = "tappa.provenance.tokenizer_sha256"
PROV_CORPUS_SHA256 = "tappa.provenance.corpus_sha256"
PROV_N_SAMPLES = "tappa.provenance.n_samples"
PROV_N_TOKENS = "tappa.provenance.n_tokens"
PROV_SEQ_LEN = "tappa.provenance.seq_len"
PROV_VERSIONS = "tappa.provenance.versions"
PROV_CREATED = "tappa.provenance.created"
# ---- the checkpoint a GGUF was converted from (written by tappa-convert, kept across re-annotation)
SOURCE_WEIGHTS_SHA256 = "tappa.source.weights_sha256"
SOURCE_TOKENIZER_SHA256 = "tappa.source.tokenizer_sha256"

KEYS: tuple[KeySpec, ...] = (
    KeySpec(VERSION, Kind.U32, "scalar", "schema version; readers refuse versions they do not know", True, True),
    KeySpec(N_LAYER, Kind.U32, "scalar", "layers the profile describes; must equal `<arch>.block_count`", True, True),
    KeySpec(N_HEAD, Kind.U32, "scalar", "query heads per layer; must equal `<arch>.attention.head_count`", True, True),
    KeySpec(N_HEAD_KV, Kind.U32, "scalar", "KV heads per layer; must equal `<arch>.attention.head_count_kv`", True, True),
    KeySpec(HEAD_DIM, Kind.U32, "scalar", "query/key head dimension", True, True),
    KeySpec(ARCH, Kind.STR, "scalar", "transformers architecture the profile was calibrated on, e.g. `LlamaForCausalLM`", True),
    KeySpec(LAYER_MAP, Kind.ARR_I32, "[L]", "original (pre-pruning) index of each layer in this file", True),
    KeySpec(QSIM_WINDOW, Kind.U32, "scalar", "window W of the KV-compression q-similarity (consecutive post-RoPE queries)", True),
    KeySpec(QSIM_LAYER, Kind.ARR_F32, "[L]", "post-RoPE windowed q-similarity per layer (mean over query heads)", True, True),
    KeySpec(QSIM_HEAD, Kind.ARR_F32, "[L*H]", "post-RoPE windowed q-similarity per query head", True),
    KeySpec(QSIM_KV_HEAD, Kind.ARR_F32, "[L*Hkv]", "post-RoPE windowed q-similarity per KV head (mean over its GQA group)", True, True),
    KeySpec(QSIM_PRUNE_LAYER, Kind.ARR_F32, "[L]", "pre-RoPE all-pairs q-similarity per layer (the pruning form)", True),
    KeySpec(QSIM_PRUNE_HEAD, Kind.ARR_F32, "[L*H]", "pre-RoPE all-pairs q-similarity per query head", True),
    KeySpec(BI_LAYER, Kind.ARR_F32, "[L]", "ShortGPT Block Influence 1 - cos(h_in, h_out), mean over tokens", True),
    KeySpec(PRUNE_BETA, Kind.F32, "scalar", "beta of the TAPPA prune score BI_norm + beta * (1 - q_norm)", True),
    KeySpec(PRUNE_SCORE, Kind.ARR_F32, "[L]", "TAPPA prune score per layer (lowest is pruned first)", True),
    KeySpec(PRUNE_ORDER, Kind.ARR_I32, "[L]", "layer indices (in this file) in the order they should be pruned", True),
    KeySpec(PRUNED_LAYERS, Kind.ARR_I32, "[n_removed]", "original indices of layers physically removed from this file"),
    KeySpec(BUDGET_FRAC, Kind.ARR_F32, "[L]", "default share of the total KV budget per layer (sums to 1)", True, True),
    KeySpec(BUDGET_TOTAL, Kind.U32, "scalar", "default total KV budget in tokens, summed over layers (0: full cache)", False, True),
    KeySpec(BUDGET_WINDOW, Kind.U32, "scalar", "default recent window W that every layer always keeps", False, True),
    KeySpec(BUDGET_N_SINK, Kind.U32, "scalar", "default number of sink tokens every layer always keeps", False, True),
    KeySpec(BUDGET_ALLOCATION, Kind.STR, "scalar", "allocation that produced layer_frac: `tappa`, `uniform` or `pyramid`", True),
    KeySpec(BUDGET_SCORER, Kind.STR, "scalar", "default eviction scorer: `snapkv`, `cake`, `expected_attention` or `sink_recent`"),
    KeySpec(QSTATS_MEAN, Kind.ARR_F32, "[L*H*D]", "mean of pre-RoPE queries (after q-norm if the model has one)", False, True),
    KeySpec(QSTATS_VAR, Kind.ARR_F32, "[L*H*D]", "variance of pre-RoPE queries, tied across each RoPE pair", False, True),
    KeySpec(QSTATS_N_SINK_SKIPPED, Kind.U32, "scalar", "leading tokens of each sample excluded from the query statistics"),
    KeySpec(PROV_MODEL_ID, Kind.STR, "scalar", "model path or hub id the profile was calibrated on", True),
    KeySpec(PROV_WEIGHTS_SHA256, Kind.STR, "scalar", "sha256 over the checkpoint's weight files", True),
    KeySpec(PROV_TOKENIZER_SHA256, Kind.STR, "scalar", "sha256 over the tokenizer files", True),
    KeySpec(PROV_CORPUS_SHA256, Kind.STR, "scalar", "sha256 of the calibration token stream", True),
    KeySpec(PROV_N_SAMPLES, Kind.U32, "scalar", "calibration samples", True),
    KeySpec(PROV_N_TOKENS, Kind.U32, "scalar", "calibration tokens seen", True),
    KeySpec(PROV_SEQ_LEN, Kind.U32, "scalar", "calibration sequence length", True),
    KeySpec(PROV_VERSIONS, Kind.STR, "scalar", "JSON object: tappa-local, torch, transformers versions", True),
    KeySpec(PROV_CREATED, Kind.STR, "scalar", "UTC timestamp of the calibration (ISO 8601)"),
    KeySpec(SOURCE_WEIGHTS_SHA256, Kind.STR, "scalar", "sha256 over the weight files of the checkpoint this GGUF was converted from (same manifest as provenance); a profile whose provenance differs is refused"),
    KeySpec(SOURCE_TOKENIZER_SHA256, Kind.STR, "scalar", "sha256 over the tokenizer files of the checkpoint this GGUF was converted from"),
)

KEY_BY_NAME: dict[str, KeySpec] = {k.name: k for k in KEYS}
PER_LAYER_KEYS: tuple[str, ...] = tuple(k.name for k in KEYS if k.shape == "[L]")


def markdown_table() -> str:
    """The schema as a Markdown table (pasted into the README)."""
    rows = ["| key | type | shape | meaning | required | read by native | since |", "|---|---|---|---|---|---|---|"]
    for k in KEYS:
        rows.append(
            f"| `{k.name}` | {k.kind.value} | {k.shape} | {k.meaning} | {'yes' if k.required else ''} | {'yes' if k.native else ''} | v{k.since} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
