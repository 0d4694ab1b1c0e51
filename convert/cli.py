"""``tappa-convert``: command-line entry point (errors: one line on stderr, exit code 2)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tappa_local import __version__
from tappa_local.budget import Allocation
from tappa_local.errors import TappaError

from .calibration import CalibrationOptions
from .dropplan import parse_drop_layers
from .errors import ConvertError
from .hfconvert import OUTTYPES
from .pipeline import BudgetOptions, ConvertJob, describe, report_dict, run
from .progress import ProgressConfig

EPILOG = """\
examples:
  tappa-convert ./Llama-3.2-1B --corpus corpus/ -o llama.gguf --outtype f16 --quantize Q4_K_M
  tappa-convert ./Llama-3.2-1B --profile llama.tappa.safetensors -o llama.gguf
  tappa-convert --annotate llama.gguf --profile llama.tappa.safetensors -o llama-annotated.gguf
  tappa-convert llama.gguf --drop-layers 4 -o llama-pruned.gguf
  tappa-convert llama.gguf --quantize Q8_0 -o llama-q8.gguf

Every result is written to a temporary file beside OUT and renamed at the end: on any error
or Ctrl-C there is no partial output, and an existing OUT is left untouched.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tappa-convert",
        description=(
            "Convert a transformers checkpoint to GGUF with its TAPPA profile (q-similarity, prune order, "
            "KV-budget plan) stored as tappa.* metadata, or add/replace the profile of an existing GGUF, "
            "remove layers in TAPPA prune order, and quantize with llama.cpp's quantizer. The files stay "
            "loadable by stock llama.cpp (the profile is metadata only)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="transformers checkpoint directory (or a hub id in the local Hugging Face cache), or a .gguf file")
    p.add_argument("--annotate", metavar="GGUF", type=Path,
                   help="add or replace the profile of this existing GGUF (needs --profile; instead of MODEL)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="the GGUF file to write")
    p.add_argument("--version", action="version", version=f"tappa-convert {__version__}")

    g = p.add_argument_group("conversion and quantization")
    g.add_argument("--outtype", choices=OUTTYPES, default=None,
                   help="tensor type the pinned convert_hf_to_gguf.py writes (checkpoints only; default: auto, "
                        "the converter's choice of f16/bf16)")
    g.add_argument("--quantize", metavar="TYPE",
                   help="then quantize with llama.cpp's quantizer to TYPE, e.g. Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16 "
                        "(any llama_ftype name; the tappa.* metadata is carried over and checked)")
    g.add_argument("--allow-requantize", action="store_true",
                   help="let --quantize convert tensors that are already quantized (loses quality)")
    g.add_argument("--threads", type=int, default=0, metavar="N",
                   help="quantizer threads (default: 0 = all cores)")

    g = p.add_argument_group("profile")
    g.add_argument("--profile", type=Path, metavar="PROFILE",
                   help="use this profile (.safetensors from `tappa_local.calibrate` / Profile.save) instead of calibrating; "
                        "it must belong to the model: layer and head counts, head dim, and where known the weights "
                        "and tokenizer are checked")
    g.add_argument("--force", action="store_true",
                   help="accept a profile whose weights/tokenizer identity differs from the model's "
                        "(geometry mismatches are always refused)")

    g = p.add_argument_group("calibration (when no --profile is given; needs the transformers checkpoint)")
    g.add_argument("--corpus", type=Path, action="append", default=[], metavar="PATH",
                   help="calibration text: .txt files, folders of .txt/.jsonl, .jsonl files or a saved dataset (repeatable)")
    g.add_argument("--n-samples", type=int, help="calibration sequences (calibrator default: 128)")
    g.add_argument("--seq-len", type=int, help="tokens per calibration sequence (default: 1024)")
    g.add_argument("--window", type=int, help="window W of the windowed q-similarity (default: 32)")
    g.add_argument("--beta", type=float, help="beta of the prune score BI_norm + beta * (1 - q_norm) (default: 0.2)")
    g.add_argument("--n-sink", type=int, help="leading positions excluded from q-similarity windows and query stats (default: 4)")
    g.add_argument("--device", help="calibration device: cpu, cuda, cuda:N or mps (default: cpu)")
    g.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), help="calibration dtype (default: auto)")
    g.add_argument("--batch-size", type=int, help="calibration sequences per forward pass (default: 1)")

    g = p.add_argument_group("layer removal")
    g.add_argument("--drop-layers", metavar="N|I,J,...",
                   help="physically remove layers: a count N takes the first N layers of the stored TAPPA prune order "
                        "(tappa.prune.order); a comma list (5,7 or 5,) names layer indices of the input. Every per-layer "
                        "tappa.* array, tappa.layer_map and tappa.prune.removed are rewritten; nothing is recalibrated")

    g = p.add_argument_group("default KV budget written with the profile")
    g.add_argument("--allocation", choices=[a.value for a in Allocation],
                   help="per-layer budget allocation stored as tappa.budget.layer_frac (default: keep the profile's)")
    g.add_argument("--budget-total", type=int, metavar="TOKENS",
                   help="default total KV budget in tokens over all layers, tappa.budget.total (0: full cache)")
    g.add_argument("--budget-window", type=int, metavar="W", help="recent tokens every layer keeps, tappa.budget.window")
    g.add_argument("--budget-n-sink", type=int, metavar="S", help="sink tokens every layer keeps, tappa.budget.n_sink")

    g = p.add_argument_group("output")
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show progress bars (default: when stderr is a terminal)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g.add_argument("-q", "--quiet", action="store_true", help="do not print the summary")
    g.add_argument("--json", action="store_true",
                   help="print the summary as JSON (output, size, layers, removed layers, seconds per step)")
    return p


def job_from_args(args: argparse.Namespace) -> ConvertJob:
    if args.annotate is not None and args.model is not None:
        raise ConvertError("give MODEL or --annotate GGUF, not both")
    if args.annotate is None and args.model is None:
        raise ConvertError("give MODEL (a checkpoint directory or .gguf file), or --annotate GGUF")
    source = str(args.annotate) if args.annotate is not None else args.model
    return ConvertJob(
        source=source,
        output=args.output,
        outtype=args.outtype,
        quantize=args.quantize,
        drop=parse_drop_layers(args.drop_layers) if args.drop_layers is not None else None,
        profile_path=args.profile,
        calibration=CalibrationOptions(
            corpus=tuple(args.corpus), n_samples=args.n_samples, seq_len=args.seq_len, window=args.window, beta=args.beta,
            n_sink=args.n_sink, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        ),
        budget=BudgetOptions(args.allocation, args.budget_total, args.budget_window, args.budget_n_sink),
        annotate=args.annotate is not None,
        force=args.force,
        threads=args.threads,
        allow_requantize=args.allow_requantize,
    )


def one_line(exc: BaseException) -> str:
    """Errors are one line; a multi-line reason (e.g. the converter's traceback tail) is condensed."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    return f"{lines[0]} {lines[-1]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        job = job_from_args(args)
        report = run(job, ProgressConfig.auto(args.progress))
    except (TappaError, OSError) as exc:
        print(f"tappa-convert: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tappa-convert: interrupted; no output written", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report_dict(report), indent=2))
    elif not args.quiet:
        print(describe(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
