"""Calibration options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..budget import Allocation
from .errors import CalibrationConfigError

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class CalibrationConfig:
    """Everything that determines a calibration run (besides the model and the corpus).

    Sampling: the corpus documents are tokenized without special tokens and concatenated
    (EOS between documents when the tokenizer has one) into one token stream; sample ``k`` is
    ``[BOS] + stream[k*(seq_len-1) : (k+1)*(seq_len-1)]`` (or ``stream[k*seq_len : (k+1)*seq_len]``
    when ``add_bos`` is off or the tokenizer has no BOS). The first ``n_samples`` full samples
    are used; a shorter tail is dropped.
    """

    n_samples: int = 128
    """calibration samples (sequences); fewer are used if the corpus runs out"""
    seq_len: int = 1024
    """tokens per sample (BOS included)"""
    window: int = 32
    """W of the windowed (KV-compression) q-similarity"""
    beta: float = 0.2
    """beta of the TAPPA prune score BI_norm + beta * (1 - q_norm)"""
    n_sink: int = 4
    """leading positions of each sample excluded from the query statistics and the q-sim windows"""
    device: str = "cpu"
    """cpu, cuda, cuda:N or mps (ignored when ``device_map`` is set)"""
    dtype: str = "auto"
    """auto (float32 on CPU, the checkpoint's dtype elsewhere), float32, float16 or bfloat16"""
    device_map: str | dict[str, Any] | None = None
    """passed to ``from_pretrained`` (e.g. ``"auto"``); layers may then live on several devices or be offloaded"""
    offload_folder: str | None = None
    """where accelerate offloads weights mapped to ``"disk"``"""
    batch_size: int = 1
    """samples per forward pass; memory is bounded by one batch"""
    add_bos: bool = True
    """start every sample with the tokenizer's BOS token (if it has one)"""
    text_field: str = "text"
    """field holding the text in ``.jsonl`` files and saved datasets"""
    dataset_split: str | None = None
    """split of a saved ``DatasetDict`` (default: ``train`` if present, else the first split)"""
    budget_allocation: str = Allocation.TAPPA.value
    """default per-layer budget allocation written to the profile: tappa, uniform or pyramid"""
    budget_total: int = 0
    """default total KV budget (tokens over all layers), 0: full cache"""
    budget_window: int = 32
    """default recent window every layer keeps"""
    budget_n_sink: int = 4
    """default sink tokens every layer keeps"""
    seed: int = 0
    """seeds torch before the forward passes (the passes are deterministic in eval mode)"""
    hash_weights: bool = True
    """hash the weight files for the provenance (slow for very large checkpoints)"""
    trust_remote_code: bool = False
    """forwarded to ``from_pretrained``"""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`CalibrationConfigError` on the first inconsistent value."""

        def bad(msg: str) -> None:
            raise CalibrationConfigError(msg)

        if self.n_samples < 1:
            bad(f"n_samples must be >= 1, got {self.n_samples}")
        if self.window < 2:
            bad(f"window must be >= 2 (a q-similarity needs two queries), got {self.window}")
        if self.n_sink < 0:
            bad(f"n_sink must be >= 0, got {self.n_sink}")
        if self.seq_len < 2:
            bad(f"seq_len must be >= 2, got {self.seq_len}")
        if self.seq_len - self.n_sink < self.window:
            bad(
                f"seq_len ({self.seq_len}) minus n_sink ({self.n_sink}) must hold at least one window of "
                f"{self.window} tokens"
            )
        if self.batch_size < 1:
            bad(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.beta >= 0.0):
            bad(f"beta must be >= 0, got {self.beta}")
        if self.dtype not in DTYPES:
            bad(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device_map is None and self.device.split(":")[0] not in DEVICES:
            bad(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        try:
            Allocation(self.budget_allocation)
        except ValueError:
            bad(f"budget_allocation must be one of {', '.join(a.value for a in Allocation)}, got {self.budget_allocation!r}")
        if self.budget_total < 0 or self.budget_window < 0 or self.budget_n_sink < 0:
            bad("budget_total, budget_window and budget_n_sink must be >= 0")
        if not self.text_field:
            bad("text_field must not be empty")
