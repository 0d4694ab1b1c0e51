"""Copy a GGUF through the pinned gguf-py, replacing metadata and nothing else.

Every tensor is copied byte for byte (same names, types, shapes, order and alignment), every
key not being replaced keeps its exact bytes (strings are copied as raw bytes, numbers with
their original GGUF type), and the ``tappa.*`` keys are replaced as a block at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tappa_local import schema as S
from tappa_local.profile import Profile

from .ggufpy import gguf
from .progress import ProgressConfig, bar


@dataclass(frozen=True)
class KVValue:
    """One metadata value with its GGUF type (``sub_type`` for arrays)."""

    value: Any
    vtype: Any  # gguf.GGUFValueType
    sub_type: Any = None


def schema_kv(kv: Mapping[str, tuple[Any, S.Kind]]) -> dict[str, KVValue]:
    """Typed values from :meth:`Profile.to_gguf_kv` (schema kinds -> GGUF value types)."""
    T = gguf().GGUFValueType
    scalar = {S.Kind.U32: T.UINT32, S.Kind.I32: T.INT32, S.Kind.F32: T.FLOAT32, S.Kind.STR: T.STRING}
    arrays = {S.Kind.ARR_F32: T.FLOAT32, S.Kind.ARR_I32: T.INT32}
    out: dict[str, KVValue] = {}
    for key, (value, kind) in kv.items():
        if kind in arrays:
            out[key] = KVValue(list(value), T.ARRAY, arrays[kind])
        else:
            out[key] = KVValue(value, scalar[kind])
    return out


def as_stored(profile: Profile) -> Profile:
    """``profile`` exactly as a GGUF stores it: f32 scalars (``prune_beta``) rounded to float32.

    Arrays are float32 already; a float64 scalar such as ``beta=0.2`` comes back from the file as
    ``float(np.float32(0.2))``. Reading a written profile back gives exactly this profile.
    """
    kv = profile.to_gguf_kv()
    return Profile.from_gguf_kv({k: float(np.float32(v)) if kind is S.Kind.F32 else v for k, (v, kind) in kv.items()})


def _field_value(field: Any) -> KVValue:
    """The exact value of a reader field (strings as raw bytes, numbers as read)."""
    T = gguf().GGUFValueType
    main = field.types[0]
    if main == T.STRING:
        return KVValue(field.parts[-1].tobytes(), main)
    if main == T.ARRAY:
        sub = field.types[-1]
        if sub == T.STRING:
            return KVValue([field.parts[i].tobytes() for i in field.data], main, sub)
        if sub == T.ARRAY:
            raise ValueError(f"nested arrays are not supported ({field.name})")
        return KVValue([field.parts[i].tolist()[0] for i in field.data], main, sub)
    return KVValue(field.parts[-1].tolist()[0], main)


def field_values(path: Path, keys: Sequence[str]) -> dict[str, KVValue]:
    """Exact typed values of ``keys`` (those present) in ``path``."""
    reader = gguf().GGUFReader(path, "r")
    try:
        return {k: _field_value(reader.fields[k]) for k in keys if k in reader.fields}
    finally:
        del reader


def slice_layers(value: KVValue, keep: Sequence[int]) -> KVValue:
    """A per-layer array restricted to the layers in ``keep``."""
    return KVValue([value.value[i] for i in keep], value.vtype, value.sub_type)


def rewrite_gguf(
    src: Path,
    dst: Path,
    *,
    replace: Mapping[str, KVValue],
    drop: Callable[[str], bool],
    append: Mapping[str, KVValue],
    progress: ProgressConfig,
    desc: str = "writing metadata",
) -> None:
    """Write ``dst`` = ``src`` with keys changed.

    ``replace``: new values for existing keys, kept in place; ``drop(key)``: keys to leave out;
    ``append``: keys written after all others (in the mapping's order).
    """
    g = gguf()
    reader = g.GGUFReader(src, "r")
    try:
        arch_field = reader.fields.get(g.Keys.General.ARCHITECTURE)
        arch = bytes(arch_field.parts[-1]).decode() if arch_field is not None else ""
        writer = g.GGUFWriter(dst, arch=arch, endianess=reader.endianess)
        writer.data_alignment = int(reader.alignment)
        for field in reader.fields.values():
            name = field.name
            if name == g.Keys.General.ARCHITECTURE or name.startswith("GGUF."):
                continue  # written by GGUFWriter itself
            if name in append:
                continue
            if name in replace:
                v = replace[name]
            elif drop(name):
                continue
            else:
                v = _field_value(field)
            writer.add_key_value(name, v.value, v.vtype, sub_type=v.sub_type)
        for name, v in append.items():
            writer.add_key_value(name, v.value, v.vtype, sub_type=v.sub_type)

        total = 0
        for t in reader.tensors:
            total += int(t.n_bytes)
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with bar(progress, desc, total, unit="B") as pb:
            for t in reader.tensors:
                writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
                pb.update(int(t.n_bytes))
        writer.close()
    finally:
        del reader
