"""A scripted long-document session through the terminal chat, on the bundled tappa-mini.

    python -m bench.chat_session [--model FILE.gguf] [--budget-mib 0.5 1.0] [--seeds 0 1 2 3] [--no-baseline]

The script types into :class:`~tappa_local.chat.repl.ChatREPL` exactly what a user would
(``/load FILE``, questions, ``/stats``, ``/reset``) with the retrieval facts tappa-mini was
trained on (``tappa_local/tasks.py``) and checks every answer:

A. one document, many questions: a key-value list several times longer than the KV capacity
   is loaded once; the values of keys at depths 0, 0.25, 0.5, 0.75 and 1 are asked, one turn
   each (the first question completes the document's turn, the others are follow-up turns).
B. one document per question: for every task (passkey, kv, var), depth and seed, ``/reset``,
   ``/load`` a document with the needle at that depth, ask.
C. one long session: the documents of B for one seed, loaded one after the other into the
   same conversation without ``/reset``; the chat rolls over at the position limit (n_ctx).

Each part runs on the compressed cache at every ``--budget-mib`` (the K/V cells of all layers,
headroom included) and, for reference, on llama.cpp's stock cache with the same script.
``kv_stats()`` is sampled after every ``n_batch`` chunk of every document and after every
answer; the compressed run checks that the KV memory never exceeds the configured budget.
Results go to ``bench/results/chat_session.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tappa_local import tasks

from . import report

log = logging.getLogger("bench.chat_session")
ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "tappa_local" / "assets" / "tappa-mini"
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


# --------------------------------------------------------------------------- model


def bundled_gguf(hf_dir: Path = BUNDLED) -> Path:
    """The bundled checkpoint converted to GGUF f16 once, cached by the checkpoint's content."""
    from tappa_local.localmodels import cache_root, convert_hf_to_gguf

    if not (hf_dir / "config.json").is_file():
        raise SystemExit(
            f"{hf_dir} holds no checkpoint yet (the bundled model is trained into it); pass --model FILE.gguf"
        )
    h = hashlib.sha256()
    for name in sorted(
        p.name for p in hf_dir.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".model")
    ):
        h.update(name.encode() + (hf_dir / name).read_bytes())
    out = cache_root() / "models" / f"tappa-mini-{h.hexdigest()[:16]}" / "tappa-mini-f16.gguf"
    if not out.is_file():
        log.info("converting %s -> %s", hf_dir, out)
        convert_hf_to_gguf(hf_dir, out, "f16")
    return out


# --------------------------------------------------------------------------- driving the chat


@dataclass
class Sample:
    """kv_stats() at one moment of the session."""

    step: int
    phase: str  # "load" (after an n_batch chunk) or "answer"
    tokens_seen: int
    kv_bytes: int  #: llama.cpp's whole KV memory (the scorer's recorded queries included)
    cells_bytes: int  #: the K/V cells of all layers (what --budget-mib sizes)
    used: list[int]
    capacity: list[int]
    budget: list[int]

    @property
    def fits(self) -> bool:
        return all(u <= c for u, c in zip(self.used, self.capacity))


@dataclass
class Question:
    part: str
    task: str
    depth: float
    answer: str
    reply: str = ""
    finish_reason: str | None = None
    exact: bool = False  #: the reply is the answer and nothing else (stopped at EOS)
    lenient: bool = False  #: the reply starts with the answer (tasks.is_correct)
    doc_tokens: int = 0
    positions_before: int = 0
    sequence: int = 1
    seconds: float = 0.0
    error: str | None = None


@dataclass
class RunLog:
    mode: str
    questions: list[Question] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    rollovers: int = 0
    load_seconds: float = 0.0
    loaded_tokens: int = 0
    transcript_tail: str = ""


class _SamplingBar:
    """The progress bar the REPL shows while reading a document; samples kv_stats() per chunk."""

    def __init__(self, driver: ScriptedChat) -> None:
        self.driver = driver

    def update(self, n: int) -> None:
        self.driver.sample("load")

    def close(self) -> None:
        pass


