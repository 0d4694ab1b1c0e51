"""llama.cpp's own quantizer (``llama_model_quantize``) for type conversion and layer removal.

The quantizer copies every metadata key (arrays included), converts tensors, and with
``prune_layers`` drops whole blocks and renumbers the remaining ``blk.N.*`` tensors and
``<arch>.block_count`` -- so no tensor renumbering is written here. ``only_copy`` keeps each
tensor's type and bytes (used when layers are removed without quantizing).
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tappa_local.errors import ModelLoadError
from tappa_local.llamalog import capture_llama_log, error_lines
from tappa_local.native import NativeLib, load

from .errors import ConvertError
from .progress import ProgressConfig, bar

_FTYPE_PREFIXES = ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_")
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


@dataclass(frozen=True)
class QuantizeRequest:
    """``ftype`` None copies tensors unchanged; ``prune`` are block indices (in the input) to remove."""

    ftype: str | None = None
    prune: tuple[int, ...] = ()
    nthread: int = 0
    allow_requantize: bool = False


def ftypes(lib: NativeLib | None = None) -> dict[str, int]:
    """Quantization type names (``Q4_K_M``, ``Q8_0``, ``F16``, ...) -> ``llama_ftype`` values, from the bindings."""
    mod = (lib or load()).llama_cpp
    out: dict[str, int] = {}
    for name in dir(mod):
        for prefix in _FTYPE_PREFIXES:
            if name.startswith(prefix):
                out[name[len(prefix):]] = int(getattr(mod, name))
    return dict(sorted(out.items()))


def ftype_value(name: str, lib: NativeLib | None = None) -> int:
    table = ftypes(lib)
    key = name.upper()
    if key not in table:
        raise ConvertError(f"unknown quantization type {name!r}; choose from {', '.join(table)}")
    return table[key]


def quantize(src: Path, dst: Path, req: QuantizeRequest, progress: ProgressConfig) -> None:
    """Run the quantizer ``src`` -> ``dst``; raise with llama.cpp's own reason when it fails.

    The call runs in a worker thread so Ctrl-C reaches the caller at once (the caller's
    scratch directory is removed; the abandoned worker ends with the process).
    """
    lib = load()
    lc = lib.llama_cpp
    params = lc.llama_model_quantize_default_params()
    params.nthread = int(req.nthread)
    params.allow_requantize = bool(req.allow_requantize)
    if req.ftype is None:
        params.only_copy = True
    else:
        params.ftype = ftype_value(req.ftype, lib)
    prune = sorted(set(int(i) for i in req.prune))  # remap_layer in llama-quant.cpp needs ascending order
    keep_alive = None
    if prune:
        keep_alive = (ctypes.c_int32 * (len(prune) + 1))(*prune, -1)
        params.prune_layers = ctypes.cast(keep_alive, ctypes.POINTER(ctypes.c_int32))

    desc = "copying tensors" if req.ftype is None else f"quantizing to {req.ftype.upper()}"
    result: dict[str, int | BaseException] = {}
    with bar(progress, desc, None, unit="tensor") as pb, capture_llama_log(lib, keep=400) as log:
        seen = 0

        def run(params: object = params, prune_buf: object = keep_alive) -> None:
            # the defaults keep the C structs alive for as long as the C call may read them
            try:
                result["rc"] = int(lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                result["exc"] = exc

        worker = threading.Thread(target=run, name="tappa-quantize", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            for line in list(log)[-8:]:
                m = _TENSOR_LINE.search(line)
                if m:
                    done, total = int(m.group(1)), int(m.group(2))
                    if pb.total != total:
                        pb.total = total
                    if done > seen:
                        pb.update(done - seen)
                        seen = done
        if pb.total:
            pb.update(max(0, int(pb.total) - seen))
    if "exc" in result:
        raise result["exc"]  # type: ignore[misc]
    if result.get("rc", 1) != 0 or not dst.is_file():
        reason = error_lines(log) or "no reason given"
        raise ModelLoadError(f"llama.cpp could not {'copy' if req.ftype is None else 'quantize'} {src}: {' | '.join(reason.splitlines())}")


def prune_list_text(prune: Sequence[int]) -> str:
    return ",".join(str(i) for i in sorted(prune)) or "none"
