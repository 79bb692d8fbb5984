"""Causal language modelling: predict every next token of windows over the prepared token shards."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slmkit.model import IGNORE_INDEX, LM_HEAD, HeadSpec, Model
from slmkit.objectives.base import OBJECTIVES, Batch, Objective


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every target that is not IGNORE_INDEX; logits go to fp32 so bf16 runs keep an accurate loss."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)


@OBJECTIVES.register("causal_lm")
class CausalLanguageModeling(Objective):
    @classmethod
    def heads(cls, config) -> list[HeadSpec]:
        return [HeadSpec(LM_HEAD)]

    def loss(self, model: Model, batch: Batch) -> torch.Tensor:
        return next_token_loss(model(batch["input_ids"], head=LM_HEAD), batch["targets"])
