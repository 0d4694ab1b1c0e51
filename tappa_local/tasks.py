"""Seeded long-context evaluation tasks and the held-out text, as plain strings.

Nothing here touches a model or a runtime. Each generator takes a *token counter* (any
``str -> int``, e.g. ``lambda s: len(llm.tokenize(s.encode()))`` for llama.cpp or a
transformers tokenizer) so the prompt can be sized to a requested length in tokens, and a
*depth* in ``[0, 1]`` saying where in the context the needle sits (0 = right after the
header, 1 = right before the question).

Every prompt ends so that greedy decoding continues with the answer: the generated text,
stripped, starts with ``sample.answer`` (use :func:`is_correct`). The same sample also
carries chat ``messages`` (document + question, no answer prefix) for chat-template use.

Tasks
-----
``passkey``
    "The pass key is 48213. Remember it. 48213 is the pass key." hidden in filler text;
    the prompt ends with ``What is the pass key? The pass key is``.
``kv``
    A context made only of ``word-word: 58213`` lines; the queried pair sits at ``depth``;
    the prompt ends with ``What is the value of <key>?\\n<key>:``.
``var``
    Python source (filler) with ``name = 4821`` assignments inserted at line starts: the
    target at ``depth`` plus distractors elsewhere; the prompt ends with
    ``print(<name>)  # ->``.

Corpus
------
The text comes from the running Python's standard library (``sysconfig.get_paths()['stdlib']``).
:data:`HELDOUT_PATHS` is never trained on; :func:`heldout_documents` loads it (perplexity,
and the default filler of the tasks), :func:`training_documents` loads the rest.
"""

from __future__ import annotations

import hashlib
import random
import re
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

TokenCounter = Callable[[str], int]

TASKS: tuple[str, ...] = ("passkey", "kv", "var")
DEFAULT_DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

# --------------------------------------------------------------------------- corpus

#: stdlib paths (relative to the stdlib root) that are never trained on: whole packages and single modules
HELDOUT_PATHS: tuple[str, ...] = (
    "email",
    "json",
    "difflib.py",
    "fractions.py",
    "statistics.py",
    "textwrap.py",
)

#: directory names whose files are excluded from every split (test suites, vendored or generated tables)
EXCLUDED_DIRS: frozenset[str] = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "__phello__", "encodings", "ensurepip"}
)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_excluded(rel: Path) -> bool:
    return any(part in EXCLUDED_DIRS or part.startswith("config-") for part in rel.parts[:-1])


def _is_heldout(rel: Path) -> bool:
    first = rel.parts[0]
    return first in HELDOUT_PATHS or rel.as_posix() in HELDOUT_PATHS


@lru_cache(maxsize=4)
def _split(root: Path) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    train: list[Path] = []
    held: list[Path] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not path.is_file() or _is_excluded(rel):
            continue
        (held if _is_heldout(rel) else train).append(rel)
    return tuple(train), tuple(held)


def _read(root: Path, rels: Sequence[Path]) -> list[tuple[str, str]]:
    return [(rel.as_posix(), (root / rel).read_text(encoding="utf-8", errors="replace")) for rel in rels]


def training_documents(root: Path | None = None) -> list[tuple[str, str]]:
    """``(relative path, text)`` of every stdlib source file outside the held-out set, sorted by path."""
    r = root or stdlib_root()
    return _read(r, _split(r)[0])


def heldout_documents(root: Path | None = None) -> list[tuple[str, str]]:
    """``(relative path, text)`` of the held-out stdlib files (:data:`HELDOUT_PATHS`), sorted by path."""
    r = root or stdlib_root()
    return _read(r, _split(r)[1])


def heldout_text(root: Path | None = None) -> str:
    """The held-out files concatenated (each followed by a blank line), e.g. for perplexity."""
    return "".join(text.rstrip("\n") + "\n\n" for _, text in heldout_documents(root))


def documents_sha256(docs: Sequence[tuple[str, str]]) -> str:
    """A digest of a document list (paths and contents), to pin down exactly what was used."""
    h = hashlib.sha256()
    for name, text in docs:
        h.update(name.encode() + b"\0" + hashlib.sha256(text.encode()).digest())
    return h.hexdigest()


# --------------------------------------------------------------------------- filler


