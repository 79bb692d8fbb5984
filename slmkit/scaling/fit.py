"""Loss laws fitted to (N, D, loss) points: L(N) = E + A·N^-α at fixed tokens per parameter, and Chinchilla's
parametric L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, approach 3; OLMo-core's ChinchillaParametricFit).

Both are fitted in log space: Huber loss on log residuals, L-BFGS-B from every start of a fixed grid, the best kept;
intervals come from a seeded bootstrap over the points. Nothing random is unseeded and the grid is walked in order, so
the same points give the same fit bit for bit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import minimize

from slmkit.errors import SlmkitError

# Hoffmann et al.'s Huber threshold on log residuals: a point off by more than ~0.1% counts linearly, so one bad run
# cannot pull the law as a square would.
HUBER_DELTA = 1e-3
BOOTSTRAP_SAMPLES = 200
BOOTSTRAP_SEED = 0
INTERVAL = 0.9  # central bootstrap interval reported for every parameter and prediction

# Each law: its parameter names in the optimizer's space (log E, log A, α, ...) and their bounds. Starts: every exponent
# pair of a grid, with E, A (B) for it from a non-negative linear solve of the relative residuals (the law is linear in
# them once the exponents are fixed); L-BFGS-B then runs from the best few of those starts. That is Hoffmann et al.'s
# grid of starts, with the coefficients solved instead of searched, so the grid is dense where it matters and cheap.
EXPONENT_GRID = np.linspace(0.05, 1.5, 30)
TOP_STARTS = 8
LAWS = {
    "power": {"names": ("e", "a", "alpha"), "bounds": [(-5.0, 5.0), (-20.0, 60.0), (1e-3, 3.0)], "min_points": 4},
    "parametric": {"names": ("e", "a", "b", "alpha", "beta"),
                   "bounds": [(-5.0, 5.0), (-20.0, 60.0), (-20.0, 60.0), (1e-3, 3.0), (1e-3, 3.0)], "min_points": 6},
}
# Tolerances far below the Huber threshold: a resample's optimum must move off the full fit's start when it should.
LBFGS_OPTIONS = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000}


@dataclass(frozen=True)
class Point:
    """One finished run: non-embedding parameters N, training tokens D, final validation loss."""

    n: float
    d: float
    loss: float


def _log_prediction(theta: np.ndarray, law: str, log_n: np.ndarray, log_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log L and its gradient [points, params], as a logsumexp of the law's terms (stable for any term sizes)."""
    if law == "power":
        e, a, alpha = theta
        terms = np.stack([np.full_like(log_n, e), a - alpha * log_n])
    else:
        e, a, b, alpha, beta = theta
        terms = np.stack([np.full_like(log_n, e), a - alpha * log_n, b - beta * log_d])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    log_l = top + np.log(total)
    w = weights / total
    if law == "power":
        grad = np.stack([w[0], w[1], -w[1] * log_n], axis=1)
    else:
        grad = np.stack([w[0], w[1], w[2], -w[1] * log_n, -w[2] * log_d], axis=1)
    return log_l, grad


def _objective(theta: np.ndarray, law: str, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray):
    """Sum of Huber losses of the log residuals, and its gradient."""
    pred, grad = _log_prediction(theta, law, log_n, log_d)
    r = pred - log_loss
    small = np.abs(r) <= HUBER_DELTA
    # Divided by the threshold, so the objective is of the size of the residuals and the tolerances mean the same
    # whatever the threshold.
    value = np.where(small, 0.5 * r * r / HUBER_DELTA, np.abs(r) - 0.5 * HUBER_DELTA).sum()
    slope = np.where(small, r / HUBER_DELTA, np.sign(r))
    return value, slope @ grad


def _minimize(law: str, starts: Sequence[np.ndarray], log_n, log_d, log_loss) -> np.ndarray:
    """The best L-BFGS-B optimum over the starts; ties keep the earlier start, so the answer is deterministic."""
    best, best_value = None, math.inf
    for start in starts:
        result = minimize(_objective, start, args=(law, log_n, log_d, log_loss), jac=True, method="L-BFGS-B",
                          bounds=LAWS[law]["bounds"], options=LBFGS_OPTIONS)
        if np.isfinite(result.fun) and result.fun < best_value:
            best, best_value = result.x, result.fun
    if best is None:
        raise SlmkitError("the scaling-law fit did not converge from any start: check that the losses are finite and "
                          "positive")
    return best


def _grid_starts(law: str, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray) -> list[np.ndarray]:
    """The TOP_STARTS best grid points by the Huber objective, best first (see EXPONENT_GRID)."""
    from scipy.optimize import nnls

    loss = np.exp(log_loss)
    exponents = [(a,) for a in EXPONENT_GRID] if law == "power" else itertools.product(EXPONENT_GRID, EXPONENT_GRID)
    lows, highs = zip(*LAWS[law]["bounds"])
    scored = []
    for exps in exponents:
        columns = [np.ones_like(log_n), np.exp(-exps[0] * log_n)]
        if law == "parametric":
            columns.append(np.exp(-exps[1] * log_d))
        design = np.stack(columns, axis=1) / loss[:, None]  # relative residuals, as log residuals are to first order
        coefficients, _ = nnls(design, np.ones_like(loss))
        theta = np.clip(np.concatenate([np.log(np.maximum(coefficients, 1e-12)), exps]), lows, highs)
        scored.append((_objective(theta, law, log_n, log_d, log_loss)[0], len(scored), theta))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [theta for _, _, theta in scored[:TOP_STARTS]]


