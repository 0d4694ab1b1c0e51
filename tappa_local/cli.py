"""``tappa-local``: the command-line entry point.

Each subcommand lives in its own module under :mod:`tappa_local.commands` and exposes
``register(subparsers)``; adding a command touches that module and the list below.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import TappaError

#: subcommand modules, in the order ``--help`` lists them
COMMANDS: tuple[str, ...] = ("demo", "info", "calibrate", "inspect", "chat", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tappa-local",
        description=(
            "TAPPA-guided KV-cache compression and layer pruning for local llama.cpp / GGUF inference. "
            "Run `tappa-local COMMAND --help` for the options of each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tappa-local {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TappaError as exc:
        print(f"tappa-local: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tappa-local: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