class Filler:
    """A pool of text lines to cut contiguous filler windows from (deterministic given an RNG)."""

    def __init__(self, texts: Sequence[str], max_line_chars: int = 160) -> None:
        lines = [ln.rstrip() for t in texts for ln in t.splitlines()]
        # drop overly long lines (data tables) and runs of blank lines; keep indentation
        kept: list[str] = []
        for ln in lines:
            if len(ln) > max_line_chars or (not ln and kept and not kept[-1]):
                continue
            kept.append(ln)
        if len(kept) < 100:
            raise ValueError("filler corpus is too small")
        self.lines: list[str] = kept

    def window(self, rng: random.Random, n_chars: int) -> str:
        """At least ``n_chars`` characters of consecutive lines from a random start (wrapping around)."""
        out: list[str] = []
        total = 0
        i = rng.randrange(len(self.lines))
        while total < n_chars:
            ln = self.lines[i % len(self.lines)]
            out.append(ln)
            total += len(ln) + 1
            i += 1
        return "\n".join(out) + "\n"


@lru_cache(maxsize=1)
def heldout_filler() -> Filler:
    return Filler([t for _, t in heldout_documents()])


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class TaskSample:
    """One prompt. ``prompt, answer = sample`` works; the other fields describe it."""

    task: str
    prompt: str  #: raw completion prompt; greedy continuation starts with ``answer``
    answer: str  #: expected answer (digits), without surrounding whitespace
    depth: float  #: requested relative position of the needle
    n_tokens: int  #: ``count_tokens(prompt)``
    messages: tuple[dict[str, str], ...] = field(default=())  #: the same task as one chat user turn
    needle_offset: int = -1  #: character offset of the needle (target line) in ``prompt``

    def __iter__(self) -> Iterator[str]:
        yield self.prompt
        yield self.answer


_LEADING_NUMBER = re.compile(r"\s*(\d+)")


def is_correct(generated: str, answer: str) -> bool:
    """True when the generated text starts (after whitespace) with exactly the answer's digits.

    ``" 48213."`` and ``"48213</s>"`` are correct for ``"48213"``; ``" 482130"``, ``" 4821"`` and
    ``" the key is 48213"`` are not.
    """
    m = _LEADING_NUMBER.match(generated)
    return m is not None and m.group(1) == answer


def approx_token_counter(chars_per_token: float = 3.0) -> TokenCounter:
    """A runtime-free estimate; pass a real tokenizer's counter when exact lengths matter."""
    return lambda s: int(len(s) / chars_per_token) + 1


# word lists for keys and variable names: short, common, distinct
_KEY_WORDS_A = (
    "amber", "brave", "calm", "dark", "eager", "fancy", "gentle", "happy", "icy", "jolly", "kind", "lucky",
    "mellow", "noble", "odd", "proud", "quick", "rapid", "silent", "tidy", "urban", "vivid", "wild", "young",
    "zesty", "bold", "crisp", "dusty", "early", "fresh", "grand", "hollow",
)  # fmt: skip
_KEY_WORDS_B = (
    "apple", "bridge", "cloud", "desert", "engine", "forest", "garden", "harbor", "island", "jacket", "kettle",
    "lemon", "meadow", "needle", "ocean", "pencil", "quartz", "river", "saddle", "tiger", "umbrella", "valley",
    "window", "yarrow", "zebra", "anchor", "basket", "candle", "dragon", "falcon", "glacier", "hammer",
)  # fmt: skip
_VAR_PREFIX = (
    "max", "min", "total", "retry", "buffer", "cache", "page", "batch", "chunk", "frame", "queue", "worker",
    "block", "token", "packet", "record", "socket", "thread", "window", "column", "timeout", "delay", "offset", "limit",
)  # fmt: skip
_VAR_SUFFIX = (
    "count", "size", "limit", "index", "total", "width", "depth", "level", "score", "weight", "length", "number",
    "budget", "quota", "rate", "port", "code", "id", "step", "margin",
)  # fmt: skip


