"""DeepSpeed on CPU: slmkit's generated ZeRO configs drive the raw engine over gloo with 2 processes and train
exactly as plain data-parallel AdamW would (Lightning's DeepSpeed strategy itself needs a GPU: see tests/test_gpu.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slmkit.config import TrainerConfig
from slmkit.errors import SlmkitError
from slmkit.training.trainer import deepspeed_config

WORKER = Path(__file__).parent / "distributed" / "zero_worker.py"


def test_config_follows_the_recipe():
    config = deepspeed_config(TrainerConfig(zero_stage=3, offload_optimizer=True, offload_params=True, precision="bf16",
                                            micro_batch_size=4, grad_accum=8, grad_clip=0.5))
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"], config["gradient_clipping"]) == (4, 8, 0.5)


def test_config_rejects_impossible_combinations():
    with pytest.raises(SlmkitError, match="stages are 1, 2 or 3"):
        deepspeed_config(TrainerConfig(zero_stage=4))
    with pytest.raises(SlmkitError, match="zero_stage=3"):
        deepspeed_config(TrainerConfig(zero_stage=2, offload_params=True))


def _reference_losses() -> list[list[float]]:
    """The same run without DeepSpeed: one process, gradients averaged over both ranks' batches, clipped at 1.0."""
    sys.path.insert(0, str(WORKER.parent))
    from zero_worker import MODEL, STEPS, batch

    from slmkit.model import Model
    from slmkit.training.optimizers import decay_groups

    torch.manual_seed(0)
    model = Model(MODEL)
    optimizer = torch.optim.AdamW(decay_groups(list(model.parameters()), 0.1), lr=1e-2)
    per_rank: list[list[float]] = [[], []]
    for step in range(STEPS):
        optimizer.zero_grad()
        total = 0.0
        for rank in range(2):
            tokens = batch(rank, step)
            loss = F.cross_entropy(model(tokens[:, :-1]).reshape(-1, MODEL.vocab_size), tokens[:, 1:].reshape(-1))
            (loss / 2).backward()
            per_rank[rank].append(loss.item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return per_rank


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_engine_trains_like_data_parallel_adamw(stage, tmp_path):
    out = tmp_path / "losses.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(stage), str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(out.read_text())
    reference = _reference_losses()
    for rank in range(2):
        assert losses[rank] == pytest.approx(reference[rank], abs=2e-4)
