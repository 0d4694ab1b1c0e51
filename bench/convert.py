"""tappa-convert against the plain pinned converter: wall time on the same checkpoint.

    python -m bench.convert              # tiny + medium random-init models, results under bench/results/
    python -m bench.convert --quick      # tiny model only, one repetition (smoke run)

For each model, in fresh processes, interleaved, ``--repeats`` times (median reported):

- ``plain``: ``python convert_hf_to_gguf.py HF --outfile X --outtype f16`` (the pinned script);
- ``tappa``: ``tappa-convert HF --profile P --outtype f16 -o Y`` (same conversion, plus loading
  and checking the profile, hashing the checkpoint, rewriting the GGUF with the ``tappa.*``
  keys and reading the result back);
- ``tappa+q8``: the same with ``--quantize Q8_0`` (llama.cpp's quantizer in process);
- ``annotate``: ``tappa-convert --annotate Y0 --profile P`` on an existing f16 GGUF.

The overhead ratio is ``tappa / plain``. Calibration (``tappa-local calibrate``, which makes
``P``) is timed once and reported separately: it is a different job and scales with the
corpus, not the checkpoint. tappa-convert's own step timings (``--json``) give the breakdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import report

from tappa_local.localmodels import TinyModelSpec, ensure_tiny_model, stdlib_corpus
from tappa_local.native import find_build

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent

MODELS: dict[str, TinyModelSpec] = {
    "tiny": TinyModelSpec(arch="llama"),
    "medium": TinyModelSpec(arch="llama", hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1408),
}
CALIBRATION = ("--n-samples", "16", "--seq-len", "256")


@dataclass
class ModelResult:
    name: str
    params: int
    hf_bytes: int
    gguf_f16_bytes: int
    plain_s: list[float]
    tappa_s: list[float]
    tappa_q8_s: list[float]
    annotate_s: list[float]
    calibrate_s: float
    tappa_steps: dict[str, float]  # median of tappa-convert's own step timings (f16 run)
    tappa_q8_steps: dict[str, float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.tappa_s) / statistics.median(self.plain_s)


def _timed(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dt, proc.stdout


def _median_steps(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in runs for k in r})
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}


def bench_model(name: str, spec: TinyModelSpec, repeats: int, work: Path) -> ModelResult:
    model = ensure_tiny_model(spec)
    hf = model.hf_dir
    corpus = work / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(stdlib_corpus(max_chars=400_000, skip=20)))
    profile = work / f"{name}.tappa.safetensors"
    calib_s, _ = _timed([str(BIN / "tappa-local"), "calibrate", str(hf), str(corpus), "-o", str(profile), *CALIBRATION, "--no-progress"])

    script = str(find_build().convert_script)
    plain, tappa, tappa_q8, annotate = [], [], [], []
    steps, steps_q8 = [], []
    f16_bytes = 0
    for i in range(repeats):
        out = work / f"{name}-plain-{i}.gguf"
        dt, _ = _timed([sys.executable, script, str(hf), "--outfile", str(out), "--outtype", "f16"])
        plain.append(dt)
        f16_bytes = out.stat().st_size

        out_t = work / f"{name}-tappa-{i}.gguf"
        dt, stdout = _timed([str(BIN / "tappa-convert"), str(hf), "--profile", str(profile), "--outtype", "f16",
                             "-o", str(out_t), "--json", "--no-progress"])
        tappa.append(dt)
        steps.append(json.loads(stdout)["timings"])

        out_q = work / f"{name}-tappa-q8-{i}.gguf"
        dt, stdout = _timed([str(BIN / "tappa-convert"), str(hf), "--profile", str(profile), "--outtype", "f16",
                             "--quantize", "Q8_0", "-o", str(out_q), "--json", "--no-progress"])
        tappa_q8.append(dt)
        steps_q8.append(json.loads(stdout)["timings"])

        out_a = work / f"{name}-annotated-{i}.gguf"
        dt, _ = _timed([str(BIN / "tappa-convert"), "--annotate", str(out), "--profile", str(profile), "-o", str(out_a), "--no-progress"])
        annotate.append(dt)
        for f in (out, out_t, out_q, out_a):
            f.unlink()

    import json as _json  # noqa: PLC0415

    cfg = _json.loads((hf / "config.json").read_text())
    h, n_l, inter, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    kv_dim = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    params = 2 * vocab * h + n_l * (2 * h * h + 2 * h * kv_dim + 3 * h * inter + 2 * h) + h
    return ModelResult(
        name=name, params=params, hf_bytes=sum(f.stat().st_size for f in hf.glob("*.safetensors")), gguf_f16_bytes=f16_bytes,
        plain_s=plain, tappa_s=tappa, tappa_q8_s=tappa_q8, annotate_s=annotate, calibrate_s=calib_s,
        tappa_steps=_median_steps(steps), tappa_q8_steps=_median_steps(steps_q8),
    )


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_at_start": os.getloadavg()}
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=RESULTS.parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def markdown(results: list[ModelResult], meta: dict[str, Any]) -> str:
    med = statistics.median
    lines = [
        "# tappa-convert vs the plain converter",
        "",
        f"Machine: {meta['platform']}, {meta['cpu_count']} CPUs, load average at start {meta['loadavg_at_start'][0]:.1f} "
        f"(shared with other jobs), {meta['date_utc']}, git {meta.get('git', '?')}. Median of {meta['repeats']} interleaved runs, "
        "each a fresh process; wall-clock seconds. Regenerate with `python -m bench.convert`.",
        "",
        "| model | params | f16 GGUF | plain convert | tappa-convert | overhead ratio | + Q8_0 quantize | annotate existing GGUF | calibration (separate) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.params / 1e6:.1f}M | {r.gguf_f16_bytes / 2**20:.1f} MiB | {med(r.plain_s):.2f} s | {med(r.tappa_s):.2f} s | "
            f"**{r.ratio:.2f}x** | {med(r.tappa_q8_s):.2f} s | {med(r.annotate_s):.2f} s | {r.calibrate_s:.1f} s |"
        )
    lines += ["", "tappa-convert's own step timings (median, seconds; `convert` is the pinned script as a subprocess):", "",
              "| model | run | " + " | ".join(["calibrate", "convert", "quantize", "metadata", "verify", "total"]) + " |",
              "|---|---|" + "---|" * 6]
    for r in results:
        for label, st in (("f16", r.tappa_steps), ("f16 + Q8_0", r.tappa_q8_steps)):
            cells = [f"{st[k]:.2f}" if k in st else "-" for k in ("calibrate", "convert", "quantize", "metadata", "verify", "total")]
            lines.append(f"| {r.name} | {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Calibration: `tappa-local calibrate {' '.join(CALIBRATION)}` on a standard-library text corpus, CPU, "
              "including model loading and interpreter start-up."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, one repetition")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions per measurement (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default: bench/results)")
    args = ap.parse_args(argv)
    args.out = args.out or report.results_dir()
    names = ["tiny"] if args.quick else list(MODELS)
    repeats = 1 if args.quick else args.repeats
    meta = machine()
    meta["repeats"] = repeats
    results = []
    with tempfile.TemporaryDirectory(prefix="tappa-bench-convert-") as tmp:
        for name in names:
            print(f"[bench.convert] {name} ...", file=sys.stderr, flush=True)
            r = bench_model(name, MODELS[name], repeats, Path(tmp))
            print(f"[bench.convert] {name}: plain {statistics.median(r.plain_s):.2f}s, tappa {statistics.median(r.tappa_s):.2f}s, "
                  f"ratio {r.ratio:.2f}, calibration {r.calibrate_s:.1f}s", file=sys.stderr, flush=True)
            results.append(r)
    stem = "convert_quick" if args.quick else "convert"
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"machine": meta, "models": [{**asdict(r), "overhead_ratio": r.ratio} for r in results]}
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results, meta))
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
