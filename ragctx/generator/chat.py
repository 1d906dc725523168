"""Chat templates: a checkpoint's Jinja template rendered the way transformers' ``apply_chat_template`` renders it
(a sandboxed environment with ``trim_blocks`` and ``lstrip_blocks``, ``loopcontrols``, the ``{% generation %}``
tag, ``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII), with ``messages``,
``add_generation_prompt`` and the special tokens (``bos_token``, ``eos_token``, ...) as variables. Tested against
transformers in tests/test_chat.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..errors import RagctxError

__all__ = ["ChatTemplate", "Message", "check_messages"]

Message = dict[str, Any]  # {"role": "system" | "user" | "assistant", "content": str}


class ChatTemplate:
    """A chat template and the special tokens it may refer to.

    Args:
        source: the Jinja text. specials: ``bos_token``, ``eos_token``, ... as strings. where: named in errors.
    """

    def __init__(self, source: str, specials: dict[str, str | None] | None = None, *, where: str = "") -> None:
        self.text = source
        self.specials = {k: v for k, v in (specials or {}).items() if v is not None}
        self.where = where
        self._template = _compile(source, where)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True, **variables: Any) -> str:
        """The prompt text for ``messages``; with ``add_generation_prompt`` it ends where the assistant's reply
        starts. Extra ``variables`` reach the template (e.g. ``tools``, ``enable_thinking``)."""
        import jinja2

        check_messages(messages)
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                         **{**self.specials, **variables})
        except jinja2.TemplateError as e:
            raise RagctxError(f"{self.where or 'chat template'}: the chat template failed to render these messages "
                              f"({type(e).__name__}: {e})") from None

    def __repr__(self) -> str:
        return f"ChatTemplate({self.where or 'inline'}, {len(self.text)} chars)"


def check_messages(messages: Sequence[Message]) -> None:
    """Messages must be a non-empty list of {"role": str, "content": str}."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise RagctxError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RagctxError(f"messages[{i}] = {m!r}: each message is a dict with string 'role' and 'content'")


@lru_cache(maxsize=16)
def _compile(source: str, where: str):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; rendering keeps
        the text as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_keep"), [], [], body).set_lineno(lineno)

        def _keep(self, caller):
            return caller()

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise RagctxError(f"{where or 'chat template'}: the chat template is not valid Jinja "
                          f"(line {e.lineno}: {e.message})") from None
