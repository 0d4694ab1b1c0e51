"""Quality vs KV budget: retrieval accuracy and held-out perplexity for every policy.

    python -m bench.quality [--model FILE.gguf] [--budgets 64,128,256,512,1024] [--set policies|alternatives]

Every configuration runs on the same seeded prompts (tappa_local/tasks.py: passkey, key-value and
variable lookup, needles at several depths, at the model's trained context) and the same
held-out text (never trained on), through the native path. Budgets are average tokens kept
per layer after an eviction, sinks and the recent window included (the papers' "KV budget").

Three measures per configuration:

* retrieval accuracy — greedy answer equals the needle;
* held-out perplexity — held-out text streamed through the cache in n_batch chunks;
* long-range copy perplexity — held-out passages laid out as ``X Y X`` (X: --copy-len tokens, Y: other
  held-out text filling the context); perplexity of the *second* X only. With the whole context a
  model with induction heads predicts it by copying; a cache that dropped the first X cannot. It
  separates eviction policies even on a model whose plain perplexity hardly uses distant context.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tappa_local import tasks

from . import report
from .runners import ALTERNATIVES, POLICIES, Config, Runner

SETS = {"policies": POLICIES, "alternatives": ALTERNATIVES}


def _default_model() -> Path:
    from tappa_local.defaultmodel import ensure_default_gguf

    return ensure_default_gguf()


def evaluate(cfg: Config, model: Path, budget: int | None, samples: list[tasks.TaskSample], ppl_tokens: list[list[int]],
             args: argparse.Namespace, copy_tokens: list[list[int]] = ()) -> dict:
    t0 = time.perf_counter()
    runner = Runner(cfg, model, n_ctx=args.n_ctx, budget=budget, n_batch=args.n_batch, window=args.window, n_sink=args.n_sink,
                    threads=args.threads, logits_all=True)
    try:
        per: dict[str, list[int]] = {}
        for s in samples:
            ok = tasks.is_correct(runner.complete(s.prompt, max_tokens=args.max_tokens), s.answer)
            per.setdefault(f"{s.task}@{s.depth:g}", []).append(int(ok))
        nll = np.concatenate([runner.nll(t) for t in ppl_tokens]) if ppl_tokens else np.zeros(1)
        copy_nll = np.concatenate([runner.nll(t)[-args.copy_len:] for t in copy_tokens]) if copy_tokens else np.full(1, np.nan)
        acc_task = {}
        for key, v in per.items():
            task = key.split("@")[0]
            acc_task.setdefault(task, []).extend(v)
        row = {
            "config": cfg.name,
            "budget": budget,
            "accuracy": float(np.mean([x for v in per.values() for x in v])) if per else float("nan"),
            "accuracy_by_task": {k: float(np.mean(v)) for k, v in acc_task.items()},
            "accuracy_by_task_depth": {k: float(np.mean(v)) for k, v in per.items()},
            "ppl": float(np.exp(nll.mean())),
            "copy_ppl": float(np.exp(copy_nll.mean())),
            "kv_mib": runner.kv_bytes() / 2**20,
            "seconds": time.perf_counter() - t0,
        }
        if cfg.kind == "tappa":
            row["eviction"] = runner.llm.eviction_stats()
        return row
    finally:
        runner.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="GGUF with a TAPPA profile (default: the bundled model, converted and calibrated)")
    ap.add_argument("--set", choices=sorted(SETS), default="policies", help="which configurations to compare")
    ap.add_argument("--budgets", default="64,128,256,512,1024", help="average tokens kept per layer")
    ap.add_argument("--context", type=int, default=2048, help="prompt length in tokens (default %(default)s)")
    ap.add_argument("--tasks", default=",".join(tasks.TASKS))
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--per-depth", type=int, default=2, help="prompts per task and depth")
    ap.add_argument("--ppl-seqs", type=int, default=2, help="held-out sequences for perplexity")
    ap.add_argument("--copy-seqs", type=int, default=2, help="X Y X sequences for the long-range copy perplexity (0 = skip)")
    ap.add_argument("--copy-len", type=int, default=128, help="tokens of X (the copied passage)")
    ap.add_argument("--n-batch", type=int, default=256)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--n-sink", type=int, default=4,
                    help="first tokens every layer keeps, for every policy and the public-API shift baseline (default %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default=None, help="report name (default quality_<set>)")
    ap.add_argument("--render", type=Path, metavar="FILE.json",
                    help="only re-write the Markdown and the plot of an earlier run's JSON (nothing is measured)")
    args = ap.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        saved = argparse.Namespace(**data["args"])
        budgets = [int(b) for b in saved.budgets.split(",")]
        md = _markdown(data["rows"], budgets, saved, Path(data["model"]))
        args.render.with_suffix(".md").write_text(md.rstrip() + "\n")
        _plot(data["rows"], budgets, args.render.with_suffix(".png"))
        print(f"re-rendered {args.render.with_suffix('.md')} and .png")
        return 0
    args.n_ctx = args.context + 64

    model = args.model or _default_model()
    budgets = [int(b) for b in args.budgets.split(",")]
    from tappa_local import native

    lib = native.load()
    counter_llm = lib.Llama(model_path=str(model), vocab_only=True, verbose=False)
    count = lambda s: len(counter_llm.tokenize(s.encode()))  # noqa: E731
    samples = tasks.suite(count, args.context, tasks=args.tasks.split(","), depths=[float(d) for d in args.depths.split(",")],
                          n_per_depth=args.per_depth, seed=1)
    text = tasks.heldout_text()
    all_ids = counter_llm.tokenize(text.encode())
    ppl_tokens = [all_ids[i * args.context : (i + 1) * args.context] for i in range(args.ppl_seqs)]
    copy_tokens = []
    for i in range(args.copy_seqs):  # from held-out text after the perplexity sequences
        o = (args.ppl_seqs + i) * args.context
        x = all_ids[o : o + args.copy_len]
        y = all_ids[o + args.copy_len : o + args.context - args.copy_len]
        copy_tokens.append(x + y + x)
    counter_llm.close()

    rows = []
    for cfg in SETS[args.set]:
        for budget in (budgets if cfg.budgeted else [None]):
            row = evaluate(cfg, model, budget, samples, ppl_tokens, args, copy_tokens)
            rows.append(row)
            print(f"{cfg.name:>30} budget {str(budget):>5}: acc {row['accuracy']:.3f} ppl {row['ppl']:8.3f} "
                  f"copy ppl {row['copy_ppl']:8.3f} "
                  f"KV {row['kv_mib']:.2f} MiB ({row['seconds']:.0f}s)", flush=True)

    name = args.name or f"quality_{args.set}"
    md = _markdown(rows, budgets, args, model)
    j, m = report.write(name, {"model": str(model), "args": {k: v for k, v in vars(args).items() if k != "model"},
                               "n_prompts": len(samples), "rows": rows}, md)
    _plot(rows, budgets, j.with_suffix(".png"))
    print(md)
    print(f"wrote {j}, {m}")
    return 0


def _markdown(rows: list[dict], budgets: list[int], args: argparse.Namespace, model: Path) -> str:
    full = next((r for r in rows if r["budget"] is None), None)
    configs = list(dict.fromkeys(r["config"] for r in rows if r["budget"] is not None))
    lines = [f"# Quality vs KV budget ({model.name})", "",
             f"`python -m bench.quality --set {args.set}` — {len(rows)} runs; prompts of {args.context} tokens "
             f"({args.tasks}; depths {args.depths}; {args.per_depth} per task and depth); perplexity on {args.ppl_seqs} held-out "
             f"sequences of {args.context} tokens streamed in chunks of {args.n_batch}; long-range copy perplexity on the second X "
             f"of {args.copy_seqs} held-out `X Y X` sequences ({args.copy_len}-token X, {args.context} tokens in all); window {args.window}, {getattr(args, 'n_sink', 4)} sink tokens.", ""]
    if full:
        lines.append(f"Full cache: accuracy **{full['accuracy']:.3f}**, perplexity **{full['ppl']:.3f}**, "
                     f"copy perplexity **{full['copy_ppl']:.3f}**, KV {full['kv_mib']:.2f} MiB.")
        lines.append("")
    whole = [r for r in rows if r["budget"] is None]
    if len(whole) > 1:  # caches that keep every token (full, quantized): one row each
        lines += ["## Caches that keep every token", ""]
        lines.append(report.markdown_table(
            ["config", "accuracy", "perplexity", "copy perplexity", "KV MiB", "KV vs full"],
            [[r["config"], f"{r['accuracy']:.3f}", f"{r['ppl']:.3f}", f"{r['copy_ppl']:.3f}", f"{r['kv_mib']:.2f}",
              f"{r['kv_mib'] / full['kv_mib']:.2f}x" if full else ""] for r in whole]))
        lines.append("")
    for metric, label, fmt in (("accuracy", "Retrieval accuracy", "{:.3f}"), ("ppl", "Held-out perplexity", "{:.3f}"),
                               ("copy_ppl", "Long-range copy perplexity (second X of X Y X)", "{:.3f}"),
                               ("kv_mib", "KV MiB", "{:.2f}")):
        lines.append(f"## {label}")
        lines.append("")
        table = []
        for c in configs:
            vals = {r["budget"]: r[metric] for r in rows if r["config"] == c}
            table.append([c, *[fmt.format(vals[b]) if b in vals else "" for b in budgets]])
        lines.append(report.markdown_table(["config", *[f"budget {b}" for b in budgets]], table))
        lines.append("")
    return "\n".join(lines)


def _plot(rows: list[dict], budgets: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    full = next((r for r in rows if r["budget"] is None), None)
    for c in dict.fromkeys(r["config"] for r in rows if r["budget"] is not None):
        rs = sorted((r for r in rows if r["config"] == c), key=lambda r: r["budget"])
        ax[0].plot([r["budget"] for r in rs], [r["accuracy"] for r in rs], "o-", label=c, ms=3)
        ax[1].plot([r["budget"] for r in rs], [r["ppl"] for r in rs], "o-", label=c, ms=3)
        ax[2].plot([r["budget"] for r in rs], [r["copy_ppl"] for r in rs], "o-", label=c, ms=3)
    if full:
        ax[0].axhline(full["accuracy"], color="k", ls="--", lw=1, label="full cache")
        ax[1].axhline(full["ppl"], color="k", ls="--", lw=1, label="full cache")
        ax[2].axhline(full["copy_ppl"], color="k", ls="--", lw=1, label="full cache")
    ax[0].set(xscale="log", xlabel="KV budget (tokens per layer)", ylabel="retrieval accuracy", title="retrieval")
    ax[1].set(xscale="log", yscale="log", xlabel="KV budget (tokens per layer)", ylabel="perplexity", title="held-out perplexity")
    ax[2].set(xscale="log", yscale="log", xlabel="KV budget (tokens per layer)", ylabel="perplexity",
              title="long-range copy perplexity (2nd X of X Y X)")
    for a in ax:
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
