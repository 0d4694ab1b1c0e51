"""``tappa-local demo``: the bundled model answering from a long document with a compressed KV cache."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the bundled model: its TAPPA profile, then a long document answered with a compressed vs the full KV cache",
        description=(
            "Converts the bundled tappa-mini model to GGUF once (calibrating its TAPPA profile on local text; cached), "
            "shows the per-layer q-similarity and KV budgets, then hides facts at several depths of a long document and "
            "asks for them twice: with llama.cpp's full KV cache and with the compressed one. Prints the answers, the KV "
            "memory and the time of both."
        ),
    )
    p.add_argument("--budget", type=int, default=None, help="average tokens kept per layer (default: the GGUF's, 256)")
    p.add_argument("--context", type=int, default=2000, help="document length in tokens (default: %(default)s)")
    p.add_argument("--scorer", default="snapkv", help="eviction scorer (default: %(default)s)")
    p.add_argument("--allocation", default="tappa", help="budget allocation (default: %(default)s)")
    p.add_argument("--task", default="passkey", choices=("passkey", "kv", "var"),
                   help="what is hidden in the document: a pass key in prose, key-value lines, or variables in code "
                        "(default: %(default)s, the task the bundled model does best)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="use a random-init tiny model instead (no training, gibberish output)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import native

    lib = native.load()
    print(f"native library : {lib.version} ({lib.build.lib_dir})")
    if args.tiny:
        return _tiny(lib)

    from .. import tasks
    from ..defaultmodel import ensure_default_gguf
    from ..runtime import TappaLlama

    t0 = time.perf_counter()
    print("bundled model  : converting and calibrating tappa-mini once (cached afterwards) ...", flush=True)
    gguf = ensure_default_gguf()
    print(f"               : {gguf} ({time.perf_counter() - t0:.1f}s)")

    common = dict(n_ctx=args.context + 256, n_batch=256, n_threads=args.threads, n_threads_batch=args.threads, verbose=False, seed=0)
    comp = TappaLlama(str(gguf), kv_budget=args.budget, scorer=args.scorer, allocation=args.allocation, **common)
    full = TappaLlama(str(gguf), compress=False, flash_attn=True, **common)
    try:
        g = comp.geometry
        layers = comp.kv_stats().layers
        _profile_table(gguf, [x.budget for x in layers])
        avg = sum(x.budget for x in layers) / len(layers)
        count = lambda s: len(comp.tokenize(s.encode()))  # noqa: E731
        depths = (0.1, 0.3, 0.5, 0.7, 0.9)
        what = {"passkey": "prose with a pass key hidden in it", "kv": "key-value lines", "var": "code with variables assigned"}
        print(f"\nlong document  : {args.context} tokens of {what[args.task]}; the compressed cache keeps "
              f"{avg:.0f} tokens per layer on average ({g.n_layer} layers), "
              f"{100 * avg / args.context:.0f}% of the document\n")
        print(f"{'depth':>6}  {'question':<34} {'answer':>8}  {'full cache':>16}  {'compressed':>16}")
        score = {"full": 0, "comp": 0}
        t_full = t_comp = 0.0
        for i, depth in enumerate(depths):
            s = tasks.make_sample(args.task, args.context, depth, seed=100 + i, count_tokens=count)
            asked = [ln for ln in s.prompt.splitlines() if "?" in ln]
            question = (asked[-1].split("?")[0] + "?")[-34:] if asked else ""
            t = time.perf_counter()
            a_full = full.create_completion(s.prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"]
            t_full += time.perf_counter() - t
            t = time.perf_counter()
            a_comp = comp.create_completion(s.prompt, max_tokens=8, temperature=0.0)["choices"][0]["text"]
            t_comp += time.perf_counter() - t
            ok_f, ok_c = tasks.is_correct(a_full, s.answer), tasks.is_correct(a_comp, s.answer)
            score["full"] += ok_f
            score["comp"] += ok_c
            mark = lambda ok, a: f"{(a.split() or ['-'])[0][:8]:>8} {'ok' if ok else 'x':>2}"  # noqa: E731
            print(f"{depth:>6.1f}  {question:<34} {s.answer:>8}  {mark(ok_f, a_full):>16}  {mark(ok_c, a_comp):>16}")
        sc, sf = comp.kv_stats(), full.kv_stats()
        print(f"\n{'':>8}{'full cache':>16}{'compressed':>16}")
        print(f"{'correct':>8}{score['full']:>13}/{len(depths)}{score['comp']:>13}/{len(depths)}")
        print(f"{'KV MiB':>8}{sf.kv_mib:>16.2f}{sc.kv_mib:>16.2f}   ({sf.kv_mib / max(sc.kv_mib, 1e-9):.1f}x smaller)")
        print(f"{'seconds':>8}{t_full:>16.1f}{t_comp:>16.1f}")
        print("\nnext: `tappa-local chat` on this model, `tappa-local inspect` for its profile, `python -m bench.quality` for the full comparison")
    finally:
        comp.close()
        full.close()
    return 0


def _profile_table(gguf, budgets: list[int]) -> None:
    from ..modelfile import read_gguf_metadata

    meta = read_gguf_metadata(gguf, keep_arrays=frozenset({"tappa.qsim.layer", "tappa.bi.layer"}))
    q = meta.get("tappa.qsim.layer") or []
    bi = meta.get("tappa.bi.layer") or []
    print("\nTAPPA profile  : layers with self-similar queries (high q-sim) keep fewer tokens")
    print(f"{'layer':>7} {'q-sim':>7} {'BI':>7} {'budget':>7}")
    for i, b in enumerate(budgets):
        qv = f"{q[i]:.3f}" if i < len(q) else "-"
        bv = f"{bi[i]:.3f}" if i < len(bi) else "-"
        print(f"{i:>7} {qv:>7} {bv:>7} {b:>7}")


def _tiny(lib) -> int:
    from ..localmodels import TinyModelSpec, ensure_tiny_model

    model = ensure_tiny_model(TinyModelSpec(arch="llama"))
    print(f"model          : {model.spec.name} -> {model.gguf_path}")
    llm = lib.Llama(model_path=str(model.gguf_path), n_ctx=512, verbose=False, seed=0)
    try:
        out = llm.create_completion("def fibonacci(n):\n", max_tokens=32, temperature=0.0)
        print("def fibonacci(n):\n" + out["choices"][0]["text"])
    finally:
        llm.close()
    return 0
