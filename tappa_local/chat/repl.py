"""The terminal front end of :class:`~tappa_local.chat.session.ChatSession`.

:class:`ChatREPL` reads lines from any text stream and writes to any text stream, so tests
drive it with ``io.StringIO``; on a terminal it uses ``readline`` for line editing.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from ..errors import TappaError
from .ingest import ProgressFactory
from .session import ChatSession, Notice
from .stats import format_report, status_line

HELP = """\
commands:
  /load PATH   read a text file (text, Markdown, code) into the conversation; your next message
               is asked about it. The cache streams through it, evicting as it goes.
  /stats       KV memory now vs the full cache, positions used, per-layer occupancy
  /save FILE   write the transcript (FILE.json: JSON, anything else: Markdown)
  /reset       start a new conversation from an empty cache (the transcript is kept)
  /help        this text
  /quit        leave (also /exit or Ctrl-D)
anything else is sent to the model; Ctrl-C stops a reply that is being generated."""


@dataclass(frozen=True)
class REPLOptions:
    prompt: str = "you> "
    assistant_prefix: str = "model> "
    show_status: bool = True  #: one status line (KV MiB, positions) after every reply
    autosave: Path | None = None  #: rewrite the transcript here after every turn


class ChatREPL:
    def __init__(
        self,
        session: ChatSession,
        stdin: TextIO,
        stdout: TextIO,
        options: REPLOptions = REPLOptions(),
        progress: ProgressFactory | None = None,
    ) -> None:
        """``progress(total, description)`` makes the bar shown while a document is read (default: tqdm)."""
        self.session = session
        self.stdin = stdin
        self.stdout = stdout
        self.options = options
        self._progress: ProgressFactory = progress or self._tqdm
        self.interactive = bool(getattr(stdin, "isatty", lambda: False)()) and bool(
            getattr(stdout, "isatty", lambda: False)()
        )
        session.notify = self._notice
        self._held: list[Notice] | None = None  # notices that arrive while a reply is being written
        self._commands: dict[str, Callable[[str], bool]] = {
            "/load": self._cmd_load,
            "/stats": self._cmd_stats,
            "/save": self._cmd_save,
            "/reset": self._cmd_reset,
            "/help": self._cmd_help,
            "/quit": self._cmd_quit,
            "/exit": self._cmd_quit,
        }

    # ------------------------------------------------------------------ loop

    def run(self) -> int:
        if self.interactive:
            try:
                import readline  # noqa: F401 - line editing and history for input()
            except ImportError:  # pragma: no cover - not on every platform
                pass
        while True:
            line = self._read_line()
            if line is None:
                self._write("\n")
                return 0
            try:
                if not self.handle(line):
                    return 0
            except KeyboardInterrupt:
                self._write("\n[interrupted]\n")

    def handle(self, line: str) -> bool:
        """Process one input line; False when the user asked to leave."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            name, _, arg = text.partition(" ")
            command = self._commands.get(name.lower())
            if command is None:
                self._write(f"unknown command {name}; /help lists the commands\n")
                return True
            try:
                return command(arg.strip())
            except (TappaError, ValueError, OSError) as exc:
                self._write(f"error: {exc}\n")
                return True
        self._ask(line.rstrip("\n"))
        return True

    def _read_line(self) -> str | None:
        if self.interactive:
            try:
                return input(self.options.prompt)
            except EOFError:
                return None
        self._write(self.options.prompt)
        line = self.stdin.readline()
        if not line:
            return None
        self._write(line if line.endswith("\n") else line + "\n")  # echo, so a piped session reads like a chat
        return line

    # ------------------------------------------------------------------ chat

    def _ask(self, text: str) -> None:
        def on_text(piece: str) -> None:
            if self._held is None:  # the first piece, after any progress bar or rollover notice
                self._write(self.options.assistant_prefix)
                self._held = []
            self._write(piece)

        try:
            reply = self.session.ask(text, on_text=on_text, progress=self._progress)
        except TappaError as exc:
            self._write(f"\nerror: {exc}\n" if self._held is not None else f"error: {exc}\n")
            self._flush_held()
            return
        if self._held is None:
            self._write(self.options.assistant_prefix)
        if reply.finish_reason == "interrupted":
            self._write(" [interrupted]")
        elif reply.finish_reason == "length":
            self._write(" [reply cut at --max-tokens]")
        self._write("\n")
        if self.options.show_status:
            self._write(status_line(self.session.report()) + "\n")
        self._flush_held()
        self._autosave()

    def _flush_held(self) -> None:
        held, self._held = self._held or [], None
        for notice in held:
            self._notice(notice)

    # ------------------------------------------------------------------ commands

    def _cmd_load(self, arg: str) -> bool:
        if not arg:
            self._write("usage: /load PATH\n")
            return True
        path = Path(arg).expanduser()
        if not path.is_file():  # maybe quoted: /load "my notes.md"
            parts = shlex.split(arg)
            path = Path(parts[0] if len(parts) == 1 else arg).expanduser()
        if not path.is_file():
            self._write(f"error: no such file: {path}\n")
            return True
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            doc = self.session.load_document(text, path.name, progress=self._progress)
        except KeyboardInterrupt:
            self._write("\n[load cancelled; the document was not added]\n")
            return True
        r = self.session.report()
        self._write(
            f"loaded {doc.name}: {doc.n_tokens:,} tokens; the cache holds {r.used_tokens:,} token-layers in "
            f"{r.kv_mib:.2f} MiB (full cache: {r.full_kv_mib:.2f} MiB). Ask your question about it.\n"
        )
        self._autosave()
        return True

    def _cmd_stats(self, _: str) -> bool:
        self._write(format_report(self.session.report()) + "\n")
        pending = self.session.pending_documents
        if pending:
            self._write(f"documents waiting for your question: {', '.join(d.name for d in pending)}\n")
        self._write(f"turns: {len(self.session.turns)} in total, sequence #{self.session.sequence_index}\n")
        return True

    def _cmd_save(self, arg: str) -> bool:
        if not arg:
            self._write("usage: /save FILE\n")
            return True
        path = self.session.transcript.save(arg)
        self._write(f"transcript saved to {path}\n")
        return True

    def _cmd_reset(self, _: str) -> bool:
        self.session.reset()
        self._write("conversation reset: empty cache, no turns (the transcript is kept)\n")
        return True

    def _cmd_help(self, _: str) -> bool:
        self._write(HELP + "\n")
        return True

    def _cmd_quit(self, _: str) -> bool:
        self._autosave()
        return False

    # ------------------------------------------------------------------ output

    def _notice(self, notice: Notice) -> None:
        if self._held is not None:  # a reply is being written: after it
            self._held.append(notice)
            return
        self._write(f"[{notice.level}] {notice.text}\n")

    def _tqdm(self, total: int, description: str) -> tqdm:
        return tqdm(
            total=total, desc=description, unit="tok", file=self.stdout, leave=True, dynamic_ncols=self.interactive
        )

    def _autosave(self) -> None:
        if self.options.autosave is not None:
            self.session.transcript.save(self.options.autosave)

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
