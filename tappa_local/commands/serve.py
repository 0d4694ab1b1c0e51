"""``tappa-local serve``: an OpenAI-compatible HTTP API and a web chat page on the compressed KV cache."""

from __future__ import annotations

import argparse
import ipaddress
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from ..chat.model import add_model_arguments

    p = sub.add_parser(
        "serve",
        help="serve a GGUF model over an OpenAI-compatible HTTP API (and a web chat page) on the compressed KV cache",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Runs llama-cpp-python's OpenAI-compatible server (/v1/chat/completions, /v1/completions,\n"
            "/v1/models, streaming over SSE) on a TappaLlama, plus GET /v1/tappa/stats (live KV memory)\n"
            "and a small web chat page at /. Listens on 127.0.0.1 unless --host says otherwise.\n\n"
            "One model, one sequence, one compressed KV cache: requests are answered one at a time in\n"
            "arrival order, never interleaved into the cache. Up to --max-queue requests wait while one\n"
            "runs; more are refused with HTTP 503 (Retry-After: 1). A streamed reply is never cut short by\n"
            "another request (only by its own client disconnecting). A client that re-sends the same\n"
            "conversation plus a new message only costs the new tokens; a different conversation starts\n"
            "the cache over."
        ),
    )
    add_model_arguments(p)
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    s.add_argument(
        "--model-alias", metavar="NAME", help="model id clients send (default: the GGUF file name without .gguf)"
    )
    s.add_argument(
        "--max-queue",
        type=int,
        default=8,
        help="requests that may wait while one runs; more get HTTP 503 (default: %(default)s)",
    )
    s.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on the API")
    s.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN call the API (CORS; repeatable; '*' for any). Not needed for the built-in page",
    )
    s.add_argument("--no-webchat", action="store_true", help="do not serve the web chat page at /")
    s.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn log level",
    )
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("tappa-local serve needs the server extra: pip install 'tappa-local[server]'", file=sys.stderr)
        return 2
    from ..chat.model import options_from_args
    from ..server.app import create_app
    from ..server.config import ServeConfig

    config = ServeConfig(
        model=options_from_args(args),
        host=args.host,
        port=args.port,
        alias=args.model_alias,
        max_queue=args.max_queue,
        api_key=args.api_key,
        allow_origins=tuple(args.allow_origin),
        webchat=not args.no_webchat,
    )
    print(f"loading {config.model.model_path} ...", file=sys.stderr)
    app = create_app(config)
    llm = app.state.tappa_proxy.llm
    report = llm.latest_report()
    print(
        f"model '{config.model_alias}': KV {report.kv_mib:.2f} MiB (full cache for n_ctx {report.n_ctx}: "
        f"{report.full_kv_mib:.2f} MiB), trained context {report.n_ctx_train}",
        file=sys.stderr,
    )
    if report.n_ctx_train and report.n_ctx > report.n_ctx_train:
        print(
            f"warning: --n-ctx {report.n_ctx} is past the trained context ({report.n_ctx_train}); longer prompts are out of distribution",
            file=sys.stderr,
        )
    if not _is_loopback(config.host):
        print(
            f"warning: listening on {config.host}, reachable from other machines"
            + ("" if config.api_key else " without an --api-key"),
            file=sys.stderr,
        )
    shown = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    print(
        f"OpenAI API: http://{shown}:{config.port}/v1"
        + (f"   web chat: http://{shown}:{config.port}/" if config.webchat else ""),
        file=sys.stderr,
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level)
    return 0
