"""Loading the model and tokenizer for calibration (local directory or hub id)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import CalibrationConfig
from .errors import CalibrationConfigError, ModelSourceError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any
    model_id: str  # as given by the user (path or hub id)
    local_dir: Path | None  # directory holding the weight and tokenizer files, if known
    input_device: torch.device  # where input ids go


def resolve_source(model: str | Path) -> tuple[str, Path | None]:
    """``(model_id, local_dir)``: a path that exists is local; a path-like string that does not
    exist is an error; anything else is a hub id (``local_dir`` found after loading)."""
    s = str(model)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelSourceError(f"{p} is a file; give the model's directory (with config.json) or a hub id")
        if not (p / "config.json").is_file():
            raise ModelSourceError(f"{p} has no config.json: not a transformers model directory")
        return s, p.resolve()
    if isinstance(model, Path) or s.startswith(("/", ".", "~")) or s.count("/") > 1 or "\\" in s:
        raise ModelSourceError(f"model directory not found: {s}")
    return s, None


def _hub_snapshot(model_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - provenance of a hub model is best effort
        return None


def torch_dtype(config: CalibrationConfig) -> Any:
    """The ``dtype`` given to ``from_pretrained``."""
    if config.dtype != "auto":
        return _DTYPES[config.dtype]
    on_cpu = config.device_map is None and config.device == "cpu"
    return torch.float32 if on_cpu else "auto"


def _input_device(model: Any) -> torch.device:
    emb = model.get_input_embeddings()
    dev = next(emb.parameters()).device if emb is not None else torch.device("cpu")
    if dev.type == "meta":  # offloaded: accelerate's hooks move the inputs
        hook = getattr(emb, "_hf_hook", None)
        exec_dev = getattr(hook, "execution_device", None)
        return torch.device(exec_dev) if exec_dev is not None else torch.device("cpu")
    return dev


def load(model: str | Path, config: CalibrationConfig) -> LoadedModel:
    """Load tokenizer and causal LM (eval mode, no KV cache) as ``config`` says."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    model_id, local_dir = resolve_source(model)
    src = str(local_dir) if local_dir is not None else model_id
    kwargs: dict[str, Any] = {"dtype": torch_dtype(config), "trust_remote_code": config.trust_remote_code}
    if config.device_map is not None:
        kwargs["device_map"] = config.device_map
        if config.offload_folder is not None:
            kwargs["offload_folder"] = config.offload_folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=config.trust_remote_code)
        lm = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"cannot load {model_id}: {first}") from None
    if config.device_map is None:
        try:
            lm = lm.to(config.device)
        except (RuntimeError, AssertionError) as exc:
            raise CalibrationConfigError(f"cannot use device {config.device!r}: {exc}") from None
    lm.eval()
    if local_dir is None:
        local_dir = _hub_snapshot(model_id)
    return LoadedModel(lm, tokenizer, model_id, local_dir, _input_device(lm))


def wrap(model: Any, tokenizer: Any, model_id: str, local_dir: Path | None = None) -> LoadedModel:
    """An already loaded model (e.g. built in memory) in the form :func:`load` returns."""
    model.eval()
    return LoadedModel(model, tokenizer, model_id, local_dir, _input_device(model))
