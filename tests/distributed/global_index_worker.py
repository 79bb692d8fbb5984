"""Worker for test_global_index: trains a one-parameter module on TokenDataModule's global sample index (world size
from torchrun, or 1 run plainly), optionally resumed from a checkpoint, and writes the sample ids each rank trained on.

argv: shards_dir out_prefix max_steps grad_accum resume_ckpt|- save_ckpt
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch

from slmkit.training.datamodule import TokenDataModule

BLOCK, MICRO_BATCH, SEED = 8, 2, 7


class Recorder(L.LightningModule):
    """Learns nothing useful; keeps the sample id of every window it is given (token t sits at position t)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.samples: list[int] = []

    def training_step(self, batch, batch_idx):
        self.samples += (batch["input_ids"][:, 0] // BLOCK).tolist()
        return (self.weight - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    shards, out, max_steps, grad_accum, resume, save = sys.argv[1:7]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    data = TokenDataModule(Path(shards), block_size=BLOCK, micro_batch_size=MICRO_BATCH, grad_accum=int(grad_accum),
                           val_batches=0, seed=SEED, data_order="global_index")
    module = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
                        max_steps=int(max_steps), accumulate_grad_batches=int(grad_accum), use_distributed_sampler=False,
                        enable_checkpointing=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data, ckpt_path=None if resume == "-" else resume, weights_only=True)
    trainer.save_checkpoint(save)
    Path(f"{out}.rank{trainer.global_rank}.json").write_text(json.dumps(module.samples))
