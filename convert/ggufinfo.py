"""Read a GGUF file for conversion: geometry, the stored ``tappa.*`` keys, and a structural check
that catches corrupt and truncated files before llama.cpp (or a rename) ever sees them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tappa_local import schema as S
from tappa_local.errors import ModelLoadError, UnsupportedModelError
from tappa_local.modelfile import ArrayInfo, check_gguf_header, read_gguf_metadata
from tappa_local.profile import Profile

from .ggufpy import gguf

@dataclass(frozen=True)
class GGUFInfo:
    """What conversion needs to know about one GGUF file."""

    path: Path
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_tensors: int
    file_type: int | None
    size: int
    metadata: dict[str, Any] = field(repr=False)  # every key; arrays loaded for tappa.* keys only

    @property
    def file_type_name(self) -> str | None:
        """``general.file_type`` as llama.cpp names it (``F32``, ``Q8_0``, ``Q4_K_M``, ...)."""
        if self.file_type is None:
            return None
        try:
            name = gguf().LlamaFileType(self.file_type).name
        except ValueError:
            return str(self.file_type)
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")

    @property
    def tappa_kv(self) -> dict[str, Any]:
        return {k: v for k, v in self.metadata.items() if k.startswith(S.NAMESPACE)}

    @property
    def has_profile(self) -> bool:
        return S.VERSION in self.metadata

    def profile(self) -> Profile | None:
        """The stored profile (``ProfileError`` if one is present but malformed), or None."""
        return Profile.from_gguf_kv(self.tappa_kv) if self.has_profile else None

    def arch_key(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.arch}.{key}", default)

    def per_layer_arch_keys(self) -> list[str]:
        """``<arch>.*`` keys holding one value per layer (arrays of length ``n_layer``)."""
        return [
            k
            for k, v in self.metadata.items()
            if k.startswith(f"{self.arch}.") and isinstance(v, ArrayInfo) and v[0] != "str" and v[1] == self.n_layer
        ]


def check_integrity(path: Path) -> int:
    """Parse the whole GGUF structure with gguf-py and check every tensor's bytes are in the file.

    Returns the number of tensors. Raises :class:`ModelLoadError` naming what is wrong.
    """
    size = path.stat().st_size
    try:
        reader = gguf().GGUFReader(path, "r")
    except Exception as exc:  # noqa: BLE001 - gguf-py raises ValueError, IndexError, struct and numpy errors alike
        raise ModelLoadError(f"{path} is corrupt or truncated: {type(exc).__name__}: {exc}".rstrip(": ")) from None
    try:
        end = reader.data_offset
        for t in reader.tensors:
            end = max(end, int(t.data_offset) + int(t.n_bytes))  # data_offset is absolute
        if end > size:
            raise ModelLoadError(f"{path} is truncated: its tensors need {end} bytes, the file has {size}")
        return len(reader.tensors)
    finally:
        del reader  # drop the memmap


def read_gguf_info(path: str | Path, check_data: bool = True, require_arch: Callable[[str, str], object] | None = None) -> GGUFInfo:
    """Geometry and metadata of ``path``; ``check_data`` also verifies the tensor section;
    ``require_arch(arch, where)`` vets the architecture before its keys are read."""
    p = Path(path)
    check_gguf_header(p)
    meta = read_gguf_metadata(p, keep_arrays=frozenset(S.KEY_BY_NAME))
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelLoadError(f"{p} has no general.architecture key (not a model GGUF?)")
    if require_arch is not None:
        require_arch(arch, str(p))
    n_tensors = check_integrity(p) if check_data else -1

    def scalar(key: str, default: int | None = None) -> int:
        v = meta.get(f"{arch}.{key}", default)
        if isinstance(v, ArrayInfo):
            raise UnsupportedModelError(f"{p}: {arch}.{key} differs per layer; TAPPA needs the same value in every layer")
        if v is None:
            raise ModelLoadError(f"{p} lacks {arch}.{key}")
        return int(v)  # type: ignore[arg-type]

    n_layer = scalar("block_count")
    n_head = scalar("attention.head_count")
    n_head_kv = scalar("attention.head_count_kv", n_head)
    n_embd = scalar("embedding_length")
    head_dim = scalar("attention.key_length", n_embd // max(1, n_head))
    ft = meta.get("general.file_type")
    return GGUFInfo(
        path=p,
        arch=arch,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_tensors=n_tensors,
        file_type=int(ft) if isinstance(ft, int) else None,
        size=p.stat().st_size,
        metadata=meta,
    )
