"""``tappa-local chat``: a long-context terminal chat on the compressed KV cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ..chat.model import add_model_arguments

    p = sub.add_parser(
        "chat",
        help="chat with a GGUF model in the terminal on the compressed KV cache (/load long documents)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "A terminal chat that streams the reply token by token, using the model's own chat template.\n"
            "The KV cache is compressed per layer, so its memory stays at the budget however long the\n"
            "conversation gets: /load a document many times longer than the cache and ask about it.\n\n"
            "Every token still takes a position, and positions past the model's trained context are out of\n"
            "distribution for RoPE. The chat warns as a conversation approaches that limit and, when it is\n"
            "reached, either starts a new sequence keeping the system prompt and the last turns\n"
            "(--on-context-full rollover, the default; loaded documents are dropped) or refuses further\n"
            "input until /reset (--on-context-full refuse). Each case is announced, never silent.\n\n"
            "In the chat: /load PATH, /stats, /save FILE, /reset, /help, /quit."
        ),
    )
    add_model_arguments(p)
    c = p.add_argument_group("conversation")
    c.add_argument("--system", metavar="TEXT", help="system prompt (default: none)")
    c.add_argument("--system-file", type=Path, metavar="FILE", help="read the system prompt from FILE")
    c.add_argument("--max-tokens", type=int, default=512, help="longest reply in tokens (default: %(default)s)")
    c.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy (default: %(default)s)"
    )
    c.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold (default: %(default)s)")
    c.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens (default: %(default)s)")
    c.add_argument(
        "--repeat-penalty", type=float, default=1.1, help="penalty for repeated tokens (default: %(default)s)"
    )
    c.add_argument(
        "--on-context-full",
        choices=("rollover", "refuse"),
        default="rollover",
        help="at the position limit: start a new sequence with the system prompt and recent turns, or refuse "
        "input until /reset (default: %(default)s)",
    )
    c.add_argument(
        "--carry-turns",
        type=int,
        default=4,
        help="most turns a rollover carries into the new sequence (they may take at most a quarter of the "
        "limit; default: %(default)s)",
    )
    c.add_argument(
        "--transcript", type=Path, metavar="FILE", help="keep the transcript in FILE, rewritten after every turn"
    )
    c.add_argument("--no-status", action="store_true", help="no KV/positions status line after each reply")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..chat.model import load_model, options_from_args
    from ..chat.repl import ChatREPL, REPLOptions
    from ..chat.session import ChatConfig, ChatSession
    from ..chat.stats import format_report

    system = args.system
    if args.system_file is not None:
        system = args.system_file.read_text(encoding="utf-8")
    opts = options_from_args(args)
    print(f"loading {opts.model_path} ...", file=sys.stderr)
    llm = load_model(opts)
    try:
        config = ChatConfig(
            system_prompt=system,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            repeat_penalty=args.repeat_penalty,
            on_context_full=args.on_context_full,
            max_carry_turns=args.carry_turns,
        )
        session = ChatSession(llm, config)
        report = session.report()
        print(format_report(report).split("\n\n")[0], file=sys.stderr)
        if opts.n_ctx and llm.geometry.n_ctx_train and opts.n_ctx > llm.geometry.n_ctx_train:
            print(
                f"note: --n-ctx {opts.n_ctx} is past the trained context ({llm.geometry.n_ctx_train}); "
                f"the chat still stops each sequence at {session.policy.limit} positions",
                file=sys.stderr,
            )
        print(f"context policy: {session.policy.describe()}. /help lists the commands.", file=sys.stderr)
        repl = ChatREPL(
            session,
            sys.stdin,
            sys.stdout,
            REPLOptions(show_status=not args.no_status, autosave=args.transcript),
        )
        return repl.run()
    finally:
        llm.close()
