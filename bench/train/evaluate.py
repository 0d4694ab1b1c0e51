"""Evaluate a tappa-mini checkpoint: retrieval through llama.cpp (full KV cache) and held-out perplexity.

* converts the HF checkpoint to GGUF (f16) with the pinned llama.cpp tree's converter;
* runs the :mod:`tappa_local.tasks` grid (task x depth, seeded) through our patched llama.cpp with
  greedy decoding, as raw completions and through ``create_chat_completion`` (chat template);
* computes held-out perplexity in transformers on non-overlapping windows of the held-out
  stdlib files (each window starts with BOS).

Run from the repository root::

    .venv/bin/python -m bench.train.evaluate --model tappa_local/assets/tappa-mini \\
        --out tappa_local/assets/tappa-mini/eval.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tappa_local import tasks

log = logging.getLogger("tappa-mini")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def heldout_perplexity(model_dir: Path, ctx: int, max_windows: int | None, threads: int) -> dict[str, Any]:
    """Token-level perplexity over non-overlapping ``ctx``-token windows (BOS + ctx-1 text tokens)."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(tasks.heldout_text(), add_special_tokens=False)["input_ids"]
    step = ctx - 1
    starts = list(range(0, len(ids) - step + 1, step))
    if max_windows is not None:
        starts = starts[:max_windows]
    nll, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(starts), 4):
            rows = [[tok.bos_token_id] + ids[s : s + step] for s in starts[i : i + 4]]
            x = torch.tensor(rows)
            logits = model(input_ids=x).logits.float()
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            nll += float(ce)
            n += x[:, 1:].numel()
    chars = len(tok.decode(ids[: starts[-1] + step])) if starts else 0
    return {
        "ctx": ctx,
        "windows": len(starts),
        "tokens": n,
        "heldout_tokens_total": len(ids),
        "nll_per_token": nll / n,
        "perplexity": math.exp(nll / n),
        "bits_per_char": nll / math.log(2) / max(chars, 1),
    }


