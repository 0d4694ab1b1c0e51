"""The committed default model (tappa_local/assets/tappa-mini): size, architecture, loading, conversion,
and that llama.cpp answers passkey prompts at ~2K tokens. Nothing is retrained here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tappa_local import native, tasks
from tappa_local.localmodels import convert_hf_to_gguf

ROOT = Path(__file__).resolve().parent.parent
ASSET = ROOT / "tappa_local" / "assets" / "tappa-mini"
MAX_BYTES = 25 * 1000 * 1000
CKPT_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json")


def _config() -> dict[str, Any]:
    return json.loads((ASSET / "config.json").read_text())


def test_checkpoint_files_and_size() -> None:
    for name in CKPT_FILES:
        assert (ASSET / name).is_file(), f"{name} missing from {ASSET}"
    assert (ASSET / "README.md").is_file(), "model card missing"
    total = sum(p.stat().st_size for p in ASSET.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"{ASSET} holds {total / 1e6:.1f} MB > 25 MB"


def test_config_is_small_llama_with_gqa_and_rope() -> None:
    cfg = _config()
    assert cfg["model_type"] == "llama"
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_hidden_layers"] >= 6
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    assert kv < heads and heads % kv == 0, "expected grouped-query attention"
    rope = cfg.get("rope_parameters") or {}
    assert rope.get("rope_type", "default") == "default"
    assert float(rope.get("rope_theta", cfg.get("rope_theta", 0))) > 0, "expected RoPE"
    assert cfg["max_position_embeddings"] >= 2048
    tok_cfg = json.loads((ASSET / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in tok_cfg["chat_template"] and "eos_token" in tok_cfg["chat_template"]


def test_loads_in_transformers() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(ASSET)
    model = transformers.AutoModelForCausalLM.from_pretrained(ASSET, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = tok("def add(a, b):\n    return a + b\n", return_tensors="pt")["input_ids"]
    assert int(ids[0, 0]) == tok.bos_token_id
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], _config()["vocab_size"])
    assert bool(torch.isfinite(logits).all())
    # the chat markers are single tokens and the template ends the prompt with the assistant marker
    for marker in ("<|user|>", "<|assistant|>", "<|end|>"):
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<s><|user|>\nhi<|end|>\n<|assistant|>\n"


def _plain_gguf() -> Path:
    """The checkpoint converted with the pinned converter (no profile), cached per checkpoint bytes."""
    from tappa_local.defaultmodel import DefaultRecipe, _fingerprint
    from tappa_local.localmodels import cache_root

    path = cache_root() / "default" / f"plain-{_fingerprint(ASSET, DefaultRecipe())}" / "tappa-mini-f16.gguf"
    if not path.is_file():
        tmp = path.with_suffix(".partial.gguf")
        convert_hf_to_gguf(ASSET, tmp, outtype="f16")
        tmp.replace(path)  # never leave a half-written file under the cached name
    return path


@pytest.fixture(scope="session")
def gguf() -> Path:
    return _plain_gguf()


@pytest.fixture(scope="session")
def llm(gguf: Path) -> Iterator[Any]:
    model = native.load().Llama(model_path=str(gguf), n_ctx=2048, n_batch=512, n_threads=2, verbose=False, seed=0)
    yield model
    model.close()


def _count(llm: Any) -> tasks.TokenCounter:
    return lambda s: len(llm.tokenize(s.encode("utf-8"), add_bos=True))


def test_gguf_carries_architecture_and_chat_template(llm: Any) -> None:
    meta = llm.metadata
    assert meta["general.architecture"] == "llama"
    assert int(meta["llama.context_length"]) == _config()["max_position_embeddings"]
    tok_cfg = json.loads((ASSET / "tokenizer_config.json").read_text())
    assert meta["tokenizer.chat_template"] == tok_cfg["chat_template"]


def test_full_cache_passkey_reproduces_the_model_card() -> None:
    """The card's passkey accuracy (eval.json, n_ctx 1024, 40 prompts) comes out again through llama.cpp."""
    from bench.train.evaluate import retrieval

    rec = json.loads((ASSET / "eval.json").read_text())["retrieval"]["1024"]
    want = rec["tasks"]["passkey"]
    llm = native.load().Llama(model_path=str(_plain_gguf()), n_ctx=1024, n_batch=512, n_threads=2, verbose=False, seed=0)
    try:
        got = retrieval(llm, 1024, ["passkey"], [float(d) for d in want["depths"]], rec["n_per_depth"], rec["seed"], chat=False)
    finally:
        llm.close()
    n = sum(d["n"] for d in want["depths"].values())
    n_want = sum(d["raw_correct"] for d in want["depths"].values())
    n_got = sum(d["raw_correct"] for d in got["tasks"]["passkey"]["depths"].values())
    # greedy decoding is deterministic; one flip is allowed for another CPU's kernels
    assert abs(n_got - n_want) <= 1, (n_got, n_want)
    assert n_got >= 0.9 * n, "passkey retrieval below the card's target (90%)"


def test_chat_completion_follows_the_trained_format(llm: Any) -> None:
    sample = tasks.passkey(600, 0.5, 4242, _count(llm))
    out = llm.create_chat_completion(messages=list(sample.messages), max_tokens=12, temperature=0.0, top_k=1)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop", choice  # the reply ended with </s>
    assert choice["message"]["content"].strip().isdigit(), choice  # a bare number, as trained
