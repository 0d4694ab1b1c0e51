"""Training data of tappa-mini: the stdlib corpus, its tokenizer, and deterministic batches.

A batch depends only on ``(seed, step)``: every sequence is drawn from its own
``random.Random(f"{seed}|{step}|{i}")``, so a run (or a resumed run) sees exactly the same
data in the same order. A sequence is one of

* a language-model window of the tokenized training corpus (``lm``);
* a retrieval task from :mod:`tappa_local.tasks` (``passkey`` / ``kv`` / ``var``) built on the
  *training* files as filler, followed by its answer, either raw
  (``... The pass key is 48213.``) or in the chat format (``<|assistant|>\\n48213</s>``).

Answer tokens are flagged so the loss can weight them (see ``TrainConfig.answer_weight``).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tappa_local import tasks
from bench.train import chat
from bench.train.config import DataConfig, Phase, TrainConfig

log = logging.getLogger("tappa-mini")

#: what follows the answer in the raw (non-chat) format, matching how the context states it
RAW_TERMINATOR = {"passkey": ".", "kv": "\n", "var": "\n"}
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are tappa-mini, a small model that answers questions about long documents.",
    "Answer with the requested value only.",
    "You read documents carefully and answer briefly.",
)
IGNORE = -100
#: how the context states each key / variable (to ask further questions about the same context)
_PAIR_RE = {
    "kv": re.compile(r"^([a-z]+-[a-z]+): (\d+)$", re.M),
    "var": re.compile(r"^([a-z]+_[a-z]+) = (\d+)$", re.M),
}


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(out_dir: Path, vocab_size: int, max_lines: int) -> Path:
    """SentencePiece BPE on the training split only, chat markers as single tokens, chat template set."""
    from tappa_local.localmodels import train_sentencepiece  # noqa: PLC0415

    texts = [t for _, t in tasks.training_documents()]
    train_sentencepiece(
        texts, out_dir, vocab_size, max_lines=max_lines, user_defined_symbols=chat.MARKERS, add_dummy_prefix=False
    )
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = chat.CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out_dir


def load_tokenizer(tok_dir: Path) -> Any:
    from transformers import AutoTokenizer  # noqa: PLC0415

    return AutoTokenizer.from_pretrained(tok_dir)


def token_counter(tok: Any) -> tasks.TokenCounter:
    """Tokens of a raw prompt including the BOS llama.cpp adds (what the model actually sees)."""
    return lambda s: len(tok(s)["input_ids"])


# --------------------------------------------------------------------------- corpus stream


def corpus_tokens(tok: Any, cache: Path | None = None) -> np.ndarray:
    """The training split tokenized file by file (no BOS), files separated by a blank line, as uint16."""
    if cache is not None and cache.is_file():
        return np.load(cache)
    docs = tasks.training_documents()
    texts = [t.rstrip("\n") + "\n\n" for _, t in docs]
    ids: list[int] = []
    for i in range(0, len(texts), 64):
        for row in tok(texts[i : i + 64], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
    arr = np.asarray(ids, dtype=np.uint16)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, arr)
    return arr


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sequence_:
    kind: str  #: "lm", "repeat", "random_repeat", or "<task>" / "<task>+chat"
    ids: list[int]
    answer_mask: list[bool]  #: True where the *target* token is part of the answer
    #: per position i (whose target is ids[i + 1]): index of the earlier token that target copies, or -1
    copy_src: list[int] | None = None


class SampleMaker:
    """Builds training sequences of a requested length (deterministic per RNG)."""

    def __init__(self, tok: Any, stream: np.ndarray, cfg: DataConfig) -> None:
        self.tok = tok
        self.stream = stream
        self.cfg = cfg
        self.count = token_counter(tok)
        self.filler = tasks.Filler([t for _, t in tasks.training_documents()])
        self.bos = int(tok.bos_token_id)
        self.vocab_size = len(tok)
        # the most frequent pieces of the corpus that are not specials / markers / bytes (ids < 263)
        counts = np.bincount(stream.astype(np.int64), minlength=self.vocab_size)
        counts[: 256 + 7] = -1
        self.alphabet: list[int] = sorted(int(i) for i in np.argsort(-counts, kind="stable")[: cfg.random_repeat_alphabet])
        names, weights = zip(*cfg.task_weights)
        self.task_names: tuple[str, ...] = names
        self.task_weights: tuple[float, ...] = weights

    # -- language modelling
    def lm(self, rng: random.Random, seq_len: int) -> Sequence_:
        start = rng.randrange(0, len(self.stream) - seq_len)
        ids = [self.bos] + self.stream[start : start + seq_len - 1].tolist()
        return Sequence_("lm", ids, [False] * len(ids))

    # -- retrieval tasks
    def _task_sample(self, task: str, rng: random.Random, n_tokens: int, seed: int) -> tasks.TaskSample:
        r = rng.random()
        depth = 0.0 if r < 0.05 else 1.0 if r < 0.1 else rng.random()
        if task == "passkey":
            return tasks.passkey(n_tokens, depth, seed, self.count, filler=self.filler, digits=rng.randint(3, 7))
        if task == "kv":
            return tasks.kv_retrieval(n_tokens, depth, seed, self.count, digits=rng.randint(3, 6))
        if task == "var":
            return tasks.var_lookup(
                n_tokens, depth, seed, self.count, filler=self.filler,
                n_distractors=rng.randint(2, max(2, min(20, n_tokens // 40))), digits=rng.randint(2, 6),
            )  # fmt: skip
        raise ValueError(task)

    def _encode(
        self, text: str, spans: Sequence[tuple[int, int]], special_in_text: bool
    ) -> tuple[list[int], list[bool], list[int]]:
        """Token ids of ``text``, per token whether it overlaps an answer character span, and the
        token index of every character of ``text``."""
        enc = self.tok(text, add_special_tokens=not special_in_text, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = enc["offset_mapping"]
        is_ans = [any(a < e and b > s for s, e in spans) for a, b in offsets]
        char2tok = [-1] * len(text)
        for ti, (a, b) in enumerate(offsets):
            for c in range(a, b):
                char2tok[c] = ti
        return ids, is_ans, char2tok

    @staticmethod
    def _copy_sources(
        ids: list[int], char2tok: list[int], pairs: Sequence[tuple[int, int, int]]
    ) -> list[int]:
        """``pairs`` of (answer char start, source char start, length): every answer token is a copy
        of the source token at the same relative offset; position ``t - 1`` predicts token ``t``."""
        src = [-1] * len(ids)
        for a0, s0, n in pairs:
            for r in range(n):
                ta, ts = char2tok[a0 + r], char2tok[s0 + r]
                if ta >= 1 and 0 <= ts < ta - 1 and ids[ta] == ids[ts]:
                    src[ta - 1] = ts
        return src

    @staticmethod
    def _value_offset(task: str, context: str, name: str, value: str) -> int:
        """Character offset of ``value`` where the context states it (-1 if not found)."""
        if task == "passkey":
            pat, skip = f"The pass key is {value}.", len("The pass key is ")
        elif task == "kv":
            pat, skip = f"\n{name}: {value}\n", len(name) + 3
        else:
            pat, skip = f"\n{name} = {value}\n", len(name) + 4
        i = context.find(pat)
        return -1 if i < 0 else i + skip

    @staticmethod
    def _asked_name(task: str, raw_prompt: str) -> str:
        last = raw_prompt[raw_prompt.rfind("\n") + 1 :]
        if task == "kv":
            return last[:-1]  # "<key>:"
        if task == "var":
            return last[len("print(") : last.index(")")]
        return ""

    def _extra_queries(self, task: str, s: tasks.TaskSample, rng: random.Random, k: int) -> list[tuple[str, str, str]]:
        """Further (query, name, answer) triples about the same context, appended after the first answer (raw kv / var)."""
        if k <= 0 or task not in _PAIR_RE:
            return []
        body = s.prompt[: s.prompt.rfind("\n\n")]
        pairs = _PAIR_RE[task].findall(body)
        first = s.prompt[s.prompt.rfind("\n") + 1 :]
        pairs = [(n, v) for n, v in pairs if not first.startswith(n + ":") and f"({n})" not in first]
        out = []
        for name, value in rng.sample(pairs, min(k, len(pairs))):
            q = f"\nWhat is the value of {name}?\n{name}:" if task == "kv" else f"print({name})  # ->"
            out.append((q, name, value))
        return out

    def task(self, rng: random.Random, seq_len: int, seed: int) -> Sequence_:
        task = rng.choices(self.task_names, weights=self.task_weights)[0]
        as_chat = rng.random() < self.cfg.p_chat
        system = rng.choice(SYSTEM_PROMPTS) if as_chat and rng.random() < self.cfg.p_system and seq_len >= 256 else None
        room = min(self.cfg.max_extra_queries, max(0, (seq_len - 128) // 64))  # short contexts: fewer questions
        n_extra = rng.randint(0, room) if task in _PAIR_RE and not as_chat else 0
        reserve = 12 + (10 if as_chat else 0) + (24 if system else 0) + 22 * n_extra
        for _ in range(6):
            try:
                s = self._task_sample(task, rng, seq_len - reserve, seed)
            except ValueError:  # the task's fixed parts do not fit a very short context
                task, n_extra = "passkey", 0
                s = self._task_sample(task, rng, seq_len - reserve, seed)
            asked = self._asked_name(task, s.prompt)
            if as_chat:
                msgs = ([{"role": "system", "content": system}] if system else []) + list(s.messages)
                prompt = chat.render(msgs, add_generation_prompt=True)
                text = prompt + s.answer + chat.EOS
                ids, mask, char2tok = self._encode(text, [(len(prompt), len(text))], special_in_text=True)
                src = self._value_offset(task, prompt, asked, s.answer)
                pairs = [(len(prompt), src, len(s.answer))] if src >= 0 else []
            else:
                text = s.prompt
                spans = []
                pairs = []
                for q, name, a in [("", asked, s.answer), *self._extra_queries(task, s, rng, n_extra)]:
                    text += q
                    start = len(text)
                    text += " " + a + RAW_TERMINATOR[task]
                    spans.append((start, len(text)))
                    src = self._value_offset(task, s.prompt, name, a)
                    if src >= 1:
                        pairs.append((start, src - 1, 1 + len(a)))  # the space before the digits too
                ids, mask, char2tok = self._encode(text, spans, special_in_text=False)
            if len(ids) <= seq_len:
                # the target of position i is ids[i + 1]: flag positions whose target is an answer token
                return Sequence_(
                    task + ("+chat" if as_chat else ""), ids, mask[1:] + [False], self._copy_sources(ids, char2tok, pairs)
                )
            reserve += len(ids) - seq_len + 8
        raise RuntimeError(f"could not fit a {task} sample into {seq_len} tokens")

    def repeat(self, rng: random.Random, seq_len: int) -> Sequence_:
        """A stretch of corpus text, other text, then the first stretch again: plain LM loss, but the
        repeat is only predictable by attending far back (drives induction / retrieval heads)."""
        a = rng.randint(seq_len // 8, seq_len // 3)
        b = seq_len - 1 - 2 * a
        s1 = rng.randrange(0, len(self.stream) - a)
        s2 = rng.randrange(0, len(self.stream) - b)
        first = self.stream[s1 : s1 + a].tolist()
        ids = [self.bos] + first + self.stream[s2 : s2 + b].tolist() + first
        src = [-1] * len(ids)
        p2 = 1 + a + b
        for j in range(1, a):
            src[p2 + j - 1] = 1 + j
        return Sequence_("repeat", ids, [False] * len(ids), src)

    def random_repeat(self, rng: random.Random, seq_len: int) -> Sequence_:
        """Random vocabulary pieces, each stretch followed later by an exact copy: the copies are
        unpredictable except by finding the earlier occurrence and reading on from there."""
        alphabet = self.alphabet
        ids = [self.bos]
        links: list[tuple[int, int]] = []  # (position predicting a copied token, its source)
        while len(ids) < seq_len:
            n = rng.randint(4, max(4, seq_len // 4))
            seg = [rng.choice(alphabet) for _ in range(n)]
            gap = [rng.choice(alphabet) for _ in range(rng.randint(0, n))]
            p1 = len(ids)
            p2 = p1 + n + len(gap)
            links += [(p2 + j - 1, p1 + j) for j in range(1, n)]
            ids += seg + gap + seg
        ids = ids[:seq_len]
        src = [-1] * len(ids)
        for pos, s in links:
            if pos < len(ids) - 1:
                src[pos] = s
        return Sequence_("random_repeat", ids, [False] * len(ids), src)

    def sequence(self, seed: int, step: int, index: int, seq_len: int) -> Sequence_:
        rng = random.Random(f"{seed}|{step}|{index}")
        r = rng.random()
        if r < self.cfg.p_lm:
            return self.lm(rng, seq_len)
        if r < self.cfg.p_lm + self.cfg.p_repeat:
            return self.repeat(rng, seq_len)
        if r < self.cfg.p_lm + self.cfg.p_repeat + self.cfg.p_random_repeat:
            return self.random_repeat(rng, seq_len)
        return self.task(rng, seq_len, seed=1_000_000_000 + step * 1_000 + index)


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  #: (B, T) int64
    labels: np.ndarray  #: (B, T) int64, next-token targets already shifted; IGNORE on padding
    answer: np.ndarray  #: (B, T) bool, labels that are answer tokens
    copy_src: np.ndarray  #: (B, T) int64, the earlier token each position's target copies, -1 if none
    kinds: tuple[str, ...]


def make_batch(maker: SampleMaker, cfg: TrainConfig, step: int, phase: Phase) -> Batch:
    b, t = phase.batch, phase.seq_len
    inp = np.zeros((b, t), dtype=np.int64)
    lab = np.full((b, t), IGNORE, dtype=np.int64)
    ans = np.zeros((b, t), dtype=bool)
    src = np.full((b, t), -1, dtype=np.int64)
    kinds: list[str] = []
    for i in range(b):
        s = maker.sequence(cfg.seed, step, i, t)
        n = len(s.ids)
        inp[i, :n] = s.ids
        lab[i, : n - 1] = s.ids[1:]
        ans[i, : n - 1] = s.answer_mask[: n - 1]
        if s.copy_src is not None:
            src[i, :n] = s.copy_src
        kinds.append(s.kind)
    return Batch(inp, lab, ans, src, tuple(kinds))


def describe(batch: Batch, tok: Any, row: int = 0, tail: int = 40) -> str:
    """Human-readable end of one sequence (for ``--show-samples``)."""
    ids = [int(x) for x in batch.input_ids[row] if x != 0]
    return f"[{batch.kinds[row]}] ...{tok.decode(ids[-tail:])!r}"


def kinds_histogram(kinds: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in kinds:
        out[k] = out.get(k, 0) + 1
    return out
