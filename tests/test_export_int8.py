"""int8 export: per-channel int8 weights in safetensors, loaded into torch's dynamic-int8 Linear without re-quantizing."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from slmkit.export import ExportArgs, run_export
from slmkit.export.measure import bits_per_byte, heldout_windows, size_on_disk
from slmkit.export.int8 import INT8_WEIGHTS_FILE, load_int8, quantize_weight
from slmkit.generate import GenerateArgs, run_generate

from export_helpers import EOS, TEXT, tiny_model, train_tokenizer, write_run


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_quantize_weight_round_trips_within_half_a_step_per_row():
    weight = torch.randn(16, 64)
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8 and scale.shape == (16,)
    assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("settings", [dict(), dict(bias=True, tie_embeddings=False, positions="learned", ffn="gelu", norm="layernorm")], ids=["llama", "gpt2"])
def test_int8_export_is_smaller_loads_as_int8_and_keeps_bits_per_byte(tmp_path, tokenizer_path, settings):
    model = tiny_model(d_model=128, n_layer=2, init_std=0.02, **settings)
    run = write_run(tmp_path / "run", tokenizer_path, model)
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(TEXT[:2000])
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "int8"), format="int8", heldout=str(heldout)))
    with safe_open(str(out / INT8_WEIGHTS_FILE), framework="pt") as f:
        assert f.get_tensor("body.blocks.0.attn.q_proj.weight_int8").dtype == torch.int8
    assert size_on_disk(out / INT8_WEIGHTS_FILE) < 0.5 * size_on_disk(run / "model.safetensors")

    loaded = load_int8(out)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    assert isinstance(loaded.model.body.blocks[0].ffn.down_proj, DynamicInt8Linear)
    assert isinstance(loaded.model.heads["lm"].proj, DynamicInt8Linear)
    windows, n_bytes = heldout_windows(TEXT[:2000], loaded.tokenizer(), 0, model.config.block_size, 4096)
    fp32_bpb = bits_per_byte(model, windows, n_bytes)
    int8_bpb = bits_per_byte(loaded.model, windows, n_bytes)
    assert int8_bpb != fp32_bpb and abs(int8_bpb - fp32_bpb) < 0.01 * fp32_bpb
    assert "held-out bits/byte" in (out / "README.md").read_text()

    text = run_generate(GenerateArgs(checkpoint=str(out), prompt="The court", max_new_tokens=5, temperature=0.0, stream=False))
    assert isinstance(text[0], str)
