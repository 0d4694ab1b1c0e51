"""``tappa-local calibrate``: measure a model's TAPPA profile on a local corpus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Run a transformers checkpoint over a calibration corpus and write its TAPPA profile:
per-layer/per-head q-similarity (post-RoPE windowed form for KV budgets, pre-RoPE all-pairs
form for pruning), ShortGPT Block Influence, the TAPPA prune order, query mean/variance for
Expected-Attention scoring, provenance and a default per-layer KV budget split.

MODEL is a local model directory (with config.json) or a hub id. CORPUS entries are .txt
files, .jsonl files (one JSON object per line, text in --text-field), folders of those, or
datasets written with datasets' save_to_disk. Memory stays bounded by one batch.
"""

EPILOG = """\
examples:
  tappa-local calibrate ./Qwen2.5-0.5B corpus/ -o qwen.tappa.safetensors
  tappa-local calibrate meta-llama/Llama-3.1-8B pg19.jsonl -o llama.tappa.safetensors \\
      --device cuda --dtype bfloat16 --n-samples 128 --seq-len 1024 --beta 0.3
  tappa-local calibrate big-model/ docs/ -o p.safetensors --device-map auto
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ..budget import Allocation

    p = sub.add_parser("calibrate", help="measure a model's TAPPA profile (q-similarity, BI, prune order, query stats)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="local model directory or hub id")
    p.add_argument("corpus", metavar="CORPUS", nargs="+", help=".txt / .jsonl files, folders of them, or saved datasets")
    p.add_argument("-o", "--output", required=True, type=Path, help="profile file to write (.safetensors)")
    g = p.add_argument_group("sampling")
    g.add_argument("--n-samples", type=int, default=128, help="calibration samples (default: %(default)s)")
    g.add_argument("--seq-len", type=int, default=1024, help="tokens per sample, BOS included (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=1, help="samples per forward pass (default: %(default)s)")
    g.add_argument("--text-field", default="text", help="text field of .jsonl rows / dataset columns (default: %(default)s)")
    g.add_argument("--split", default=None, help="split of a saved DatasetDict (default: train, else the first)")
    g.add_argument("--no-bos", action="store_true", help="do not start samples with the BOS token")
    g = p.add_argument_group("measurements")
    g.add_argument("--window", type=int, default=32, help="window W of the post-RoPE q-similarity (default: %(default)s)")
    g.add_argument("--beta", type=float, default=0.2, help="beta of the prune score BI_norm + beta*(1 - q_norm) (default: %(default)s)")
    g.add_argument("--n-sink", type=int, default=4,
                   help="leading positions per sample excluded from query stats and q-sim windows (default: %(default)s)")
    g = p.add_argument_group("model placement")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: %(default)s)")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="weights dtype (auto: float32 on CPU, else the checkpoint's; default: %(default)s)")
    g.add_argument("--device-map", default=None,
                   help="accelerate device map: 'auto', 'balanced', ... or a JSON object; overrides --device")
    g.add_argument("--offload-folder", default=None, help="folder for weights the device map sends to 'disk'")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own modeling code")
    g = p.add_argument_group("default KV budget written into the profile")
    g.add_argument("--allocation", default=Allocation.TAPPA.value, choices=[a.value for a in Allocation],
                   help="per-layer split of the budget (default: %(default)s, i.e. proportional to 1 - q-sim)")
    g.add_argument("--budget-total", type=int, default=0, help="total KV tokens over all layers, 0 = full cache (default: %(default)s)")
    g.add_argument("--budget-window", type=int, default=32, help="recent tokens every layer keeps (default: %(default)s)")
    g.add_argument("--budget-sinks", type=int, default=4, help="sink tokens every layer keeps (default: %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--seed", type=int, default=0, help="torch seed (default: %(default)s)")
    g.add_argument("--no-weights-hash", action="store_true", help="skip hashing the weight files for the provenance")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the per-layer summary as JSON instead of a table")
    p.set_defaults(func=run)


def _device_map(value: str | None) -> str | dict[str, Any] | None:
    from ..calibrate.errors import CalibrationConfigError

    if value is None or not value.lstrip().startswith("{"):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CalibrationConfigError(f"--device-map is not valid JSON: {exc.msg}") from None
    if not isinstance(parsed, dict):
        raise CalibrationConfigError("--device-map JSON must be an object")
    return parsed


def run(args: argparse.Namespace) -> int:
    from ..calibrate import CalibrationConfig, calibrate
    from ..calibrate.errors import CalibrationConfigError
    from ..calibrate.report import layer_table

    out: Path = args.output
    if out.exists() and out.is_dir():
        raise CalibrationConfigError(f"-o {out} is a directory")
    if not out.parent.exists():
        raise CalibrationConfigError(f"-o {out}: folder {out.parent} does not exist")
    config = CalibrationConfig(
        n_samples=args.n_samples, seq_len=args.seq_len, window=args.window, beta=args.beta, n_sink=args.n_sink,
        device=args.device, dtype=args.dtype, device_map=_device_map(args.device_map), offload_folder=args.offload_folder,
        batch_size=args.batch_size, add_bos=not args.no_bos, text_field=args.text_field, dataset_split=args.split,
        budget_allocation=args.allocation, budget_total=args.budget_total, budget_window=args.budget_window,
        budget_n_sink=args.budget_sinks, seed=args.seed, hash_weights=not args.no_weights_hash,
        trust_remote_code=args.trust_remote_code,
    )
    profile = calibrate(args.model, args.corpus, config, progress=not args.no_progress)
    profile.save(out)  # atomic: nothing is written unless calibration succeeded
    if args.json:
        print(json.dumps({
            "output": str(out),
            "qsim_layer": profile.qsim_layer.tolist(),
            "qsim_prune_layer": profile.qsim_prune_layer.tolist(),
            "bi_layer": profile.bi_layer.tolist(),
            "prune_order": profile.prune_order.tolist(),
            "budget_layer_frac": profile.budget_layer_frac.tolist(),
        }, indent=2))
    else:
        print(layer_table(profile))
        print(f"wrote {out}", file=sys.stderr)
    return 0
