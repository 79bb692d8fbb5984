"""μP (model.parametrization=mup): validation, init, per-group learning rates for AdamW and Muon, the multipliers
folded into a standard model, exact resume, and the coordinate check: activations flat in width under μP, growing under
the standard parametrization."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from slmkit.config import OptimConfig
from slmkit.errors import SlmkitError
from slmkit.model import Model, ModelConfig
from slmkit.model.mup import standard_equivalent
from slmkit.recipe import resolve_recipe
from slmkit.scaling.coord_check import CoordCheckArgs, run_coord_check
from slmkit.training.optimizers import OPTIMIZERS
from slmkit.training.run import train

from test_training import read_metrics, tiny_config

MUP = dict(vocab_size=96, block_size=16, n_layer=2, n_head=4, d_model=64, parametrization="mup", mup_base_width=16,
           tie_embeddings=False)


def test_bad_base_widths_and_a_tied_readout_are_refused_with_what_to_do():
    with pytest.raises(SlmkitError, match="needs model.mup_base_width, a positive width"):
        ModelConfig(**{**MUP, "mup_base_width": 0}).validate()
    with pytest.raises(SlmkitError, match="needs model.mup_base_width"):
        ModelConfig(**{**MUP, "mup_base_width": None}).validate()
    with pytest.raises(SlmkitError, match="d_model=64 is not a multiple of model.mup_base_width=24"):
        ModelConfig(**{**MUP, "mup_base_width": 24}).validate()
    with pytest.raises(SlmkitError, match="set model.tie_embeddings=false"):
        ModelConfig(**{**MUP, "tie_embeddings": True}).validate()


def test_the_cli_refuses_a_bad_base_width_without_a_traceback():
    result = subprocess.run([sys.executable, "-m", "slmkit.cli", "train", "recipe=legal-125m-mup", "model.mup_base_width=100",
                             "--dry-run"], capture_output=True, text=True)
    assert result.returncode == 2 and "not a multiple of model.mup_base_width=100" in result.stderr
    assert "Traceback" not in result.stderr


def test_mup_init_zero_readout_and_hidden_std_scaled_by_the_width_multiplier():
    torch.manual_seed(0)
    model = Model(ModelConfig(**{**MUP, "d_model": 256, "n_head": 16, "init_std": 0.02, "scaled_residual_init": False}))
    assert torch.count_nonzero(model.heads["lm"].proj.weight) == 0
    q = model.body.blocks[0].attn.q_proj.weight
    assert abs(q.std().item() - 0.02 / math.sqrt(256 / 16)) < 0.0005
    assert abs(model.body.tok_embeddings.weight.std().item() - 0.02) < 0.001
    assert model(torch.zeros(1, 4, dtype=torch.long)).abs().max().item() == 0.0


def test_a_normal_readout_init_is_the_standard_model_at_the_base_width():
    """mup_readout_init=normal: the readout starts as every other matrix does, and at the base width (multiplier 1)
    the μP model then computes what the standard one computes, up to the query scale, which export folds the same way."""
    base = {**MUP, "d_model": 16, "n_head": 2, "mup_readout_init": "normal"}
    torch.manual_seed(0)
    mup = Model(ModelConfig(**base))
    assert mup.heads["lm"].proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    torch.manual_seed(0)
    standard = Model(ModelConfig(**{**base, "parametrization": "standard"}))
    assert torch.equal(mup.heads["lm"].proj.weight, standard.heads["lm"].proj.weight)
    ids = torch.randint(0, 96, (2, 8))
    assert torch.allclose(standard_equivalent(mup)(ids), mup(ids), atol=1e-5)


def _lr_of(optimizer, parameter) -> float:
    return next(g["lr"] for g in optimizer.param_groups if any(p is parameter for p in g["params"]))


def test_adamw_groups_divide_the_hidden_matrices_lr_by_the_width_multiplier_only():
    model = Model(ModelConfig(**MUP))
    optimizer = OPTIMIZERS.get("adamw")(list(model.named_parameters()), OptimConfig(lr=1e-2), model.config)
    block = model.body.blocks[0]
    assert _lr_of(optimizer, block.attn.q_proj.weight) == pytest.approx(1e-2 / 4)
    assert _lr_of(optimizer, block.ffn_norm.weight) == 1e-2
    assert _lr_of(optimizer, model.body.tok_embeddings.weight) == 1e-2
    assert _lr_of(optimizer, model.heads["lm"].proj.weight) == 1e-2
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    standard = Model(ModelConfig(**{**MUP, "parametrization": "standard"}))
    plain = OPTIMIZERS.get("adamw")(list(standard.named_parameters()), OptimConfig(lr=1e-2), standard.config)
    assert [g["lr"] for g in plain.param_groups] == [1e-2, 1e-2]  # the standard groups as they always were


def test_muon_divides_its_lr_by_the_root_of_the_width_multiplier():
    model = Model(ModelConfig(**MUP))
    optimizer = OPTIMIZERS.get("muon")(list(model.named_parameters()), OptimConfig(name="muon", lr=1e-2), model.config)
    assert _lr_of(optimizer, model.body.blocks[1].ffn.down_proj.weight) == pytest.approx(1e-2 / 2)
    assert _lr_of(optimizer, model.body.tok_embeddings.weight) == 1e-2


@pytest.mark.parametrize("qk_norm", [False, True])
def test_the_standard_equivalent_computes_the_same_logits_with_no_multiplier_left(qk_norm):
    torch.manual_seed(0)
    model = Model(ModelConfig(**MUP, qk_norm=qk_norm, mup_input_multiplier=3.0, mup_output_multiplier=0.5)).eval()
    with torch.no_grad():
        model.heads["lm"].proj.weight.normal_(0, 0.3)
    folded = standard_equivalent(model)
    assert folded.config.parametrization == "standard" and folded.config.readout_multiplier == 1.0
    ids = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        assert (model(ids) - folded(ids)).abs().max().item() < 1e-5


def test_a_mup_run_resumes_with_identical_losses(shared_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    mup = ["model.parametrization=mup", "model.mup_base_width=32", "model.tie_embeddings=false",
           "optim.decay_steps=6", "trainer.checkpoint_every=3"]
    train(tiny_config(shared_dir, straight, "trainer.max_steps=6", *mup))
    train(tiny_config(shared_dir, resumed, "trainer.max_steps=3", *mup))
    train(tiny_config(shared_dir, resumed, "trainer.max_steps=6", *mup, f"resume={resumed / 'checkpoints' / 'step-3.ckpt'}"))
    a = [(r["step"], r["train_loss"], r["lr"]) for r in read_metrics(straight)]
    b = [(r["step"], r["train_loss"], r["lr"]) for r in read_metrics(resumed)]
    assert a == b and a[-1][1] < a[0][1]


def test_coordinate_check_is_flat_in_width_under_mup_and_grows_under_standard():
    """Widths 64..1024, 4 AdamW steps, 3 seeds, a 2-layer shakespeare-char model on 16-token sequences."""
    config = resolve_recipe("shakespeare-char", ["model.tie_embeddings=false"])
    check = run_coord_check(config, CoordCheckArgs(widths=[64, 128, 256, 512, 1024], seeds=3, steps=4, n_layer=2))
    assert check.max_abs_slope("mup") <= 0.1, check.slopes["mup"]
    assert check.slopes["standard"]["block 1"] > 1.0 and check.slopes["standard"]["logits"] > 0.5, check.slopes["standard"]


def test_coord_check_command_prints_the_table_and_writes_json_and_png(tmp_path):
    result = subprocess.run([sys.executable, "-m", "slmkit.cli", "mup", "coord-check", "recipe=shakespeare-char",
                             "model.tie_embeddings=false", "widths=[32,64]", "seeds=1", "steps=1", f"out={tmp_path}"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "mup: mean |coordinate| by width" in result.stdout and "slope" in result.stdout
    assert (tmp_path / "coord-check.png").stat().st_size > 1000 and (tmp_path / "coord-check.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "slmkit.cli", "mup", "coord-check", "recipe=shakespeare-char",
                          "widths=[64,32]"], capture_output=True, text=True)
    assert bad.returncode == 2 and "strictly increasing" in bad.stderr and "Traceback" not in bad.stderr
