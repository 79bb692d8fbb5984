"""Reads the records of an evaluation data file or glob: .jsonl, .json, .txt (any of them gzipped).

A `limit` keeps a seeded random subset in file order, so a quick check sees every label, not just the first rows.
"""

from __future__ import annotations

import glob
import gzip
import json
import random
import re
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError


def data_files(pattern: str, task: str) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [Path(pattern)]
    files = [f for f in files if f.is_file()]
    if not files:
        raise SlmkitError(f"task {task}: no data file matches {pattern}; check the task's `data` path")
    return files


def read_records(pattern: str, task: str, text_field: str = "text", split_documents: str | None = None) -> list[dict[str, Any]]:
    """Records of every matching file in order; a text file is one record {text_field: ...} per document."""
    records: list[dict[str, Any]] = []
    for path in data_files(pattern, task):
        records.extend(_read_file(path, task, text_field, split_documents))
    return records


def _read_file(path: Path, task: str, text_field: str, split_documents: str | None) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    kind = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            if kind == ".jsonl":
                return [_json_line(line, path, number, task) for number, line in enumerate(f, 1) if line.strip()]
            if kind == ".json":
                data = json.load(f)
                if not isinstance(data, list):
                    raise SlmkitError(f"task {task}: {path} must hold a JSON list of records")
                return data
            text = f.read()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SlmkitError(f"task {task}: cannot read {path}: {err}") from None
    if split_documents is None:
        return [{text_field: text}]
    # Each match of the pattern starts a new document (e.g. a Wikipedia article heading).
    starts = [m.start() for m in re.finditer(split_documents, text, flags=re.MULTILINE)]
    bounds = sorted({0, *starts, len(text)})
    return [{text_field: text[a:b]} for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def _json_line(line: str, path: Path, number: int, task: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise SlmkitError(f"task {task}: {path}:{number} is not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise SlmkitError(f"task {task}: {path}:{number} is not a JSON object")
    return record


def subset(records: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most `limit` records, drawn with a fixed seed and kept in their original order."""
    if limit is None or limit >= len(records):
        return records
    if limit < 1:
        raise SlmkitError(f"limit must be a positive number of examples, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]
