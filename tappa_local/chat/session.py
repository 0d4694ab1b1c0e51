"""A long-context conversation on the compressed KV cache, without any terminal I/O.

The session owns the conversation the model sees (system prompt, turns of the current
sequence, documents loaded for the next question), the transcript the user sees, and the
position policy (:mod:`tappa_local.chat.policy`). Every prompt goes through the model's own
chat template via ``create_chat_completion``; the continuation handler makes each turn
evaluate only its new tokens.

A loaded document is evaluated right away as the start of the next user turn; the question
typed after it completes that turn, so the model sees ``document + "\\n" + question`` in one
user message, the layout long-context chat models (tappa-mini included) are trained on.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .continuation import ContinuationChatHandler, install
from .ingest import ProgressFactory, evaluate_plan
from .policy import ContextFullError, ContextPolicy
from .stats import MemoryReport, memory_report, position_limit
from .transcript import Transcript

#: a prompt with more new tokens than this is read with a progress bar before the reply
REREAD_PROGRESS_TOKENS = 512


@dataclass(frozen=True)
class ChatConfig:
    """Sampling and context-policy settings of a chat session."""

    system_prompt: str | None = None
    max_tokens: int = 512  #: longest reply
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    on_context_full: str = "rollover"  #: "rollover" or "refuse" (see policy.py)
    warn_at: tuple[float, ...] = (0.75, 0.9)
    carry_fraction: float = 0.25
    max_carry_turns: int = 4


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    n_tokens: int
    sha256: str

    @property
    def block(self) -> str:
        """How the document appears in the user turn (followed by the question)."""
        return self.text.rstrip("\n") + "\n\n"


@dataclass(frozen=True)
class Notice:
    level: str  #: "info" or "warning"
    text: str


@dataclass(frozen=True)
class Turn:
    """One exchange as the user had it (documents by reference)."""

    user: str
    documents: tuple[Document, ...]
    assistant: str
    finish_reason: str | None


@dataclass(frozen=True)
class _SequenceTurn:
    """One exchange as the current sequence holds it."""

    user_content: str
    assistant: str
    turn: Turn


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str | None  #: "stop", "length" or "interrupted"
    prompt_tokens: int  #: positions of the prompt (the whole sequence so far)
    reused_tokens: int  #: of which the cache already held
    completion_tokens: int
    seconds: float


@dataclass
class _SessionState:
    sequence: list[_SequenceTurn] = field(default_factory=list)
    pending: list[Document] = field(default_factory=list)
    warned: set[float] = field(default_factory=set)
    locked: bool = False
    sequence_index: int = 1


def _noop(_: Notice) -> None:
    pass


class ChatSession:
    """Drives one ``TappaLlama`` as a chat. Not thread-safe (one conversation, one cache)."""

    def __init__(
        self, llm: Any, config: ChatConfig = ChatConfig(), *, notify: Callable[[Notice], None] = _noop
    ) -> None:
        self.llm = llm
        self.config = config
        self.notify = notify
        self.handler: ContinuationChatHandler = install(llm)
        self.policy = ContextPolicy(
            limit=position_limit(llm),
            on_full=config.on_context_full,
            warn_at=config.warn_at,
            carry_fraction=config.carry_fraction,
            max_carry_turns=config.max_carry_turns,
        )
        self.transcript = Transcript()
        self.turns: list[Turn] = []
        self._s = _SessionState()
        if config.system_prompt:
            self.transcript.add("system", config.system_prompt)

    # ------------------------------------------------------------------ views

    @property
    def positions(self) -> int:
        """Positions the current sequence has used."""
        return int(self.llm.n_tokens)

    @property
    def pending_documents(self) -> tuple[Document, ...]:
        return tuple(self._s.pending)

    @property
    def sequence_index(self) -> int:
        return self._s.sequence_index

    @property
    def locked(self) -> bool:
        return self._s.locked

    def report(self) -> MemoryReport:
        return memory_report(self.llm)

    def messages(self) -> list[dict[str, str]]:
        """The conversation of the current sequence as the model sees it (without pending documents)."""
        msgs: list[dict[str, str]] = []
        if self.config.system_prompt:
            msgs.append({"role": "system", "content": self.config.system_prompt})
        for st in self._s.sequence:
            msgs.append({"role": "user", "content": st.user_content})
            msgs.append({"role": "assistant", "content": st.assistant})
        return msgs

    # ------------------------------------------------------------------ actions

    def load_document(self, text: str, name: str, *, progress: ProgressFactory | None = None) -> Document:
        """Read ``text`` into the cache as the start of the next user turn."""
        self._check_unlocked()
        if "\x00" in text:
            raise ValueError(f"{name} looks like a binary file; /load reads text (plain text, Markdown, code)")
        if not text.strip():
            raise ValueError(f"{name} is empty")
        doc = Document(name, text, self._count(text), hashlib.sha256(text.encode("utf-8")).hexdigest())
        pending = [*self._s.pending, doc]
        prefix = "".join(d.block for d in pending)
        reserve = self.policy.question_reserve + self.config.max_tokens

        alone = self._count_prompt(self.handler.template.render_open_user_turn(self._system_messages(), prefix))
        if alone + reserve > self.policy.limit:
            raise ContextFullError(
                f"{name} is {doc.n_tokens:,} tokens; with the system prompt, the documents already loaded for the next "
                f"question and room for a question and a {self.config.max_tokens}-token reply it needs "
                f"{alone + reserve:,} positions, more than this model's limit of {self.policy.limit:,}. "
                "Load a shorter document (or a part of it)."
            )
        plan = self.handler.plan_text(self.handler.template.render_open_user_turn(self.messages(), prefix))
        if len(plan.tokens) + reserve > self.policy.limit:
            self._context_full(f"loading {name}", room=alone + reserve)
            plan = self.handler.plan_text(self.handler.template.render_open_user_turn(self.messages(), prefix))
        evaluate_plan(self.llm, self.handler, plan, progress=progress, description=f"reading {name}")
        self._s.pending = pending
        self.transcript.add("document", f"loaded {name}", name=name, n_tokens=doc.n_tokens, sha256=doc.sha256)
        self._after_step()
        return doc

    def ask(
        self,
        text: str,
        *,
        on_text: Callable[[str], None] | None = None,
        progress: ProgressFactory | None = None,
    ) -> Reply:
        """Send ``text`` (completing the turn any loaded documents started) and stream the reply.

        ``on_text`` receives the reply as it is generated. Ctrl-C (KeyboardInterrupt) stops
        the reply; what was generated so far is kept as the turn's answer.
        """
        self._check_unlocked()
        t0 = time.perf_counter()
        docs = tuple(self._s.pending)
        content = "".join(d.block for d in docs) + text
        msgs = [*self.messages(), {"role": "user", "content": content}]
        plan = self.handler.plan_messages(msgs)
        if len(plan.tokens) + self.config.max_tokens > self.policy.limit:
            alone = self._count_prompt(self.handler.template.render([*self._system_messages(), msgs[-1]]))
            if alone + self.config.max_tokens > self.policy.limit:
                raise ContextFullError(
                    f"this message needs {alone:,} positions plus {self.config.max_tokens} for the reply, more than "
                    f"this model's limit of {self.policy.limit:,}; shorten it (or /reset and load less)"
                )
            self._context_full("answering", room=alone + self.config.max_tokens)
            msgs = [*self.messages(), {"role": "user", "content": content}]
            plan = self.handler.plan_messages(msgs)
        if len(plan.new_tokens) > max(REREAD_PROGRESS_TOKENS, int(self.llm.n_batch)):
            # a long re-read (after a rollover or a changed history): show it like a /load
            evaluate_plan(self.llm, self.handler, plan, progress=progress, description="reading the conversation")
        max_reply = max(1, min(self.config.max_tokens, self.policy.limit - len(plan.tokens)))

        parts: list[str] = []
        finish: str | None = None
        completion_tokens = 0
        stream = self.llm.create_chat_completion(
            messages=msgs,
            stream=True,
            max_tokens=max_reply,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            top_k=self.config.top_k,
            min_p=self.config.min_p,
            repeat_penalty=self.config.repeat_penalty,
        )
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                piece = choice["delta"].get("content")
                if piece:
                    parts.append(piece)
                    completion_tokens += 1
                    if on_text is not None:
                        on_text(piece)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        except KeyboardInterrupt:
            finish = "interrupted"
        finally:
            stream.close()
        used_plan = self.handler.last_plan or plan
        reply = "".join(parts)
        turn = Turn(text, docs, reply, finish)
        self.turns.append(turn)
        # the conversation continues from what the cache holds: the reply as evaluated (a last
        # sampled token is not; an interrupted stream may have evaluated more than was shown)
        in_cache = self.handler.text_after(used_plan)
        self._s.sequence.append(_SequenceTurn(content, reply if in_cache is None else in_cache, turn))
        self._s.pending = []
        self.transcript.add("user", text, documents=[d.name for d in docs], sequence=self._s.sequence_index)
        self.transcript.add("assistant", reply, finish_reason=finish, sequence=self._s.sequence_index)
        self._after_step()
        return Reply(
            text=reply,
            finish_reason=finish,
            prompt_tokens=len(used_plan.tokens),
            reused_tokens=used_plan.reused,
            completion_tokens=completion_tokens,
            seconds=time.perf_counter() - t0,
        )

    def reset(self) -> None:
        """Start over: empty cache, no turns, no pending documents (the transcript is kept)."""
        self.llm.clear()
        self.handler.forget()
        self._s = _SessionState(sequence_index=self._s.sequence_index + 1)
        self.transcript.add("reset", "conversation reset; the model starts from an empty cache")

    # ------------------------------------------------------------------ policy

    def _check_unlocked(self) -> None:
        if self._s.locked:
            raise ContextFullError(
                f"the conversation has reached this model's limit of {self.policy.limit:,} positions; "
                "type /reset to start a new one (/save FILE keeps the transcript)"
            )

    def _after_step(self) -> None:
        pos = self.positions
        for frac in self.policy.warnings_due(pos, self._s.warned):
            self._s.warned.add(frac)
            self._say(
                "warning",
                f"past {100 * frac:.0f}% of the position limit: {pos:,} of {self.policy.limit:,} positions used "
                f"(limit = {self._limit_reason()}); {self.policy.describe()}.",
            )

    def _context_full(self, doing: str, room: int) -> None:
        if self.policy.on_full == "refuse":
            self._s.locked = True
            self.transcript.add("notice", f"position limit reached while {doing}; input refused until /reset")
            self._check_unlocked()
        self._rollover(doing, room)

    def _rollover(self, doing: str, room: int) -> None:
        budget = min(self.policy.carry_tokens, self.policy.limit - room)
        base = self._count_prompt(self.handler.template.render(self._system_messages()))
        carried: list[_SequenceTurn] = []
        for n in range(1, min(self.policy.max_carry_turns, len(self._s.sequence)) + 1):
            candidate = [
                _SequenceTurn(self._carried_user_content(st.turn), st.assistant, st.turn)
                for st in self._s.sequence[-n:]
            ]
            msgs = [*self._system_messages()]
            for st in candidate:
                msgs += [{"role": "user", "content": st.user_content}, {"role": "assistant", "content": st.assistant}]
            if self._count_prompt(self.handler.template.render(msgs)) - base > budget:
                break
            carried = candidate
        dropped = len(self._s.sequence) - len(carried)
        gone_docs = sorted({d.name for st in self._s.sequence for d in st.turn.documents})
        self.llm.clear()
        self.handler.forget()
        self._s.sequence = carried
        self._s.warned = set()
        self._s.sequence_index += 1
        text = (
            f"The conversation reached {self.policy.limit:,} positions ({self._limit_reason()}) while {doing}. "
            f"Started a new sequence (#{self._s.sequence_index}) from position 0 with the system prompt and the last "
            f"{len(carried)} turn(s); {dropped} earlier turn(s)"
            + (f" and the document(s) {', '.join(gone_docs)}" if gone_docs else "")
            + " are no longer visible to the model. The full transcript is kept (/save FILE)."
        )
        self.transcript.add("rollover", text, carried_turns=len(carried), dropped_turns=dropped, documents=gone_docs)
        self._say("warning", text)

    @staticmethod
    def _carried_user_content(turn: Turn) -> str:
        if not turn.documents:
            return turn.user
        names = ", ".join(d.name for d in turn.documents)
        return f"[documents loaded earlier in this conversation and no longer in context: {names}]\n\n{turn.user}"

    def _limit_reason(self) -> str:
        trained = int(self.llm.geometry.n_ctx_train)
        if trained > 0 and self.policy.limit == trained:
            return "the model's trained context"
        return "n_ctx"

    # ------------------------------------------------------------------ helpers

    def _system_messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []

    def _count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _count_prompt(self, rendered: str) -> int:
        return len(self.llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True))

    def _say(self, level: str, text: str) -> None:
        self.notify(Notice(level, text))
