"""``tappa-local info``: which native build and bindings are in use."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show the native build, bindings and options in use",
                       description="Load the patched llama.cpp and print what was loaded from where.")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import native

    lib = native.load()
    info = {
        "tappa_native": lib.version,
        "llama_cpp_python": lib.llama_cpp.__version__,
        "lib_dir": str(lib.build.lib_dir),
        "llama_cpp_source_dir": str(lib.build.llama_cpp_source_dir),
        "options": lib.build.options,
        "system_info": lib.llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>22}: {v}")
    return 0
