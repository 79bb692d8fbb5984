"""The chat template an export carries: the conversation format an sft run learned, as one Jinja template over
`messages` in the form runtimes render (llama.cpp's `tokenizer.chat_template`, transformers' `chat_template`).

slmkit renders each message with the task's one-message template and joins them after the end-of-document token
(objectives/sft.py); the template written here produces the same text, and with `add_generation_prompt` ends with
what an assistant's message starts with, so a runtime's answer continues exactly where training taught it to.
"""

from __future__ import annotations

import json
import logging
from typing import Optional

import jinja2
import jinja2.meta

from slmkit.config import RunConfig
from slmkit.errors import SlmkitError

log = logging.getLogger(__name__)

CONTENT_MARK = "\x00slmkit-content\x00"  # stands for an answer's text, to find where an assistant message's text starts


def chat_template(config: RunConfig) -> Optional[str]:
    """The run's chat template, or None when it learned no chat (not an sft run on messages)."""
    if config.objective.name != "sft" or not config.objective.task:
        return None
    from slmkit.eval import resolve_task

    try:
        options = resolve_task(config.objective.task).options
    except SlmkitError as error:
        # The weights export without it; only a chat runtime would miss the format, so say so instead of failing.
        log.warning("the run fine-tuned on task %s, which cannot be read here (%s): the export carries no chat template",
                    config.objective.task, error)
        return None
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
    opening = environment.from_string(message_template).render({**dict.fromkeys(fields, ""), "role": assistant_role,
                                                                "content": CONTENT_MARK})
    opening = opening[: opening.index(CONTENT_MARK)]
    # The empty expressions keep a newline or indent at either end of a message away from a block tag, which the
    # runtimes' trim_blocks / lstrip_blocks would strip.
    per_message = "".join(f"{{% set {name} = message['{name}'] %}}" for name in fields)
    template = (
        "{{ bos_token }}{% for message in messages %}" + per_message + "{{ '' }}" + message_template + "{{ '' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ " + json.dumps(opening, ensure_ascii=False) + " }}{% endif %}"
    )
    _check_renders_as_trained(template, message_template, fields, assistant_role, opening)
    return template


def runtime_environment() -> jinja2.Environment:
    """How transformers and llama-cpp-python render a chat template."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)


def _check_renders_as_trained(template: str, message_template: str, fields: list[str], assistant_role: str, opening: str):
    """A one-message template with statements of its own can render differently under the runtimes' whitespace rules:
    refused rather than shipped as a conversation format the model never saw."""
    messages = [{**{f: f"<{f}>" for f in fields}, "role": role} for role in ("user", assistant_role)]
    trained = "".join(jinja2.Environment(keep_trailing_newline=True).from_string(message_template).render(m) for m in messages)
    rendered = runtime_environment().from_string(template).render(messages=messages, bos_token="", add_generation_prompt=True)
    if rendered != trained + opening:
        raise SlmkitError(f"the chat template {message_template!r} renders differently under the trim_blocks / "
                          f"lstrip_blocks rules runtimes apply to chat templates ({rendered!r} against {trained + opening!r}); "
                          f"write it without Jinja statements ({{% ... %}}) at the start or end of a line")
