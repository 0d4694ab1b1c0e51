"""Provenance of a calibration: which weights, tokenizer, tokens and software produced it.

Hashes over several files are manifests: ``sha256( for f in sorted(files): relpath(f) + b"\\0" + sha256(f).digest() )``.
When the model has no weight files on disk (an in-memory model), ``weights_sha256`` is the
same construction over ``name + b"\\0" + sha256(tensor bytes)`` of the state dict, prefixed
``mem:`` so it cannot be confused with a file manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "chat_template.jinja", "chat_template.json",
)
CHUNK = 1 << 20


def file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.digest()


def manifest_sha256(root: Path, files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + file_sha256(f))
    return h.hexdigest()


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name != "training_args.bin")


def tokenizer_files(model_dir: Path) -> list[Path]:
    return sorted(model_dir / n for n in TOKENIZER_FILES if (model_dir / n).is_file())


def weights_sha256(model_dir: Path | None, model: torch.nn.Module) -> str:
    files = weight_files(model_dir) if model_dir is not None and model_dir.is_dir() else []
    if files:
        return manifest_sha256(model_dir, files)  # type: ignore[arg-type]
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if t.device.type == "meta":
            continue
        data = t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return "mem:" + h.hexdigest()


def tokenizer_sha256(model_dir: Path | None) -> str:
    files = tokenizer_files(model_dir) if model_dir is not None and model_dir.is_dir() else []
    return manifest_sha256(model_dir, files) if files else ""  # type: ignore[arg-type]


def versions() -> dict[str, str]:
    import transformers  # noqa: PLC0415

    from .. import __version__  # noqa: PLC0415

    return {"tappa-local": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def utc_now() -> str:
    """ISO 8601 UTC timestamp, seconds resolution, e.g. ``2026-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
