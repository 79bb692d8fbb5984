"""Learning-rate schedules: warmup, then cosine / linear / warmup-stable-decay down to min_lr."""

from __future__ import annotations

import math

import pytest

from slmkit.config import OptimConfig
from slmkit.training.schedule import learning_rate


def test_warmup_rises_linearly_to_the_peak():
    optim = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10, schedule="cosine")
    assert learning_rate(0, optim, 100) == pytest.approx(0.1)
    assert learning_rate(9, optim, 100) == pytest.approx(1.0)


def test_cosine_passes_the_midpoint_and_ends_at_min_lr():
    optim = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=0, schedule="cosine")
    assert learning_rate(50, optim, 100) == pytest.approx(0.55)
    assert learning_rate(100, optim, 100) == pytest.approx(0.1)
    assert learning_rate(500, optim, 100) == pytest.approx(0.1)


def test_linear_decays_at_a_constant_rate():
    optim = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="linear")
    assert [learning_rate(s, optim, 4) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_wsd_holds_the_peak_then_cools_down_in_the_final_fraction():
    optim = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="wsd", wsd_decay_fraction=0.2)
    assert learning_rate(79, optim, 100) == pytest.approx(1.0)
    assert learning_rate(90, optim, 100) == pytest.approx(0.5)
    assert learning_rate(99, optim, 100) < 0.1


def test_decay_steps_can_end_before_max_steps():
    optim = OptimConfig(lr=1.0, min_lr=0.2, warmup_steps=0, schedule="cosine", decay_steps=10)
    assert learning_rate(10, optim, 100) == pytest.approx(0.2)
    assert not math.isclose(learning_rate(5, optim, 100), 0.2)
