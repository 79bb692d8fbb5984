"""What a finished (or running) run folder says, read for comparisons: its config, provenance, metric history and
final scores. A folder that is not an slmkit run is refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.checkpoint import CONFIG_FILE
from slmkit.config import RunConfig, load_run_config
from slmkit.errors import SlmkitError
from slmkit.eval.report import RESULTS_JSON
from slmkit.checkpoint.run_folder import METRICS_FILE, RunFolder
from slmkit.provenance import RECORD_KEYS

EVAL_RESULTS = Path("eval") / RESULTS_JSON


@dataclass
class RunResult:
    folder: Path
    config: RunConfig
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one record per logged step
    final_eval: dict[str, float] = field(default_factory=dict)  # eval/<task>/<metric> of the run's final evaluation

    @property
    def seed(self) -> int:
        return self.config.trainer.seed

    def final(self, metric: str) -> float | None:
        """The run's value of a metric: its final evaluation's, else the last value metrics.jsonl holds."""
        if metric in self.final_eval:
            return self.final_eval[metric]
        for record in reversed(self.history):
            value = record.get(metric)
            if isinstance(value, (int, float)):
                return float(value)
        return None

    def metric_names(self) -> list[str]:
        names = dict.fromkeys(self.final_eval)
        for record in self.history:
            names.update(dict.fromkeys(k for k, v in record.items()
                                       if isinstance(v, (int, float)) and k not in RECORD_KEYS))
        return list(names)


def read_run(folder: str | Path) -> RunResult:
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / METRICS_FILE).is_file():
        raise SlmkitError(f"{folder} is not an slmkit run folder (it has no {CONFIG_FILE} and {METRICS_FILE}): "
                          "name run folders (runs/<recipe>/<time>) or study files")
    config = load_run_config(folder / CONFIG_FILE)
    return RunResult(folder, config, RunFolder(folder).metric_records(), _final_eval(folder / EVAL_RESULTS))


def _final_eval(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))["results"]
        return {f"eval/{task}/{name}": float(metric["value"]) for task, entry in results.items()
                for name, metric in entry["metrics"].items() if metric.get("value") is not None}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise SlmkitError(f"{path} is not an slmkit eval report: run `slmkit eval checkpoint={path.parent.parent}` again") from None