class ScriptedChat:
    """Types lines into the terminal chat and records what happens."""

    def __init__(self, llm: Any, config: Any, workdir: Path, mode: str) -> None:
        from tappa_local.chat.repl import ChatREPL, REPLOptions
        from tappa_local.chat.session import ChatSession

        self.llm = llm
        self.session = ChatSession(llm, config)
        self.out = io.StringIO()
        self.repl = ChatREPL(
            self.session, io.StringIO(), self.out, REPLOptions(), progress=lambda total, desc: _SamplingBar(self)
        )
        self.workdir = workdir
        self.run = RunLog(mode)
        self._step = 0

    def sample(self, phase: str) -> None:
        kv = self.llm.kv_stats()
        self.run.samples.append(
            Sample(
                self._step,
                phase,
                kv.tokens_seen,
                kv.kv_bytes,
                sum(x.kv_bytes for x in kv.layers) if kv.layers else kv.kv_bytes,
                [x.used for x in kv.layers],
                [x.capacity for x in kv.layers],
                [x.budget for x in kv.layers],
            )
        )

    def type(self, line: str) -> str:
        self._step += 1
        mark = len(self.out.getvalue())
        if not self.repl.handle(line):
            raise RuntimeError(f"the chat ended at {line!r}")
        return self.out.getvalue()[mark:]

    def load(self, name: str, text: str) -> int:
        path = self.workdir / name
        path.write_text(text, encoding="utf-8")
        before = len(self.session.pending_documents)
        t0 = time.perf_counter()
        shown = self.type(f"/load {path}")
        self.run.load_seconds += time.perf_counter() - t0
        if len(self.session.pending_documents) != before + 1:
            raise RuntimeError(f"/load {name} failed: {shown.strip()[-500:]}")
        self.run.rollovers = sum(1 for e in self.session.transcript.entries if e.kind == "rollover")
        doc = self.session.pending_documents[-1]
        self.run.loaded_tokens += doc.n_tokens
        return doc.n_tokens

    def ask(self, q: Question, text: str) -> Question:
        q.positions_before = self.session.positions
        n_turns = len(self.session.turns)
        t0 = time.perf_counter()
        shown = self.type(text)
        q.seconds = time.perf_counter() - t0
        self.run.rollovers = sum(1 for e in self.session.transcript.entries if e.kind == "rollover")
        if len(self.session.turns) == n_turns:
            q.error = shown.strip()[-500:]
        else:
            turn = self.session.turns[-1]
            q.reply, q.finish_reason = turn.assistant, turn.finish_reason
            q.exact = q.reply.strip() == q.answer and q.finish_reason == "stop"
            q.lenient = tasks.is_correct(q.reply, q.answer)
        q.sequence = self.session.sequence_index
        self.sample("answer")
        self.run.questions.append(q)
        return q


# --------------------------------------------------------------------------- the script


def _split_question(content: str) -> tuple[str, str]:
    """A task sample's chat content is ``document + "\\n" + question``: split it there."""
    doc, _, question = content.rpartition("\n")
    return doc + "\n", question


def _kv_pairs(doc: str) -> list[tuple[str, str]]:
    return re.findall(r"^([a-z]+-[a-z]+): (\d+)$", doc, flags=re.MULTILINE)


def part_a(chat: ScriptedChat, count: Any, doc_tokens: int, seed: int) -> None:
    sample = tasks.kv_retrieval(doc_tokens, 0.5, seed, count)
    doc, _ = _split_question(sample.messages[0]["content"])
    pairs = _kv_pairs(doc)
    chat.type("/reset")
    n = chat.load(f"kv-list-{seed}.txt", doc)
    for depth in DEPTHS:
        key, value = pairs[min(round(depth * (len(pairs) - 1)), len(pairs) - 1)]
        chat.ask(Question("A", "kv", depth, value, doc_tokens=n), f"What is the value of {key}?")
    chat.type("/stats")


