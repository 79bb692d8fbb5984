"""GGUF export: the file reads back with `gguf` with llama.cpp's tensor names, shapes and metadata, and encodes the model."""

from __future__ import annotations

import json
import re

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.export import ExportArgs, run_export
from slmkit.export.gguf import gguf_to_hf_state, read_gguf_tensors
from slmkit.export.gguf_vocab import LLAMA3_SPLIT, LLAMA_CPP_PRE_TOKENIZERS, QWEN2_SPLIT, llama_cpp_pre_tokenizer
from slmkit.export.hf import hf_config, hf_state_dict
from slmkit.export.targets import select_target

from export_helpers import CHAT_TEMPLATE, EOS, tiny_model, train_tokenizer, write_chat_run, write_chat_task, write_run

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


# --- llama.cpp's reading of the file: pre-tokenizer name, token types, chat template, 4-bit types, bad input ---

def _tokenizer_spec(pre_tokenizer, ignore_merges=False, normalizer=None) -> dict:
    from tokenizers import Tokenizer, models

    tokenizer = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tokenizer.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    return json.loads(tokenizer.to_str())


def test_pre_tokenizer_names_are_llama_cpps_for_the_splits_it_reproduces(tokenizer_path):
    from tokenizers import Regex, pre_tokenizers as pre

    def split_then_bytes(regex):
        return pre.Sequence([pre.Split(Regex(regex), behavior="isolated"), pre.ByteLevel(add_prefix_space=False, use_regex=False)])

    assert llama_cpp_pre_tokenizer(json.loads(tokenizer_path.read_text()), tokenizer_path) == "gpt-2"
    assert llama_cpp_pre_tokenizer(_tokenizer_spec(split_then_bytes(LLAMA3_SPLIT), ignore_merges=True), tokenizer_path) == "llama-bpe"
    assert llama_cpp_pre_tokenizer(_tokenizer_spec(split_then_bytes(QWEN2_SPLIT)), tokenizer_path) == "qwen2"
    # Every name written is one llama.cpp's vocabulary loader accepts (llama-vocab.cpp lists these among its names).
    assert {p.name for p in LLAMA_CPP_PRE_TOKENIZERS} <= {"gpt-2", "llama-bpe", "qwen2"}


@pytest.mark.parametrize("spec, why", [
    (lambda pre, norm, R: _tokenizer_spec(pre.ByteLevel(add_prefix_space=True)), "add_prefix_space=true"),
    (lambda pre, norm, R: _tokenizer_spec(pre.ByteLevel(add_prefix_space=False), normalizer=norm.NFC()), "normalizes text first"),
    (lambda pre, norm, R: _tokenizer_spec(pre.Metaspace()), "does not end in ByteLevel"),
    (lambda pre, norm, R: _tokenizer_spec(pre.Sequence([pre.Split(R(r"\d"), behavior="isolated"), pre.ByteLevel(add_prefix_space=False, use_regex=False)])),
     "its pre-tokenizer is"),
    (lambda pre, norm, R: _tokenizer_spec(pre.Sequence([pre.Split(R(LLAMA3_SPLIT), behavior="isolated"), pre.ByteLevel(add_prefix_space=False, use_regex=False)])),
     "ignore_merges=False, where llama.cpp's llama-bpe"),
], ids=["prefix-space", "normalizer", "metaspace", "other-regex", "ignore-merges"])
def test_a_pre_tokenizer_llama_cpp_cannot_reproduce_is_refused_by_name(tokenizer_path, spec, why):
    from tokenizers import Regex, normalizers, pre_tokenizers

    with pytest.raises(SlmkitError, match=re.escape(why)):
        llama_cpp_pre_tokenizer(spec(pre_tokenizers, normalizers, Regex), tokenizer_path)


def test_gguf_names_the_pre_tokenizer_and_marks_special_and_added_tokens(tmp_path, tokenizer_path):
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.add_tokens([AddedToken("§", special=False)])
    extended = tmp_path / "tokenizer.json"
    tokenizer.save(str(extended))
    run = write_run(tmp_path / "run", extended, tiny_model(d_model=64))
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf"))
    reader = gguf.GGUFReader(str(out / "model.gguf"))
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert "tokenizer.chat_template" not in reader.fields  # a pretrained model learned no conversation format
    types = reader.fields["tokenizer.ggml.token_type"]
    type_of = lambda token: int(types.parts[types.data[tokenizer.token_to_id(token)]][0])  # noqa: E731
    assert type_of(EOS) == gguf.TokenType.CONTROL
    assert type_of("§") == gguf.TokenType.USER_DEFINED
    assert type_of("The") == gguf.TokenType.NORMAL


