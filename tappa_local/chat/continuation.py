"""Continue the compressed cache across chat turns instead of re-reading the conversation.

A compressed cache only stands for the exact token sequence it has seen (after an eviction
``TappaLlama`` starts over for any prompt that does not extend it). llama-cpp-python's chat
handlers re-render the whole conversation and tokenize it afresh each turn; the reply the
model generated is rarely re-tokenized into the same tokens, so every turn would re-read the
conversation from scratch, and a loaded document with it.

:class:`TokenLedger` keeps the *text* of what the cache has seen next to its *tokens*. A newly
rendered prompt whose text starts with that text becomes "cached tokens + tokens of the new
text"; anything else is tokenized afresh (and the runtime clears the cache if it must).
:class:`ContinuationChatHandler` puts the ledger under llama-cpp-python's own chat handler
for the model's template, so ``create_chat_completion`` (sampling, stop tokens, streaming,
tools, response formats) is unchanged apart from the prompt tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .template import ChatTemplate, Message, chat_formatter_to_chat_completion_handler


@dataclass(frozen=True)
class PromptPlan:
    """The tokens for a prompt text, and how many of them the cache already holds."""

    text: str
    tokens: list[int]
    reused: int  #: leading tokens that are already in the cache (0: a new sequence)

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[self.reused :]


class TokenLedger:
    """Text and tokens of the sequence in ``llm``'s cache, kept in step with each other."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._text = ""
        self._tokens: list[int] = []

    @property
    def n_tokens(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        return self._tokens

    @property
    def text(self) -> str:
        return self._text

    def reset(self) -> None:
        self._text = ""
        self._tokens = []

    def sync(self) -> None:
        """Take in what the model evaluated since the last plan (the generated reply), or forget
        everything when the cache no longer holds the sequence the ledger describes."""
        llm = self._llm
        cached = [int(t) for t in llm.input_ids[: llm.n_tokens]]
        known = self._tokens
        if not known or cached[: len(known)] != known:
            self.reset()
            return
        extra = cached[len(known) :]
        if extra:
            # decoded the way llama-cpp-python makes a completion's text (bytes that are no valid
            # UTF-8 dropped), so it matches what a client sends back as the assistant's message
            self._text += llm.detokenize(extra, prev_tokens=known).decode("utf-8", errors="ignore")
            self._tokens = cached

    def plan(self, text: str, *, add_bos: bool) -> PromptPlan:
        """Tokens for ``text``: the cached ones plus the rest when ``text`` extends the cache."""
        self.sync()
        llm = self._llm
        if self._tokens and text.startswith(self._text):
            rest = text[len(self._text) :]
            extra = llm.tokenize(rest.encode("utf-8"), add_bos=False, special=True) if rest else []
            return PromptPlan(text, [*self._tokens, *extra], len(self._tokens))
        return PromptPlan(text, llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True), 0)

    def commit(self, plan: PromptPlan) -> None:
        """Record ``plan`` as what the cache holds once its tokens have been evaluated."""
        self._text = plan.text
        self._tokens = list(plan.tokens)


class _PlanningView:
    """What llama-cpp-python's chat handler sees as ``llama``: the model itself, except that
    tokenizing the rendered prompt (the handler's only ``tokenize`` call) goes through the ledger."""

    def __init__(self, llm: Any, handler: ContinuationChatHandler) -> None:
        self._llm = llm
        self._handler = handler

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        plan = self._handler.ledger.plan(text.decode("utf-8"), add_bos=add_bos)
        self._handler.commit(plan)
        return plan.tokens

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)


class ContinuationChatHandler:
    """A llama-cpp-python chat completion handler for ``template`` that reuses the cache."""

    def __init__(self, llm: Any, template: ChatTemplate) -> None:
        self.llm = llm
        self.template = template
        self.ledger = TokenLedger(llm)
        self.last_plan: PromptPlan | None = None
        self._inner = chat_formatter_to_chat_completion_handler(template.formatter)

    def __call__(self, *, llama: Any, messages: Sequence[Message], **kwargs: Any) -> Any:
        if llama is not self.llm:
            raise ValueError("this chat handler belongs to another model instance")
        return self._inner(llama=_PlanningView(llama, self), messages=list(messages), **kwargs)

    def plan_messages(self, messages: Sequence[Message]) -> PromptPlan:
        """The prompt ``create_chat_completion(messages)`` would evaluate, without evaluating it."""
        result = self.template.formatter(messages=list(messages))
        return self.ledger.plan(result.prompt, add_bos=not result.added_special)

    def plan_text(self, text: str) -> PromptPlan:
        """Plan a raw prompt text (e.g. :meth:`ChatTemplate.render_open_user_turn`)."""
        return self.ledger.plan(text, add_bos=False)

    def commit(self, plan: PromptPlan) -> None:
        self.last_plan = plan
        self.ledger.commit(plan)

    def forget(self) -> None:
        """The cache was cleared: nothing can be reused."""
        self.ledger.reset()

    def text_after(self, plan: PromptPlan) -> str | None:
        """The text the model evaluated after ``plan``'s prompt (its reply, as far as the cache holds it).

        Usually the reply the user saw, minus a last token that was sampled but not evaluated;
        after an interrupted stream it can be more (tokens held back as incomplete UTF-8).
        ``None`` when the cache no longer continues ``plan``.
        """
        ledger = self.ledger
        ledger.sync()
        if ledger.n_tokens < len(plan.tokens) or ledger.tokens[: len(plan.tokens)] != plan.tokens:
            return None
        return ledger.text[len(plan.text) :]


def install(llm: Any, template: ChatTemplate | None = None) -> ContinuationChatHandler:
    """Make ``llm.create_chat_completion`` continue the cached sequence; returns the handler."""
    handler = ContinuationChatHandler(llm, template or ChatTemplate.for_model(llm))
    llm.chat_handler = handler
    return handler
