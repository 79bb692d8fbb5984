"""Evaluation tasks as data: a TaskSpec (name, type, the type's options) parsed from a YAML mapping.

Task types (perplexity, multiple_choice, classification, generation) and task families (legalbench) are picked by
name from registries; data paths may use ${ENV_VAR} and otherwise resolve relative to the task file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from slmkit.config import build_config
from slmkit.errors import SlmkitError
from slmkit.registry import Registry

PATH_FIELDS = ("data", "train", "fewshot_data", "pool_data")  # options that name files: interpolated and resolved against the task file


@dataclass
class RunSettings:
    """Choices of one evaluation run that override a task's own defaults."""

    limit: Optional[int] = None  # examples (documents) per task; None = the task's own limit, else all
    num_fewshot: Optional[int] = None  # None = the task's own num_fewshot
    seed: int = 1234  # drives the `limit` subset and the few-shot draws
    stride: Optional[int] = None  # perplexity tasks: sliding-window stride; None = the task's own


@dataclass
class TaskSpec:
    name: str
    type: str
    options: Any  # the dataclass its type declares, filled from the task file
    source: Optional[Path] = None  # the YAML it came from (None for generated tasks)


class TaskType(Protocol):
    Options: type

    @staticmethod
    def run(spec: TaskSpec, scorer: Any, settings: RunSettings) -> Any: ...


TASK_TYPES: Registry[type[TaskType]] = Registry(
    "eval task type", "A class with an `Options` dataclass and run(spec, scorer, settings) -> TaskResult."
)
TASK_FAMILIES: Registry[Callable[[str, str, dict[str, Any], Optional[Path]], TaskSpec]] = Registry(
    "eval task family", "builder(family, member, family options, family file) -> TaskSpec for `family/member` names."
)


def parse_task(raw: Any, source: Optional[Path], default_name: str) -> TaskSpec:
    """A TaskSpec from a task file's mapping; every mistake names the file and what to change."""
    where = str(source) if source else default_name
    if not isinstance(raw, dict):
        raise SlmkitError(f"task file {where} must be a YAML mapping with at least `type:` and `data:`")
    raw = dict(raw)
    name = str(raw.pop("name", default_name))
    kind = raw.pop("type", None)
    if kind is None:
        raise SlmkitError(f"task file {where} has no `type:`; choose one of: {', '.join(TASK_TYPES.names())}")
    task_type = TASK_TYPES.get(str(kind))
    for key in PATH_FIELDS:
        if isinstance(raw.get(key), str):
            raw[key] = resolve_path(raw[key], source.parent if source else None, name)
    try:
        options = build_config(task_type.Options, raw)
    except SlmkitError as err:
        raise SlmkitError(f"task file {where}: {err}") from None
    for f in dataclasses.fields(options):
        if f.metadata.get("required") and getattr(options, f.name) in (None, "", []):
            raise SlmkitError(f"task file {where}: `{f.name}` is required for a {kind} task ({f.metadata['doc']})")
    return TaskSpec(name=name, type=str(kind), options=options, source=source)


def resolve_path(value: str, base_dir: Optional[Path], task: str) -> str:
    """Expands ${VAR} from the environment; a relative result is taken relative to the task file's folder."""

    def expand(match: re.Match) -> str:
        var = match.group(1)
        if not os.environ.get(var):
            raise SlmkitError(
                f"task {task} reads {value}, but ${var} is not set: export {var}=<folder> "
                "(SLMKIT_SHARED is the folder holding eval/ and corpora/, e.g. the repository's ../shared)"
            )
        return os.environ[var]

    path = Path(re.sub(r"\$\{(\w+)\}", expand, value)).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return str(path)


def required(doc: str) -> Any:
    """A task option that every task file of the type must set."""
    return dataclasses.field(default=None, metadata={"doc": doc, "choices": None, "required": True})
