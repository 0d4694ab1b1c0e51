"""Small models made entirely on this machine: nothing is downloaded from a model hub.

A SentencePiece tokenizer is trained on text every Python install carries (the standard
library's own source), a randomly initialised ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` is
saved with ``save_pretrained``, and the checkpoint is converted to GGUF with the pinned
llama.cpp tree's own ``convert_hf_to_gguf.py``. Results are cached under the tappa-local
cache directory, keyed by everything that determines their bytes, and rebuilt when missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ToolchainError

#: bump when the recipe below changes in a way that changes the produced files
RECIPE_VERSION = 1


def cache_root() -> Path:
    env = os.environ.get("TAPPA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tappa-local"


# --------------------------------------------------------------------------- corpus


def stdlib_files() -> list[Path]:
    """The standard library's top-level ``.py`` files, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


def stdlib_corpus(max_chars: int = 2_000_000, skip: int = 0) -> list[str]:
    """Whole source files of the standard library, up to ``max_chars`` characters.

    ``skip`` drops that many files from the front, which gives a second, disjoint corpus.
    """
    out: list[str] = []
    total = 0
    for path in stdlib_files()[skip:]:
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > max_chars and out:
            break
        out.append(text)
        total += len(text)
    return out


def _hash_texts(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------- tokenizer


def train_sentencepiece(
    texts: Sequence[str],
    out_dir: Path,
    vocab_size: int,
    max_lines: int = 200_000,
    *,
    user_defined_symbols: Sequence[str] = (),
    add_dummy_prefix: bool = True,
) -> Path:
    """Train a byte-fallback BPE SentencePiece model and save it as an HF tokenizer in ``out_dir``.

    Normalisation is the identity and whitespace is kept, so code round-trips exactly and
    transformers and llama.cpp tokenize the same text into the same ids.

    ``user_defined_symbols`` become single pieces that are never split (e.g. chat markers such
    as ``<|user|>``; ids follow the three specials). ``add_dummy_prefix=False`` stops
    SentencePiece from prepending a space to the text; it is also recorded as
    ``add_prefix_space: false`` in ``tokenizer_config.json``, which both transformers and the
    llama.cpp converter honour, so the two still agree around special tokens.
    """
    import sentencepiece as spm  # noqa: PLC0415 - heavy optional import

    lines = [ln for t in texts for ln in t.splitlines() if ln.strip()][:max_lines]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        user_defined_symbols=list(user_defined_symbols),
        add_dummy_prefix=add_dummy_prefix,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=max(1, min(4, os.cpu_count() or 1)),
        max_sentence_length=16384,
        minloglevel=2,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    config: dict[str, object] = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 1_000_000,
    }
    if not add_dummy_prefix:
        config["add_prefix_space"] = False
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    # let transformers write its fast tokenizer.json next to the SentencePiece model
    from transformers import AutoTokenizer  # noqa: PLC0415

    AutoTokenizer.from_pretrained(out_dir).save_pretrained(out_dir)
    if user_defined_symbols:
        # llama.cpp's converter only learns which pieces are special from `added_tokens_decoder`
        # (it ignores SentencePiece's USER_DEFINED type); without it `<|user|>` would be split.
        proc = spm.SentencePieceProcessor(model_proto=model.getvalue())
        cfg_path = out_dir / "tokenizer_config.json"
        saved = json.loads(cfg_path.read_text())
        specials = [proc.id_to_piece(i) for i in (0, 1, 2)] + list(user_defined_symbols)
        saved["added_tokens_decoder"] = {
            str(proc.piece_to_id(p)): {
                "content": p,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for p in specials
        }
        cfg_path.write_text(json.dumps(saved, indent=2))
    return out_dir


def ensure_tokenizer(vocab_size: int = 512, max_chars: int = 2_000_000) -> Path:
    """A cached tokenizer trained on the standard library."""
    texts = stdlib_corpus(max_chars)
    key = hashlib.sha256(f"{RECIPE_VERSION}|{vocab_size}|{_hash_texts(texts)}".encode()).hexdigest()[:16]
    dest = cache_root() / "tokenizers" / f"spm-{vocab_size}-{key}"
    if (dest / "tokenizer.model").is_file():
        return dest
    return _atomic_build(dest, lambda tmp: train_sentencepiece(texts, tmp, vocab_size))


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class TinyModelSpec:
    """A small random-init decoder. Defaults give GQA (4 query heads over 2 KV heads) and RoPE."""

    arch: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vocab_size: int = 512
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    init_std: float = 0.02
    seed: int = 0

    @property
    def name(self) -> str:
        return f"tiny-{self.arch}-l{self.num_layers}-h{self.num_heads}-kv{self.num_kv_heads}-d{self.hidden_size}"

    def key(self) -> str:
        payload = json.dumps({"recipe": RECIPE_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TinyModel:
    spec: TinyModelSpec
    hf_dir: Path
    gguf_path: Path


def build_hf_model(spec: TinyModelSpec, tokenizer_dir: Path, out_dir: Path) -> Path:
    """Random-init checkpoint written with ``save_pretrained`` (f32 safetensors) plus the tokenizer."""
    import torch  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: PLC0415

    common = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta,
        initializer_range=spec.init_std,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    if spec.arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif spec.arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(use_sliding_window=False, **common))
    else:  # pragma: no cover - Literal guards this
        raise ValueError(f"unknown tiny architecture {spec.arch!r}")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, out_dir / f.name)
    return out_dir


def convert_hf_to_gguf(
    hf_dir: Path,
    out_path: Path,
    outtype: str = "f32",
    extra_args: Sequence[str] = (),
    python: str | None = None,
) -> Path:
    """Run the pinned llama.cpp tree's ``convert_hf_to_gguf.py`` (never a re-implementation)."""
    from .native import find_build  # noqa: PLC0415

    script = find_build().convert_script
    if not script.is_file():
        raise ToolchainError(f"{script} is missing: the native build's llama.cpp tree is incomplete; re-run the CMake configure")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [python or sys.executable, str(script), str(hf_dir), "--outfile", str(out_path), "--outtype", outtype, *extra_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # use the tree's own gguf-py
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-25:])
        raise ToolchainError(f"convert_hf_to_gguf.py failed on {hf_dir} (exit {proc.returncode}):\n{tail}")
    return out_path


