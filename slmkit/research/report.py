"""`slmkit study report`: a study's finished runs grouped by cell, each metric as a Markdown table of mean ± std,
95% interval and Welch's p-value against the baseline cell (the same numbers the comparison page shows).
"""

from __future__ import annotations

from slmkit.research.results import RunResult, read_run
from slmkit.research.stats import REPORT_COLUMNS, CellStats, compare_cells, format_row
from slmkit.checkpoint.run_folder import RunFolder
from slmkit.research.study import Study


def study_results(study: Study) -> dict[str, list[RunResult]]:
    """cell -> its finished runs (a run still going, or never started, is not counted)."""
    return {cell: [read_run(folder) for folder in study.run_folders(cell) if RunFolder(folder).finished]
            for cell in study.cells}


def group_statistics(groups: dict[str, list[RunResult]], metrics: list[str], baseline: str) -> dict[str, list[CellStats]]:
    """metric -> one CellStats per group of runs (their final values), tested against the baseline group; metrics no
    run reports are left out."""
    table = {}
    for metric in metrics:
        values = {name: [v for v in (run.final(metric) for run in runs) if v is not None] for name, runs in groups.items()}
        if any(values.values()):
            table[metric] = compare_cells(values, metric, baseline)
    return table


def study_statistics(study: Study, results: dict[str, list[RunResult]]) -> dict[str, list[CellStats]]:
    """metric -> one CellStats per cell, for each of the study's metrics."""
    return group_statistics(results, study.config.metrics, study.baseline)


def markdown_table(rows: list[CellStats]) -> str:
    lines = ["| " + " | ".join(REPORT_COLUMNS) + " |", "|" + "---|" * len(REPORT_COLUMNS)]
    lines += ["| " + " | ".join(format_row(row)) + " |" for row in rows]
    return "\n".join(lines)


def study_report(study: Study) -> str:
    results = study_results(study)
    finished = sum(len(runs) for runs in results.values())
    planned = len(study.cells) * len(study.seeds())
    lines = [f"# study {study.config.name}: {finished} of {planned} runs finished (baseline: {study.baseline})", ""]
    for metric, rows in study_statistics(study, results).items():
        lines += [f"## {metric}", "", markdown_table(rows), ""]
    return "\n".join(lines)
