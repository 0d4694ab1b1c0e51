"""The model's own chat template, rendered exactly as llama-cpp-python renders it.

A GGUF's ``tokenizer.chat_template`` becomes the same ``Jinja2ChatFormatter`` that
``llama_cpp.Llama`` builds for ``create_chat_completion``. A GGUF without one gets
:data:`FALLBACK_TEMPLATE` (ChatML) instead of llama-cpp-python's guess ("llama-2"), whose
``[/INST] reply`` spacing is not stable under re-rendering, so a conversation could never
continue the tokens already in the cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import native

native.load()  # llama_cpp must be imported through the patched build
from llama_cpp.llama_chat_format import Jinja2ChatFormatter, chat_formatter_to_chat_completion_handler

#: ChatML, for GGUFs that carry no chat template
FALLBACK_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: cut marker for rendering the start of a message whose end is not known yet
_CUT = "\u27e6tappa:cut\u27e7"

Message = Mapping[str, Any]

__all__ = ["FALLBACK_TEMPLATE", "ChatTemplate", "Message", "chat_formatter_to_chat_completion_handler"]


class ChatTemplate:
    """A model's chat formatter plus where it came from."""

    def __init__(self, template: str, *, bos_token: str, eos_token: str, eos_token_id: int, from_gguf: bool) -> None:
        self.source = template
        self.from_gguf = from_gguf
        self.formatter = Jinja2ChatFormatter(
            template=template, eos_token=eos_token, bos_token=bos_token, stop_token_ids=[eos_token_id]
        )

    @classmethod
    def for_model(cls, llm: Any) -> ChatTemplate:
        """The template ``llm`` would use: its GGUF's ``tokenizer.chat_template``, else ChatML."""
        model = llm._model  # llama-cpp-python builds its own formatter from the same two token texts
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        eos = model.token_get_text(eos_id) if eos_id != -1 else ""
        bos = model.token_get_text(bos_id) if bos_id != -1 else ""
        template = llm.metadata.get("tokenizer.chat_template")
        return cls(
            template or FALLBACK_TEMPLATE, bos_token=bos, eos_token=eos, eos_token_id=eos_id, from_gguf=bool(template)
        )

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt for ``messages``, ending with the assistant's generation prompt."""
        return self.formatter(messages=list(messages)).prompt

    def render_open_user_turn(self, messages: Sequence[Message], content_so_far: str) -> str:
        """The prompt text up to the end of ``content_so_far`` in a user turn that is still open.

        Lets a document be evaluated before the question that will follow it in the same turn:
        the full prompt rendered later starts with exactly this text.
        """
        text = self.render([*messages, {"role": "user", "content": content_so_far + _CUT}])
        cut = text.find(_CUT)
        if cut < 0:
            raise ValueError("the chat template dropped the user message's content; cannot render a partial turn")
        return text[:cut]
