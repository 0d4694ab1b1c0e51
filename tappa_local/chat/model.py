"""Which model to open and how its KV cache is compressed: one set of options for ``chat`` and ``serve``."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BudgetError

#: n_ctx when the GGUF does not say how long a context it was trained on
FALLBACK_N_CTX = 4096


@dataclass(frozen=True)
class ModelOptions:
    """How to open a GGUF as a :class:`~tappa_local.runtime.TappaLlama`.

    ``n_ctx`` bounds the positions of one sequence, not the KV memory (the budgets do that);
    ``None`` means the model's trained context.
    """

    model_path: Path
    budget: int | None = None  #: average tokens kept per layer
    budget_mib: float | None = None  #: total KV memory in MiB, headroom included
    window: int | None = None
    n_sink: int | None = None
    scorer: str | None = None
    allocation: str = "default"
    n_ctx: int | None = None
    n_batch: int = 256
    n_threads: int | None = None
    compress: bool = True
    seed: int = 0
    verbose: bool = False

    def llama_kwargs(self, n_ctx_train: int) -> dict[str, Any]:
        """Keyword arguments for ``TappaLlama(model_path, **kwargs)``."""
        n_ctx = self.n_ctx or n_ctx_train or FALLBACK_N_CTX
        threads = self.n_threads or max(1, os.cpu_count() or 1)
        kwargs: dict[str, Any] = {
            "n_ctx": n_ctx,
            "n_batch": min(self.n_batch, n_ctx),
            "n_threads": threads,
            "n_threads_batch": threads,
            "seed": self.seed,
            "verbose": self.verbose,
        }
        if not self.compress:
            kwargs["compress"] = False
            return kwargs
        if self.budget is not None and self.budget_mib is not None:
            raise BudgetError("give --budget or --budget-mib, not both")
        if self.budget is not None:
            kwargs["kv_budget"] = self.budget
        if self.budget_mib is not None:
            kwargs["kv_budget_mib"] = self.budget_mib
        kwargs.update(allocation=self.allocation, window=self.window, n_sink=self.n_sink, scorer=self.scorer)
        return kwargs


def load_model(opts: ModelOptions, cls: type | None = None) -> Any:
    """Open ``opts.model_path`` as a ``TappaLlama`` (or the subclass ``cls``); errors are
    :class:`~tappa_local.errors.TappaError`."""
    from ..modelfile import check_gguf_header
    from ..runtime import TappaLlama, model_geometry

    path = str(opts.model_path)
    check_gguf_header(path)
    geometry = model_geometry(path)
    if opts.compress and opts.budget is None and opts.budget_mib is None and geometry.default_total_budget <= 0:
        raise BudgetError(
            f"{path} stores no default KV budget (no tappa.* profile): pass --budget TOKENS or --budget-mib MIB "
            "(or --no-compress for the stock cache)"
        )
    return (cls or TappaLlama)(path, **opts.llama_kwargs(geometry.n_ctx_train))


def add_model_arguments(parser: argparse.ArgumentParser, *, default_n_batch: int = 256) -> None:
    """The model/KV options shared by ``tappa-local chat`` and ``tappa-local serve``."""
    # capi mirrors the C header without loading the library, so `--help` stays instant
    from ..capi import AllocationKind

    allocations = sorted(a.name.lower() for a in AllocationKind if a is not AllocationKind.EXPLICIT)
    parser.add_argument("model", type=Path, metavar="MODEL.gguf", help="the GGUF model to run")
    g = parser.add_argument_group("KV cache compression")
    b = g.add_mutually_exclusive_group()
    b.add_argument(
        "--budget",
        type=int,
        metavar="TOKENS",
        help="average tokens each layer keeps after an eviction (default: the GGUF's tappa.* budget; "
        "required for a GGUF without one)",
    )
    b.add_argument(
        "--budget-mib",
        type=float,
        metavar="MIB",
        help="total KV cache memory in MiB, the per-layer headroom of --n-batch cells included",
    )
    b.add_argument(
        "--no-compress", action="store_true", help="use llama.cpp's stock, uncompressed KV cache (for comparison)"
    )
    g.add_argument("--window", type=int, help="recent tokens every layer always keeps (default: the GGUF's, else 32)")
    g.add_argument("--n-sink", type=int, help="first tokens every layer always keeps (default: the GGUF's, else 4)")
    g.add_argument(
        "--scorer",
        metavar="NAME",
        help="how tokens are ranked for eviction: snapkv, cake, expected_attention or sink_recent "
        "(default: the GGUF's tappa.budget.scorer, else snapkv)",
    )
    g.add_argument(
        "--allocation",
        choices=allocations,
        default="default",
        help="how the total budget is split over layers (default: the GGUF's TAPPA plan, else uniform)",
    )
    r = parser.add_argument_group("runtime")
    r.add_argument(
        "--n-ctx",
        type=int,
        metavar="POSITIONS",
        help="longest sequence in positions (default: the model's trained context). KV memory does not grow "
        "with it; positions past the trained context are out of distribution for RoPE",
    )
    r.add_argument(
        "--n-batch",
        type=int,
        default=default_n_batch,
        help="tokens evaluated per batch; also each layer's headroom cells between evictions (default: %(default)s)",
    )
    r.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    r.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    r.add_argument("--verbose", action="store_true", help="show llama.cpp's own log")


def options_from_args(args: argparse.Namespace) -> ModelOptions:
    return ModelOptions(
        model_path=args.model,
        budget=args.budget,
        budget_mib=args.budget_mib,
        window=args.window,
        n_sink=args.n_sink,
        scorer=args.scorer,
        allocation=args.allocation,
        n_ctx=args.n_ctx,
        n_batch=args.n_batch,
        n_threads=args.threads,
        compress=not args.no_compress,
        seed=args.seed,
        verbose=args.verbose,
    )
