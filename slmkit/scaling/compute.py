"""Compute-optimal allocation and hyperparameters from runs grouped by training compute C (FLOPs).

IsoFLOP (Chinchilla approach 2, nanochat's scaling_laws.sh): at each budget a parabola of loss in log N, its vertex the
best size; N_opt(C) and D_opt(C) are then power laws fitted in log space. The same shape gives the best learning rate
or batch size against compute from tuned rungs (DeepSeek LLM): per budget the best value (a parabola's vertex in log
value when it lies inside the values tried), then a power law over the budgets. Plain least squares: no randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from slmkit.errors import SlmkitError

BUDGET_TOLERANCE = 0.1  # runs within 10% of a budget's compute belong to it


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x^exponent, fitted as a line in log-log space."""

    coefficient: float
    exponent: float

    def __call__(self, x: float) -> float:
        return self.coefficient * x ** self.exponent


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
    if len(x) < 2 or len(set(x)) < 2:
        raise SlmkitError(f"a power law against compute needs at least 2 distinct budgets; got {len(set(x))}")
    slope, intercept = np.polyfit(np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float)), 1)
    return PowerLaw(math.exp(intercept), float(slope))


def group_by_budget(flops: Sequence[float]) -> list[list[int]]:
    """Indices of the runs grouped by compute budget, budgets ascending: each group within BUDGET_TOLERANCE of its
    smallest member."""
    order = sorted(range(len(flops)), key=lambda i: flops[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and flops[i] <= flops[groups[-1][0]] * (1 + BUDGET_TOLERANCE):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def parabola_vertex(x: Sequence[float], loss: Sequence[float]) -> tuple[float, float]:
    """(x at the lowest loss, that loss) from a parabola in log x; the best point tried when the parabola opens
    downward or its vertex lies outside the values tried (no extrapolation)."""
    logs = np.log(np.asarray(x, dtype=float))
    loss = np.asarray(loss, dtype=float)
    best = int(np.argmin(loss))
    if len(set(logs.tolist())) < 3:
        return float(np.exp(logs[best])), float(loss[best])
    a, b, c = np.polyfit(logs, loss, 2)
    if a <= 0:
        return float(np.exp(logs[best])), float(loss[best])
    vertex = -b / (2 * a)
    if not logs.min() <= vertex <= logs.max():
        return float(np.exp(logs[best])), float(loss[best])
    return float(math.exp(vertex)), float(c - b * b / (4 * a))


@dataclass(frozen=True)
class BudgetOptimum:
    flops: float
    best: float  # the best size (IsoFLOP) or hyperparameter value at this budget
    loss: float


def optima_by_budget(flops: Sequence[float], values: Sequence[float], losses: Sequence[float],
                     min_values: int = 3) -> list[BudgetOptimum]:
    """The best value and its loss at each budget that tried at least `min_values` distinct values."""
    optima = []
    for group in group_by_budget(flops):
        tried = {values[i] for i in group}
        if len(tried) < min_values:
            continue
        best, loss = parabola_vertex([values[i] for i in group], [losses[i] for i in group])
        optima.append(BudgetOptimum(float(np.mean([flops[i] for i in group])), best, loss))
    return optima


@dataclass(frozen=True)
class ComputeOptimal:
    """N_opt(C) and D_opt(C) = C / (6 N_opt), each a power law of compute, and the budgets' optima they come from."""

    n_opt: PowerLaw
    d_opt: PowerLaw
    optima: list[BudgetOptimum]


def isoflop_fit(flops: Sequence[float], n: Sequence[float], losses: Sequence[float]) -> ComputeOptimal:
    """IsoFLOP profiles: runs at several sizes per budget -> the compute-optimal N and D as power laws of C."""
    optima = optima_by_budget(flops, n, losses)
    if len(optima) < 2:
        raise SlmkitError(f"IsoFLOP needs at least 2 compute budgets with 3 or more sizes each; found {len(optima)}")
    c = [o.flops for o in optima]
    return ComputeOptimal(fit_power_law(c, [o.best for o in optima]),
                          fit_power_law(c, [o.flops / (6 * o.best) for o in optima]), optima)


def best_setting_law(flops: Sequence[float], values: Sequence[float], losses: Sequence[float]) -> tuple[PowerLaw, list[BudgetOptimum]]:
    """The best learning rate (or batch size) against compute: per budget the best value tried (the vertex of a
    parabola in log value where there are 3 or more), then a power law over the budgets."""
    optima = optima_by_budget(flops, values, losses, min_values=2)
    if len(optima) < 2:
        raise SlmkitError(f"the best setting against compute needs at least 2 budgets with 2 or more values tried each; "
                          f"found {len(optima)}")
    return fit_power_law([o.flops for o in optima], [o.best for o in optima]), optima