def test_an_sft_chat_model_carries_its_conversation_format(tmp_path, tokenizer_path):
    from slmkit.export.chat_template import runtime_environment

    run = write_chat_run(tmp_path / "run", tokenizer_path, tiny_model(d_model=64), write_chat_task(tmp_path / "task"))
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf"))
    template = _field(gguf.GGUFReader(str(out / "model.gguf")), "tokenizer.chat_template")
    messages = [{"role": "user", "content": "Is it binding?"}, {"role": "assistant", "content": "Yes."}, {"role": "user", "content": " Why?\n"}]
    rendered = runtime_environment().from_string(template).render(messages=messages, bos_token=EOS, add_generation_prompt=True)
    # What objectives/sft.py trains on: the end-of-document token, then each message in the one-message template.
    assert rendered == EOS + "".join(CHAT_TEMPLATE.replace("{{role}}", m["role"]).replace("{{content}}", m["content"])
                                     for m in messages) + "<|assistant|>\n"


@pytest.mark.parametrize("dtype, kind", [("q4_0", "Q4_0"), ("q4_1", "Q4_1")])
def test_4_bit_gguf_is_a_quarter_of_fp32_and_dequantizes_close(tmp_path, tokenizer_path, dtype, kind):
    model = tiny_model(d_model=128, tie_embeddings=False)
    run = write_run(tmp_path / "run", tokenizer_path, model)
    f32 = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "f32"), format="gguf", dtype="fp32")) / "model.gguf"
    q4 = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "q4"), format="gguf", dtype=dtype)) / "model.gguf"
    reader = gguf.GGUFReader(str(q4))
    assert _field(reader, "general.file_type") == gguf.LlamaFileType[f"MOSTLY_{kind}"]
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType[kind]
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0  # the output matrix keeps 8 bits
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType[kind]
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert q4.stat().st_size < 0.3 * f32.stat().st_size
    exact, back = read_gguf_tensors(f32), read_gguf_tensors(q4)
    for name in ("blk.0.ffn_down.weight", "blk.1.attn_q.weight", "token_embd.weight"):
        assert back[name].shape == exact[name].shape
        # A 4-bit block keeps 16 levels of its range: the error is a fraction of each block's largest value.
        error = (back[name] - exact[name]).norm() / exact[name].norm()
        assert 0 < error < 0.15, (name, error)


@pytest.mark.parametrize("settings, dtype, message", [
    (dict(d_model=64), "q4_k", "dtype=q4_k is not a GGUF type slmkit writes"),
    (dict(d_model=48, n_head=4, tie_embeddings=False), "q4_0", "rows of 48 values, and q4_0 stores blocks of 32"),
    (dict(d_model=64, causal=False), "fp32", "this model is an encoder"),
], ids=["unknown-type", "rows-not-in-blocks", "encoder"])
def test_bad_gguf_requests_are_one_error_and_leave_no_file(tmp_path, tokenizer_path, settings, dtype, message):
    run = write_run(tmp_path / "run", tokenizer_path, tiny_model(**settings))
    with pytest.raises(SlmkitError, match=re.escape(message)):
        run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf", dtype=dtype))
    assert not (tmp_path / "gguf").exists() and not list(tmp_path.glob(".gguf*"))


def test_transformers_applies_the_hf_exports_chat_template_as_sft_encodes(tmp_path, tokenizer_path):
    from tokenizers import Tokenizer

    run = write_chat_run(tmp_path / "run", tokenizer_path, tiny_model(d_model=64), write_chat_task(tmp_path / "task"))
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "hf")))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Who decides the appeal?"}]
    ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    encode = lambda text: Tokenizer.from_file(str(tokenizer_path)).encode(text, add_special_tokens=False).ids  # noqa: E731
    assert list(ids) == [hf_tokenizer.eos_token_id] + encode("<|user|>\nWho decides the appeal?\n") + encode("<|assistant|>\n")


def test_an_sft_run_whose_task_file_is_gone_exports_without_a_chat_template(tmp_path, tokenizer_path, caplog):
    run = write_chat_run(tmp_path / "run", tokenizer_path, tiny_model(d_model=64), tmp_path / "moved" / "chat_task.yaml")
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf"))
    assert "tokenizer.chat_template" not in gguf.GGUFReader(str(out / "model.gguf")).fields
    assert "the export carries no chat template" in caplog.text
