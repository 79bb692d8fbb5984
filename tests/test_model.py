"""The assembled model (body + language-model head): causality, parameter counts, init, learning, KV-cache decoding and user errors."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slmkit.errors import SlmkitError
from slmkit.model import POSITIONS, Model, ModelConfig

MODEL_DIR = Path(__file__).resolve().parents[1] / "slmkit" / "model"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> ModelConfig:
    fields = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, d_model=32, dropout=0.0)
    fields.update(overrides)
    return ModelConfig(**fields)


def gpt2_style(**overrides) -> ModelConfig:
    fields = dict(positions="learned", ffn="gelu", norm="layernorm", bias=True, tie_embeddings=True)
    fields.update(overrides)
    return ModelConfig(**fields)


# --- causality -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope", "alibi", "none"])
def test_a_later_token_never_changes_earlier_logits(positions, kernel):
    torch.manual_seed(0)
    model = Model(tiny(positions=positions, attention_kernel=kernel, n_kv_heads=2)).eval()
    ids = torch.randint(0, 61, (2, 12))
    with torch.no_grad():
        logits = model(ids)
        for t in range(11):
            changed = ids.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1) % 61
            new_logits = model(changed)
            torch.testing.assert_close(new_logits[:, : t + 1], logits[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(new_logits[:, t + 1], logits[:, t + 1])


def test_bidirectional_model_lets_later_tokens_change_earlier_logits():
    torch.manual_seed(0)
    model = Model(tiny(causal=False)).eval()
    ids = torch.randint(0, 61, (1, 8))
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 61
    with torch.no_grad():
        assert not torch.allclose(model(ids)[0, 0], model(changed)[0, 0])


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_a_token_outside_the_sliding_window_has_no_effect(kernel):
    torch.manual_seed(0)
    # One layer: with more, information hops window by window and reaches further back.
    model = Model(tiny(n_layer=1, sliding_window=4, attention_kernel=kernel)).eval()
    ids = torch.randint(0, 61, (1, 12))
    with torch.no_grad():
        logits = model(ids)
        for i in range(4, 12):
            outside, inside = ids.clone(), ids.clone()
            outside[0, i - 4] = (outside[0, i - 4] + 1) % 61
            inside[0, i - 3] = (inside[0, i - 3] + 1) % 61
            torch.testing.assert_close(model(outside)[0, i], logits[0, i], atol=1e-6, rtol=0)
            assert not torch.allclose(model(inside)[0, i], logits[0, i])


# --- sizes, init, optimizer groups, FLOPs ------------------------------------------------------------------


def test_llama_style_parameter_count_matches_a_hand_count():
    config = tiny(vocab_size=100, n_kv_heads=2, positions="rope", ffn="swiglu", norm="rmsnorm", tie_embeddings=False)
    d, head_dim, hidden, vocab = 32, 8, 128, 100  # swiglu hidden: int(8 * 32 / 3) = 85, rounded up to 128
    per_block = d + (d * d + 2 * d * 2 * head_dim + d * d) + d + 3 * d * hidden
    expected = vocab * d + 2 * per_block + d + vocab * d
    model = Model(config)
    assert model.num_parameters() == expected == 37280
    assert model.num_parameters(non_embedding=True) == expected - vocab * d


def test_gpt2_style_parameter_count_matches_a_hand_count():
    config = gpt2_style(vocab_size=100, block_size=16, n_layer=2, n_head=4, d_model=32)
    d = 32
    attn = 4 * (d * d + d)
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
    per_block = 2 * d + attn + 2 * d + mlp
    expected = 100 * d + 16 * d + 2 * per_block + 2 * d  # tied lm_head adds nothing
    model = Model(config)
    assert model.num_parameters() == expected
    assert model.num_parameters(non_embedding=True) == expected - 100 * d - 16 * d


def test_gpt2_small_has_the_classic_124m_parameters():
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = Model(gpt2_style(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, d_model=768))
    assert model.num_parameters() == 124_439_808
    assert model.num_parameters(non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768
    # 6N + 12 L H Q T, N = non-embedding parameters plus the (tied) output projection.
    n = 124_439_808 - 1024 * 768
    assert model.flops_per_token() == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert model.flops_per_token(seq_len=256) == 6 * n + 12 * 12 * 12 * 64 * 256


def test_tied_embeddings_share_one_tensor():
    model = Model(tiny(tie_embeddings=True))
    assert model.heads["lm"].proj.weight is model.body.tok_embeddings.weight
    assert model.heads["lm"].proj.bias is None
    untied = Model(tiny(tie_embeddings=False))
    assert untied.heads["lm"].proj.weight is not untied.body.tok_embeddings.weight


def test_module_names_are_the_ones_export_maps():
    llama = Model(tiny(qk_norm=True, tie_embeddings=False))
    assert set(llama.state_dict()) == {
        "body.tok_embeddings.weight",
        "body.final_norm.weight",
        "heads.lm.proj.weight",
        *(
            f"body.blocks.{i}.{name}.weight"
            for i in range(2)
            for name in (
                "attn_norm", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "attn.q_norm",
                "attn.k_norm", "ffn_norm", "ffn.gate_proj", "ffn.up_proj", "ffn.down_proj",
            )
        ),
    }
    gpt2 = Model(gpt2_style(vocab_size=61, block_size=32, n_layer=1, n_head=4, d_model=32))
    keys = set(gpt2.state_dict())
    assert {"body.pos_embeddings.weight", "body.blocks.0.attn.q_proj.bias", "body.blocks.0.ffn.up_proj.bias",
            "body.final_norm.bias"} <= keys
    assert isinstance(gpt2.body.pos_embeddings, torch.nn.Embedding)
    assert not hasattr(llama.body, "pos_embeddings")


def test_init_is_deterministic_and_scales_residual_projections():
    config = tiny(n_layer=8, d_model=128, bias=True, init_std=0.02)
    torch.manual_seed(3)
    a = Model(config)
    torch.manual_seed(3)
    b = Model(config)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    residual_std = 0.02 / math.sqrt(16)
    assert a.body.blocks[0].attn.o_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert a.body.blocks[0].ffn.down_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert a.body.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert a.body.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(a.body.blocks[0].attn.q_proj.bias) == 0
    assert torch.all(a.body.blocks[0].attn_norm.weight == 1)
    unscaled = Model(tiny(n_layer=8, d_model=128, scaled_residual_init=False))
    assert unscaled.body.blocks[0].attn.o_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


# --- learning ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides", [dict(), dict(positions="learned", ffn="gelu", norm="layernorm", bias=True)], ids=["llama", "gpt2"]
)
def test_tiny_model_overfits_one_batch(overrides):
    torch.manual_seed(0)
    model = Model(tiny(**overrides))
    ids = torch.randint(0, 61, (4, 17))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(150):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 61), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, f"loss {loss.item():.3f} after 150 steps on one batch"


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = Model(tiny(dropout=0.2))
    ids = torch.randint(0, 61, (2, 8))
    assert not torch.equal(model(ids), model(ids))
    model.eval()
    assert torch.equal(model(ids), model(ids))


# --- KV cache ----------------------------------------------------------------------------------------------


def greedy(model: Model, prompt: torch.Tensor, steps: int, use_cache: bool) -> torch.Tensor:
    ids = prompt
    cache = model.new_cache(prompt.shape[0], prompt.shape[1] + steps) if use_cache else None
    next_input = prompt
    with torch.no_grad():
        for _ in range(steps):
            logits = model(next_input, cache=cache) if use_cache else model(ids)
            token = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            next_input = token
    return ids


CACHE_CASES = [
    dict(positions="rope"),
    dict(positions="alibi"),
    dict(positions="learned", n_kv_heads=1),
    dict(positions="rope", sliding_window=4, n_kv_heads=2),
    dict(positions="alibi", sliding_window=3, attention_kernel="eager"),
    dict(positions="sinusoidal", qk_norm=True),
    dict(positions="none", attention_kernel="eager"),
]


@pytest.mark.parametrize("overrides", CACHE_CASES)
def test_cached_greedy_decoding_equals_recomputing_the_whole_sequence(overrides):
    torch.manual_seed(0)
    # A larger init spreads the logits so that argmax ties cannot hide behind float noise.
    model = Model(tiny(init_std=0.2, **overrides)).eval()
    prompt = torch.randint(0, 61, (3, 5))
    with_cache = greedy(model, prompt, 20, use_cache=True)
    assert torch.equal(with_cache, greedy(model, prompt, 20, use_cache=False))
    assert len(set(with_cache[0, 5:].tolist())) > 1


@pytest.mark.parametrize("overrides", CACHE_CASES)
def test_prefill_in_chunks_gives_the_logits_of_one_full_pass(overrides):
    torch.manual_seed(0)
    model = Model(tiny(**overrides)).eval()
    ids = torch.randint(0, 61, (2, 14))
    cache = model.new_cache(2, 16)
    with torch.no_grad():
        full = model(ids)
        chunks = [model(ids[:, :6], cache), model(ids[:, 6:7], cache), model(ids[:, 7:], cache)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 14


def test_cache_reports_overflow_and_a_wrong_batch_size():
    model = Model(tiny()).eval()
    cache = model.new_cache(2, 6)
    model(torch.zeros(2, 5, dtype=torch.long), cache)
    with pytest.raises(SlmkitError, match="max_len"):
        model(torch.zeros(2, 2, dtype=torch.long), cache)
    with pytest.raises(SlmkitError, match="batch size 2"):
        model(torch.zeros(3, 1, dtype=torch.long), cache)
    cache.reset()
    assert cache.length == 0


def test_cache_takes_the_models_dtype_and_device():
    model = Model(tiny(n_kv_heads=1)).to(torch.bfloat16)
    cache = model.new_cache(2, 10)
    assert cache.slots[0].keys.dtype == torch.bfloat16 and cache.slots[0].keys.shape == (2, 1, 10, 8)
    assert len(cache.slots) == 2


# --- user errors -------------------------------------------------------------------------------------------


def test_token_ids_beyond_the_vocabulary_say_the_tokenizer_does_not_fit():
    model = Model(tiny(vocab_size=61))
    with pytest.raises(SlmkitError, match="tokenizer does not fit the model"):
        model(torch.tensor([[1, 2, 61]]))


def test_learned_positions_refuse_sequences_longer_than_block_size():
    model = Model(tiny(positions="learned", block_size=8)).eval()
    with pytest.raises(SlmkitError, match="block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    cache = model.new_cache(1, 12)
    model(torch.zeros(1, 8, dtype=torch.long), cache)
    with pytest.raises(SlmkitError, match="block_size=8"):
        model(torch.zeros(1, 1, dtype=torch.long), cache)


def test_relative_positions_run_past_block_size():
    model = Model(tiny(positions="rope", block_size=8)).eval()
    assert model(torch.zeros(1, 12, dtype=torch.long)).shape == (1, 12, 61)


def test_invalid_config_is_rejected_on_construction():
    with pytest.raises(SlmkitError, match="n_kv_heads"):
        Model(tiny(n_kv_heads=3))


# --- architecture ------------------------------------------------------------------------------------------


def test_model_package_imports_only_torch_and_its_own_kind():
    allowed = {"torch", "math", "dataclasses", "typing", "__future__", "slmkit"}
    allowed_slmkit = ("slmkit.errors", "slmkit.registry", "slmkit.options", "slmkit.model")
    for path in MODEL_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
                if name.startswith("slmkit"):
                    assert name.startswith(allowed_slmkit), f"{path.name} imports {name}"


def test_every_position_encoding_builds_a_working_model():
    for name in POSITIONS.names():
        model = Model(tiny(positions=name)).eval()
        assert model(torch.zeros(1, 4, dtype=torch.long)).dtype == torch.float32
