"""Worker for test_deepspeed_engine: trains a tiny Transformer with the raw DeepSpeed engine and slmkit's
generated ZeRO config on CPU (gloo), then rank 0 writes the per-step losses of every rank to a JSON file."""

from __future__ import annotations

import json
import sys

import deepspeed
import torch
import torch.distributed as dist
import torch.nn.functional as F
from leave import leave

from slmkit.config import TrainerConfig
from slmkit.model import Model, ModelConfig
from slmkit.training.optimizers import decay_groups
from slmkit.training.trainer import deepspeed_config

MODEL = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_kv_heads=1, d_model=32)
STEPS = 4


def batch(rank: int, step: int) -> torch.Tensor:
    return torch.randint(0, MODEL.vocab_size, (2, MODEL.block_size + 1), generator=torch.Generator().manual_seed(1000 * step + rank))


def main(stage: int, out_path: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = Model(MODEL)
    config = deepspeed_config(TrainerConfig(zero_stage=stage, micro_batch_size=2, grad_accum=1, grad_clip=1.0, precision="fp32"))
    optimizer = torch.optim.AdamW(decay_groups(list(model.parameters()), 0.1), lr=1e-2)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    rank = dist.get_rank()
    losses = []
    for step in range(STEPS):
        tokens = batch(rank, step)
        logits = engine(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, MODEL.vocab_size), tokens[:, 1:].reshape(-1))
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, losses)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    leave()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
