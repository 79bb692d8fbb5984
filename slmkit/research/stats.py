"""Statistics over seeds: per cell and metric the mean, standard deviation and 95% t interval, and the difference
from the baseline cell with Welch's t-test (unequal variances). One seed gives no spread, so no interval and no test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95
NO_TEST = "no test possible"


@dataclass(frozen=True)
class CellStats:
    cell: str
    metric: str
    values: tuple[float, ...]
    baseline: bool
    difference: float | None  # mean minus the baseline's mean
    p_value: float | None  # Welch's two-sided t-test against the baseline
    note: str | None  # why there is no p-value

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.n else math.nan

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None for fewer than two seeds."""
        if self.n < 2:
            return None
        return math.sqrt(sum((v - self.mean) ** 2 for v in self.values) / (self.n - 1))

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% t interval of the mean; None for fewer than two seeds."""
        if self.n < 2:
            return None
        if self.std == 0:
            return self.mean, self.mean
        low, high = stats.t.interval(CONFIDENCE, self.n - 1, loc=self.mean, scale=self.std / math.sqrt(self.n))
        return float(low), float(high)


def compare_cells(cells: dict[str, list[float]], metric: str, baseline: str) -> list[CellStats]:
    """CellStats of every cell for one metric (values = one per seed that reported it), tested against `baseline`."""
    base = cells.get(baseline, [])
    rows = []
    for cell, values in cells.items():
        if cell == baseline:
            rows.append(CellStats(cell, metric, tuple(values), True, None, None, "baseline"))
            continue
        difference = (sum(values) / len(values) - sum(base) / len(base)) if values and base else None
        p_value, note = welch(values, base)
        rows.append(CellStats(cell, metric, tuple(values), False, difference, p_value, note))
    return rows


def welch(a: list[float], b: list[float]) -> tuple[float | None, str | None]:
    """(two-sided p-value, None), or (None, why no test is possible)."""
    if len(a) < 2 or len(b) < 2:
        return None, f"{NO_TEST}: {min(len(a), len(b))} seed{'s' if min(len(a), len(b)) != 1 else ''} (a test needs 2 per cell)"
    result = stats.ttest_ind(a, b, equal_var=False)
    if math.isnan(result.pvalue):
        return None, f"{NO_TEST}: no spread over seeds in either cell"
    return float(result.pvalue), None


def format_row(row: CellStats) -> list[str]:
    """cell, n, mean ± std, 95% interval, difference from baseline, p-value: the report's columns as text."""
    spread = f" ± {row.std:.4g}" if row.std is not None else ""
    interval = f"[{row.interval[0]:.4g}, {row.interval[1]:.4g}]" if row.interval else "–"
    difference = "–" if row.difference is None else f"{row.difference:+.4g}"
    p = row.note if row.p_value is None else f"{row.p_value:.3g}"
    return [row.cell, str(row.n), f"{row.mean:.4g}{spread}" if row.n else "–", interval, difference, p]


REPORT_COLUMNS = ["cell", "seeds", "mean ± std", "95% interval", "Δ vs baseline", "p (Welch)"]
