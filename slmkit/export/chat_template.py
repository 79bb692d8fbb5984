"""The chat template an export carries: the conversation format an sft run learned, as one Jinja template over
`messages` in the form runtimes render (llama.cpp's `tokenizer.chat_template`, transformers' `chat_template`).

slmkit renders each message with the task's one-message template and joins them after the end-of-document token
(objectives/sft.py); the template written here produces the same text, and with `add_generation_prompt` ends with
what an assistant's message starts with, so a runtime's answer continues exactly where training taught it to.
"""

from __future__ import annotations

from typing import Optional

import jinja2
import jinja2.meta

from slmkit.config import RunConfig
from slmkit.errors import SlmkitError

CONTENT_MARK = "\x00slmkit-content\x00"  # stands for an answer's text, to find where an assistant message's text starts


def chat_template(config: RunConfig) -> Optional[str]:
    """The run's chat template, or None when it learned no chat (not an sft run on messages)."""
    if config.objective.name != "sft" or not config.objective.task:
        return None
    from slmkit.eval import resolve_task

    options = resolve_task(config.objective.task).options
    if not getattr(options, "messages_field", None):
        return None
    return conversation_template(options.chat_template, options.assistant_role)


def conversation_template(message_template: str, assistant_role: str) -> str:
    """The whole-conversation template of a one-message template whose fields are the message's keys."""
    environment = jinja2.Environment(keep_trailing_newline=True)
    fields = sorted(jinja2.meta.find_undeclared_variables(environment.parse(message_template)))
    if "content" not in fields:
        raise SlmkitError(f"the chat template {message_template!r} never writes the message's content, so an "
                          f"exported chat template could not say where an answer starts; use {{{{content}}}} in it")
    opening = environment.from_string(message_template).render(role=assistant_role, content=CONTENT_MARK)
    opening = opening[: opening.index(CONTENT_MARK)]
    # Runtimes render with trim_blocks and lstrip_blocks (transformers, llama-cpp-python): the empty expressions keep
    # a newline or indent at either end of the message from touching a block tag that would strip it.
    per_message = "".join(f"{{% set {name} = message['{name}'] %}}" for name in fields)
    return (
        "{{ bos_token }}{% for message in messages %}" + per_message + "{{ '' }}" + message_template + "{{ '' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '' }}{% raw %}" + opening + "{% endraw %}{{ '' }}{% endif %}"
    )
