"""TAPPA analysis of a model: does q-similarity separate predictable from retrieval-like heads?

    python -m bench.analysis [--model HF_DIR] [--samples 8] [--seq-len 512]

- a heatmap of per-head q-similarity (post-RoPE, windowed: the KV-compression form);
- attention maps of the heads with the highest and the lowest q-similarity on the same text
  (the paper's central figure: high q-sim heads attend in predictable patterns — sinks,
  diagonals, stripes — low q-sim heads jump around, retrieval-like);
- stability: q-similarity measured on two different local corpora, Spearman rank
  correlation per layer and per head.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tappa_local import tasks

from . import report


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):  # average ties
            m = x == v
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r

    ra, rb = ranks(np.asarray(a, float).ravel()), ranks(np.asarray(b, float).ravel())
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="transformers checkpoint (default: the bundled tappa-mini)")
    ap.add_argument("--samples", type=int, default=8, help="calibration samples per corpus")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--map-len", type=int, default=160, help="tokens shown in the attention maps")
    ap.add_argument("--name", default="analysis")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tappa_local.calibrate import CalibrationConfig, calibrate_texts
    from tappa_local.defaultmodel import asset_dir

    model_dir = args.model or asset_dir()
    cfg = CalibrationConfig(n_samples=args.samples, seq_len=args.seq_len, window=args.window, hash_weights=False)
    # corpus A: text like the training data; corpus B: the held-out split (never trained on)
    corpus_a = [t for _, t in tasks.training_documents()][:200]
    corpus_b = [t for _, t in tasks.heldout_documents()]
    t0 = time.perf_counter()
    pa = calibrate_texts(model_dir, corpus_a, cfg, progress=False)
    pb = calibrate_texts(model_dir, corpus_b, cfg, progress=False)
    calib_s = time.perf_counter() - t0

    stab = {
        "layer_qsim_window": spearman(pa.qsim_layer, pb.qsim_layer),
        "layer_qsim_prune": spearman(pa.qsim_prune_layer, pb.qsim_prune_layer),
        "head_qsim_window": spearman(pa.qsim_head, pb.qsim_head),
        "layer_block_influence": spearman(pa.bi_layer, pb.bi_layer),
    }

    # attention maps of the extreme heads on one held-out passage
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    text = tasks.heldout_text()[:20_000]
    ids = tok(text, return_tensors="pt").input_ids[:, : args.map_len]
    with torch.no_grad():
        att = model(ids, output_attentions=True).attentions  # L x [1, H, T, T]
    qh = np.asarray(pa.qsim_head)
    hi = np.unravel_index(np.argmax(qh), qh.shape)
    lo = np.unravel_index(np.argmin(qh), qh.shape)

    out = report.results_dir()
    _plots(qh, att, hi, lo, out / f"{args.name}_qsim_heads.png", out / f"{args.name}_attention_maps.png", model_dir.name)

    rows = [[layer, f"{pa.qsim_layer[layer]:.3f}", f"{pb.qsim_layer[layer]:.3f}", f"{pa.qsim_prune_layer[layer]:.3f}",
             f"{pa.bi_layer[layer]:.3f}", int(np.argsort(pa.prune_order)[layer]) + 1] for layer in range(pa.n_layer)]
    md = "\n".join([
        f"# TAPPA analysis of {model_dir.name}", "",
        f"`python -m bench.analysis` — {args.samples} samples x {args.seq_len} tokens per corpus, window {args.window}; "
        f"calibrating both corpora took {calib_s:.0f} s.", "",
        f"Highest q-similarity head: layer {hi[0]} head {hi[1]} (q-sim {qh[hi]:.3f}); "
        f"lowest: layer {lo[0]} head {lo[1]} (q-sim {qh[lo]:.3f}). Attention maps: `{args.name}_attention_maps.png`; "
        f"per-head q-similarity: `{args.name}_qsim_heads.png`.", "",
        "## Stability across corpora (Spearman rank correlation, training-like text vs held-out text)", "",
        report.markdown_table(["quantity", "Spearman"], [[k, f"{v:.3f}"] for k, v in stab.items()]), "",
        "## Per layer (corpus A = training-like, B = held-out)", "",
        report.markdown_table(["layer", "q-sim window (A)", "q-sim window (B)", "q-sim prune form (A)", "Block Influence (A)",
                               "prune rank (1 = first)"], rows),
    ])
    report.write(args.name, {"model": str(model_dir), "args": {k: str(v) for k, v in vars(args).items()},
                             "calibration_seconds": calib_s, "stability_spearman": stab,
                             "qsim_head_A": qh.tolist(), "qsim_head_B": np.asarray(pb.qsim_head).tolist(),
                             "qsim_layer_A": np.asarray(pa.qsim_layer).tolist(), "qsim_layer_B": np.asarray(pb.qsim_layer).tolist(),
                             "highest_head": [int(x) for x in hi], "lowest_head": [int(x) for x in lo]}, md)
    print(md)
    return 0


def _plots(qh: np.ndarray, att, hi: tuple, lo: tuple, heat_png: Path, maps_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * qh.shape[1], 1.0 + 0.4 * qh.shape[0]))
    im = ax.imshow(qh, cmap="viridis", aspect="auto")
    ax.set(xlabel="query head", ylabel="layer", title=f"{title}: q-similarity per head (windowed, post-RoPE)")
    for (i, j), v in np.ndenumerate(qh):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < qh.mean() else "k")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(heat_png, dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for a, (layer, head), label in ((axes[0], hi, "highest"), (axes[1], lo, "lowest")):
        m = att[layer][0, head].numpy()
        a.imshow(np.log10(m + 1e-6), cmap="magma", vmin=-4, vmax=0)
        a.set(title=f"{label} q-sim: layer {layer}, head {head} (q-sim {qh[layer, head]:.2f})", xlabel="key position", ylabel="query position")
    fig.suptitle(f"{title}: attention (log10) of the most and least self-similar query heads")
    fig.tight_layout()
    fig.savefig(maps_png, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
