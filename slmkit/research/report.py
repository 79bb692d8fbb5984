"""`slmkit study report`: a study's finished runs grouped by cell, each metric as a Markdown table of mean ± std,
95% interval and Welch's p-value against the baseline cell (the same numbers the comparison page shows).
"""

from __future__ import annotations

from slmkit.research.results import RunResult, read_run
from slmkit.research.stats import REPORT_COLUMNS, CellStats, compare_cells, format_row
from slmkit.research.study import FINISHED_MARK, Study


def study_results(study: Study) -> dict[str, list[RunResult]]:
    """cell -> its finished runs (a run still going, or never started, is not counted)."""
    return {cell: [read_run(folder) for folder in study.run_folders(cell) if (folder / FINISHED_MARK).is_file()]
            for cell in study.cells}


def study_statistics(study: Study, results: dict[str, list[RunResult]]) -> dict[str, list[CellStats]]:
    """metric -> one CellStats per cell, for each of the study's metrics."""
    table = {}
    for metric in study.config.metrics:
        values = {cell: [v for v in (run.final(metric) for run in runs) if v is not None] for cell, runs in results.items()}
        table[metric] = compare_cells(values, metric, study.baseline)
    return table


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
