"""The bundled default model: a small Llama trained by the project (tappa_local/assets/tappa-mini).

It ships as a transformers checkpoint; :func:`ensure_default_gguf` converts it once with
``tappa-convert`` — calibrating its TAPPA profile on local text and storing a default KV
budget — and caches the GGUF, keyed by the checkpoint's bytes and the recipe below.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ModelLoadError, ToolchainError
from .localmodels import cache_root, stdlib_corpus

ASSET_DIR = Path(__file__).resolve().parent / "assets" / "tappa-mini"


@dataclass(frozen=True)
class DefaultRecipe:
    """How the bundled checkpoint becomes the default GGUF."""

    outtype: str = "f16"
    calib_samples: int = 16
    calib_seq_len: int = 1024
    calib_window: int = 32
    kv_budget: int = 256  # default average tokens kept per layer, stored as tappa.budget.total
    window: int = 32
    n_sink: int = 16  # the earlier tappa-mini's sink spanned its prompt header (4 lost it, commit d109d49); harmless now
    allocation: str = "tappa"
    version: int = 1


def asset_dir() -> Path:
    if not (ASSET_DIR / "config.json").is_file():
        raise ModelLoadError(f"the bundled model is missing from {ASSET_DIR} (incomplete checkout?)")
    return ASSET_DIR


def _fingerprint(d: Path, recipe: DefaultRecipe) -> str:
    h = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    for f in sorted(d.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".model"):
            h.update(f.name.encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def ensure_default_gguf(recipe: DefaultRecipe = DefaultRecipe(), progress: bool = False) -> Path:
    """The bundled model as a GGUF with its TAPPA profile (built once, then cached)."""
    src = asset_dir()
    dest = cache_root() / "default" / f"tappa-mini-{recipe.outtype}-{_fingerprint(src, recipe)}.gguf"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    n_layer = int(json.loads((src / "config.json").read_text())["num_hidden_layers"])
    with tempfile.TemporaryDirectory(prefix="tappa-calib-") as tmp:
        # calibration text: standard-library source, as the model saw in training
        for i, text in enumerate(stdlib_corpus(max_chars=600_000, skip=5)):
            (Path(tmp) / f"doc{i:04d}.txt").write_text(text)
        cmd = [
            sys.executable, "-m", "tappa_convert.cli", str(src), "-o", str(dest), "--outtype", recipe.outtype,
            "--corpus", tmp, "--n-samples", str(recipe.calib_samples), "--seq-len", str(recipe.calib_seq_len),
            "--window", str(recipe.calib_window), "--allocation", recipe.allocation,
            "--budget-total", str(recipe.kv_budget * n_layer), "--budget-window", str(recipe.window),
            "--budget-n-sink", str(recipe.n_sink), "--progress" if progress else "--no-progress", "-q",
        ]
        proc = subprocess.run(cmd, capture_output=not progress, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0 or not dest.is_file():
        tail = "\n".join(((proc.stderr or "") + (proc.stdout or "")).splitlines()[-15:])
        raise ToolchainError(f"converting the bundled model failed (exit {proc.returncode}):\n{tail}")
    return dest
