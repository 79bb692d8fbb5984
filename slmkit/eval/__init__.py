"""slmkit's evaluation harness: perplexity / bits per byte, multiple choice, classification and generation tasks.

`run_eval` evaluates a checkpoint into reports, `evaluate` a model in memory, `compare_runs` sets runs side by side.
"""

from slmkit.eval.catalog import builtin_names, load_task_file, resolve_task
from slmkit.eval.report import compare_runs
from slmkit.eval.run import EvalArgs, evaluate, run_eval, run_tasks
from slmkit.eval.task import TASK_FAMILIES, TASK_TYPES, RunSettings, TaskSpec

__all__ = [
    "EvalArgs",
    "RunSettings",
    "TASK_FAMILIES",
    "TASK_TYPES",
    "TaskSpec",
    "builtin_names",
    "compare_runs",
    "evaluate",
    "load_task_file",
    "resolve_task",
    "run_eval",
    "run_tasks",
]
