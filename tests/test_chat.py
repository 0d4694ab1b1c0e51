"""The terminal chat driven by scripted input on a tiny (random, gibberish-speaking) model.

Commands, /load of a document far longer than the KV capacity, /stats against ``kv_stats()``,
/reset, /save, the continuation of the cache across turns, and the trained-context policy
(rollover and refuse) with a small n_ctx.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tappa_local.chat.model import ModelOptions, load_model
from tappa_local.chat.policy import ContextFullError
from tappa_local.chat.repl import ChatREPL, REPLOptions
from tappa_local.chat.session import ChatConfig, ChatSession, Notice
from tappa_local.localmodels import TinyModel

BUDGET = 48
N_BATCH = 64
LIMIT = 1024


def _document(n_lines: int = 40) -> str:
    """About 43 tiny-tokenizer tokens per line: 40 lines are ~1,700 tokens, 15x what a layer holds."""
    return "".join(
        f"line {i}: the quick brown fox number {i * 7 % 101} jumps over the lazy dog\n" for i in range(n_lines)
    )


@pytest.fixture(scope="module")
def llm(tiny_llama: TinyModel) -> Iterator[Any]:
    model = load_model(ModelOptions(tiny_llama.gguf_path, budget=BUDGET, n_batch=N_BATCH, n_threads=2))
    yield model
    model.close()


@pytest.fixture(scope="module")
def small_llm(tiny_llama: TinyModel) -> Iterator[Any]:
    """n_ctx 1024: the position limit is reached after a few turns."""
    model = load_model(ModelOptions(tiny_llama.gguf_path, budget=BUDGET, n_batch=N_BATCH, n_threads=2, n_ctx=LIMIT))
    yield model
    model.close()


def _session(llm: Any, **config: Any) -> tuple[ChatSession, list[Notice]]:
    llm.clear()
    notices: list[Notice] = []
    cfg = ChatConfig(**{"max_tokens": 12, "temperature": 0.0, **config})
    return ChatSession(llm, cfg, notify=notices.append), notices


def _repl(session: ChatSession) -> tuple[ChatREPL, io.StringIO]:
    out = io.StringIO()
    return ChatREPL(session, io.StringIO(), out, REPLOptions()), out


def _since(out: io.StringIO, mark: int) -> str:
    return out.getvalue()[mark:]


def test_scripted_session_through_the_repl(llm: Any, tmp_path: Path) -> None:
    doc = tmp_path / "notes.md"
    doc.write_text(_document())
    script = "\n".join(
        [
            "hello there",
            f"/load {doc}",
            "what does line 3 say?",
            "/stats",
            f"/save {tmp_path / 't.json'}",
            "/help",
            "/nope",
            "/reset",
            "/quit",
            "never read",
        ]
    )
    session, _ = _session(llm, system_prompt="Be brief.")
    out = io.StringIO()
    assert ChatREPL(session, io.StringIO(script + "\n"), out).run() == 0
    text = out.getvalue()
    assert text.count("model> ") == 2
    assert "reading notes.md" in text and "100%" in text  # the tqdm bar of the ingestion
    assert "loaded notes.md:" in text
    assert "KV memory" in text and "layer" in text
    assert "transcript saved to" in text
    assert "/load PATH" in text  # /help
    assert "unknown command /nope" in text
    assert "conversation reset" in text
    assert "never read" not in text  # /quit ends the loop
    saved = json.loads((tmp_path / "t.json").read_text())
    kinds = [e["kind"] for e in saved["entries"]]
    assert kinds == ["system", "user", "assistant", "document", "user", "assistant"]
    assert saved["entries"][3]["meta"]["name"] == "notes.md"
    assert saved["entries"][4]["meta"]["documents"] == ["notes.md"]
    assert session.positions == 0  # after /reset


def test_stats_numbers_match_kv_stats(llm: Any, tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text(_document())
    session, _ = _session(llm)
    repl, out = _repl(session)
    repl.handle(f"/load {doc}")
    repl.handle("and?")
    mark = len(out.getvalue())
    repl.handle("/stats")
    shown = _since(out, mark)
    kv = llm.kv_stats()
    m = re.search(r"KV memory\s+: ([\d.]+) MiB now, the full cache for n_ctx ([\d,]+) would take ([\d.]+) MiB", shown)
    assert m, shown
    assert float(m.group(1)) == pytest.approx(kv.kv_bytes / 2**20, abs=5e-4)
    assert int(m.group(2).replace(",", "")) == llm.n_ctx()
    assert float(m.group(3)) == pytest.approx(kv.full_kv_bytes / 2**20, abs=5e-4)
    m = re.search(r"of which\s+: ([\d.]+) MiB K/V cells", shown)
    assert m and float(m.group(1)) == pytest.approx(sum(x.kv_bytes for x in kv.layers) / 2**20, abs=5e-4)
    m = re.search(r"positions\s+: ([\d,]+) seen", shown)
    assert m and int(m.group(1).replace(",", "")) == kv.tokens_seen
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+%\s+(\d+)\s+(\d+)$", shown, flags=re.MULTILINE)
    assert len(rows) == len(kv.layers) == 4
    for row, layer in zip(rows, kv.layers):
        assert tuple(int(x) for x in row) == (
            layer.layer,
            layer.budget,
            layer.capacity,
            layer.used,
            layer.n_evictions,
            layer.n_evicted,
        )
    m = re.search(
        r"tokens kept\s+: ([\d,]+) cells used of ([\d,]+) allocated \(budget ([\d,]+) after an eviction\), ([\d,]+) evicted",
        shown,
    )
    assert m
    assert [int(g.replace(",", "")) for g in m.groups()] == [
        sum(x.used for x in kv.layers),
        sum(x.capacity for x in kv.layers),
        sum(x.budget for x in kv.layers),
        sum(x.n_evicted for x in kv.layers),
    ]


def test_document_streams_through_a_bounded_cache(llm: Any) -> None:
    session, _ = _session(llm)
    before = llm.kv_stats()
    samples: list[Any] = []
    text = _document(60)
    doc = session.load_document(text, "long.txt", progress=lambda total, desc: _Recorder(samples, llm))
    after = llm.kv_stats()
    capacity = sum(layer.capacity for layer in after.layers)
    assert doc.n_tokens > 8 * capacity / len(after.layers)  # many times what a layer can hold
    assert after.tokens_seen >= doc.n_tokens
    assert len(samples) >= doc.n_tokens // N_BATCH  # one progress update per n_batch chunk
    for kv in [before, *samples, after]:
        assert kv.kv_bytes == before.kv_bytes  # memory never grows while the document streams through
        assert all(layer.used <= layer.capacity for layer in kv.layers)
    assert all(layer.used <= layer.budget for layer in after.layers)  # evicted down to the budget after the prompt
    assert sum(layer.n_evicted for layer in after.layers) > 0
    assert session.pending_documents == (doc,)


class _Recorder:
    """A progress bar that samples kv_stats() at every update."""

    def __init__(self, samples: list[Any], llm: Any) -> None:
        self.samples, self.llm = samples, llm

    def update(self, n: int) -> None:
        self.samples.append(self.llm.kv_stats())

    def close(self) -> None:
        pass


def test_turns_continue_the_cached_sequence(llm: Any) -> None:
    session, _ = _session(llm, system_prompt="Answer in one word.")
    session.load_document(_document(), "doc.txt")
    after_load = session.positions
    first = session.ask("which line mentions number 14?")
    assert first.reused_tokens == after_load  # the question continues the ingested document
    assert first.prompt_tokens - first.reused_tokens < 80  # the question and the template markup
    positions = session.positions
    second = session.ask("and line 5?")
    assert second.reused_tokens == positions  # the reply and the new turn extend the cache
    assert second.prompt_tokens - second.reused_tokens < 100
    msgs = session.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[1]["content"].startswith("line 0:") and msgs[1]["content"].endswith(
        "\n\nwhich line mentions number 14?"
    )


def test_reply_streams_piece_by_piece(llm: Any) -> None:
    session, _ = _session(llm, max_tokens=10)
    pieces: list[str] = []
    reply = session.ask("tell me something", on_text=pieces.append)
    assert "".join(pieces) == reply.text
    assert reply.finish_reason in ("stop", "length")
    if reply.finish_reason == "length":
        assert len(pieces) >= 2


def test_interrupted_reply_is_kept_and_the_chat_continues(llm: Any) -> None:
    session, _ = _session(llm, max_tokens=40)
    pieces: list[str] = []

    def ctrl_c_after_three(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            raise KeyboardInterrupt

    reply = session.ask("say something long", on_text=ctrl_c_after_three)
    assert reply.finish_reason == "interrupted" and reply.text == "".join(pieces)
    assert session.turns[-1].assistant == reply.text
    positions = session.positions
    nxt = session.ask("go on")
    assert nxt.reused_tokens == positions  # the interrupted reply is part of the cached conversation
    assert nxt.finish_reason in ("stop", "length")


def test_rollover_at_the_position_limit(small_llm: Any) -> None:
    session, _ = _session(small_llm, max_tokens=16, system_prompt="Be brief.")
    assert session.policy.limit == LIMIT
    repl, out = _repl(session)
    for i in range(40):
        repl.handle(f"question number {i}: tell me more")
        if session.sequence_index > 1:
            break
    else:
        pytest.fail("no rollover within 40 turns")
    warnings = re.findall(r"^\[warning\] (.*)$", out.getvalue(), flags=re.MULTILINE)  # the REPL prints the notices
    approaching = [w for w in warnings if "positions used" in w]
    assert len(approaching) == 2  # warned at 75% and 90% first
    assert approaching[0].startswith("past 75% of the position limit") and approaching[1].startswith("past 90%")
    rollover = [w for w in warnings if w.startswith("The conversation reached")]
    assert warnings.index(approaching[1]) < warnings.index(rollover[0])
    assert len(rollover) == 1 and "1,024 positions" in rollover[0] and "transcript is kept" in rollover[0]
    # the new sequence keeps the system prompt and some recent turns, and fits with room to spare
    msgs = session.messages()
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert 1 <= (len(msgs) - 1) // 2 <= 4
    assert session.positions <= LIMIT
    # the chat goes on, the transcript has everything
    repl.handle("after the rollover")
    assert session.turns[-1].user == "after the rollover"
    kinds = [e.kind for e in session.transcript.entries]
    assert kinds.count("rollover") == 1 and kinds.count("user") == len(session.turns)


def test_rollover_drops_loaded_documents_and_says_so(small_llm: Any) -> None:
    session, notices = _session(small_llm, max_tokens=16)
    first = session.load_document(_document(8), "small.txt")
    session.ask("what is in it?")
    assert session.sequence_index == 1
    second = session.load_document(_document(16), "second.txt")  # does not fit after the first: rollover, then read
    assert session.sequence_index == 2
    text = next(n.text for n in notices if n.text.startswith("The conversation reached"))
    assert "small.txt" in text and "no longer visible" in text
    assert session.positions < first.n_tokens + second.n_tokens
    carried = session.messages()
    assert all("line 0:" not in m["content"] for m in carried)  # the old document's text is gone
    assert any("no longer in context: small.txt" in m["content"] for m in carried)
    assert session.pending_documents[-1].name == "second.txt"


def test_refuse_policy_blocks_until_reset(small_llm: Any) -> None:
    session, _ = _session(small_llm, max_tokens=16, on_context_full="refuse")
    repl, out = _repl(session)
    refused_at = None
    for i in range(40):
        repl.handle(f"question {i}: more words here")
        if session.locked:
            refused_at = i
            break
    assert refused_at is not None
    assert "refuses further input" in out.getvalue()  # the 75% warning names the policy
    assert "type /reset" in out.getvalue()
    with pytest.raises(ContextFullError, match="/reset"):
        session.ask("one more?")
    mark = len(out.getvalue())
    repl.handle("/load /dev/null")
    assert "error" in _since(out, mark)
    repl.handle("/reset")
    assert not session.locked and session.positions == 0
    repl.handle("hello again")
    assert session.turns[-1].user == "hello again"


def test_document_longer_than_the_limit_is_refused(small_llm: Any) -> None:
    session, _ = _session(small_llm)
    session.ask("hi")
    positions = session.positions
    with pytest.raises(ContextFullError, match="more than this model's limit of 1,024"):
        session.load_document(_document(30), "huge.txt")
    assert session.positions == positions and session.pending_documents == ()
    assert session.sequence_index == 1  # nothing was rolled over for a document that can never fit


def test_load_refuses_binary_and_missing_files(llm: Any, tmp_path: Path) -> None:
    session, _ = _session(llm)
    repl, out = _repl(session)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02abc")
    repl.handle(f"/load {tmp_path / 'blob.bin'}")
    repl.handle(f"/load {tmp_path / 'missing.txt'}")
    repl.handle("/load")
    text = out.getvalue()
    assert "looks like a binary file" in text and "no such file" in text and "usage: /load PATH" in text
    assert session.pending_documents == () and session.positions == 0


def test_transcript_markdown(llm: Any, tmp_path: Path) -> None:
    session, _ = _session(llm, system_prompt="sys")
    session.load_document(_document(5), "a.md")
    session.ask("q1")
    path = session.transcript.save(tmp_path / "t.md")
    md = path.read_text()
    assert md.startswith("# tappa-local chat transcript")
    assert "## system" in md and "`a.md`" in md and "## user" in md and "q1" in md and "## assistant" in md


def test_cli_chat_end_to_end(tiny_llama: TinyModel, tmp_path: Path) -> None:
    doc = tmp_path / "doc.py"
    doc.write_text("def f(x):\n    return x * 2\n" * 40)
    transcript = tmp_path / "chat.md"
    script = f"hi\n/load {doc}\nwhat does f do?\n/stats\n/quit\n"
    proc = subprocess.run(
        [sys.executable, "-m", "tappa_local.cli", "chat", str(tiny_llama.gguf_path), "--budget", str(BUDGET), "--n-batch", str(N_BATCH),
         "--max-tokens", "8", "--threads", "2", "--system", "be brief", "--transcript", str(transcript)],
        input=script, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "context policy:" in proc.stderr
    assert "loaded doc.py" in proc.stdout and "KV memory" in proc.stdout and "compressed KV" in proc.stdout
    assert "## user" in transcript.read_text()


def test_cli_chat_needs_a_budget_for_a_plain_gguf(tiny_llama: TinyModel) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tappa_local.cli", "chat", str(tiny_llama.gguf_path)],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "--budget" in proc.stderr and "Traceback" not in proc.stderr


def test_chat_help_explains_every_flag() -> None:
    from tappa_local.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    chat = sub.choices["chat"]  # type: ignore[union-attr]
    text = chat.format_help()
    for action in chat._actions:
        for opt in action.option_strings:
            assert opt in text
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 10, f"{action.option_strings} has no real help"
    assert "trained context" in text and "/load" in text
