"""GGUF export: the file reads back with `gguf` with llama.cpp's tensor names, shapes and metadata, and encodes the model."""

from __future__ import annotations

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.export import ExportArgs, run_export
from slmkit.export.gguf import gguf_to_hf_state, read_gguf_tensors
from slmkit.export.hf import hf_config, hf_state_dict
from slmkit.export.targets import select_target

from export_helpers import EOS, tiny_model, train_tokenizer, write_run

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def _field(reader, key):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else value[0].item()


@pytest.mark.parametrize(
    "settings, arch", [(dict(n_kv_heads=2), "llama"), (dict(qk_norm=True, tie_embeddings=False), "qwen3")], ids=["llama", "qwen3"]
)
def test_gguf_reads_back_with_names_shapes_metadata_and_same_logits(tmp_path, tokenizer_path, settings, arch):
    model = tiny_model(d_model=64, **settings)
    run = write_run(tmp_path / "run", tokenizer_path, model)
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf", dtype="fp32"))
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    c = model.config
    assert _field(reader, "general.architecture") == arch
    assert _field(reader, f"{arch}.block_count") == c.n_layer
    assert _field(reader, f"{arch}.embedding_length") == c.d_model
    assert _field(reader, f"{arch}.attention.head_count_kv") == c.kv_heads
    assert _field(reader, f"{arch}.context_length") == c.block_size
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = reader.fields["tokenizer.ggml.tokens"]
    eos_id = _field(reader, "tokenizer.ggml.eos_token_id")
    assert bytes(tokens.parts[tokens.data[eos_id]]).decode() == EOS
    shapes = {t.name: tuple(reversed(t.shape.tolist())) for t in reader.tensors}  # GGUF lists dims innermost first
    assert shapes["token_embd.weight"] == (c.vocab_size, c.d_model)
    assert shapes["blk.1.attn_k.weight"] == (c.kv_heads * c.head_dim, c.d_model)
    assert shapes["blk.0.ffn_gate.weight"] == (c.ffn_hidden_size, c.d_model)
    assert ("output.weight" in shapes) == (not c.tie_embeddings)
    if c.qk_norm:
        assert shapes["blk.0.attn_q_norm.weight"] == (c.head_dim,)

    # Undo the GGUF layout and run the transformers class on it: the logits are slmkit's.
    arch_class = select_target(c)
    config = hf_config(c, arch_class, {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
    names = list(hf_state_dict(model, arch_class, config))
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    hf.load_state_dict(gguf_to_hf_state(read_gguf_tensors(out / "model.gguf"), names, c, arch_class), strict=not c.tie_embeddings)
    ids = torch.randint(0, c.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_transformers_gguf_loader_agrees_with_the_llama_permutation(tmp_path, tokenizer_path):
    pytest.importorskip("accelerate")
    model = tiny_model(d_model=64, n_kv_heads=2)
    run = write_run(tmp_path / "run", tokenizer_path, model)
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf", dtype="fp32"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", local_files_only=True, dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_q8_0_gguf_is_smaller_and_stays_close(tmp_path, tokenizer_path):
    model = tiny_model(d_model=64)
    run = write_run(tmp_path / "run", tokenizer_path, model)
    f32 = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "f32"), format="gguf", dtype="fp32")) / "model.gguf"
    q8 = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "q8"), format="gguf", dtype="q8_0")) / "model.gguf"
    assert q8.stat().st_size < 0.5 * f32.stat().st_size
    reader = gguf.GGUFReader(str(q8))
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    back = read_gguf_tensors(q8)["token_embd.weight"]
    assert (back - model.body.tok_embeddings.weight).abs().max() < 0.02 * model.body.tok_embeddings.weight.abs().max()


def test_gguf_refuses_models_llama_cpp_would_run_differently(tmp_path, tokenizer_path):
    run = write_run(tmp_path / "run", tokenizer_path, tiny_model(positions="learned", ffn="gelu", norm="layernorm"))
    with pytest.raises(SlmkitError, match="tanh GELU"):
        run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf", dtype="fp32"))
    assert not (tmp_path / "gguf").exists()
