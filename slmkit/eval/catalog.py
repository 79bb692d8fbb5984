"""Finds a task by name: a built-in task file, `family/member` of a built-in family (legalbench), or a YAML path.

Built-in task files live in slmkit/eval/tasks/; their data paths use ${SLMKIT_SHARED}, never a guessed folder.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# Imported for their registrations: each adds a task type or a task family.
import slmkit.eval.classification  # noqa: F401
import slmkit.eval.generation  # noqa: F401
import slmkit.eval.legalbench  # noqa: F401
import slmkit.eval.lm_tasks  # noqa: F401
import slmkit.eval.multiple_choice  # noqa: F401
import slmkit.eval.retrieval  # noqa: F401
import slmkit.eval.span_qa  # noqa: F401
import slmkit.eval.token_classification  # noqa: F401
from slmkit.errors import SlmkitError
from slmkit.eval.task import TASK_FAMILIES, TaskSpec, parse_task
from slmkit.registry import did_you_mean

BUILTIN_DIR = Path(__file__).parent / "tasks"


def read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SlmkitError(f"task file {path} is not valid YAML: {err}") from None
    except OSError as err:
        raise SlmkitError(f"cannot read task file {path}: {err}") from None


def load_task_file(path: str | Path) -> TaskSpec:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise SlmkitError(f"task file {path} does not exist")
    return parse_task(read_yaml(path), path, path.stem)


def builtin_names() -> list[str]:
    """Built-in task names; a family shows as `family/<task>`."""
    names = []
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        names.append(f"{path.stem}/<task>" if _is_family(read_yaml(path)) else path.stem)
    return names


def resolve_task(name: str) -> TaskSpec:
    if name.endswith((".yaml", ".yml")) or Path(name).expanduser().is_file():
        return load_task_file(name)
    family, _, member = name.partition("/")
    path = BUILTIN_DIR / f"{family}.yaml"
    if path.is_file():
        raw = read_yaml(path)
        if _is_family(raw):
            if not member:
                raise SlmkitError(f"{family} is a family of tasks: name one as {family}/<task>, e.g. {family}/abercrombie")
            return TASK_FAMILIES.get(str(raw["family"]))(family, member, raw, path)
        if not member:
            return parse_task(raw, path, family)
    known = [n.split("/")[0] for n in builtin_names()]
    raise SlmkitError(
        f"unknown task {name!r}{did_you_mean(family, known)}; built-in tasks: {', '.join(builtin_names())}; "
        "or give the path of a task YAML file"
    )


def _is_family(raw: object) -> bool:
    return isinstance(raw, dict) and "family" in raw
