"""``tappa-local inspect``: the TAPPA profile, prune plan and per-layer KV budgets stored in a GGUF."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..budget import Allocation, BudgetSpec, layer_budgets, pyramid_weights, tappa_weights
from ..errors import BudgetError
from ..profile import Profile

#: "default" is what the runtime does without an explicit allocation: the stored tappa.budget.layer_frac
ALLOCATION_CHOICES = ("default", *(a.value for a in Allocation))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a GGUF's TAPPA profile, prune plan and per-layer KV budgets",
        description=(
            "Read the tappa.* metadata of a GGUF (written by tappa-convert) and print the model geometry, the "
            "profile's provenance, the layer prune plan and a per-layer table of q-similarity, Block Influence, "
            "prune score and KV budget. 'share' is the layer's fraction of the budget above its sinks + window; "
            "'budget' the tokens it keeps (sinks and window included), computed with the same arithmetic as the "
            "native runtime, so the numbers are the ones a TappaLlama with this total would use."
        ),
    )
    p.add_argument("file", metavar="FILE.gguf", help="the GGUF file to inspect")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget", type=int, metavar="TOTAL",
                   help="total KV budget in tokens summed over layers (default: the stored tappa.budget.total)")
    g.add_argument("--kv-budget", type=int, metavar="AVG", help="average KV budget per layer (total = AVG x layers)")
    p.add_argument("--allocation", choices=ALLOCATION_CHOICES, default="default",
                   help="how the total is split over layers: default = the stored tappa.budget.layer_frac "
                        "(uniform when the file has no profile), or uniform, pyramid, tappa (1 - q-sim)")
    p.add_argument("--window", type=int, help="recent tokens every layer keeps (default: tappa.budget.window, else 32)")
    p.add_argument("--n-sink", type=int, help="sink tokens every layer keeps (default: tappa.budget.n_sink, else 4)")
    p.add_argument("--n-ctx", type=int, help="cap each layer's budget at this context length (default: no cap)")
    p.add_argument("--pyramid-beta", type=float, default=20.0, help="beta of the pyramid allocation (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    p.set_defaults(func=run)


def _weights(allocation: str, profile: Profile | None, n_layer: int, pyramid_beta: float) -> list[float]:
    if allocation == "default":
        return [float(x) for x in profile.budget_layer_frac.tolist()] if profile is not None else [1.0] * n_layer
    kind = Allocation(allocation)
    if kind is Allocation.UNIFORM:
        return [1.0] * n_layer
    if kind is Allocation.PYRAMID:
        return pyramid_weights(n_layer, pyramid_beta)
    if profile is None:
        raise BudgetError("the tappa allocation needs tappa.qsim.layer: this GGUF carries no TAPPA profile")
    return tappa_weights([float(q) for q in profile.qsim_layer.tolist()])


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``inspect`` shows, as plain data."""
    from tappa_convert.ggufinfo import read_gguf_info  # noqa: PLC0415 - uses the pinned gguf-py

    info = read_gguf_info(args.file)
    profile = info.profile()
    L = info.n_layer
    out: dict[str, Any] = {
        "file": str(info.path),
        "bytes": info.size,
        "model": {
            "arch": info.arch, "n_layer": L, "n_head": info.n_head, "n_head_kv": info.n_head_kv,
            "head_dim": info.head_dim, "file_type": info.file_type_name, "n_tensors": info.n_tensors,
            "context_length": info.arch_key("context_length"),
        },
        "profile": None,
        "layers": [],
        "budget": None,
    }
    if profile is not None:
        p = profile.provenance
        out["profile"] = {
            "version": int(info.metadata["tappa.version"]),
            "arch": profile.arch,
            "qsim_window": profile.qsim_window,
            "prune_beta": profile.prune_beta,
            "prune_order": profile.prune_order.tolist(),
            "prune_order_original": [int(profile.layer_map[i]) for i in profile.prune_order.tolist()],
            "removed_layers": list(profile.removed_layers),
            "has_qstats": profile.qstats_mean is not None,
            "default_budget": {
                "allocation": profile.budget_allocation, "total": profile.budget_total,
                "window": profile.budget_window, "n_sink": profile.budget_n_sink,
            },
            "provenance": {
                "model_id": p.model_id, "weights_sha256": p.weights_sha256, "tokenizer_sha256": p.tokenizer_sha256,
                "corpus_sha256": p.corpus_sha256, "n_samples": p.n_samples, "n_tokens": p.n_tokens, "seq_len": p.seq_len,
                "versions": p.versions, "created": p.created,
            },
            "source": {k: v for k, v in info.metadata.items() if k.startswith("tappa.source.")},
        }
    # budgets
    total = args.budget if args.budget is not None else (args.kv_budget * L if args.kv_budget is not None else None)
    if total is None and profile is not None and profile.budget_total > 0:
        total = profile.budget_total
    window = args.window if args.window is not None else (profile.budget_window if profile is not None else 32)
    n_sink = args.n_sink if args.n_sink is not None else (profile.budget_n_sink if profile is not None else 4)
    weights = _weights(args.allocation, profile, L, args.pyramid_beta)
    wsum = sum(max(0.0, w) for w in weights) or 1.0
    shares = [max(0.0, w) / wsum for w in weights]
    budgets = None
    if total is not None:
        spec = BudgetSpec(total=int(total), n_sink=n_sink, window=window, max_layer_budget=args.n_ctx, pyramid_beta=args.pyramid_beta)
        budgets = layer_budgets(weights, spec)
        out["budget"] = {"allocation": args.allocation, "total": int(total), "avg_per_layer": int(total) / L,
                         "window": window, "n_sink": n_sink, "n_ctx": args.n_ctx, "layers": budgets}
    rank = {int(layer): r for r, layer in enumerate(profile.prune_order.tolist())} if profile is not None else {}
    for i in range(L):
        row: dict[str, Any] = {"layer": i, "share": shares[i]}
        if profile is not None:
            row.update(
                original=int(profile.layer_map[i]),
                qsim=float(profile.qsim_layer[i]),
                qsim_prune=float(profile.qsim_prune_layer[i]),
                bi=float(profile.bi_layer[i]),
                prune_score=float(profile.prune_score[i]),
                prune_rank=rank[i],
            )
        if budgets is not None:
            row["budget"] = budgets[i]
        out["layers"].append(row)
    return out


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[j]) for r in rows)) if rows else len(h) for j, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def render(d: dict[str, Any]) -> str:
    m = d["model"]
    ft = f", {m['file_type']}" if m["file_type"] is not None else ""
    lines = [
        f"{d['file']}: {m['arch']}, {m['n_layer']} layers, {m['n_head']} query / {m['n_head_kv']} KV heads, "
        f"head dim {m['head_dim']}, {m['n_tensors']} tensors{ft}, {d['bytes'] / 2**20:.1f} MiB"
    ]
    prof = d["profile"]
    if prof is None:
        lines.append("no TAPPA profile (convert or annotate the model with tappa-convert)")
    else:
        pv = prof["provenance"]
        lines.append(f"TAPPA profile v{prof['version']}: {prof['arch']}, calibrated on {pv['model_id']}")
        lines.append(
            f"  {pv['n_samples']} samples x {pv['seq_len']} tokens ({pv['n_tokens']} tokens), corpus sha256 "
            f"{pv['corpus_sha256'][:16]}, created {pv['created'] or '?'}"
        )
        lines.append(f"  weights sha256 {pv['weights_sha256'][:16] or '?'}, tokenizer sha256 {pv['tokenizer_sha256'][:16] or '?'}")
        db = prof["default_budget"]
        lines.append(
            f"  q-sim window {prof['qsim_window']}, prune beta {prof['prune_beta']:.4g}, query stats "
            f"{'yes' if prof['has_qstats'] else 'no'}; default budget: {db['allocation']}, total "
            f"{db['total'] or 'none (full cache)'}, window {db['window']}, sinks {db['n_sink']}"
        )
        removed = prof["removed_layers"]
        lines.append(f"prune plan (first pruned first): {prof['prune_order']}"
                     + (f"  (original layers {prof['prune_order_original']})" if removed else ""))
        lines.append(f"removed layers (original indices): {removed if removed else 'none'}")
    b = d["budget"]
    headers = ["layer"]
    if prof is not None:
        headers += ["orig", "q-sim", "q-sim prune", "BI", "score", "prune rank"]
    headers += ["share"] + (["budget"] if b is not None else [])
    rows = []
    for r in d["layers"]:
        cells = [str(r["layer"])]
        if prof is not None:
            cells += [str(r["original"]), f"{r['qsim']:.4f}", f"{r['qsim_prune']:.4f}", f"{r['bi']:.4f}",
                      f"{r['prune_score']:.4f}", str(r["prune_rank"])]
        cells.append(f"{r['share']:.4f}")
        if b is not None:
            cells.append(str(r["budget"]))
        rows.append(cells)
    lines += ["", _table(headers, rows), ""]
    if b is None:
        lines.append("budgets: no total given and none stored; pass --budget TOTAL or --kv-budget AVG")
    else:
        cap = f", capped at n_ctx {b['n_ctx']}" if b["n_ctx"] else ""
        lines.append(
            f"budgets: allocation {b['allocation']}, total {b['total']} tokens ({b['avg_per_layer']:.1f} per layer), "
            f"window {b['window']}, sinks {b['n_sink']}{cap}; sum {sum(b['layers'])}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    for name in ("budget", "kv_budget", "window", "n_sink", "n_ctx"):
        v = getattr(args, name)
        if v is not None and v < 0:
            raise BudgetError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
    data = collect(args)
    print(json.dumps(data, indent=2) if args.json else render(data))
    return 0
