"""Evaluation reports: results.json and a markdown table per run, and several runs side by side.

Each task's rows list metric, value, standard error and n, followed by its baselines (chance, majority, uniform).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from slmkit.atomic import atomic_write_text
from slmkit.errors import SlmkitError
from slmkit.eval.metrics import Metric, TaskResult

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def markdown_table(results: Sequence[TaskResult]) -> str:
    lines = ["| task | metric | value | stderr | n |", "|---|---|---:|---:|---:|"]
    for result in results:
        for name, metric in result.metrics.items():
            lines.append(f"| {result.task} | {name} | {_number(metric.value)} | {_number(metric.stderr)} | {result.n} |")
        for name, metric in result.baselines.items():
            lines.append(f"| {result.task} | baseline: {name} | {_number(metric.value)} | {_number(metric.stderr)} | {result.n} |")
    return "\n".join(lines) + "\n"


def label_tables(results: Sequence[TaskResult]) -> str:
    """Per-class precision/recall/F1 and the confusion matrix of every task scored by a classifier head."""
    parts = []
    for result in results:
        per_class = result.details.get("per_class")
        if not per_class:
            continue
        lines = [f"### {result.task}: per class", "", "| label | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |" for name, v in per_class.items()]
        confusion = next((v for k, v in result.details.items() if k.startswith("confusion")), None)
        if confusion:
            names = confusion["labels"]
            lines += ["", f"### {result.task}: confusion matrix (rows gold, columns predicted)", "",
                      "| gold \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
            lines += [f"| {name} | " + " | ".join(str(c) for c in row) + " |" for name, row in zip(names, confusion["matrix"])]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def write_report(out_dir: str | Path, results: Sequence[TaskResult], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Writes results.json (meta + every task's metrics) and results.md into out_dir, each atomically."""
    out_dir = Path(out_dir)
    payload = {**meta, "results": {r.task: r.to_dict() for r in results}}
    atomic_write_text(out_dir / RESULTS_JSON, json.dumps(payload, indent=2) + "\n")
    header = f"# Evaluation of {meta.get('checkpoint', 'a model')}\n\n"
    tables = label_tables(results)
    atomic_write_text(out_dir / RESULTS_MD, header + markdown_table(results) + ("\n" + tables if tables else ""))
    return out_dir / RESULTS_JSON, out_dir / RESULTS_MD


def read_report(path: str | Path) -> tuple[str, list[TaskResult]]:
    """(label = the path as given, results) from a results.json, an eval folder holding one, or a run folder with eval/results.json."""
    path = Path(path)
    candidates = [path, path / RESULTS_JSON, path / "eval" / RESULTS_JSON]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise SlmkitError(f"no {RESULTS_JSON} at {path} or in its eval/ folder: run `slmkit eval checkpoint={path}` first")
    try:
        data = json.loads(found.read_text(encoding="utf-8"))
        results = [TaskResult.from_dict(task, entry) for task, entry in data["results"].items()]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SlmkitError(f"{found} is not an slmkit eval report ({err})") from None
    return str(path), results


def compare_runs(paths: Sequence[str | Path]) -> str:
    """A markdown table with one row per task and metric and one column per run: value ± stderr."""
    if len(paths) < 2:
        raise SlmkitError("compare needs at least two runs: slmkit eval compare RUN_A RUN_B ...")
    runs = [read_report(p) for p in paths]
    labels = [label for label, _ in runs]
    rows: dict[tuple[str, str], list[Metric | None]] = {}
    for column, (_, results) in enumerate(runs):
        for result in results:
            named = [(k, m) for k, m in result.metrics.items()] + [(f"baseline: {k}", m) for k, m in result.baselines.items()]
            for name, metric in named:
                rows.setdefault((result.task, name), [None] * len(runs))[column] = metric
    lines = ["| task | metric | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for (task, name), metrics in rows.items():
        cells = ["–" if m is None else _number(m.value) + (f" ± {m.stderr:.4f}" if m.stderr is not None else "") for m in metrics]
        lines.append(f"| {task} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

