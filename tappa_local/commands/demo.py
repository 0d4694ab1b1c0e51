"""``tappa-local demo``: the end-to-end job the README's first command runs."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="make a small local model, convert it to GGUF and generate through the patched llama.cpp",
        description=(
            "Builds (or reuses from the cache) a randomly initialised tiny Llama with a tokenizer trained on "
            "the Python standard library, converts it with the pinned llama.cpp converter and generates text "
            "through the patched library. Random weights produce gibberish: this proves the chain works."
        ),
    )
    p.add_argument("--prompt", default="def fibonacci(n):\n", help="prompt to continue (default: %(default)r)")
    p.add_argument("--max-tokens", type=int, default=48, help="tokens to generate (default: %(default)s)")
    p.add_argument("--arch", choices=("llama", "qwen2"), default="llama", help="tiny model architecture")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import native
    from ..localmodels import TinyModelSpec, ensure_tiny_model

    lib = native.load()
    print(f"native library : {lib.version} ({lib.build.lib_dir})")
    t0 = time.perf_counter()
    model = ensure_tiny_model(TinyModelSpec(arch=args.arch))
    print(f"model          : {model.spec.name} -> {model.gguf_path} ({time.perf_counter() - t0:.1f}s)")
    llm = lib.Llama(model_path=str(model.gguf_path), n_ctx=512, verbose=False, seed=0)
    try:
        t1 = time.perf_counter()
        out = llm.create_completion(args.prompt, max_tokens=args.max_tokens, temperature=0.0)
        dt = time.perf_counter() - t1
        n = out["usage"]["completion_tokens"]
        print(f"generated      : {n} tokens in {dt:.2f}s")
        print("-" * 60)
        print(args.prompt + out["choices"][0]["text"])
        print("-" * 60)
    finally:
        llm.close()
    return 0