def _natural(theta: np.ndarray, law: str) -> dict[str, float]:
    """The optimizer's (log E, log A, α, ...) as the law's own E, A, α (B, β)."""
    values = dict(zip(LAWS[law]["names"], (float(x) for x in theta)))
    params = {"E": math.exp(values["e"]), "A": math.exp(values["a"]), "alpha": values["alpha"]}
    if law == "parametric":
        params.update(B=math.exp(values["b"]), beta=values["beta"])
    return params


def law_loss(params: dict[str, float], n: float, d: float | None = None) -> float:
    """L(N) or L(N, D) under fitted parameters (D is ignored by a law without a data term)."""
    loss = params["E"] + params["A"] * n ** -params["alpha"]
    if "B" in params:
        if d is None:
            raise SlmkitError("this law is L(N, D): give the training tokens too (d=...)")
        loss += params["B"] * d ** -params["beta"]
    return loss


def compute_optimal_exponents(params: dict[str, float]) -> dict[str, float] | None:
    """Chinchilla's compute-optimal allocation under C = 6ND: N_opt = G (C/6)^a, D_opt = (C/6)^b / G with
    a = β/(α+β), b = α/(α+β), G = (αA / βB)^(1/(α+β)). None for a law without a data term."""
    if "B" not in params:
        return None
    alpha, beta = params["alpha"], params["beta"]
    g = (alpha * params["A"] / (beta * params["B"])) ** (1.0 / (alpha + beta))
    return {"a": beta / (alpha + beta), "b": alpha / (alpha + beta), "G": g}


@dataclass
class LawFit:
    """A fitted law with its bootstrap: parameters, central intervals, the fit's log-space R², and the bootstrap
    parameter sets (kept so that a prediction has an interval too)."""

    law: str
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    r2_log: float
    points: list[Point]
    bootstrap: list[dict[str, float]] = field(repr=False, default_factory=list)

    def predict(self, n: float, d: float | None = None) -> tuple[float, float, float]:
        """(loss, low, high): the law's loss at (N, D) and the central bootstrap interval of it."""
        value = law_loss(self.params, n, d)
        samples = np.array([law_loss(p, n, d) for p in self.bootstrap]) if self.bootstrap else np.array([value])
        low, high = np.quantile(samples, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2])
        return value, float(low), float(high)

    def to_dict(self) -> dict:
        out = {"law": self.law, "formula": FORMULAS[self.law], "params": self.params,
               "intervals": {k: list(v) for k, v in self.intervals.items()}, "interval": INTERVAL,
               "r2_log": self.r2_log, "points": [vars(p) for p in self.points], "bootstrap": self.bootstrap}
        optimal = compute_optimal_exponents(self.params)
        if optimal is not None:
            out["compute_optimal"] = optimal
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> "LawFit":
        return cls(law=raw["law"], params=raw["params"], intervals={k: tuple(v) for k, v in raw["intervals"].items()},
                   r2_log=raw["r2_log"], points=[Point(**p) for p in raw["points"]], bootstrap=raw["bootstrap"])


FORMULAS = {"power": "L(N) = E + A * N^-alpha", "parametric": "L(N, D) = E + A / N^alpha + B / D^beta"}


def fit_law(points: Sequence[Point], law: str = "parametric", bootstrap_samples: int = BOOTSTRAP_SAMPLES,
            seed: int = BOOTSTRAP_SEED) -> LawFit:
    """Fits `law` ("power" or "parametric") to the points; see the module docstring for how."""
    if law not in LAWS:
        raise SlmkitError(f"unknown law {law!r}: choose one of {', '.join(LAWS)}")
    spec = LAWS[law]
    points = list(points)
    if len(points) < spec["min_points"]:
        raise SlmkitError(f"the {law} law {FORMULAS[law]} has {len(spec['names'])} parameters and needs at least "
                          f"{spec['min_points']} points; got {len(points)}: run more rungs")
    n, d, loss = (np.array([getattr(p, k) for p in points], dtype=np.float64) for k in ("n", "d", "loss"))
    if not (np.all(n > 0) and np.all(d > 0) and np.all(loss > 0) and np.all(np.isfinite(loss))):
        raise SlmkitError("every point needs N > 0, D > 0 and a finite loss > 0")
    if len(set(n.tolist())) < 2:
        raise SlmkitError("all points have the same N: a law in N needs several sizes")
    if law == "parametric" and len(set(d.tolist())) < 2:
        raise SlmkitError("all points have the same D: L(N, D) needs several token counts (several tokens-per-parameter "
                          "multiples); fit the power law L(N) instead")
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    theta = _minimize(law, _grid_starts(law, log_n, log_d, log_loss), log_n, log_d, log_loss)
    pred, _ = _log_prediction(theta, law, log_n, log_d)
    total = ((log_loss - log_loss.mean()) ** 2).sum()
    r2 = float(1.0 - ((log_loss - pred) ** 2).sum() / total) if total > 0 else 1.0

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap_samples):
        pick = rng.integers(0, len(points), len(points))
        # From the full fit: a resample is close to the full data, so its optimum is near the full fit's.
        boot = _minimize(law, [theta], log_n[pick], log_d[pick], log_loss[pick])
        samples.append(_natural(boot, law))
    params = _natural(theta, law)
    intervals = {}
    for key in params:
        values = np.array([s[key] for s in samples]) if samples else np.array([params[key]])
        low, high = np.quantile(values, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2])
        intervals[key] = (float(low), float(high))
    return LawFit(law, params, intervals, r2, points, samples)