def ensure_tiny_model(spec: TinyModelSpec = TinyModelSpec(), outtype: str = "f32") -> TinyModel:
    """Build (or reuse from the cache) a tiny HF checkpoint and its GGUF conversion."""
    tok_dir = ensure_tokenizer(spec.vocab_size)
    from .native import find_build  # noqa: PLC0415

    conv_key = hashlib.sha256(f"{spec.key()}|{tok_dir.name}|{find_build().llama_cpp_python_version}|{outtype}".encode()).hexdigest()[:16]
    dest = cache_root() / "models" / f"{spec.name}-{conv_key}"
    hf_dir, gguf = dest / "hf", dest / f"model-{outtype}.gguf"
    if (hf_dir / "config.json").is_file() and gguf.is_file():
        return TinyModel(spec, hf_dir, gguf)

    def build(tmp: Path) -> Path:
        build_hf_model(spec, tok_dir, tmp / "hf")
        convert_hf_to_gguf(tmp / "hf", tmp / f"model-{outtype}.gguf", outtype=outtype)
        (tmp / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2))
        return tmp

    _atomic_build(dest, build)
    return TinyModel(spec, hf_dir, gguf)


def _atomic_build(dest: Path, make: "callable[[Path], Path]") -> Path:
    """Build into a temporary sibling and rename into place: readers never see half a result,
    and concurrent builders (parallel test workers) just keep the first finished copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        make(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def iter_standard_specs() -> Iterator[TinyModelSpec]:
    """The two architectures the chain tests cover."""
    yield TinyModelSpec(arch="llama")
    yield TinyModelSpec(arch="qwen2")
