"""Calibration benchmark: throughput, peak memory and q-similarity stability, on CPU.

    python -m bench.calibration                      # everything, results under bench/results/
    python -m bench.calibration --quick              # tiny model only (smoke run)
    python -m bench.calibration --model path/to/hf   # add a trained model to the stability study

Throughput / memory: each configuration runs in a fresh subprocess (so peak RSS belongs to
that configuration alone). RSS is sampled every 5 ms by a thread while the calibration runs:
``rss_base`` is the resident set once model and tokenizer are loaded, ``rss_peak`` the
maximum seen during calibration, ``calib_delta = rss_peak - rss_base`` what calibration
itself adds (one batch of activations, hook temporaries, accumulators). Times cover the
hooked forward passes (tokenization is reported apart); the same batches are also run
without hooks to give the hook overhead; best of two interleaved repetitions each.
Runs with different numbers of samples show that memory does not grow with the tokens seen.

Stability: the same model calibrated on two disjoint local corpora (the first and the second
half of the standard library's top-level source files, ``stdlib_corpus(skip=0)[:n/2]`` vs
``stdlib_corpus(skip=n/2)``); Spearman rank correlation of the
per-layer windowed q-sim, pruning-form q-sim and BI between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import report

RESULTS = Path(__file__).resolve().parent / "results"
ASSET = Path(__file__).resolve().parent.parent / "tappa_local" / "assets" / "tappa-mini"
REPEATS = 2


# --------------------------------------------------------------------------- models


def half_b_llama_config() -> dict[str, Any]:
    """~0.5B-parameter Llama geometry (Qwen2.5-0.5B-like: 24 layers, 896 wide, 14 heads / 2 KV heads, 151,936 vocab, tied)."""
    return dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_theta=1e6, bos_token_id=1, eos_token_id=2)


def build_model(kind: str, model_path: str | None) -> tuple[Any, Any, str]:
    """(model, tokenizer, name) for ``tiny``, ``llama-0.5b`` (random init, in memory) or ``path``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tappa_local.localmodels import TinyModelSpec, ensure_tiny_model

    tiny = ensure_tiny_model(TinyModelSpec(arch="llama"))
    if kind == "tiny":
        return AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(tiny.hf_dir), tiny.spec.name
    if kind == "llama-0.5b":
        torch.manual_seed(0)
        cfg = LlamaConfig(**half_b_llama_config(), initializer_range=0.02)
        with torch.device("cpu"):
            model = LlamaForCausalLM(cfg).to(torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(tiny.hf_dir), "llama-0.5b-random"
    assert model_path is not None
    name = Path(model_path).name + (" (bundled)" if Path(model_path).resolve() == ASSET.resolve() else "")
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(model_path), name


# --------------------------------------------------------------------------- one throughput run (subprocess)


class RssSampler:
    """Peak resident set size of this process, sampled by a background thread."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> "RssSampler":
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def timed_hooks_class() -> type:
    """A :class:`CalibrationHooks` that also measures the wall time spent inside its hooks."""
    from tappa_local.calibrate.hooks import CalibrationHooks

    class TimedHooks(CalibrationHooks):
        seconds = 0.0
        _depth = 0

        def _timed(self, fn: Any, *args: Any) -> Any:
            outer = self._depth == 0
            self._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self._depth -= 1
                if outer:
                    type(self).seconds += time.perf_counter() - t

    for name in ("_on_layer_in", "_on_attn_in", "_on_q_proj", "_on_query", "_on_layer_out"):
        base = getattr(CalibrationHooks, name)
        setattr(TimedHooks, name, lambda self, *a, _f=base: self._timed(_f, self, *a))
    return TimedHooks


def release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc), so RSS deltas measure live memory."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class ThroughputResult:
    model: str
    params_m: float
    n_samples: int
    seq_len: int
    batch_size: int
    tokens: int
    calib_s: float
    tokens_per_s: float
    s_per_1k_tokens: float
    plain_forward_s: float
    hook_overhead_pct: float
    hook_time_share_pct: float
    tokenize_s: float
    rss_base_mib: float
    rss_peak_mib: float
    calib_delta_mib: float
    calib_delta_mib_per_1k_batch_tokens: float
    accumulator_kib: float
    torch_threads: int


def throughput_worker(kind: str, model_path: str | None, n_samples: int, seq_len: int, batch_size: int) -> ThroughputResult:
    import psutil
    import torch

    from tappa_local.calibrate import CalibrationConfig
    from tappa_local.calibrate.accumulators import CalibrationAccumulators
    from tappa_local.calibrate.architecture import inspect_model
    from tappa_local.calibrate.data import build_samples, iter_texts
    from tappa_local.localmodels import stdlib_corpus

    model, tok, name = build_model(kind, model_path)
    cfg = CalibrationConfig(n_samples=n_samples, seq_len=seq_len, batch_size=batch_size, window=32, hash_weights=False)
    t0 = time.perf_counter()
    samples = build_samples(tok, iter_texts(stdlib_corpus(3_000_000)), n_samples, seq_len)
    tokenize_s = time.perf_counter() - t0
    geometry = inspect_model(model)

    def plain() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for batch in samples.batches(batch_size):
                model(input_ids=batch, use_cache=False, logits_to_keep=1)
        return time.perf_counter() - t

    plain()  # warm-up: first-call allocations and thread pools stay out of the measurement
    hooks_cls = timed_hooks_class()
    calib_times, plain_times, hook_times = [], [], []
    peaks = []
    for _ in range(REPEATS):  # interleaved, best of REPEATS: the machine is shared
        release_free_heap()
        base = psutil.Process().memory_info().rss
        with RssSampler() as rss:
            hooks_cls.seconds = 0.0
            acc = CalibrationAccumulators(geometry.n_layer, geometry.n_head, geometry.n_head_kv, geometry.head_dim)
            t0 = time.perf_counter()
            with hooks_cls(geometry, acc, cfg.window, cfg.n_sink), torch.inference_mode():
                for batch in samples.batches(batch_size):
                    model(input_ids=batch, use_cache=False, logits_to_keep=1)
            calib_times.append(time.perf_counter() - t0)
            hook_times.append(hooks_cls.seconds)
        peaks.append((rss.peak, base))
        plain_times.append(plain())
    best = min(range(REPEATS), key=lambda i: calib_times[i])
    dt, plain_s, hook_s = calib_times[best], min(plain_times), hook_times[best]
    peak, base = max(p for p, _ in peaks), min(b for _, b in peaks)
    delta_bytes = max(p - b for p, b in peaks)
    acc.results()  # the measurement is complete and valid
    tokens = samples.n_tokens
    delta = delta_bytes / 2**20
    return ThroughputResult(
        model=name, params_m=sum(p.numel() for p in model.parameters()) / 1e6, n_samples=samples.n_samples, seq_len=seq_len,
        batch_size=batch_size, tokens=tokens, calib_s=dt, tokens_per_s=tokens / dt, s_per_1k_tokens=1000 * dt / tokens,
        plain_forward_s=plain_s, hook_overhead_pct=100 * (dt - plain_s) / plain_s,
        hook_time_share_pct=100 * hook_s / dt, tokenize_s=tokenize_s, rss_base_mib=base / 2**20, rss_peak_mib=peak / 2**20,
        calib_delta_mib=delta, calib_delta_mib_per_1k_batch_tokens=delta / (batch_size * seq_len / 1000),
        accumulator_kib=acc.nbytes() / 1024, torch_threads=torch.get_num_threads(),
    )


def run_worker_subprocess(kind: str, model_path: str | None, n_samples: int, seq_len: int, batch_size: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.calibration", "--worker", kind, "--n-samples", str(n_samples), "--seq-len", str(seq_len),
           "--batch-size", str(batch_size), "--threads", str(threads)]
    if model_path:
        cmd += ["--model", model_path]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    result = json.loads(line)
    print(f"  {kind:>11} n={n_samples:<3} T={seq_len:<5} B={batch_size}: {result['tokens_per_s']:8.1f} tok/s, "
          f"peak {result['rss_peak_mib']:7.1f} MiB, calib +{result['calib_delta_mib']:6.1f} MiB, in hooks {result['hook_time_share_pct']:.1f}% (wall vs plain {result['hook_overhead_pct']:+.1f}%)",
          flush=True)
    return result


# --------------------------------------------------------------------------- stability


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    import numpy as np

    def ranks(x: list[float]) -> np.ndarray:
        x_arr = np.asarray(x, dtype=np.float64)
        order = np.argsort(x_arr, kind="stable")
        r = np.empty(len(x_arr))
        r[order] = np.arange(len(x_arr), dtype=np.float64)
        for v in np.unique(x_arr):  # ties -> mean rank
            idx = x_arr == v
            r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den else float("nan")


def stability(kind: str, model_path: str | None, n_samples: int, seq_len: int) -> dict[str, Any]:
    from tappa_local.calibrate import CalibrationConfig
    from tappa_local.calibrate.core import run_calibration
    from tappa_local.calibrate.data import iter_texts
    from tappa_local.calibrate.loading import wrap
    from tappa_local.localmodels import stdlib_corpus, stdlib_files

    model, tok, name = build_model(kind, model_path)
    loaded = wrap(model, tok, name)
    cfg = CalibrationConfig(n_samples=n_samples, seq_len=seq_len, window=32, hash_weights=False)
    half = len(stdlib_files()) // 2
    corpora = {f"stdlib files [0:{half})": stdlib_corpus(10_000_000, skip=0)[:half], f"stdlib files [{half}:)": stdlib_corpus(10_000_000, skip=half)}
    profiles = {}
    for label, texts in corpora.items():
        profiles[label] = run_calibration(loaded, iter_texts(texts), cfg, progress=False).profile
    a, b = profiles.values()
    out = {
        "model": name, "n_layer": a.n_layer, "n_samples": n_samples, "seq_len": seq_len, "corpora": list(profiles),
        "corpus_sha256": [p.provenance.corpus_sha256 for p in profiles.values()],
        "spearman_qsim_layer": spearman(a.qsim_layer.tolist(), b.qsim_layer.tolist()),
        "spearman_qsim_prune_layer": spearman(a.qsim_prune_layer.tolist(), b.qsim_prune_layer.tolist()),
        "spearman_bi_layer": spearman(a.bi_layer.tolist(), b.bi_layer.tolist()),
        "prune_order_a": a.prune_order.tolist(), "prune_order_b": b.prune_order.tolist(),
        "qsim_layer_a": a.qsim_layer.tolist(), "qsim_layer_b": b.qsim_layer.tolist(),
        "max_abs_diff_qsim_layer": float(abs(a.qsim_layer - b.qsim_layer).max()),
    }
    print(f"  {name}: Spearman q-sim {out['spearman_qsim_layer']:.3f}, q-sim prune {out['spearman_qsim_prune_layer']:.3f}, "
          f"BI {out['spearman_bi_layer']:.3f} over {a.n_layer} layers", flush=True)
    return out


# --------------------------------------------------------------------------- report


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Calibration benchmark (CPU)", "",
             f"Machine: {results['machine']['cpu_count']} CPU cores ({results['machine']['note']}), torch {results['machine']['torch']}, "
             f"transformers {results['machine']['transformers']}, {results['machine']['torch_threads']} torch thread(s), float32, W=32. Generated by `python -m bench.calibration`.", "",
             "## Throughput and memory", "",
             "| model | params (M) | samples x T | batch | tok/s | s / 1K tok | time in hooks | wall vs plain forward | RSS base (MiB) | RSS peak (MiB) | calib +MiB | +MiB / 1K batch tok | accumulators (KiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["throughput"]:
        lines.append(
            f"| {r['model']} | {r['params_m']:.1f} | {r['n_samples']} x {r['seq_len']} | {r['batch_size']} | {r['tokens_per_s']:.1f} | "
            f"{r['s_per_1k_tokens']:.3f} | {r['hook_time_share_pct']:.1f}% | {r['hook_overhead_pct']:+.1f}% | {r['rss_base_mib']:.0f} | {r['rss_peak_mib']:.0f} | "
            f"{r['calib_delta_mib']:.1f} | {r['calib_delta_mib_per_1k_batch_tokens']:.1f} | {r['accumulator_kib']:.1f} |"
        )
    lines += ["", "tok/s and s / 1K tok: hooked forward passes (tokenization excluded), best of two runs. time in hooks: share of that "
              "time spent inside the calibration hooks (measured in the hooks); wall vs plain forward: the same batches without hooks "
              "(noisy on a shared machine). calib +MiB = peak RSS during calibration minus RSS after loading (heap trimmed): one batch "
              "of activations + hook temporaries + accumulators; it does not grow with the number of samples.", "", "## q-similarity stability across corpora", "",
              "| model | layers | samples x T | Spearman q-sim (windowed) | Spearman q-sim (prune form) | Spearman BI | layer q-sim range | max abs diff q-sim |",
              "|---|---|---|---|---|---|---|---|"]
    for s in results["stability"]:
        lines.append(
            f"| {s['model']} | {s['n_layer']} | {s['n_samples']} x {s['seq_len']} | {s['spearman_qsim_layer']:.3f} | "
            f"{s['spearman_qsim_prune_layer']:.3f} | {s['spearman_bi_layer']:.3f} | {min(s['qsim_layer_a']):.3f}-{max(s['qsim_layer_a']):.3f} | "
            f"{s['max_abs_diff_qsim_layer']:.4f} |"
        )
    lines += ["", f"Corpora: {' vs '.join(results['stability'][0]['corpora'])} (disjoint halves of the standard library's top-level .py files, in sorted order)." if results["stability"] else "", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a trained HF model directory to add (e.g. tappa_local/assets/tappa-mini)")
    ap.add_argument("--quick", action="store_true", help="tiny model only")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default: 1; on a shared, oversubscribed machine more threads make small ops "
                         "much slower and the timings erratic)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-samples", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--seq-len", type=int, default=512, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out = args.out or report.results_dir()
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(asdict(throughput_worker(args.worker, args.model, args.n_samples, args.seq_len, args.batch_size))))
        return 0

    import transformers

    plan: list[tuple[str, str | None, int, int, int]] = [
        ("tiny", None, 8, 512, 1), ("tiny", None, 32, 512, 1), ("tiny", None, 32, 512, 4),
    ]
    stab: list[tuple[str, str | None, int, int]] = [("tiny", None, 16, 512)]
    if not args.quick:
        plan += [("llama-0.5b", None, 2, 512, 1), ("llama-0.5b", None, 4, 512, 1), ("llama-0.5b", None, 1, 1024, 1)]
        stab += [("llama-0.5b", None, 8, 512)]
    default_model = ASSET
    model = args.model or (str(default_model) if (default_model / "config.json").is_file() else None)
    if model:
        plan += [("path", model, 8, 512, 1)]
        stab += [("path", model, 16, 512)]
    print("throughput / memory:", flush=True)
    throughput = [run_worker_subprocess(*p, threads=args.threads) for p in plan]
    print("stability:", flush=True)
    stability_results = [stability(*s) for s in stab]
    results = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "python": platform.python_version(),
                    "torch_threads": args.threads, "load_average": os.getloadavg(),
                    "note": f"load average {os.getloadavg()[0]:.1f} at the end; other jobs on the machine make absolute speeds pessimistic"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "throughput": throughput,
        "stability": stability_results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "calibration.md").write_text(markdown(results))
    print(f"wrote {args.out / 'calibration.json'} and {args.out / 'calibration.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