def retrieval(
    llm: Any,
    ctx: int,
    task_names: Sequence[str],
    depths: Sequence[float],
    n_per_depth: int,
    seed: int,
    chat: bool,
) -> dict[str, Any]:
    """Accuracy per task and depth; prompts sized to ``ctx - 16`` llama.cpp tokens (room for the answer)."""
    count = lambda s: len(llm.tokenize(s.encode("utf-8"), add_bos=True))  # noqa: E731
    n_prompt = ctx - 16
    grid = tasks.suite(count, n_prompt, tasks=task_names, depths=depths, n_per_depth=n_per_depth, seed=seed)
    res: dict[str, Any] = {"ctx": ctx, "prompt_tokens": n_prompt, "n_per_depth": n_per_depth, "seed": seed, "tasks": {}}
    examples: list[dict[str, Any]] = []
    t0 = time.time()
    for i, s in enumerate(grid):
        out = llm.create_completion(s.prompt, max_tokens=10, temperature=0.0, top_k=1)
        text = out["choices"][0]["text"]
        ok = tasks.is_correct(text, s.answer)
        rec = res["tasks"].setdefault(s.task, {"depths": {}})
        d = rec["depths"].setdefault(f"{s.depth:g}", {"raw_correct": 0, "n": 0, "chat_correct": 0})
        d["n"] += 1
        d["raw_correct"] += int(ok)
        chat_text = None
        if chat:
            co = llm.create_chat_completion(messages=list(s.messages), max_tokens=12, temperature=0.0, top_k=1)
            chat_text = co["choices"][0]["message"]["content"] or ""
            d["chat_correct"] += int(chat_text.strip() == s.answer and co["choices"][0]["finish_reason"] == "stop")
        if len(examples) < 200 and (not ok or i % 25 == 0):
            examples.append({"task": s.task, "depth": s.depth, "answer": s.answer, "raw": text, "chat": chat_text, "n_tokens": s.n_tokens})
        if (i + 1) % 25 == 0 or i + 1 == len(grid):
            log.info("ctx %d: %d/%d prompts, %.1fs", ctx, i + 1, len(grid), time.time() - t0)
    for name, rec in res["tasks"].items():
        n = sum(d["n"] for d in rec["depths"].values())
        rec["raw_accuracy"] = sum(d["raw_correct"] for d in rec["depths"].values()) / n
        if chat:
            rec["chat_accuracy"] = sum(d["chat_correct"] for d in rec["depths"].values()) / n
        for d in rec["depths"].values():
            d["raw_accuracy"] = d["raw_correct"] / d["n"]
            if chat:
                d["chat_accuracy"] = d["chat_correct"] / d["n"]
        log.info("ctx %d %s: raw %.3f%s", ctx, name, rec["raw_accuracy"], f" chat {rec['chat_accuracy']:.3f}" if chat else "")
    res["seconds"] = round(time.time() - t0, 1)
    res["examples"] = examples
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.train.evaluate",
        description="Convert a tappa-mini HF checkpoint to GGUF f16 and measure full-cache retrieval accuracy "
        "through llama.cpp (greedy) on the tappa_local.tasks grid, plus held-out perplexity in transformers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--model", type=Path, default=Path("tappa_local/assets/tappa-mini"), help="HF checkpoint directory")
    ap.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    ap.add_argument("--ctx", type=int, nargs="+", default=[2048], help="context sizes to evaluate (prompt = ctx - 16 tokens)")
    ap.add_argument("--depths", type=float, nargs="+", default=list(tasks.DEFAULT_DEPTHS))
    ap.add_argument("--tasks", nargs="+", default=list(tasks.TASKS), choices=list(tasks.TASKS))
    ap.add_argument("--n-per-depth", type=int, default=20, help="seeded prompts per task and depth")
    ap.add_argument("--seed", type=int, default=0, help="seed of the evaluation grid")
    ap.add_argument("--no-chat", action="store_true", help="skip the chat-template evaluation")
    ap.add_argument("--ppl-ctx", type=int, default=2048, help="window of the held-out perplexity (0 = skip)")
    ap.add_argument("--ppl-windows", type=int, default=None, help="cap the number of perplexity windows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gguf", type=Path, default=None, help="reuse/keep the converted GGUF at this path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)

    from tappa_local import native  # noqa: PLC0415
    from tappa_local.localmodels import convert_hf_to_gguf  # noqa: PLC0415

    t0 = time.time()
    result: dict[str, Any] = {"model": str(args.model)}
    with tempfile.TemporaryDirectory(prefix="tappa-mini-eval-") as tmp:
        gguf = args.gguf or Path(tmp) / "tappa-mini-f16.gguf"
        if not gguf.is_file():
            log.info("converting %s -> %s", args.model, gguf)
            convert_hf_to_gguf(args.model, gguf, outtype="f16")
        result["gguf"] = {"outtype": "f16", "bytes": gguf.stat().st_size, "sha256": sha256_file(gguf)}
        lib = native.load()
        result["llama_cpp"] = {"tappa_version": lib.version, "llama_cpp_python": lib.build.llama_cpp_python_version}
        result["retrieval"] = {}
        for ctx in args.ctx:
            llm = lib.Llama(model_path=str(gguf), n_ctx=ctx, n_batch=512, n_threads=args.threads, verbose=False, seed=0)
            try:
                result["chat_template_in_gguf"] = llm.metadata.get("tokenizer.chat_template")
                result["retrieval"][str(ctx)] = retrieval(
                    llm, ctx, args.tasks, args.depths, args.n_per_depth, args.seed, chat=not args.no_chat
                )
            finally:
                llm.close()
    if args.ppl_ctx:
        log.info("held-out perplexity (ctx %d)", args.ppl_ctx)
        result["heldout"] = heldout_perplexity(args.model, args.ppl_ctx, args.ppl_windows, args.threads)
        log.info("held-out perplexity %.3f over %d tokens", result["heldout"]["perplexity"], result["heldout"]["tokens"])
    result["corpus_heldout_sha256"] = tasks.documents_sha256(tasks.heldout_documents())
    result["seconds"] = round(time.time() - t0, 1)
    result["command"] = " ".join([Path(sys.executable).name, "-m", "bench.train.evaluate", *(argv if argv is not None else sys.argv[1:])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    log.info("wrote %s (%.1fs)", args.out, result["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
