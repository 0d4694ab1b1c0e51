"""HF checkpoint -> GGUF with the pinned ``convert_hf_to_gguf.py`` (through
:func:`tappa_local.localmodels.convert_hf_to_gguf`, never a re-implementation).

The script's own output is captured (its last lines are quoted if it fails); progress is the
size of the file it is writing against an estimate from the checkpoint's tensor headers.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tappa_local.localmodels import convert_hf_to_gguf

from .checkpoint import Checkpoint
from .progress import ProgressConfig, bar

#: ``--outtype`` choices of the pinned converter that tappa-convert offers
OUTTYPES: tuple[str, ...] = ("auto", "f32", "f16", "bf16", "q8_0")

_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class HFConvertResult:
    path: Path
    seconds: float
    bytes: int


def _safetensors_shapes(path: Path) -> list[tuple[str, list[int]]]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return [(v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"]


def estimate_gguf_bytes(ckpt: Checkpoint, outtype: str) -> int | None:
    """Roughly the size of the converted file (vectors stay f32, matrices take ``outtype``)."""
    per_matrix = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}.get(outtype)
    total = 0.0
    for f in ckpt.weight_files:
        if not f.name.endswith(".safetensors"):
            return None
        for dtype, shape in _safetensors_shapes(f):
            n = 1
            for d in shape:
                n *= int(d)
            if len(shape) <= 1:
                total += 4.0 * n
            else:
                total += n * (per_matrix if per_matrix is not None else min(_ST_BYTES.get(dtype, 2), 2))
    return int(total)


def stop_converter(out: Path) -> None:
    """Terminate the converter process writing ``out`` (a child of this process), if any."""
    try:
        import psutil  # noqa: PLC0415 - optional (installed with the calib extra through accelerate)
    except ImportError:
        return
    mine = []
    for child in psutil.Process().children(recursive=True):
        try:
            if str(out) in child.cmdline():
                child.terminate()
                mine.append(child)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(mine, timeout=5)
    for child in alive:
        child.kill()


def convert_checkpoint(ckpt: Checkpoint, out: Path, outtype: str, progress: ProgressConfig) -> HFConvertResult:
    """Run the pinned converter into ``out`` with a progress bar on the bytes written."""
    t0 = time.perf_counter()
    result: dict[str, object] = {}

    def run() -> None:
        try:
            convert_hf_to_gguf(ckpt.path, out, outtype=outtype)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["exc"] = exc

    estimate = estimate_gguf_bytes(ckpt, outtype) if progress.enabled else None
    worker = threading.Thread(target=run, name="tappa-convert-hf", daemon=True)
    with bar(progress, f"converting ({outtype})", estimate, unit="B") as pb:
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
                size = out.stat().st_size if out.exists() else 0
                if pb.total is not None and size > pb.total:
                    pb.total = size
                if size > pb.n:
                    pb.update(size - pb.n)
        except BaseException:  # Ctrl-C / SIGTERM: the converter must not keep writing
            stop_converter(out)
            raise
        size = out.stat().st_size if out.exists() else 0
        pb.total = size
        pb.update(size - pb.n)
    if "exc" in result:
        raise result["exc"]  # type: ignore[misc]
    return HFConvertResult(out, time.perf_counter() - t0, size)
