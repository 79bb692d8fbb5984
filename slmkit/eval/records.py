"""Reads the records of a task's data file or glob: .jsonl, .json, .csv/.tsv, CoNLL and .txt (any of them gzipped).

Evaluation and fine-tuning read task data only through here, so a task scored in eval is the task trained on.
A `limit` keeps a seeded random subset in file order, so a quick check sees every label, not just the first rows.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import random
import re
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError


def named(task: str) -> str:
    """Where records come from, as messages name it: `task NAME`, or a setting as the user gave it (input=PATH)."""
    return task if "=" in task else f"task {task}"


def data_files(pattern: str, task: str) -> list[Path]:
    """The files a path or glob names; `task` is a task's name, or a setting as given (`input=PATH`)."""
    if Path(pattern).is_dir():
        raise SlmkitError(f"{named(task)}: {pattern} is a folder; give a file of records in it (.jsonl, .json, .csv, "
                          f".tsv, .txt), or a glob such as {Path(pattern) / '*.jsonl'}")
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [Path(pattern)]
    files = [f for f in files if f.is_file()]
    if not files:
        where = "check the task's `data` path" if "=" not in task else "give an existing file, or a glob that matches one"
        raise SlmkitError(f"{named(task)}: no data file matches {pattern}; {where}")
    return files


FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "conll", "text")
CONLL_TOKENS, CONLL_TAGS = "tokens", "tags"  # the fields a CoNLL sentence becomes


def read_records(pattern: str, task: str, text_field: str = "text", split_documents: str | None = None,
                 format: str = "auto") -> list[dict[str, Any]]:
    """Records of every matching file in order; a text file is one record {text_field: ...} per document.

    format auto goes by suffix (.jsonl, .json, .csv, .tsv, .conll, else text); `conll` reads one "token<TAB or
    space>tag" per line with blank lines between sentences, each sentence a record {tokens: [...], tags: [...]}.
    """
    records: list[dict[str, Any]] = []
    for path in data_files(pattern, task):
        records.extend(_read_file(path, task, text_field, split_documents, format))
    return records


def select(records: list[dict[str, Any]], where: dict[str, Any] | None, task: str) -> list[dict[str, Any]]:
    """The records whose field equals the value (or one of the listed values) for every field of `where`."""
    if not where:
        return records
    missing = [field for field in where if records and field not in records[0]]
    if missing:
        raise SlmkitError(f"{named(task)}: `where` names {', '.join(missing)}, which the records lack; they have: "
                          f"{', '.join(sorted(records[0]))}")
    wanted = {field: value if isinstance(value, list) else [value] for field, value in where.items()}
    return [r for r in records if all(r.get(field) in values for field, values in wanted.items())]


def _file_format(path: Path, format: str) -> str:
    if format != "auto":
        return format
    suffix = (Path(path.stem).suffix if path.suffix == ".gz" else path.suffix).lstrip(".")
    return suffix if suffix in FORMATS else "text"


def _read_file(path: Path, task: str, text_field: str, split_documents: str | None, format: str) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    kind = _file_format(path, format)
    try:
        with opener(path, "rt", encoding="utf-8", newline="" if kind in ("csv", "tsv") else None) as f:
            if kind == "jsonl":
                return [_json_line(line, path, number, task) for number, line in enumerate(f, 1) if line.strip()]
            if kind == "json":
                data = json.load(f)
                if not isinstance(data, list):
                    raise SlmkitError(f"{named(task)}: {path} must hold a JSON list of records")
                return data
            if kind in ("csv", "tsv"):
                return list(csv.DictReader(f, delimiter="\t" if kind == "tsv" else ","))
            if kind == "conll":
                return _conll_sentences(f, path, task)
            text = f.read()
    except UnicodeDecodeError as err:
        raise SlmkitError(f"{named(task)}: {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                          f"{err.start}); convert it to UTF-8 first, e.g. iconv -f latin1 -t utf-8") from None
    except (OSError, json.JSONDecodeError, csv.Error) as err:
        raise SlmkitError(f"{named(task)}: cannot read {path}: {err}") from None
    if split_documents is None:
        return [{text_field: text}]
    # Each match of the pattern starts a new document (e.g. a Wikipedia article heading).
    starts = [m.start() for m in re.finditer(split_documents, text, flags=re.MULTILINE)]
    bounds = sorted({0, *starts, len(text)})
    return [{text_field: text[a:b]} for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def _conll_sentences(f: io.TextIOBase, path: Path, task: str) -> list[dict[str, Any]]:
    sentences, tokens, tags = [], [], []
    for number, line in enumerate(f, 1):
        parts = line.split()
        if not parts or line.startswith("-DOCSTART-"):
            if tokens:
                sentences.append({CONLL_TOKENS: tokens, CONLL_TAGS: tags})
            tokens, tags = [], []
            continue
        if len(parts) < 2:
            raise SlmkitError(f"{named(task)}: {path}:{number} is not 'token tag' (CoNLL format): {line.strip()!r}")
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        sentences.append({CONLL_TOKENS: tokens, CONLL_TAGS: tags})
    return sentences


def _json_line(line: str, path: Path, number: int, task: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise SlmkitError(f"{named(task)}: {path}:{number} is not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise SlmkitError(f"{named(task)}: {path}:{number} is not a JSON object")
    return record


def subset(records: list[Any], limit: int | None, seed: int) -> list[Any]:
    """At most `limit` records, drawn with a fixed seed and kept in their original order."""
    if limit is None or limit >= len(records):
        return records
    if limit < 1:
        raise SlmkitError(f"limit must be a positive number of examples, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]
