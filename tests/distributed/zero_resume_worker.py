"""Worker for test_faults: a raw DeepSpeed ZeRO engine on CPU (gloo) saves a checkpoint through slmkit's
SafeCheckpointEngine, a second engine resumes from it the same way, and then from a copy whose model-state files hold a
crafted pickle; rank 0 writes what every rank saw to a JSON file."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import torch.nn.functional as F
from leave import leave

from slmkit.config import TrainerConfig
from slmkit.errors import SlmkitError
from slmkit.model import Model, ModelConfig
from slmkit.training.optimizers import decay_groups
from slmkit.training.trainer import deepspeed_config, safe_deepspeed_engine

MODEL = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_kv_heads=1, d_model=32)


class Payload:
    """What a crafted checkpoint carries: unpickling it would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def batch(rank: int, step: int) -> torch.Tensor:
    return torch.randint(0, MODEL.vocab_size, (2, MODEL.block_size + 1), generator=torch.Generator().manual_seed(1000 * step + rank))


def engine(stage: int, seed: int):
    torch.manual_seed(seed)
    model = Model(MODEL)
    config = deepspeed_config(TrainerConfig(zero_stage=stage, micro_batch_size=2, grad_accum=1, grad_clip=1.0, precision="fp32"))
    optimizer = torch.optim.AdamW(decay_groups(list(model.parameters()), 0.1), lr=1e-2)
    return safe_deepspeed_engine(deepspeed.initialize(model=model, optimizer=optimizer, config=config)[0])


def step(e, rank: int, i: int) -> float:
    tokens = batch(rank, i)
    loss = F.cross_entropy(e(tokens[:, :-1]).reshape(-1, MODEL.vocab_size), tokens[:, 1:].reshape(-1))
    e.backward(loss)
    e.step()
    return loss.item()


def main(stage: int, folder: str, out_path: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    first = engine(stage, seed=0)
    for i in range(2):
        step(first, rank, i)
    # What Lightning passes as client state: loop counters, callback state, RNG tensors, the run config.
    client = {"global_step": 2, "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 1}}}},
              "callbacks": {"MetricsLogger": {"pending": {"step": 2, "train_loss": 4.1}}},
              "slmkit_rng_state": {"torch": torch.get_rng_state()}, "slmkit_config": {"name": "zero", "lr": 1e-2}}
    first.save_checkpoint(folder, tag="checkpoint", client_state=client)
    expected = step(first, rank, 2)

    resumed = engine(stage, seed=1)  # other initial weights: only the checkpoint can make step 3 match
    _, state = resumed.load_checkpoint(folder, tag="checkpoint")
    result = {"client_step": state["global_step"], "rng_is_tensor": isinstance(state["slmkit_rng_state"]["torch"], torch.Tensor),
              "expected": expected, "resumed": step(resumed, rank, 2)}

    crafted = Path(folder).with_name("crafted")
    marker = Path(folder).with_name("payload-ran")
    if rank == 0:
        shutil.copytree(folder, crafted)
        for target in (crafted / "checkpoint").glob("*model_states.pt"):  # every rank reads its own
            saved = torch.load(target, weights_only=False)
            saved["loops"] = Payload(str(marker))
            torch.save(saved, target)
    dist.barrier()
    try:
        engine(stage, seed=1).load_checkpoint(str(crafted), tag="checkpoint")
        result["crafted"] = "loaded"
    except SlmkitError as err:
        result["crafted"] = str(err)
    result["payload_ran"] = marker.exists()

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    leave()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
