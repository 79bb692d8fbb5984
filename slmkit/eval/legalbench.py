"""LegalBench tasks built from a task folder: its base prompt (or a plain one) and its label set, as TaskSpecs.

Both layouts in shared/eval work: `legalbench_mini` (field `answer`) and `legalbench_2023` (field `label`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from slmkit.errors import SlmkitError
from slmkit.eval.task import TASK_FAMILIES, TaskSpec, parse_task, resolve_path
from slmkit.registry import did_you_mean

MAX_CLASSIFICATION_LABELS = 10  # without a README task type, more distinct answers than this means open answers


def legalbench_members(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@TASK_FAMILIES.register("legalbench")
def legalbench_task(family: str, member: str, options: dict[str, Any], source: Optional[Path]) -> TaskSpec:
    name = f"{family}/{member}"
    root = Path(resolve_path(str(options["root"]), source.parent if source else None, name))
    folder = _find_folder(root, member, family)
    test_file = next((folder / f for f in ("test.jsonl", "data.jsonl") if (folder / f).is_file()), None)
    if test_file is None:
        raise SlmkitError(f"task {name}: {folder} has no test.jsonl")
    train_file = folder / "train.jsonl"
    rows = _rows(test_file) + (_rows(train_file) if train_file.is_file() else [])
    label_field = "answer" if "answer" in rows[0] else "label"
    prompt_file = folder / "base_prompt.txt"
    prompt = prompt_file.read_text(encoding="utf-8").rstrip() if prompt_file.is_file() else _plain_prompt(rows[0], label_field)
    answers = sorted({str(r[label_field]).strip() for r in rows if label_field in r})
    raw: dict[str, Any] = {
        "data": str(test_file),
        "prompt": prompt,
        # The base prompts already hold demonstrations; train.jsonl is there for runs that ask for more.
        "fewshot_data": str(train_file) if train_file.is_file() else None,
    }
    if _is_classification(folder, answers):
        raw.update(type="classification", label="{{%s}}" % label_field, labels=_label_set(prompt, rows[0], answers))
    else:
        raw.update(type="generation", target="{{%s}}" % label_field, stop=["\n"], max_new_tokens=64)
    return parse_task(raw, None, name)


def _find_folder(root: Path, member: str, family: str) -> Path:
    members = legalbench_members(root)
    if not members:
        raise SlmkitError(f"no LegalBench tasks under {root}: check SLMKIT_SHARED (it should hold eval/legal/)")
    by_lower = {m.lower(): m for m in members}
    match = member if member in members else by_lower.get(member.lower())
    if match is None:
        raise SlmkitError(
            f"unknown task {family}/{member}{did_you_mean(member, members)}; {family} has {len(members)} tasks, "
            f"e.g. {', '.join(members[:5])} (all: the folders of {root})"
        )
    return root / match


def _rows(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _plain_prompt(row: dict[str, Any], label_field: str) -> str:
    """For folders without base_prompt.txt: one 'Field: value' line per text field, then 'Answer:'."""
    fields = [k for k in row if k != label_field and k.isidentifier() and isinstance(row[k], str)]
    return "\n".join(f"{k.replace('_', ' ').capitalize()}: {{{{{k}}}}}" for k in fields) + "\nAnswer:"


def _is_classification(folder: Path, answers: list[str]) -> bool:
    """The README's task type decides, unless clearly more distinct answers occur than it declares classes.

    One extra is allowed (unfair_tos declares 8 ways and adds "Other"); sara_numeric's README says "Binary
    classification" over a dozen dollar amounts, and there the answers win: it is a generation task.
    """
    for readme in sorted(folder.glob("[Rr][Ee][Aa][Dd][Mm][Ee]*")):
        match = re.search(r"task type\W*\s*([^\n]+)", readme.read_text(encoding="utf-8", errors="replace"), re.IGNORECASE)
        if match:
            declared = match.group(1).lower()
            if "classification" not in declared:
                return False
            ways = re.search(r"(\d+)-way", declared)
            return len(answers) <= 1 + (int(ways.group(1)) if ways else 2 if "binary" in declared else MAX_CLASSIFICATION_LABELS)
    return len(answers) <= MAX_CLASSIFICATION_LABELS


def _label_set(prompt: str, row: dict[str, Any], answers: list[str]) -> list[str]:
    """Options listed in the prompt (MAUD's 'Option A:'), choice_N columns (SCALR), else every answer seen.

    The answers seen are the test and train labels plus those of the prompt's own demonstrations, so a label
    missing from a small test split still competes.
    """
    options = re.findall(r"^Option ([A-Z]):", prompt, flags=re.MULTILINE)
    if options:
        return sorted(set(options) | set(answers))
    choice_columns = sorted(int(k.split("_")[1]) for k in row if re.fullmatch(r"choice_\d+", k))
    if choice_columns:
        return [str(i) for i in choice_columns]
    last_line = prompt.splitlines()[-1].strip()
    if last_line.endswith(":") and "{{" not in last_line:
        shown = re.findall(rf"^{re.escape(last_line)}[ \t]*(\S[^\n]*)$", prompt, flags=re.MULTILINE)
        return sorted(set(answers) | {s.strip() for s in shown})
    return answers
