"""A transformers checkpoint directory as conversion sees it: its geometry, architecture and files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tappa_local.errors import ModelLoadError

from .archs import gguf_arch_for
from .errors import ConvertError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict[str, Any]
    hf_arch: str
    gguf_arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    weight_files: tuple[Path, ...]
    tokenizer_files: tuple[Path, ...]

    @property
    def weight_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.weight_files)


def resolve_model(model: str) -> Path:
    """A local checkpoint directory for ``model`` (a path, or a hub id found in the local HF cache)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ConvertError(f"{model} is a file, not a transformers checkpoint directory or a .gguf file")
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ConvertError(f"{model}: no such directory")
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415
    except ImportError:
        raise ConvertError(f"{model}: no such directory (and huggingface_hub is not installed to fetch it as a hub id)") from None
    try:
        return Path(snapshot_download(repo_id=model))  # honours HF_HUB_OFFLINE
    except Exception as exc:  # noqa: BLE001 - hub errors come in many classes
        raise ConvertError(f"{model}: no such directory, and fetching it from the Hugging Face hub failed: {type(exc).__name__}: {exc}") from None


def read_checkpoint(path: Path) -> Checkpoint:
    """Read ``config.json`` and list the files; refuse unsupported architectures and incomplete checkpoints."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{path} has no config.json: not a transformers checkpoint")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{cfg_path} is not valid JSON: {exc}") from None
    archs = config.get("architectures") or []
    if not archs or not isinstance(archs[0], str):
        raise ModelLoadError(f"{cfg_path} names no architecture (no 'architectures' list)")
    hf_arch = archs[0]
    gguf_arch = gguf_arch_for(hf_arch, str(path))
    text = {**config, **config.get("text_config", {})}
    try:
        n_layer = int(text["num_hidden_layers"])
        n_head = int(text["num_attention_heads"])
        n_head_kv = int(text.get("num_key_value_heads") or n_head)
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // n_head)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{cfg_path} lacks the attention geometry ({exc})") from None
    weights = tuple(sorted(f for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES) and not f.name.startswith("training_args")))
    if not weights:
        raise ModelLoadError(f"{path} has no weight files (*.safetensors or *.bin)")
    tokenizer = tuple(path / n for n in TOKENIZER_FILES if (path / n).is_file())
    if not tokenizer:
        raise ModelLoadError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)")
    return Checkpoint(path, config, hf_arch, gguf_arch, n_layer, n_head, n_head_kv, head_dim, weights, tokenizer)
