"""Calibration corpus: documents from files, folders, JSONL or saved datasets, and the token samples.

Accepted corpus entries (each a path):

- a ``.txt`` file: the whole file is one document (UTF-8, undecodable bytes replaced);
- a ``.jsonl`` file: one JSON object per non-blank line, the document is its ``text_field``;
- a directory written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
  (recognised by ``state.json`` / ``dataset_dict.json``): one document per row's ``text_field``;
- any other directory: every ``.txt`` and ``.jsonl`` file below it, recursively, in sorted path order.

Raw strings go through :func:`iter_texts` instead (``calibrate_texts``).

Documents are read lazily, in the order given, and only until enough tokens are collected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CorpusError

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)


@dataclass(frozen=True)
class Document:
    """One calibration document and where it came from (for error messages)."""

    text: str
    origin: str


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def _iter_txt(path: Path) -> Iterator[Document]:
    yield Document(path.read_text(encoding="utf-8", errors="replace"), str(path))


def _iter_jsonl(path: Path, field: str) -> Iterator[Document]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or field not in obj:
                raise CorpusError(f"{path}:{lineno}: no {field!r} field (set the text field with --text-field)")
            value = obj[field]
            if not isinstance(value, str):
                raise CorpusError(f"{path}:{lineno}: field {field!r} is {type(value).__name__}, not a string")
            yield Document(value, f"{path}:{lineno}")


def _iter_saved_dataset(path: Path, field: str, split: str | None) -> Iterator[Document]:
    try:
        from datasets import DatasetDict, load_from_disk  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - datasets is a calib dependency
        raise CorpusError(f"{path} is a saved dataset but the `datasets` package is not installed ({exc})") from None
    try:
        ds: Any = load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types
        raise CorpusError(f"{path}: cannot load the saved dataset ({exc})") from None
    if isinstance(ds, DatasetDict):
        if split is None:
            split = "train" if "train" in ds else next(iter(ds), None)
        if split is None or split not in ds:
            raise CorpusError(f"{path}: no split {split!r} in the saved dataset (has: {', '.join(ds) or 'none'})")
        ds = ds[split]
    if field not in ds.column_names:
        raise CorpusError(f"{path}: the dataset has no column {field!r} (columns: {', '.join(ds.column_names)})")
    for i, value in enumerate(_column_iter(ds, field)):
        if not isinstance(value, str):
            raise CorpusError(f"{path}: row {i} field {field!r} is {type(value).__name__}, not a string")
        yield Document(value, f"{path}[{i}]")


def _column_iter(ds: Any, field: str, chunk: int = 1024) -> Iterator[Any]:
    for start in range(0, len(ds), chunk):
        yield from ds[start : start + chunk][field]


def _corpus_files(path: Path) -> list[Path]:
    """The text/JSONL files a corpus entry stands for (``[path]`` for a saved dataset)."""
    if path.is_dir():
        if _is_saved_dataset(path):
            return [path]
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
        if not files:
            raise CorpusError(f"{path}: the folder holds no .txt or .jsonl files")
        return files
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES:
        raise CorpusError(f"{path}: unsupported corpus file type {suffix or '(none)'!r} (use .txt, .jsonl, a folder, or a saved dataset)")
    return [path]


def _iter_path(path: Path, field: str, split: str | None) -> Iterator[Document]:
    for f in _corpus_files(path):
        if f.is_dir():
            yield from _iter_saved_dataset(f, field, split)
        elif f.suffix.lower() in JSONL_SUFFIXES:
            yield from _iter_jsonl(f, field)
        else:
            yield from _iter_txt(f)


def check_sources(sources: Sequence[str | Path]) -> list[Path]:
    """The corpus paths, checked to exist (before any model is loaded)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise CorpusError("no corpus given")
    paths = [Path(s).expanduser() for s in sources]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CorpusError(f"corpus path not found: {', '.join(missing)}")
    for p in paths:
        _corpus_files(p)  # raises on an unusable entry, before any model is loaded
    return paths


def require_text(documents: Iterable[Document], describe: str = "the corpus") -> None:
    """Raise :class:`CorpusError` unless some document has non-blank text (reads up to the first one)."""
    n = 0
    for doc in documents:
        n += 1
        if doc.text.strip():
            return
    raise CorpusError(f"{describe} is empty: no non-blank document found ({n} read)")


def iter_documents(sources: Sequence[str | Path], text_field: str = "text", dataset_split: str | None = None) -> Iterator[Document]:
    """Documents of every corpus entry, in order (see the module docstring)."""
    for path in check_sources(sources):
        yield from _iter_path(path, text_field, dataset_split)


def iter_texts(texts: Iterable[str]) -> Iterator[Document]:
    """Raw strings as documents."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise CorpusError(f"text #{i} is {type(t).__name__}, not a string")
        yield Document(t, f"<text {i}>")


@dataclass(frozen=True)
class TokenSamples:
    """The calibration token stream, cut into samples of equal length."""

    ids: torch.Tensor  # [n_samples, seq_len] int64
    sha256: str  # sha256 of ids as little-endian int32, row-major
    n_documents: int  # documents (fully or partly) read

    @property
    def n_samples(self) -> int:
        return int(self.ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.ids.numel())

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.n_samples, batch_size):
            yield self.ids[start : start + batch_size]


def token_stream_sha256(ids: torch.Tensor) -> str:
    """sha256 of the token ids as little-endian int32 in row-major order."""
    return hashlib.sha256(np.ascontiguousarray(ids.cpu().numpy().astype("<i4")).tobytes()).hexdigest()


def build_samples(
    tokenizer: Any,
    documents: Iterable[Document],
    n_samples: int,
    seq_len: int,
    add_bos: bool = True,
    describe: str = "the corpus",
) -> TokenSamples:
    """Tokenize ``documents`` lazily and cut the stream into at most ``n_samples`` samples.

    See :class:`~tappa_local.calibrate.config.CalibrationConfig` for the exact layout.
    """
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    eos = getattr(tokenizer, "eos_token_id", None)
    body = seq_len - 1 if bos is not None else seq_len
    need = n_samples * body
    stream: list[int] = []
    n_docs = 0
    n_nonempty = 0
    for doc in documents:
        n_docs += 1
        if not doc.text.strip():
            continue
        n_nonempty += 1
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if stream and eos is not None:
            stream.append(int(eos))
        stream.extend(int(i) for i in ids)
        if len(stream) >= need:
            break
    if n_nonempty == 0:
        raise CorpusError(f"{describe} is empty: no non-blank document found ({n_docs} read)")
    n_full = min(n_samples, len(stream) // body)
    if n_full == 0:
        raise CorpusError(
            f"{describe} has only {len(stream)} tokens, fewer than one sample of seq_len={seq_len}; "
            "lower --seq-len or add text"
        )
    rows = torch.tensor(stream[: n_full * body], dtype=torch.long).view(n_full, body)
    if bos is not None:
        rows = torch.cat([torch.full((n_full, 1), int(bos), dtype=torch.long), rows], dim=1)
    return TokenSamples(ids=rows, sha256=token_stream_sha256(rows), n_documents=n_docs)