def part_b(chat: ScriptedChat, count: Any, doc_tokens: int, seeds: Sequence[int], reset: bool, part: str) -> None:
    for seed in seeds:
        for task in tasks.TASKS:
            for di, depth in enumerate(DEPTHS):
                s = tasks.make_sample(task, doc_tokens, depth, 7919 * seed + 101 * di + 17, count)
                doc, question = _split_question(s.messages[0]["content"])
                if reset:
                    chat.type("/reset")
                n = chat.load(f"{task}-{seed}-{depth:g}.txt", doc)
                chat.ask(Question(part, task, depth, s.answer, doc_tokens=n), question)


def mode_label(budget_mib: float | None) -> str:
    return "full" if budget_mib is None else f"{budget_mib:g} MiB"


def run_mode(model: Path, budget_mib: float | None, args: argparse.Namespace) -> RunLog:
    """The whole script on one cache: compressed to ``budget_mib``, or the stock cache (``None``)."""
    from tappa_local.chat.model import ModelOptions, load_model
    from tappa_local.chat.session import ChatConfig

    mode = mode_label(budget_mib)
    compress = budget_mib is not None
    opts = ModelOptions(
        model,
        budget_mib=budget_mib,
        compress=compress,
        n_ctx=args.n_ctx,
        n_batch=args.n_batch,
        n_threads=args.threads,
        scorer=args.scorer,
        allocation=args.allocation,
    )
    llm = load_model(opts)
    try:
        count = lambda s: len(llm.tokenize(s.encode("utf-8"), add_bos=False))
        config = ChatConfig(max_tokens=16, temperature=0.0, top_k=1, repeat_penalty=1.0)
        with tempfile.TemporaryDirectory() as tmp:
            chat = ScriptedChat(llm, config, Path(tmp), mode)
            chat.sample("start")
            t0 = time.perf_counter()
            part_a(chat, count, args.doc_tokens_a, args.seeds[0])
            log.info("%s: part A done (%.0fs)", mode, time.perf_counter() - t0)
            part_b(chat, count, args.doc_tokens_b, args.seeds, reset=True, part="B")
            log.info("%s: part B done (%.0fs)", mode, time.perf_counter() - t0)
            chat.type("/reset")
            part_b(chat, count, args.doc_tokens_b, args.seeds[:1], reset=False, part="C")
            chat.type("/stats")
            log.info("%s: part C done (%.0fs), %d rollovers", mode, time.perf_counter() - t0, chat.run.rollovers)
            chat.run.transcript_tail = chat.out.getvalue()[-6000:]
            return chat.run
    finally:
        llm.close()


# --------------------------------------------------------------------------- report


def _accuracy(qs: Sequence[Question], key: str) -> float:
    return sum(bool(getattr(q, key)) for q in qs) / len(qs) if qs else float("nan")


def summarise(run: RunLog, budget_mib: float | None, full_mib: float) -> dict[str, Any]:
    """Memory bounds and accuracy (per part, per part/task/depth) of one run."""
    kv = [s.kv_bytes for s in run.samples]
    cells = [s.cells_bytes for s in run.samples]
    per_depth: dict[str, dict[str, Any]] = {}
    for q in run.questions:
        key = f"{q.part}/{q.task}/{q.depth:g}"
        d = per_depth.setdefault(
            key, {"part": q.part, "task": q.task, "depth": q.depth, "n": 0, "exact": 0, "lenient": 0}
        )
        d["n"] += 1
        d["exact"] += int(q.exact)
        d["lenient"] += int(q.lenient)
    per_part = {
        part: {"n": len(qs), "exact": _accuracy(qs, "exact"), "lenient": _accuracy(qs, "lenient")}
        for part in ("A", "B", "C")
        if (qs := [q for q in run.questions if q.part == part])
    }
    return {
        "mode": run.mode,
        "kv_mib_max": max(kv) / 2**20,
        "kv_mib_min": min(kv) / 2**20,
        "cells_mib_max": max(cells) / 2**20,
        "budget_mib": budget_mib,
        "full_kv_mib": full_mib,
        "within_budget": budget_mib is None or max(cells) / 2**20 <= budget_mib + 1e-9,
        "all_layers_within_capacity": all(s.fits for s in run.samples),
        "max_layer_capacity": max(max(s.capacity) for s in run.samples) if run.samples[0].capacity else None,
        "n_samples": len(run.samples),
        "max_tokens_seen": max(s.tokens_seen for s in run.samples),
        "rollovers": run.rollovers,
        "load_tok_per_s": run.loaded_tokens / run.load_seconds if run.load_seconds else None,
        "per_part": per_part,
        "per_depth": list(per_depth.values()),
    }


