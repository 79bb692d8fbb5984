"""The swappable parts one by one: norms, feed-forwards, positional encodings and attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slmkit.errors import SlmkitError
from slmkit.model import (ATTENTION_KERNELS, ATTENTION_LAYERS, BLOCKS, FEEDFORWARDS, NORMS, POSITIONS, AttentionMasks,
                          Model, ModelConfig, alibi_slopes)
from slmkit.model.attention import AttentionMask, MultiHeadAttention
from slmkit.model.positions import apply_rotary


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> ModelConfig:
    fields = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, d_model=32, dropout=0.0)
    fields.update(overrides)
    return ModelConfig(**fields)


def test_every_part_kind_has_its_registry_of_names():
    assert NORMS.names() == ["layernorm", "rmsnorm"]
    assert POSITIONS.names() == ["alibi", "learned", "none", "rope", "sinusoidal"]
    assert FEEDFORWARDS.names() == ["geglu", "gelu", "gelu_tanh", "relu2", "swiglu"]
    assert BLOCKS.names() == ["postnorm", "prenorm"]
    assert ATTENTION_KERNELS.names() == ["eager", "sdpa"]
    assert ATTENTION_LAYERS.names() == ["multihead"]


def test_unknown_part_name_is_a_user_error_with_a_suggestion():
    with pytest.raises(SlmkitError, match="did you mean 'swiglu'"):
        Model(tiny(ffn="swiglue"))


# --- norms -------------------------------------------------------------------------------------------------


def test_rmsnorm_computes_in_fp32_and_casts_back_before_the_weight():
    norm = NORMS.get("rmsnorm")(16, tiny(norm_eps=1e-6)).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 16))
    x = torch.randn(3, 5, 16).to(torch.bfloat16) * 7
    x32 = x.float()
    expected = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


def test_layernorm_has_a_bias_only_when_the_config_asks_for_biases():
    assert NORMS.get("layernorm")(8, tiny(bias=True)).bias is not None
    assert NORMS.get("layernorm")(8, tiny(bias=False)).bias is None


# --- feed-forward ------------------------------------------------------------------------------------------


def test_feedforwards_compute_their_published_formulas():
    x = torch.randn(2, 3, 32)
    gelu = FEEDFORWARDS.get("gelu")(tiny(bias=True))
    h = gelu.up_proj(x)
    exact_gelu = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    torch.testing.assert_close(gelu(x), gelu.down_proj(exact_gelu))

    swiglu = FEEDFORWARDS.get("swiglu")(tiny())
    expected = swiglu.down_proj(F.silu(swiglu.gate_proj(x)) * swiglu.up_proj(x))
    torch.testing.assert_close(swiglu(x), expected)

    geglu = FEEDFORWARDS.get("geglu")(tiny())
    h = geglu.gate_proj(x)
    torch.testing.assert_close(geglu(x), geglu.down_proj(0.5 * h * (1 + torch.erf(h / math.sqrt(2))) * geglu.up_proj(x)))

    relu2 = FEEDFORWARDS.get("relu2")(tiny())
    torch.testing.assert_close(relu2(x), relu2.down_proj(torch.clamp(relu2.up_proj(x), min=0) ** 2))
    assert not hasattr(gelu, "gate_proj") and not hasattr(relu2, "gate_proj")


def test_swiglu_hidden_width_defaults_to_eight_thirds_rounded_up():
    swiglu = FEEDFORWARDS.get("swiglu")(tiny(d_model=96, ffn_multiple_of=64))
    assert swiglu.up_proj.out_features == 256  # int(8 * 96 / 3) = 256
    assert FEEDFORWARDS.get("swiglu")(tiny(d_model=32)).up_proj.out_features == 128  # 85 -> 128


# --- positions ---------------------------------------------------------------------------------------------


def rotate_at(x: torch.Tensor, position: int, theta: float = 10000.0) -> torch.Tensor:
    rope = POSITIONS.get("rope")(tiny(d_model=x.shape[-1] * 4, n_head=4, rope_theta=theta))
    cos, sin = rope.rotary(1, position, x.device)
    return apply_rotary(x[None], cos, sin)[0]


def test_rope_scores_depend_only_on_the_offset_between_query_and_key():
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    scores = [rotate_at(q, m) @ rotate_at(k, m - 3) for m in (3, 10, 57, 500)]
    for score in scores[1:]:
        torch.testing.assert_close(score, scores[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(rotate_at(q, 10) @ rotate_at(k, 5), scores[0], atol=1e-3)


def test_rope_rotates_channel_i_with_channel_i_plus_half_as_hf_llama():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    position, theta = 5, 100.0
    f0, f1 = position * 1.0, position * theta ** (-2 / 4)
    expected = torch.tensor(
        [
            1 * math.cos(f0) - 3 * math.sin(f0),
            2 * math.cos(f1) - 4 * math.sin(f1),
            3 * math.cos(f0) + 1 * math.sin(f0),
            4 * math.cos(f1) + 2 * math.sin(f1),
        ]
    )
    torch.testing.assert_close(rotate_at(x, position, theta), expected)


def test_alibi_slopes_follow_press_et_al():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    # Not a power of two: the 4-head slopes, then every other slope of the 8-head sequence.
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]))
    expected_12 = [2.0**-i for i in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected_12))


def test_alibi_bias_is_minus_slope_times_distance_and_continues_from_the_cache_position():
    alibi = POSITIONS.get("alibi")(tiny(n_head=8, d_model=64))
    bias = alibi.attention_bias(4, 10, 6, torch.device("cpu"))
    assert bias.shape == (8, 4, 10)
    for h in range(8):
        slope = 2.0 ** -(h + 1)
        for i in range(4):
            for j in range(10):
                assert bias[h, i, j].item() == pytest.approx(-slope * abs(6 + i - j))


def test_sinusoidal_positions_are_the_fixed_waves_of_vaswani_et_al():
    sinusoidal = POSITIONS.get("sinusoidal")(tiny(d_model=8))
    table = sinusoidal.add_to_embeddings(torch.zeros(1, 7, 8), start=3)[0]
    for row, pos in enumerate(range(3, 10)):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert table[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    assert list(sinusoidal.parameters()) == []


# --- attention ---------------------------------------------------------------------------------------------


def masks_of(config: ModelConfig, n_queries: int, start: int = 0) -> AttentionMasks:
    return AttentionMasks(config.causal, start, n_queries, None, None, torch.device("cpu"))


def mask_of(config: ModelConfig, n_queries: int, start: int = 0) -> AttentionMask:
    return masks_of(config, n_queries, start).for_window(config.sliding_window)


def run_attention(attn: MultiHeadAttention, x: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    return attn(x, masks_of(config, x.shape[1]))


def test_gqa_equals_mha_whose_kv_projections_repeat_each_kv_head():
    torch.manual_seed(0)
    gqa_config, mha_config = tiny(n_kv_heads=2), tiny(n_kv_heads=4)
    gqa, mha = MultiHeadAttention(gqa_config, 0), MultiHeadAttention(mha_config, 0)
    head_dim = gqa_config.head_dim
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(mha, name).weight.copy_(getattr(gqa, name).weight)
        for name in ("k_proj", "v_proj"):
            per_head = getattr(gqa, name).weight.view(2, head_dim, -1)
            getattr(mha, name).weight.copy_(per_head.repeat_interleave(2, dim=0).reshape(4 * head_dim, -1))
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(run_attention(gqa, x, gqa_config), run_attention(mha, x, mha_config))


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_grouped_query_attention_matches_a_per_head_loop(n_kv_heads):
    torch.manual_seed(0)
    config = tiny(n_kv_heads=n_kv_heads)
    attn = MultiHeadAttention(config, 0)
    x = torch.randn(2, 7, 32)
    t, d, group = 7, config.head_dim, 4 // n_kv_heads
    q = attn.q_proj(x).view(2, t, 4, d)
    k = attn.k_proj(x).view(2, t, n_kv_heads, d)
    v = attn.v_proj(x).view(2, t, n_kv_heads, d)
    assert attn.k_proj.out_features == n_kv_heads * d
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    heads = []
    for h in range(4):
        kv = h // group  # query heads 0..group-1 share kv head 0, and so on
        scores = q[:, :, h] @ k[:, :, kv].transpose(-1, -2) / math.sqrt(d)
        heads.append(torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v[:, :, kv])
    expected = attn.o_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(run_attention(attn, x, config), expected)


def test_sliding_window_mask_keeps_exactly_the_last_window_tokens():
    config = tiny(sliding_window=3)
    mask = mask_of(config, 6, 0).mask
    expected = torch.tensor([[i - 3 < j <= i for j in range(6)] for i in range(6)])
    assert torch.equal(mask, expected)
    # Two new tokens after four cached ones: queries at positions 4 and 5 over keys 0..5.
    assert torch.equal(mask_of(config, 2, 4).mask, expected[4:])


def test_unconstrained_causal_attention_takes_the_fused_fast_path():
    assert mask_of(tiny(), 8, 0).is_causal
    assert mask_of(tiny(sliding_window=8), 8, 0).is_causal
    assert mask_of(tiny(), 1, 7).mask is None
    assert not mask_of(tiny(sliding_window=4), 8, 0).is_causal


def test_bidirectional_attention_has_no_mask():
    mask = mask_of(tiny(causal=False), 8, 0)
    assert not mask.is_causal and mask.mask is None


@pytest.mark.parametrize(
    "overrides",
    [
        dict(positions="rope"),
        dict(positions="alibi", n_kv_heads=2),
        dict(positions="learned", n_kv_heads=1, sliding_window=4),
        dict(positions="rope", qk_norm=True, norm="layernorm", bias=True),
        dict(positions="sinusoidal", causal=False),
        dict(positions="alibi", sliding_window=5, causal=False),
    ],
)
def test_sdpa_and_eager_kernels_agree(overrides):
    torch.manual_seed(0)
    sdpa = Model(tiny(attention_kernel="sdpa", **overrides)).eval()
    eager = Model(tiny(attention_kernel="eager", **overrides)).eval()
    eager.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, 61, (2, 20))
    torch.testing.assert_close(sdpa(ids), eager(ids), atol=1e-5, rtol=1e-5)


def test_qk_norm_normalizes_each_head_before_rope_as_qwen3():
    torch.manual_seed(0)
    config = tiny(qk_norm=True, positions="rope")
    attn = MultiHeadAttention(config, 0)
    with torch.no_grad():
        attn.q_norm.weight.copy_(torch.rand(8) + 0.5)
        attn.k_norm.weight.copy_(torch.rand(8) + 0.5)
    x = torch.randn(1, 6, 32)
    cos, sin = POSITIONS.get("rope")(config).rotary(6, 0, x.device)

    def rms(t, weight):
        return weight * t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + config.norm_eps)

    q = apply_rotary(rms(attn.q_proj(x).view(1, 6, 4, 8), attn.q_norm.weight).transpose(1, 2), cos, sin)
    k = apply_rotary(rms(attn.k_proj(x).view(1, 6, 4, 8), attn.k_norm.weight).transpose(1, 2), cos, sin)
    v = attn.v_proj(x).view(1, 6, 4, 8).transpose(1, 2)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(1, 6, 32)
    torch.testing.assert_close(attn(x, masks_of(config, 6), (cos, sin)), attn.o_proj(expected))


# --- every registered part ---------------------------------------------------------------------------------


def part_configs() -> list[tuple[str, dict]]:
    """One small config per registered name of every part kind (each other part at its default)."""
    cases = [(f"attention={n}", dict(attention=n)) for n in ATTENTION_LAYERS.names()]
    cases += [(f"kernel={n}", dict(attention_kernel=n)) for n in ATTENTION_KERNELS.names()]
    cases += [(f"positions={n}", dict(positions=n)) for n in POSITIONS.names()]
    cases += [(f"ffn={n}", dict(ffn=n)) for n in FEEDFORWARDS.names()]
    cases += [(f"norm={n}", dict(norm=n, qk_norm=True)) for n in NORMS.names()]
    cases += [(f"block={n}", dict(block=n, embedding_norm=True)) for n in BLOCKS.names()]
    return cases


def check_forward_cache_and_init(config: ModelConfig) -> Model:
    """The three promises of any part: a finite forward pass, cached decoding equal to a full pass, the init."""
    torch.manual_seed(0)
    model = Model(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 12)
        pieces = torch.cat([model(ids[:, :5], cache), model(ids[:, 5:6], cache), model(ids[:, 6:], cache)], dim=1)
    assert torch.isfinite(full).all()
    torch.testing.assert_close(pieces, full, atol=1e-5, rtol=1e-5)
    residual_std = config.init_std / math.sqrt(2 * config.n_layer)
    for block in model.body.blocks:
        for layer in block.attn.residual_outputs() + block.ffn.residual_outputs():
            assert layer.weight.std().item() == pytest.approx(residual_std, rel=0.3)
    return model


@pytest.mark.parametrize("overrides", [c for _, c in part_configs()], ids=[n for n, _ in part_configs()])
def test_every_registered_part_runs_caches_and_initializes(overrides):
    check_forward_cache_and_init(tiny(d_model=64, n_layer=4, **overrides))


# --- a new part is one class plus one registration ---------------------------------------------------------


@pytest.fixture
def registered():
    """Registers parts for one test and withdraws them after it."""
    added = []

    def register(registry, name, entry):
        registry.register(name)(entry)
        added.append((registry, name))
        return entry

    yield register
    for registry, name in added:
        registry.unregister(name)


def test_a_new_gated_feedforward_needs_no_other_edit(registered):
    from slmkit.model.feedforward import GatedFeedForward

    class GeGLU(GatedFeedForward):
        """A gated GELU whose residual output layer is not called down_proj."""

        def __init__(self, config):
            super().__init__()
            hidden = config.ffn_hidden_size
            self.gate_up = torch.nn.Linear(config.d_model, 2 * hidden, bias=False)
            self.out = torch.nn.Linear(hidden, config.d_model, bias=False)

        def residual_outputs(self):
            return [self.out]

        def forward(self, x):
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.out(F.gelu(gate) * up)

    registered(FEEDFORWARDS, "test_geglu", GeGLU)
    config = tiny(ffn="test_geglu", d_model=96, n_layer=8)
    assert config.ffn_hidden_size == 256  # the gated width rule, inherited: int(8 * 96 / 3) rounded to 64
    model = check_forward_cache_and_init(config)
    assert model.body.blocks[0].ffn.out.weight.std().item() == pytest.approx(0.02 / 4, rel=0.1)


def test_a_new_rotary_variant_brings_its_own_checks(registered):
    from slmkit.model.positions import RotaryPositions

    class HalfRotary(RotaryPositions):
        """Rotates with half the base frequency: a variant that inherits RoPE's even-head-size check."""

        def __init__(self, config):
            super().__init__(config)
            self.theta = config.rope_theta / 2

    registered(POSITIONS, "test_half_rope", HalfRotary)
    check_forward_cache_and_init(tiny(positions="test_half_rope"))
    with pytest.raises(SlmkitError, match="even head"):
        Model(tiny(positions="test_half_rope", d_model=36, n_head=4))


def test_a_new_attention_layer_sizes_its_own_cache_slot(registered):
    class AlwaysMultiQuery(MultiHeadAttention):
        """One key/value head whatever model.n_kv_heads says: a layer of its own shape and its own cache size."""

        def __init__(self, config, layer_idx):
            super().__init__(config, layer_idx)
            self.n_kv_heads = 1
            self.k_proj = torch.nn.Linear(config.d_model, self.head_dim, bias=config.bias)
            self.v_proj = torch.nn.Linear(config.d_model, self.head_dim, bias=config.bias)

    registered(ATTENTION_LAYERS, "test_always_mqa", AlwaysMultiQuery)
    model = check_forward_cache_and_init(tiny(attention="test_always_mqa", n_kv_heads=4))
    cache = model.new_cache(2, 8)
    assert cache.slots[0].keys.shape == (2, 1, 8, 8)
