"""Learning-rate schedules by name, as multipliers of the peak rate for LambdaLR.

Each schedule maps an optimizer step to a learning rate; warmup is shared by all of them.
"""

from __future__ import annotations

import math
from typing import Callable

from slmkit.config import OptimConfig
from slmkit.registry import Registry

# A decay maps progress through the decay phase (0 at the end of warmup, 1 at decay_steps) to a fraction in [0, 1]
# of the distance from min_lr to lr.
SCHEDULES: Registry[Callable[[float, OptimConfig], float]] = Registry("lr schedule")


@SCHEDULES.register("cosine")
def cosine(progress: float, optim: OptimConfig) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("linear")
def linear(progress: float, optim: OptimConfig) -> float:
    return 1.0 - progress


@SCHEDULES.register("constant")
def constant(progress: float, optim: OptimConfig) -> float:
    return 1.0


@SCHEDULES.register("wsd")
def warmup_stable_decay(progress: float, optim: OptimConfig) -> float:
    """Flat at the peak, then a linear cooldown over the last `wsd_decay_fraction` of the run."""
    decay_start = 1.0 - optim.wsd_decay_fraction
    if progress <= decay_start:
        return 1.0
    return 1.0 - (progress - decay_start) / max(optim.wsd_decay_fraction, 1e-12)


def learning_rate(step: int, optim: OptimConfig, max_steps: int) -> float:
    """The learning rate for optimizer step `step` (0-based): linear warmup, then the named decay to min_lr."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    decay_steps = optim.decay_steps if optim.decay_steps is not None else max_steps
    if step >= decay_steps:
        return optim.min_lr
    progress = (step - optim.warmup_steps) / max(decay_steps - optim.warmup_steps, 1)
    fraction = SCHEDULES.get(optim.schedule)(progress, optim)
    return optim.min_lr + fraction * (optim.lr - optim.min_lr)