def _fit(build: Callable[[int], str], count: TokenCounter, target: int, guess: int, max_n: int) -> tuple[int, str, int]:
    """Largest ``n`` in ``[0, max_n]`` with ``count(build(n)) <= target``; ``build`` must grow with ``n``.

    Secant steps towards the target, then bisection; a handful of ``count`` calls in practice.
    """
    base = count(build(0))
    if base > target:
        raise ValueError(f"the fixed parts of the prompt already take {base} tokens > target {target}")
    lo, lo_c = 0, base  # largest known feasible n
    hi = max_n + 1  # smallest known infeasible n (max_n + 1 stands for "none")
    n = min(max(1, guess), max_n)
    for _ in range(6):
        c = count(build(n))
        if c <= target:
            lo, lo_c = n, c
        else:
            hi = n
        if hi - lo <= 1:
            break
        per_unit = max((c - base) / n, 1e-9)
        n = min(max(int(n + (target - c) / per_unit), lo + 1), hi - 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        c = count(build(mid))
        if c <= target:
            lo, lo_c = mid, c
        else:
            hi = mid
    return lo, build(lo), lo_c


def _insert_lines(body: str, inserts: Sequence[tuple[float, str]]) -> tuple[str, list[int]]:
    """Insert whole lines into ``body`` at the line boundary at or before each relative position.

    Returns the new text and the character offset of each inserted line (in input order).
    """
    if body and not body.endswith("\n"):
        body += "\n"
    cuts: list[tuple[int, int, str]] = []
    for idx, (rel, line) in enumerate(inserts):
        p = int(round(min(max(rel, 0.0), 1.0) * len(body)))
        if p < len(body):
            p = body.rfind("\n", 0, p) + 1  # start of the line containing p (0 when none)
        cuts.append((p, idx, line))
    cuts.sort()
    out: list[str] = []
    offsets = [0] * len(inserts)
    prev = 0
    pos = 0
    for p, idx, line in cuts:
        chunk = body[prev:p]
        out.append(chunk)
        pos += len(chunk)
        offsets[idx] = pos
        out.append(line + "\n")
        pos += len(line) + 1
        prev = p
    out.append(body[prev:])
    return "".join(out), offsets


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


PASSKEY_HEADER = (
    "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the pass key."
)
KV_HEADER = "Below is a list of keys and their values. Remember them; you will be asked for the value of one key."
VAR_HEADER = "# Python source follows. Some variables are assigned numbers; remember them."


def passkey(
    n_tokens: int,
    depth: float,
    seed: int,
    count_tokens: TokenCounter,
    filler: Filler | None = None,
    digits: int = 5,
) -> TaskSample:
    """The pass key hidden in filler text at ``depth``; the prompt is at most ``n_tokens`` tokens."""
    rng = random.Random(f"passkey|{seed}")
    fill = filler or heldout_filler()
    key = _number(rng, digits)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    question = "What is the pass key?"
    pool = fill.window(rng, n_tokens * 6 + 200)
    head = PASSKEY_HEADER + "\n\n"

    def build(n: int) -> str:
        body, _ = _insert_lines(pool[:n], [(depth, needle)])
        return head + body + "\n" + question + " The pass key is"

    n, prompt, ntok = _fit(build, count_tokens, n_tokens, guess=n_tokens * 3, max_n=len(pool))
    body, offs = _insert_lines(pool[:n], [(depth, needle)])
    return TaskSample(
        task="passkey",
        prompt=prompt,
        answer=key,
        depth=depth,
        n_tokens=ntok,
        messages=({"role": "user", "content": head + body + "\n" + question},),
        needle_offset=len(head) + offs[0],
    )


def _kv_keys(rng: random.Random, n: int) -> list[str]:
    pool = [f"{a}-{b}" for a in _KEY_WORDS_A for b in _KEY_WORDS_B]
    if n > len(pool):
        raise ValueError(f"at most {len(pool)} distinct keys")
    return rng.sample(pool, n)


def kv_retrieval(
    n_tokens: int,
    depth: float,
    seed: int,
    count_tokens: TokenCounter,
    n_pairs: int | None = None,
    digits: int = 5,
) -> TaskSample:
    """A list of ``key: value`` lines filling the prompt (or exactly ``n_pairs`` of them); one is asked for.

    The queried pair is the one at relative position ``depth`` in the list. There are 1024
    distinct keys (about 12K tokens with tappa-mini's tokenizer); longer prompts raise ValueError.
    """
    rng = random.Random(f"kv|{seed}")
    max_pairs = len(_KEY_WORDS_A) * len(_KEY_WORDS_B)
    keys = _kv_keys(rng, max_pairs if n_pairs is None else n_pairs)
    values = [_number(rng, digits) for _ in keys]
    pick = rng.random()  # decides which key is asked, independently of how many pairs fit
    head = KV_HEADER + "\n\n"

    def layout(n: int) -> tuple[str, int, str, str]:
        n = max(n, 1)
        target = min(int(round(depth * (n - 1))), n - 1)
        # the asked key is a random one; it is moved to slot `target`
        order = list(range(n))
        asked = int(pick * n)
        order[asked], order[target] = order[target], order[asked]
        lines = [f"{keys[i]}: {values[i]}" for i in order]
        q_key, q_val = keys[order[target]], values[order[target]]
        before = head + "".join(ln + "\n" for ln in lines[:target])
        text = before + "".join(ln + "\n" for ln in lines[target:])
        return text, len(before), q_key, q_val

    def build(n: int) -> str:
        text, _, q_key, _ = layout(n)
        return text + f"\nWhat is the value of {q_key}?\n{q_key}:"

    if n_pairs is None:
        n, prompt, ntok = _fit(build, count_tokens, n_tokens, guess=max(1, n_tokens // 12), max_n=len(keys))
        n = max(n, 1)  # build(0) already holds one pair
        if n == len(keys) and ntok < n_tokens - 64:
            raise ValueError(f"kv_retrieval has {len(keys)} distinct keys, which fill only {ntok} of {n_tokens} tokens")
    else:
        n = n_pairs
        prompt = build(n)
        ntok = count_tokens(prompt)
    text, off, q_key, q_val = layout(n)
    return TaskSample(
        task="kv",
        prompt=prompt,
        answer=q_val,
        depth=depth,
        n_tokens=ntok,
        messages=({"role": "user", "content": text + f"\nWhat is the value of {q_key}?"},),
        needle_offset=off,
    )


def var_lookup(
    n_tokens: int,
    depth: float,
    seed: int,
    count_tokens: TokenCounter,
    filler: Filler | None = None,
    n_distractors: int = 12,
    digits: int = 4,
) -> TaskSample:
    """Python source with ``name = value`` lines; the target sits at ``depth``, distractors elsewhere."""
    rng = random.Random(f"var|{seed}")
    fill = filler or heldout_filler()
    pool = fill.window(rng, n_tokens * 6 + 200)
    # names that the filler itself never mentions, so the answer is unambiguous
    candidates = [f"{a}_{b}" for a in _VAR_PREFIX for b in _VAR_SUFFIX]
    names = rng.sample([c for c in candidates if c not in pool], n_distractors + 1)
    values = [_number(rng, digits) for _ in names]
    spots = [depth] + [rng.random() for _ in range(n_distractors)]
    assigns = [(pos, f"{nm} = {v}") for pos, nm, v in zip(spots, names, values)]
    head = VAR_HEADER + "\n\n"
    tail = f"\nprint({names[0]})  # ->"
    question = f"What is the value of the variable {names[0]} in this code?"

    def build(n: int) -> str:
        body, _ = _insert_lines(pool[:n], assigns)
        return head + body + tail

    n, prompt, ntok = _fit(build, count_tokens, n_tokens, guess=n_tokens * 3, max_n=len(pool))
    body, offs = _insert_lines(pool[:n], assigns)
    return TaskSample(
        task="var",
        prompt=prompt,
        answer=values[0],
        depth=depth,
        n_tokens=ntok,
        messages=({"role": "user", "content": head + body + "\n" + question},),
        needle_offset=len(head) + offs[0],
    )


def make_sample(task: str, n_tokens: int, depth: float, seed: int, count_tokens: TokenCounter, **kwargs: object) -> TaskSample:
    """Dispatch by task name (one of :data:`TASKS`)."""
    if task == "passkey":
        return passkey(n_tokens, depth, seed, count_tokens, **kwargs)  # type: ignore[arg-type]
    if task == "kv":
        return kv_retrieval(n_tokens, depth, seed, count_tokens, **kwargs)  # type: ignore[arg-type]
    if task == "var":
        return var_lookup(n_tokens, depth, seed, count_tokens, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def suite(
    count_tokens: TokenCounter,
    n_tokens: int,
    tasks: Sequence[str] = TASKS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    n_per_depth: int = 10,
    seed: int = 0,
) -> list[TaskSample]:
    """A fixed evaluation grid: every task x depth, ``n_per_depth`` seeded prompts each."""
    out: list[TaskSample] = []
    for task in tasks:
        for di, depth in enumerate(depths):
            for i in range(n_per_depth):
                out.append(make_sample(task, n_tokens, depth, seed * 1_000_003 + di * 10_007 + i, count_tokens))
    return out
