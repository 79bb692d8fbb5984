"""What a task returns: metric values with their standard error, and the chance/majority baselines beside them.

Accuracies get the binomial standard error; corpus-level ratios (bits per byte, loss) a seeded bootstrap over documents.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np


@dataclass
class Metric:
    value: float
    stderr: float | None = None


@dataclass
class TaskResult:
    task: str
    type: str
    n: int  # examples (documents for perplexity tasks)
    metrics: dict[str, Metric]
    baselines: dict[str, Metric] = field(default_factory=dict)  # what guessing scores on the same examples
    details: dict[str, float] = field(default_factory=dict)  # counts a reader may want (tokens, bytes, ...)

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "n": self.n,
            "metrics": {k: {"value": m.value, "stderr": m.stderr} for k, m in self.metrics.items()},
            "baselines": {k: {"value": m.value, "stderr": m.stderr} for k, m in self.baselines.items()},
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, task: str, data: dict) -> "TaskResult":
        def metrics(section: dict) -> dict[str, Metric]:
            return {k: Metric(v["value"], v.get("stderr")) for k, v in section.items()}

        return cls(task, data["type"], data["n"], metrics(data["metrics"]), metrics(data.get("baselines", {})),
                   data.get("details", {}))


def accuracy(hits: Sequence[bool]) -> Metric:
    """Mean of hits with the binomial standard error sqrt(p(1-p)/(n-1))."""
    n = len(hits)
    p = sum(hits) / n if n else float("nan")
    return Metric(p, math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None)


def chance(num_choices: Sequence[int]) -> Metric:
    """Expected accuracy of picking uniformly at random among each example's choices."""
    return Metric(sum(1 / k for k in num_choices) / len(num_choices))


def majority(golds: Sequence[Hashable]) -> Metric:
    """Accuracy of always answering the most frequent gold answer of these examples."""
    most_common = Counter(golds).most_common(1)[0][0]
    return accuracy([g == most_common for g in golds])


def bootstrap_stderr(
    parts: Sequence[tuple[float, float]], statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    iterations: int = 1000, seed: int = 0,
) -> float | None:
    """Standard error of statistic(sum of numerators, sum of denominators) when documents are resampled."""
    if len(parts) < 2:
        return None
    numerators, denominators = np.asarray(parts, dtype=np.float64).T
    picks = np.random.default_rng(seed).integers(0, len(parts), size=(iterations, len(parts)))
    values = statistic(numerators[picks].sum(1), denominators[picks].sum(1))
    return float(values.std(ddof=1))
