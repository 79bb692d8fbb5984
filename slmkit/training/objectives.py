"""Training objectives by name, kept apart from the model body so other heads and distillation can slot in.

An objective maps (model, batch) to a scalar loss.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from slmkit.registry import Registry

Objective = Callable[[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
OBJECTIVES: Registry[Objective] = Registry("training objective")


@OBJECTIVES.register("causal_lm")
def causal_lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy; logits go to fp32 first so bf16 runs keep an accurate loss."""
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
