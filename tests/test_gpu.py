"""What only a GPU shows: Lightning's DeepSpeed strategy (ZeRO-2/3, bf16) training, resuming and consolidating,
and the flash SDPA kernel. Skipped where no CUDA device is visible; run with `make test-gpu`."""

from __future__ import annotations


import pytest
import torch

from slmkit.checkpoint import load_checkpoint, read_state_dict
from slmkit.model import Model, ModelConfig
from test_training import read_metrics, tiny_config

from slmkit.training.run import train

pytestmark = pytest.mark.gpu


def test_deepspeed_zero2_bf16_trains_and_resumes_exactly(shared_dir, tmp_path):
    common = ["trainer=deepspeed-z2", "trainer.devices=1", "trainer.precision=bf16", "trainer.checkpoint_every=4", "optim.decay_steps=8"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(shared_dir, straight, *common, "trainer.max_steps=8"))
    train(tiny_config(shared_dir, resumed, *common, "trainer.max_steps=4"))
    train(tiny_config(shared_dir, resumed, *common, "trainer.max_steps=8", f"resume={resumed / 'checkpoints' / 'step-4.ckpt'}"))
    a = [r["train_loss"] for r in read_metrics(straight)]
    b = [r["train_loss"] for r in read_metrics(resumed)]
    assert len(a) == len(b) == 8
    assert a == pytest.approx(b, abs=1e-3)
    assert a[-1] < a[0]
    assert (straight / "checkpoints" / "step-8.ckpt").is_dir()  # a DeepSpeed checkpoint folder


def test_deepspeed_zero3_final_weights_match_the_sharded_checkpoint(shared_dir, tmp_path):
    run = tmp_path / "z3"
    train(tiny_config(shared_dir, run, "trainer=deepspeed-z3", "trainer.devices=1", "trainer.max_steps=4", "trainer.checkpoint_every=4"))
    from safetensors.torch import load_file

    final = load_file(str(run / "model.safetensors"))
    sharded = read_state_dict(run / "checkpoints" / "step-4.ckpt")
    for name, tensor in final.items():
        assert torch.equal(tensor, sharded[name].float()), name
    assert load_checkpoint(run / "checkpoints" / "step-4.ckpt").model.config.n_layer == 2


def test_flash_attention_kernel_matches_the_eager_reference():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=512, block_size=256, n_layer=2, n_head=4, n_kv_heads=2, d_model=256)
    model = Model(config).cuda()
    tokens = torch.randint(0, 512, (2, 256), device="cuda")
    with torch.no_grad():
        reference = model(tokens).float()
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
            flash = model(tokens).float()
    assert (flash - reference).abs().max() < 0.1
    assert (flash.argmax(-1) == reference.argmax(-1)).float().mean() > 0.95
