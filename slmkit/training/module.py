"""The LightningModule: a model, the objective that scores it, AdamW with decay on matrices only, and the lr schedule.

It knows nothing of devices, strategies, compilation or activation checkpointing; the trainer builder decides those.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning as L
import torch

from slmkit.config import RunConfig
from slmkit.model import Model
from slmkit.objectives import Objective
from slmkit.training.optimizers import OPTIMIZERS
from slmkit.training.schedule import learning_rate

RNG_STATE_KEY = "slmkit_rng_state"
CONFIG_KEY = "slmkit_config"


class TrainingTask(L.LightningModule):
    def __init__(self, config: RunConfig, model: Model, objective: Objective):
        super().__init__()
        self.config = config
        self.model = model
        self.objective = objective
        # Sum and count of micro-batch losses since the metrics logger last read them.
        self.loss_sum: torch.Tensor | float = 0.0
        self.loss_count = 0
        self.last_grad_norm: float | None = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.objective.loss(self.model, batch)
        self.loss_sum = self.loss_sum + loss.detach().float()  # stays on the device: no sync per micro-batch
        self.loss_count += 1
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.objective.validation_metrics(self.model, batch)
        size = batch["input_ids"].size(0)
        self.log("val_loss", loss, sync_dist=True, prog_bar=True, batch_size=size)
        for name, value in metrics.items():
            self.log(f"val_{name}", value, sync_dist=True, batch_size=size)
        return loss

    def take_train_loss(self) -> float | None:
        """Mean loss of the micro-batches since the last call (None if there were none), then resets."""
        if self.loss_count == 0:
            return None
        mean = float(self.loss_sum) / self.loss_count
        self.loss_sum, self.loss_count = 0.0, 0
        return mean

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Before clipping, and only on logging steps (the last one is always logged): the norm costs a pass over every
        # gradient.
        step = self.trainer.global_step + 1
        if step % self.config.trainer.log_every and step < self.config.trainer.max_steps:
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.last_grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else None

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.config.optim
        # The model's trainable weights and the objective's own (a projection it learns), by name for Muon's split.
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        named += [(f"objective.{n}", p) for n, p in self.objective.named_parameters() if p.requires_grad]
        optimizer = OPTIMIZERS.get(optim.name)(named, optim, self.config.model)
        max_steps = self.config.trainer.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: learning_rate(step, optim, max_steps) / optim.lr
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning does not save RNG state; dropout must continue exactly where it left off.
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[RNG_STATE_KEY] = rng
        checkpoint[CONFIG_KEY] = dataclasses.asdict(self.config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied at train start, not now: restoring and building loaders may still draw random numbers.
        self._rng_to_restore = checkpoint.get(RNG_STATE_KEY)

    def on_train_start(self) -> None:
        rng, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
