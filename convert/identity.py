"""Does a profile belong to this model? Geometry always; weights and tokenizer where known.

Two kinds of difference:

- *geometry* (architecture family, layer count, head counts, head dim, layer map): the profile
  cannot work on the model at all; always refused;
- *identity*: the profile is from another checkpoint of the same shape (say, the base model
  of an instruct GGUF); refused unless the user insists (``--force``). Checked with what is
  available: the weight / tokenizer manifests of the checkpoint being converted, the
  ``tappa.source.*`` digests tappa-convert records in every GGUF it writes, the provenance of
  a profile the GGUF already carries, and -- for a plain GGUF with no digest -- the config and
  the (float32, never quantized) norm weights of the profile's source checkpoint if that
  directory is on this machine.

Manifests follow :mod:`tappa_local.calibrate.provenance` exactly:
``sha256( for f in sorted(files): relpath(f) + b"\\0" + sha256(f).digest() )`` over the same
file lists (tests/test_convert_identity.py checks both give the same digest), computed here
without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tappa_local import schema as S
from tappa_local.errors import ProfileError
from tappa_local.modelfile import ArrayInfo
from tappa_local.profile import Profile

from .archs import HF_TO_GGUF
from .checkpoint import Checkpoint
from .ggufinfo import GGUFInfo

#: the calibrator's file lists (tappa_local/calibrate/provenance.py)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "chat_template.jinja", "chat_template.json",
)
_CHUNK = 1 << 20


def _file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.digest()


def manifest_sha256(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + _file_sha256(f))
    return h.hexdigest()


@dataclass(frozen=True)
class SourceHashes:
    weights_sha256: str
    tokenizer_sha256: str


def checkpoint_hashes(model_dir: Path) -> SourceHashes:
    """Weight and tokenizer manifests of a checkpoint directory (as calibration records them)."""
    weights = sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name != "training_args.bin")
    tok = sorted(model_dir / n for n in TOKENIZER_FILES if (model_dir / n).is_file())
    return SourceHashes(
        weights_sha256=manifest_sha256(model_dir, weights) if weights else "",
        tokenizer_sha256=manifest_sha256(model_dir, tok) if tok else "",
    )


@dataclass(frozen=True)
class ModelFacts:
    """What is known about the model a profile is to be attached to."""

    where: str
    gguf_arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    hf_arch: str | None = None
    layer_map: tuple[int, ...] | None = None  # recorded by an earlier tappa-convert
    removed_layers: tuple[int, ...] = ()
    # identity, each with where it came from
    weights: list[tuple[str, str]] = field(default_factory=list)  # (sha256, source)
    tokenizer: list[tuple[str, str]] = field(default_factory=list)
    hparams: dict[str, int] = field(default_factory=dict)  # vocab_size, hidden_size, intermediate_size
    gguf_path: Path | None = None  # for comparing norm weights with the profile's source checkpoint


def facts_from_checkpoint(ckpt: Checkpoint, hashes: SourceHashes | None) -> ModelFacts:
    facts = ModelFacts(
        where=str(ckpt.path), gguf_arch=ckpt.gguf_arch, n_layer=ckpt.n_layer, n_head=ckpt.n_head,
        n_head_kv=ckpt.n_head_kv, head_dim=ckpt.head_dim, hf_arch=ckpt.hf_arch,
    )
    if hashes is not None:
        if hashes.weights_sha256:
            facts.weights.append((hashes.weights_sha256, f"the weight files in {ckpt.path}"))
        if hashes.tokenizer_sha256:
            facts.tokenizer.append((hashes.tokenizer_sha256, f"the tokenizer files in {ckpt.path}"))
    return facts


def facts_from_gguf(info: GGUFInfo) -> ModelFacts:
    meta = info.metadata
    lm = meta.get(S.LAYER_MAP)
    facts = ModelFacts(
        where=str(info.path), gguf_arch=info.arch, n_layer=info.n_layer, n_head=info.n_head,
        n_head_kv=info.n_head_kv, head_dim=info.head_dim,
        layer_map=tuple(int(x) for x in lm) if isinstance(lm, list) else None,
        removed_layers=tuple(int(x) for x in meta.get(S.PRUNED_LAYERS, []) or []),
        gguf_path=info.path,
    )
    for key, target, label in (
        (S.SOURCE_WEIGHTS_SHA256, facts.weights, "the checkpoint it was converted from"),
        (S.SOURCE_TOKENIZER_SHA256, facts.tokenizer, "the checkpoint it was converted from"),
        (S.PROV_WEIGHTS_SHA256, facts.weights, "the profile it already carries"),
        (S.PROV_TOKENIZER_SHA256, facts.tokenizer, "the profile it already carries"),
    ):
        v = meta.get(key)
        if isinstance(v, str) and v:
            target.append((v, f"{label} ({key})"))
    for name, key in (("vocab_size", "vocab_size"), ("hidden_size", "embedding_length"), ("intermediate_size", "feed_forward_length")):
        v = info.arch_key(key)
        if name == "vocab_size" and v is None:
            toks = meta.get("tokenizer.ggml.tokens")
            v = toks[1] if isinstance(toks, ArrayInfo) else None
        if isinstance(v, int) and not isinstance(v, bool):
            facts.hparams[name] = v
    return facts


def fit_to_model(profile: Profile, facts: ModelFacts) -> Profile:
    """The profile restricted to the layers the model still has, when the model records that it
    was pruned by tappa-convert and the profile describes the unpruned model; else unchanged."""
    if not facts.removed_layers or profile.n_layer != facts.n_layer + len(facts.removed_layers):
        return profile
    where = {int(orig): i for i, orig in enumerate(profile.layer_map.tolist())}
    if not all(r in where for r in facts.removed_layers):
        return profile
    return profile.pruned([where[r] for r in facts.removed_layers])


def _source_config(profile: Profile) -> tuple[Path, dict[str, Any]] | None:
    p = Path(profile.provenance.model_id).expanduser()
    cfg = p / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    return p, {**data, **data.get("text_config", {})}


_ST_NP = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def _safetensors_tensor(model_dir: Path, name: str) -> np.ndarray | None:
    """One tensor of a safetensors checkpoint as float32 (F32/F16/BF16/F64), without torch."""
    for f in sorted(model_dir.glob("*.safetensors")):
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
            entry = header.get(name)
            if entry is None:
                continue
            start, end = entry["data_offsets"]
            fh.seek(8 + n + start)
            raw = fh.read(end - start)
        dt = entry["dtype"]
        if dt == "BF16":
            return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        if dt in _ST_NP:
            return np.frombuffer(raw, dtype=_ST_NP[dt]).astype(np.float32)
        return None
    return None


def norm_differences(profile: Profile, gguf_path: Path, layer_map: list[int]) -> list[str]:
    """Compare the GGUF's norm weights with the profile's source checkpoint, when that directory is here.

    Norm weights stay float32 through conversion and quantization and are copied unchanged by
    the converter for the supported architectures, so they identify the weights exactly even in
    a plain (never annotated) or quantized GGUF.
    """
    src = Path(profile.provenance.model_id).expanduser()
    if not (src / "config.json").is_file() or not any(src.glob("*.safetensors")):
        return []
    from .ggufpy import gguf  # noqa: PLC0415

    reader = gguf().GGUFReader(gguf_path, "r")
    tensors = {t.name: t for t in reader.tensors}
    pairs = [("output_norm.weight", "model.norm.weight")]
    pairs += [(f"blk.{i}.attn_norm.weight", f"model.layers.{orig}.input_layernorm.weight") for i, orig in enumerate(layer_map)]
    for g_name, hf_name in pairs:
        t = tensors.get(g_name)
        if t is None or int(t.tensor_type) != int(gguf().GGMLQuantizationType.F32):
            continue
        ref = _safetensors_tensor(src, hf_name)
        mine = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if ref is None or ref.shape != mine.shape:
            continue
        if not np.array_equal(ref, mine):
            return [f"weights: {g_name} differs from {hf_name} of the profile's source checkpoint {src}"]
    return []


def _comparable(h: str) -> bool:
    return bool(h) and not h.startswith("mem:")


def differences(profile: Profile, facts: ModelFacts) -> tuple[list[str], list[str]]:
    """``(geometry, identity)`` differences between ``profile`` and the model ``facts`` describe."""
    geo: list[str] = []
    ident: list[str] = []
    want_arch = HF_TO_GGUF.get(profile.arch)
    if want_arch is None:
        geo.append(f"the profile's architecture {profile.arch!r} is not supported by TAPPA")
    elif want_arch != facts.gguf_arch:
        geo.append(f"architecture: profile {profile.arch} (GGUF {want_arch!r}) vs model {facts.hf_arch or facts.gguf_arch!r}")
    elif facts.hf_arch is not None and facts.hf_arch != profile.arch:
        ident.append(f"architecture class: profile {profile.arch} vs model {facts.hf_arch}")
    for name, a, b in (
        ("layers", profile.n_layer, facts.n_layer),
        ("query heads", profile.n_head, facts.n_head),
        ("KV heads", profile.n_head_kv, facts.n_head_kv),
        ("head dim", profile.head_dim, facts.head_dim),
    ):
        if a != b:
            geo.append(f"{name}: profile {a} vs model {b}")
    if facts.layer_map is not None and profile.n_layer == facts.n_layer and tuple(profile.layer_map.tolist()) != facts.layer_map:
        geo.append(f"layer map: profile {profile.layer_map.tolist()} vs model {list(facts.layer_map)}")
    if facts.removed_layers and profile.n_layer == facts.n_layer and tuple(sorted(profile.removed_layers)) != tuple(sorted(facts.removed_layers)):
        geo.append(f"removed layers: profile {sorted(profile.removed_layers)} vs model {sorted(facts.removed_layers)}")

    prov = profile.provenance
    for label, mine, known in (("weights", prov.weights_sha256, facts.weights), ("tokenizer", prov.tokenizer_sha256, facts.tokenizer)):
        if not _comparable(mine):
            continue
        for theirs, source in known:
            if _comparable(theirs) and theirs != mine:
                ident.append(f"{label} sha256: profile {mine[:12]}… vs {source} {theirs[:12]}…")
                break
    src = _source_config(profile) if facts.hparams else None
    if src is not None:
        path, cfg = src
        for name, value in facts.hparams.items():
            theirs = cfg.get(name)
            if isinstance(theirs, int) and theirs != value:
                ident.append(f"{name}: the profile's source checkpoint {path} has {theirs}, the model {value}")
    if not geo and not facts.weights and facts.gguf_path is not None:
        # no recorded digest to compare: look at the weights themselves, if the source checkpoint is here
        ident += norm_differences(profile, facts.gguf_path, [int(x) for x in profile.layer_map.tolist()])
    return geo, ident


def require_match(profile: Profile, facts: ModelFacts, profile_name: str, force: bool = False) -> None:
    """Raise :class:`ProfileError` saying exactly what differs (identity differences pass with ``force``)."""
    geo, ident = differences(profile, facts)
    problems = geo + ([] if force else ident)
    if problems:
        hint = "" if geo or not ident else " (pass --force if this profile really belongs to this model)"
        raise ProfileError(f"profile {profile_name} does not belong to {facts.where}: {'; '.join(problems)}{hint}")
