"""Optimizers by name: AdamW's decay groups, Muon on the block matrices with AdamW on the rest, exact resume with
Muon, and the strategies Muon cannot run under."""

from __future__ import annotations

import pytest
import torch

from slmkit.config import OptimConfig
from slmkit.errors import SlmkitError
from slmkit.model import Model, ModelConfig
from slmkit.training.optimizers import OPTIMIZERS, BatchedMuon, MuonWithAdamW, decay_groups, is_hidden_matrix
from tests.test_training import read_metrics, tiny_config
from slmkit.training.run import train


def tiny_model() -> Model:
    torch.manual_seed(0)
    return Model(ModelConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, d_model=32, bias=True, tie_embeddings=False))


def test_decay_groups_decay_matrices_only_and_cover_every_parameter_once():
    model = tiny_model()
    decay, no_decay = decay_groups(list(model.parameters()), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert sum(p.numel() for p in decay["params"] + no_decay["params"]) == model.num_parameters()


def test_muon_takes_the_block_matrices_and_adamw_everything_else():
    model = tiny_model()
    optimizer = OPTIMIZERS.get("muon")(list(model.named_parameters()), OptimConfig(name="muon", lr=1e-3))
    assert isinstance(optimizer, MuonWithAdamW)
    muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    adamw = {id(p) for g in optimizer.adamw.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in muon} == {n for n, p in model.named_parameters() if n.startswith("body.blocks.") and p.dim() == 2}
    assert "body.tok_embeddings.weight" in {names[i] for i in adamw} and "heads.lm.proj.weight" in {names[i] for i in adamw}
    assert not muon & adamw and len(muon | adamw) == len(list(model.parameters()))
    assert not is_hidden_matrix("body.blocks.0.attn_norm.weight", torch.nn.Parameter(torch.ones(4)))


def test_batched_muon_takes_the_same_steps_as_torch_muon():
    """Matrices of three shapes, orthogonalized per shape in one batch, land where torch.optim.Muon takes them one
    by one (up to bf16 rounding of the Newton-Schulz matmuls), and keep the same state for a resume."""
    torch.manual_seed(0)
    shapes = [(32, 32), (32, 32), (96, 32), (32, 96), (96, 32)]
    ours = [torch.nn.Parameter(torch.randn(*s) * 0.1) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    initial = [p.detach().clone() for p in ours]
    kwargs = dict(lr=0.02, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw")
    batched, reference = BatchedMuon(ours, **kwargs), torch.optim.Muon(theirs, **kwargs)
    for _ in range(3):
        grads = [torch.randn(*s) for s in shapes]
        for params, optimizer in ((ours, batched), (theirs, reference)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b, before in zip(ours, theirs, initial):
        assert (b.detach() - before).abs().max() > 0.01  # twenty times the tolerance below
        torch.testing.assert_close(a.detach(), b.detach(), atol=5e-4, rtol=0)
    assert batched.state_dict()["state"].keys() == reference.state_dict()["state"].keys()
    torch.testing.assert_close(batched.state[ours[2]]["momentum_buffer"], reference.state[theirs[2]]["momentum_buffer"])


def test_one_schedule_reaches_both_inner_optimizers_before_and_after_loading_state():
    model = tiny_model()
    optimizer = OPTIMIZERS.get("muon")(list(model.named_parameters()), OptimConfig(name="muon", lr=1e-3))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert {g["lr"] for g in optimizer.muon.param_groups + optimizer.adamw.param_groups} == {5e-4}
    model(torch.randint(0, 61, (2, 8))).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"]
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = 1e-5
    assert {g["lr"] for g in optimizer.muon.param_groups + optimizer.adamw.param_groups} == {1e-5}
    scheduler.step()


def test_a_muon_run_resumes_with_identical_losses(shared_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    muon = ["optim.name=muon", "optim.decay_steps=6", "trainer.checkpoint_every=3"]
    train(tiny_config(shared_dir, straight, "trainer.max_steps=6", *muon))
    train(tiny_config(shared_dir, resumed, "trainer.max_steps=3", *muon))
    train(tiny_config(shared_dir, resumed, "trainer.max_steps=6", *muon, f"resume={resumed / 'checkpoints' / 'step-3.ckpt'}"))
    a = [(r["step"], r["train_loss"]) for r in read_metrics(straight) if "train_loss" in r]
    b = [(r["step"], r["train_loss"]) for r in read_metrics(resumed) if "train_loss" in r]
    assert a == b and a[-1][1] < a[0][1]


@pytest.mark.slow
def test_muon_trains_under_ddp_on_two_cpu_processes(shared_dir, tmp_path):
    """DDP all-reduces the gradients before the step, so each rank's Muon sees the same whole matrices: the story is
    "works". Two gloo processes through the CLI; one of them reports."""
    import os
    import subprocess
    import sys

    from tests.test_training import TINY

    run = tmp_path / "run"
    args = ["recipe=legal-tiny", *TINY, f"data.root={shared_dir / 'corpora'}", f"out_dir={run}", "optim.name=muon",
            "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_steps=4",
            "trainer.checkpoint_every=0", "trainer.progress_bar=false", "eval.tasks=[]"]
    result = subprocess.run([sys.executable, "-m", "slmkit.cli", "train", *args], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 4 steps") == 1
    losses = [r["train_loss"] for r in read_metrics(run) if "train_loss" in r]
    assert len(losses) == 4 and all(loss == loss for loss in losses)


def test_muon_is_refused_under_deepspeed_and_with_lora(shared_dir, tmp_path):
    from slmkit.training.trainer import build_trainer

    config = tiny_config(shared_dir, tmp_path / "run", "optim.name=muon", "trainer.strategy=deepspeed")
    with pytest.raises(SlmkitError, match="DeepSpeed ZeRO partitions them"):
        build_trainer(config, tmp_path / "run", [], [])
    with pytest.raises(SlmkitError, match="use optim.name=adamw with LoRA"):
        OPTIMIZERS.get("muon")([("body.blocks.0.attn.q_proj.lora_A.default.weight", torch.nn.Parameter(torch.ones(2, 2)))], OptimConfig())
