"""The chat format of tappa-mini.

One turn per role, each opened by a single-token marker and closed by ``<|end|>``; an
assistant turn is closed by the EOS token ``</s>`` instead, so llama.cpp stops generating
there::

    <s><|system|>
    {system}<|end|>
    <|user|>
    {question}<|end|>
    <|assistant|>
    {answer}</s>

The template is rendered the way transformers and llama-cpp-python render chat templates
(Jinja2, ``trim_blocks`` and ``lstrip_blocks``), which is why every newline is spelled
inside a string literal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
#: added to the SentencePiece model as user-defined (never split) pieces, in this order
MARKERS: tuple[str, ...] = (SYSTEM, USER, ASSISTANT, END)
BOS, EOS = "<s>", "</s>"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('tappa-mini chat supports the system, user and assistant roles only') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token + '\\n' }}{% else %}{{ '<|end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def render(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with :data:`CHAT_TEMPLATE` exactly as HF / llama-cpp-python do."""
    import jinja2  # noqa: PLC0415
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(
        messages=list(messages),
        bos_token=BOS,
        eos_token=EOS,
        add_generation_prompt=add_generation_prompt,
        raise_exception=raise_exception,
    )
