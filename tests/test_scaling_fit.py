"""The scaling-law fitter: it recovers known laws from noisy points, deterministically, with intervals, and refuses
what it cannot fit."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from slmkit.errors import SlmkitError
from slmkit.scaling.compute import best_setting_law, isoflop_fit
from slmkit.scaling.fit import LawFit, Point, compute_optimal_exponents, fit_law

# Hoffmann et al. (2022), approach 3's published fit.
HOFFMANN = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def hoffmann_points(seed: int = 0, noise: float = 0.01) -> list[Point]:
    """16 (N, D) points on a 4 x 4 grid, N 1e5..1e9 and D 1e7..1e11, with seeded relative noise."""
    rng = np.random.default_rng(seed)
    points = []
    for n in np.logspace(5, 9, 4):
        for d in np.logspace(7, 11, 4):
            loss = HOFFMANN["E"] + HOFFMANN["A"] / n ** HOFFMANN["alpha"] + HOFFMANN["B"] / d ** HOFFMANN["beta"]
            points.append(Point(float(n), float(d), float(loss * (1 + noise * rng.standard_normal()))))
    return points


def test_parametric_fit_recovers_hoffmanns_exponents_from_noisy_points_in_under_30_s():
    start = time.perf_counter()
    fit = fit_law(hoffmann_points(), "parametric")
    elapsed = time.perf_counter() - start
    p = fit.params
    assert abs(p["alpha"] - HOFFMANN["alpha"]) <= 0.03
    assert abs(p["beta"] - HOFFMANN["beta"]) <= 0.03
    truth = HOFFMANN["beta"] / (HOFFMANN["alpha"] + HOFFMANN["beta"])
    assert abs(compute_optimal_exponents(p)["a"] - truth) <= 0.03
    assert fit.r2_log > 0.99
    for key, (low, high) in fit.intervals.items():
        assert low <= p[key] <= high, key
    assert elapsed < 30


def test_the_same_points_give_the_same_fit_bit_for_bit():
    points = hoffmann_points(seed=3)
    a, b = fit_law(points).to_dict(), fit_law(points).to_dict()
    assert a == b


def test_a_prediction_comes_with_an_interval_around_it_and_survives_json():
    fit = LawFit.from_dict(fit_law(hoffmann_points()).to_dict())
    loss, low, high = fit.predict(3e9, 6e10)
    truth = HOFFMANN["E"] + HOFFMANN["A"] / 3e9 ** 0.34 + HOFFMANN["B"] / 6e10 ** 0.28
    assert low <= loss <= high
    assert abs(loss - truth) / truth < 0.02


def test_power_law_in_n_recovers_its_exponent():
    rng = np.random.default_rng(1)
    n = np.logspace(4, 6.5, 7)
    points = [Point(float(x), 20 * float(x), float((1.2 + 30 * x ** -0.4) * (1 + 0.003 * rng.standard_normal())))
              for x in n]
    fit = fit_law(points, "power")
    assert abs(fit.params["alpha"] - 0.4) < 0.05
    assert abs(fit.params["E"] - 1.2) < 0.1
    with pytest.raises(SlmkitError, match="this law is L\\(N, D\\)"):
        fit_law(hoffmann_points(), "parametric").predict(1e9)


def test_too_few_points_or_one_token_count_is_refused():
    with pytest.raises(SlmkitError, match="needs at least 6 points; got 5"):
        fit_law(hoffmann_points()[:5], "parametric")
    same_d = [Point(p.n, 1e9, p.loss) for p in hoffmann_points()]
    with pytest.raises(SlmkitError, match="same D"):
        fit_law(same_d, "parametric")
    with pytest.raises(SlmkitError, match="at least 4 points"):
        fit_law(hoffmann_points()[:3], "power")


def test_isoflop_parabolas_find_the_compute_optimal_size_of_a_known_law():
    """Budgets C, sizes around the optimum, D = C / 6N: the vertices follow Chinchilla's closed form N_opt ∝ C^a."""
    p = dict(HOFFMANN)
    flops, sizes, losses = [], [], []
    for c in [1e18, 1e19, 1e20, 1e21]:
        optimum = compute_optimal_exponents(p)["G"] * (c / 6) ** compute_optimal_exponents(p)["a"]
        for factor in np.logspace(-1, 1, 9):
            n = optimum * factor
            d = c / (6 * n)
            flops.append(c), sizes.append(n), losses.append(p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"])
    law = isoflop_fit(flops, sizes, losses)
    assert abs(law.n_opt.exponent - compute_optimal_exponents(p)["a"]) < 0.02
    assert abs(law.d_opt.exponent - compute_optimal_exponents(p)["b"]) < 0.02
    with pytest.raises(SlmkitError, match="at least 2 compute budgets"):
        isoflop_fit(flops[:9], sizes[:9], losses[:9])


def test_best_learning_rate_against_compute_follows_the_optima_of_tuned_rungs():
    """Each budget's loss is a parabola in log lr around lr* = 0.3 C^-0.125 (DeepSeek LLM's shape)."""
    flops, lrs, losses = [], [], []
    for c in [1e15, 1e16, 1e17]:
        best = 0.3 * c ** -0.125
        for lr in best * 2.0 ** np.arange(-3, 4):
            flops.append(c), lrs.append(lr), losses.append(2.0 + 0.05 * math.log(lr / best) ** 2)
    law, optima = best_setting_law(flops, lrs, losses)
    assert abs(law.exponent + 0.125) < 1e-6 and abs(law.coefficient - 0.3) < 1e-6
    assert len(optima) == 3