def markdown(data: dict[str, Any]) -> str:
    cfg = data["config"]
    summary = data["summary"]
    labels = [m["mode"] for m in summary]
    compressed = [m for m in summary if m["budget_mib"] is not None]
    lines = [
        "# Long-document chat session (tappa-local chat, scripted)",
        "",
        (
            f"Model: `{cfg['model_name']}` ({cfg['n_layer']} layers, trained context {cfg['n_ctx_train']}); "
            f"n_ctx {cfg['n_ctx']} (the chat's position limit), n_batch {cfg['n_batch']} (= per-layer headroom); "
            f"compressed caches: {', '.join(f'{b:g}' for b in cfg['budgets_mib'])} MiB of K/V cells "
            f"(scorer {cfg['scorer']}, allocation {cfg['allocation']}). Greedy answers, at most 16 tokens. "
            f"Part B/C seeds: {cfg['seeds']}."
        ),
        "",
        "Exact = the reply is the expected number and nothing else (ended by EOS); lenient = it starts with it.",
        "",
        "## KV memory (kv_stats() after every n_batch chunk of every /load and after every answer)",
        "",
    ]
    rows = [
        [
            m["mode"],
            m["n_samples"],
            f"{m['cells_mib_max']:.3f}",
            f"{m['kv_mib_max']:.3f}",
            m["budget_mib"] if m["budget_mib"] is not None else "-",
            f"{m['full_kv_mib']:.3f}",
            "yes" if m["within_budget"] else "NO",
            "yes" if m["all_layers_within_capacity"] else "NO",
            m["max_layer_capacity"] or "-",
            m["max_tokens_seen"],
            m["rollovers"],
        ]
        for m in summary
    ]
    headers = ["cache", "samples", "max K/V cells MiB", "max total MiB", "budget MiB", "full cache MiB"]
    headers += ["cells within budget", "used <= capacity", "layer capacity (tokens)", "max positions", "rollovers"]
    lines.append(report.markdown_table(headers, rows))
    lines += [
        "",
        (
            "K/V cells = the kept tokens plus headroom of every layer, what `--budget-mib` sizes; total = llama.cpp's "
            "whole KV memory (`kv_stats().kv_bytes`), which also holds the window scorer's recorded queries."
        ),
    ]
    for m in compressed:
        if m["max_layer_capacity"]:
            lines += [
                "",
                (
                    f"At {m['mode']}: documents of {cfg['doc_tokens_a']} (part A) and {cfg['doc_tokens_b']} (B/C) "
                    f"tokens are {cfg['doc_tokens_a'] / m['max_layer_capacity']:.1f}x and "
                    f"{cfg['doc_tokens_b'] / m['max_layer_capacity']:.1f}x what one layer can hold "
                    f"({m['max_layer_capacity']} cells)."
                ),
            ]
    lines += ["", "## Accuracy (exact / lenient)", ""]
    part_names = {
        "A": "A: one document, five questions",
        "B": "B: one document per question (/reset)",
        "C": "C: one long session (rollovers)",
    }
    rows = []
    for part, name in part_names.items():
        row: list[Any] = [name]
        for m in summary:
            p = m["per_part"].get(part)
            row.append(f"{p['exact']:.2f} / {p['lenient']:.2f} (n={p['n']})" if p else "-")
        rows.append(row)
    lines.append(report.markdown_table(["part", *labels], rows))
    lines += ["", "### Exact answers per depth", ""]
    keys = sorted({(d["part"], d["task"]) for m in summary for d in m["per_depth"]})
    header = ["part", "task", "cache"] + [f"depth {d:g}" for d in DEPTHS]
    rows = []
    for part, task in keys:
        for m in summary:
            row = [part, task, m["mode"]]
            for depth in DEPTHS:
                d = next(
                    (x for x in m["per_depth"] if x["part"] == part and x["task"] == task and x["depth"] == depth), None
                )
                row.append(f"{d['exact']}/{d['n']}" if d else "-")
            rows.append(row)
    lines.append(report.markdown_table(header, rows))
    if compressed:
        first = compressed[0]["mode"]
        lines += ["", f"## Example answers ({first})", ""]
        run = next(r for r in data["runs"] if r["mode"] == first)
        picks = [q for q in run["questions"] if q["part"] == "A"] + [q for q in run["questions"] if q["part"] != "A"][
            :10
        ]
        rows = [
            [
                q["part"],
                q["task"],
                f"{q['depth']:g}",
                q["answer"],
                repr(q["reply"])[:40],
                "yes" if q["exact"] else "no",
                q["sequence"],
            ]
            for q in picks
        ]
        lines.append(report.markdown_table(["part", "task", "depth", "expected", "reply", "exact", "sequence"], rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, help="GGUF to run (default: the bundled tappa-mini, converted to f16 once)")
    ap.add_argument(
        "--budget-mib",
        type=float,
        nargs="+",
        default=[0.5, 1.0],
        help="K/V memory of the compressed runs, headroom included; one run each (default: %(default)s)",
    )
    ap.add_argument("--scorer", default=None, help="eviction scorer (default: the GGUF's, else snapkv)")
    ap.add_argument("--allocation", default="default", help="layer allocation (default: %(default)s)")
    ap.add_argument(
        "--n-ctx",
        type=int,
        default=2048,
        help="position limit of one sequence (default: %(default)s, tappa-mini's training length)",
    )
    ap.add_argument("--n-batch", type=int, default=128, help="chunk size and per-layer headroom (default: %(default)s)")
    ap.add_argument(
        "--doc-tokens-a", type=int, default=1600, help="part A document length in tokens (default: %(default)s)"
    )
    ap.add_argument(
        "--doc-tokens-b", type=int, default=1400, help="parts B/C document length in tokens (default: %(default)s)"
    )
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="seeds of the part B documents (default: %(default)s)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true", help="skip the run on the stock (full) cache")
    ap.add_argument("--out", default="chat_session", help="result name under bench/results (default: %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    model = args.model or bundled_gguf()
    from tappa_local.runtime import model_geometry

    geo = model_geometry(model)
    runs = [run_mode(model, b, args) for b in args.budget_mib]
    if not args.no_baseline:
        runs.append(run_mode(model, None, args))
    full_mib = geo.kv_bytes_per_token() * geo.n_layer * args.n_ctx / 2**20
    budgets = {mode_label(b): b for b in args.budget_mib}
    summary = [summarise(r, budgets.get(r.mode), full_mib) for r in runs]
    data = {
        "config": {
            "model": str(model),
            "model_name": "tappa-mini (bundled)" if args.model is None else model.name,
            "n_layer": geo.n_layer,
            "n_ctx_train": geo.n_ctx_train,
            "n_ctx": args.n_ctx,
            "n_batch": args.n_batch,
            "budgets_mib": args.budget_mib,
            "scorer": args.scorer or geo.default_scorer or "snapkv",
            "allocation": args.allocation,
            "doc_tokens_a": args.doc_tokens_a,
            "doc_tokens_b": args.doc_tokens_b,
            "seeds": args.seeds,
            "depths": list(DEPTHS),
        },
        "summary": summary,
        "runs": [
            {
                "mode": r.mode,
                "questions": [asdict(q) for q in r.questions],
                "samples": [asdict(s) for s in r.samples],
                "transcript_tail": r.transcript_tail,
            }
            for r in runs
        ],
    }
    j, m = report.write(args.out, data, markdown(data))
    print(markdown(data))
    print(f"\nwrote {j} and {m}")
    ok = all(s["within_budget"] and s["all_layers_within_capacity"] for s in summary)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
