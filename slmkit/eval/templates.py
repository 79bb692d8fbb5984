"""Prompt templates of task files: Jinja2 with `{{field}}` placeholders filled from one data record.

Strict: a placeholder naming a field the record lacks is an error that names the task, the field and the record.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2

from slmkit.errors import SlmkitError

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


@lru_cache(maxsize=1024)
def compile_template(source: str, task: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise SlmkitError(f"task {task}: template {source[:60]!r} is not valid Jinja2 ({err.message})") from None


def render(source: str, record: dict[str, Any], task: str) -> str:
    try:
        return compile_template(source, task).render(**record)
    except jinja2.UndefinedError as err:
        raise SlmkitError(
            f"task {task}: template {source[:60]!r} uses a field the data lacks ({err.message}); "
            f"the record has fields: {', '.join(sorted(record))}"
        ) from None
