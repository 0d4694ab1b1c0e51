"""The TAPPA profile of a model: what calibration measured and what runtime and converter use.

One on-disk format: a single ``.safetensors`` file whose tensors are the numeric arrays and
whose ``__metadata__`` holds the scalars and provenance as JSON (``tappa.profile`` = schema
version). safetensors is standard, safe to load, and readable without torch.

A profile maps onto the ``tappa.*`` GGUF keys of :mod:`tappa_local.schema` one to one
(:meth:`Profile.to_gguf_kv` / :meth:`Profile.from_gguf_kv`), so ``profile -> GGUF -> profile``
is exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import schema as S
from .budget import Allocation, pyramid_weights, tappa_weights
from .errors import ProfileError

FORMAT_KEY = "tappa.profile"


@dataclass(frozen=True)
class Provenance:
    model_id: str
    weights_sha256: str
    tokenizer_sha256: str
    corpus_sha256: str
    n_samples: int
    n_tokens: int
    seq_len: int
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""


@dataclass(frozen=True)
class Profile:
    """Per-layer and per-head calibration results. Arrays are float32 (orders int32)."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    layer_map: np.ndarray  # [L] original layer index of each layer
    qsim_window: int
    qsim_layer: np.ndarray  # [L]     post-RoPE, windowed (KV-compression form)
    qsim_head: np.ndarray  # [L, H]
    qsim_kv_head: np.ndarray  # [L, Hkv]
    qsim_prune_layer: np.ndarray  # [L]     pre-RoPE, all pairs (pruning form)
    qsim_prune_head: np.ndarray  # [L, H]
    bi_layer: np.ndarray  # [L] Block Influence
    prune_beta: float
    prune_score: np.ndarray  # [L]
    prune_order: np.ndarray  # [L] layer indices, pruned first first
    budget_layer_frac: np.ndarray  # [L] sums to 1
    budget_allocation: str
    provenance: Provenance
    qstats_mean: np.ndarray | None = None  # [L, H, D]
    qstats_var: np.ndarray | None = None  # [L, H, D]
    qstats_n_sink_skipped: int = 0
    budget_total: int = 0  # default total budget (tokens over all layers), 0: none
    budget_window: int = 32
    budget_n_sink: int = 4
    budget_scorer: str | None = None  # default eviction scorer (tappa.budget.scorer)
    removed_layers: tuple[int, ...] = ()

    # ------------------------------------------------------------------ checks

    def __post_init__(self) -> None:
        # stored as f32 in GGUF: keep the value a GGUF round trip gives back
        object.__setattr__(self, "prune_beta", float(np.float32(self.prune_beta)))
        L, H, Hkv, D = self.n_layer, self.n_head, self.n_head_kv, self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "layer_map": (L,),
            "qsim_layer": (L,),
            "qsim_head": (L, H),
            "qsim_kv_head": (L, Hkv),
            "qsim_prune_layer": (L,),
            "qsim_prune_head": (L, H),
            "bi_layer": (L,),
            "prune_score": (L,),
            "prune_order": (L,),
            "budget_layer_frac": (L,),
        }
        if self.qstats_mean is not None or self.qstats_var is not None:
            shapes["qstats_mean"] = (L, H, D)
            shapes["qstats_var"] = (L, H, D)
        if min(L, H, Hkv, D) <= 0 or H % Hkv != 0:
            raise ProfileError(f"bad profile geometry: n_layer={L}, n_head={H}, n_head_kv={Hkv}, head_dim={D}")
        for name, shape in shapes.items():
            arr = getattr(self, name)
            if arr is None or tuple(np.shape(arr)) != shape:
                raise ProfileError(f"profile field {name} has shape {None if arr is None else np.shape(arr)}, expected {shape}")
        if sorted(np.asarray(self.prune_order).tolist()) != list(range(L)):
            raise ProfileError("prune_order must be a permutation of the layer indices")
        frac = np.asarray(self.budget_layer_frac, dtype=np.float64)
        if (frac < 0).any() or abs(frac.sum() - 1.0) > 1e-4:
            raise ProfileError(f"budget_layer_frac must be >= 0 and sum to 1 (sums to {frac.sum():.6f})")

    # ------------------------------------------------------------------ derived

    def layer_frac_for(self, allocation: Allocation | str, pyramid_beta: float = 20.0) -> np.ndarray:
        """Per-layer budget shares for an allocation, normalised to sum to 1."""
        kind = Allocation(allocation)
        if kind is Allocation.UNIFORM:
            w = np.ones(self.n_layer)
        elif kind is Allocation.PYRAMID:
            w = np.asarray(pyramid_weights(self.n_layer, pyramid_beta))
        else:
            w = np.clip(np.asarray(tappa_weights(self.qsim_layer.tolist())), 0.0, None)
        if w.sum() <= 0:
            w = np.ones(self.n_layer)
        return (w / w.sum()).astype(np.float32)

    def with_budget(self, allocation: Allocation | str, total: int = 0, window: int | None = None, n_sink: int | None = None) -> "Profile":
        """A copy whose default budget plan is ``allocation`` (and optionally a total/window/sinks)."""
        return replace(
            self,
            budget_layer_frac=self.layer_frac_for(allocation),
            budget_allocation=Allocation(allocation).value,
            budget_total=int(total),
            budget_window=self.budget_window if window is None else int(window),
            budget_n_sink=self.budget_n_sink if n_sink is None else int(n_sink),
        )

    def pruned(self, drop: list[int]) -> "Profile":
        """The profile of the model with layers ``drop`` (indices in this profile) removed."""
        drop_set = set(int(i) for i in drop)
        if not drop_set:
            return self
        bad = [i for i in drop_set if not 0 <= i < self.n_layer]
        if bad:
            raise ProfileError(f"cannot drop layers {sorted(bad)}: the profile has {self.n_layer} layers")
        if len(drop_set) >= self.n_layer:
            raise ProfileError(f"cannot drop {len(drop_set)} of {self.n_layer} layers: at least one must remain")
        keep = [i for i in range(self.n_layer) if i not in drop_set]
        renum = {old: new for new, old in enumerate(keep)}
        order = [renum[i] for i in np.asarray(self.prune_order).tolist() if i in renum]
        frac = np.asarray(self.budget_layer_frac, dtype=np.float64)[keep]
        frac = frac / frac.sum() if frac.sum() > 0 else np.full(len(keep), 1.0 / len(keep))
        sel = lambda a: None if a is None else np.asarray(a)[keep]  # noqa: E731
        return replace(
            self,
            n_layer=len(keep),
            layer_map=np.asarray(self.layer_map)[keep],
            qsim_layer=sel(self.qsim_layer),
            qsim_head=sel(self.qsim_head),
            qsim_kv_head=sel(self.qsim_kv_head),
            qsim_prune_layer=sel(self.qsim_prune_layer),
            qsim_prune_head=sel(self.qsim_prune_head),
            bi_layer=sel(self.bi_layer),
            prune_score=sel(self.prune_score),
            prune_order=np.asarray(order, dtype=np.int32),
            budget_layer_frac=frac.astype(np.float32),
            qstats_mean=sel(self.qstats_mean),
            qstats_var=sel(self.qstats_var),
            removed_layers=tuple(sorted(set(self.removed_layers) | {int(self.layer_map[i]) for i in drop_set})),
        )

    # ------------------------------------------------------------------ GGUF mapping

    def to_gguf_kv(self) -> dict[str, tuple[Any, S.Kind]]:
        """Every ``tappa.*`` key this profile defines, with its schema type."""
        f32 = lambda a: np.asarray(a, dtype=np.float32).reshape(-1).tolist()  # noqa: E731
        i32 = lambda a: np.asarray(a, dtype=np.int32).reshape(-1).tolist()  # noqa: E731
        p = self.provenance
        kv: dict[str, tuple[Any, S.Kind]] = {
            S.VERSION: (S.SCHEMA_VERSION, S.Kind.U32),
            S.N_LAYER: (self.n_layer, S.Kind.U32),
            S.N_HEAD: (self.n_head, S.Kind.U32),
            S.N_HEAD_KV: (self.n_head_kv, S.Kind.U32),
            S.HEAD_DIM: (self.head_dim, S.Kind.U32),
            S.ARCH: (self.arch, S.Kind.STR),
            S.LAYER_MAP: (i32(self.layer_map), S.Kind.ARR_I32),
            S.QSIM_WINDOW: (self.qsim_window, S.Kind.U32),
            S.QSIM_LAYER: (f32(self.qsim_layer), S.Kind.ARR_F32),
            S.QSIM_HEAD: (f32(self.qsim_head), S.Kind.ARR_F32),
            S.QSIM_KV_HEAD: (f32(self.qsim_kv_head), S.Kind.ARR_F32),
            S.QSIM_PRUNE_LAYER: (f32(self.qsim_prune_layer), S.Kind.ARR_F32),
            S.QSIM_PRUNE_HEAD: (f32(self.qsim_prune_head), S.Kind.ARR_F32),
            S.BI_LAYER: (f32(self.bi_layer), S.Kind.ARR_F32),
            S.PRUNE_BETA: (float(self.prune_beta), S.Kind.F32),
            S.PRUNE_SCORE: (f32(self.prune_score), S.Kind.ARR_F32),
            S.PRUNE_ORDER: (i32(self.prune_order), S.Kind.ARR_I32),
            S.BUDGET_FRAC: (f32(self.budget_layer_frac), S.Kind.ARR_F32),
            S.BUDGET_TOTAL: (int(self.budget_total), S.Kind.U32),
            S.BUDGET_WINDOW: (int(self.budget_window), S.Kind.U32),
            S.BUDGET_N_SINK: (int(self.budget_n_sink), S.Kind.U32),
            S.BUDGET_ALLOCATION: (self.budget_allocation, S.Kind.STR),
            S.QSTATS_N_SINK_SKIPPED: (int(self.qstats_n_sink_skipped), S.Kind.U32),
            S.PROV_MODEL_ID: (p.model_id, S.Kind.STR),
            S.PROV_WEIGHTS_SHA256: (p.weights_sha256, S.Kind.STR),
            S.PROV_TOKENIZER_SHA256: (p.tokenizer_sha256, S.Kind.STR),
            S.PROV_CORPUS_SHA256: (p.corpus_sha256, S.Kind.STR),
            S.PROV_N_SAMPLES: (int(p.n_samples), S.Kind.U32),
            S.PROV_N_TOKENS: (int(p.n_tokens), S.Kind.U32),
            S.PROV_SEQ_LEN: (int(p.seq_len), S.Kind.U32),
            S.PROV_VERSIONS: (json.dumps(p.versions, sort_keys=True), S.Kind.STR),
            S.PROV_CREATED: (p.created, S.Kind.STR),
        }
        if self.removed_layers:
            kv[S.PRUNED_LAYERS] = (list(self.removed_layers), S.Kind.ARR_I32)
        if self.budget_scorer:
            kv[S.BUDGET_SCORER] = (self.budget_scorer, S.Kind.STR)
        if self.qstats_mean is not None and self.qstats_var is not None:
            kv[S.QSTATS_MEAN] = (f32(self.qstats_mean), S.Kind.ARR_F32)
            kv[S.QSTATS_VAR] = (f32(self.qstats_var), S.Kind.ARR_F32)
        return kv

    @classmethod
    def from_gguf_kv(cls, kv: dict[str, Any]) -> "Profile":
        """Rebuild a profile from ``tappa.*`` values (as read back from a GGUF)."""
        version = kv.get(S.VERSION)
        if version is None:
            raise ProfileError("no tappa.version: the file carries no TAPPA profile")
        if int(version) != S.SCHEMA_VERSION:
            raise ProfileError(f"tappa.version {version} is not supported (this tappa-local reads version {S.SCHEMA_VERSION})")
        missing = [k.name for k in S.KEYS if k.required and k.name not in kv]
        if missing:
            raise ProfileError(f"the TAPPA profile is incomplete, missing: {', '.join(missing)}")
        L, H, Hkv, D = (int(kv[k]) for k in (S.N_LAYER, S.N_HEAD, S.N_HEAD_KV, S.HEAD_DIM))

        def arr(key: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
            a = np.asarray(kv[key], dtype=dtype)
            if a.size != int(np.prod(shape)):
                raise ProfileError(f"{key} has {a.size} values, expected {int(np.prod(shape))} for shape {shape}")
            return a.reshape(shape)

        try:
            versions = json.loads(kv[S.PROV_VERSIONS])
        except (TypeError, ValueError) as exc:
            raise ProfileError(f"{S.PROV_VERSIONS} is not a JSON object: {exc}") from None
        has_stats = S.QSTATS_MEAN in kv and S.QSTATS_VAR in kv
        return cls(
            arch=str(kv[S.ARCH]),
            n_layer=L,
            n_head=H,
            n_head_kv=Hkv,
            head_dim=D,
            layer_map=arr(S.LAYER_MAP, (L,), np.int32),
            qsim_window=int(kv[S.QSIM_WINDOW]),
            qsim_layer=arr(S.QSIM_LAYER, (L,)),
            qsim_head=arr(S.QSIM_HEAD, (L, H)),
            qsim_kv_head=arr(S.QSIM_KV_HEAD, (L, Hkv)),
            qsim_prune_layer=arr(S.QSIM_PRUNE_LAYER, (L,)),
            qsim_prune_head=arr(S.QSIM_PRUNE_HEAD, (L, H)),
            bi_layer=arr(S.BI_LAYER, (L,)),
            prune_beta=float(kv[S.PRUNE_BETA]),
            prune_score=arr(S.PRUNE_SCORE, (L,)),
            prune_order=arr(S.PRUNE_ORDER, (L,), np.int32),
            budget_layer_frac=arr(S.BUDGET_FRAC, (L,)),
            budget_allocation=str(kv[S.BUDGET_ALLOCATION]),
            budget_total=int(kv.get(S.BUDGET_TOTAL, 0)),
            budget_window=int(kv.get(S.BUDGET_WINDOW, 32)),
            budget_n_sink=int(kv.get(S.BUDGET_N_SINK, 4)),
            budget_scorer=str(kv[S.BUDGET_SCORER]) if S.BUDGET_SCORER in kv else None,
            qstats_mean=arr(S.QSTATS_MEAN, (L, H, D)) if has_stats else None,
            qstats_var=arr(S.QSTATS_VAR, (L, H, D)) if has_stats else None,
            qstats_n_sink_skipped=int(kv.get(S.QSTATS_N_SINK_SKIPPED, 0)),
            removed_layers=tuple(int(x) for x in kv.get(S.PRUNED_LAYERS, [])),
            provenance=Provenance(
                model_id=str(kv[S.PROV_MODEL_ID]),
                weights_sha256=str(kv[S.PROV_WEIGHTS_SHA256]),
                tokenizer_sha256=str(kv[S.PROV_TOKENIZER_SHA256]),
                corpus_sha256=str(kv[S.PROV_CORPUS_SHA256]),
                n_samples=int(kv[S.PROV_N_SAMPLES]),
                n_tokens=int(kv[S.PROV_N_TOKENS]),
                seq_len=int(kv[S.PROV_SEQ_LEN]),
                versions=versions,
                created=str(kv.get(S.PROV_CREATED, "")),
            ),
        )

    # ------------------------------------------------------------------ file format

    def save(self, path: str | Path) -> Path:
        """Write the profile as one ``.safetensors`` file (atomically)."""
        from safetensors.numpy import save_file  # noqa: PLC0415

        kv = self.to_gguf_kv()
        tensors: dict[str, np.ndarray] = {}
        scalars: dict[str, Any] = {}
        for key, (value, kind) in kv.items():
            if kind in (S.Kind.ARR_F32, S.Kind.ARR_I32):
                tensors[key] = np.asarray(value, dtype=np.float32 if kind is S.Kind.ARR_F32 else np.int32)
            else:
                scalars[key] = value
        out = Path(path)
        tmp = out.with_name(out.name + ".tmp")
        save_file(tensors, str(tmp), metadata={FORMAT_KEY: str(S.SCHEMA_VERSION), "scalars": json.dumps(scalars, sort_keys=True)})
        tmp.replace(out)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        from safetensors import SafetensorError  # noqa: PLC0415
        from safetensors.numpy import load_file  # noqa: PLC0415
        from safetensors import safe_open  # noqa: PLC0415

        p = Path(path)
        if not p.is_file():
            raise ProfileError(f"{p}: no such profile file")
        try:
            with safe_open(str(p), framework="np") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ProfileError(f"{p} is not a tappa profile (.safetensors): {exc}") from None
        if FORMAT_KEY not in meta:
            raise ProfileError(f"{p} is a safetensors file but not a tappa profile (no {FORMAT_KEY} metadata)")
        kv: dict[str, Any] = json.loads(meta.get("scalars", "{}"))
        kv.update({k: v for k, v in tensors.items()})
        return cls.from_gguf_kv(kv)

    def equals(self, other: "Profile") -> bool:
        """Exact equality, arrays compared element-wise."""
        a, b = self.to_gguf_kv(), other.to_gguf_kv()
        return a.keys() == b.keys() and all(a[k][0] == b[k][0] for k in a)
