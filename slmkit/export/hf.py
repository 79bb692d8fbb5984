"""slmkit model -> stock transformers class: which class represents an architecture exactly, its config, its weight names.

One registered `HFArchitecture` per target class. `mismatches(config)` names every part the class cannot express;
`select_architecture` picks the first class with none, and refuses with those names otherwise — never an approximation.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from slmkit.errors import SlmkitError
from slmkit.model import ModelConfig, Transformer
from slmkit.registry import Registry

HF_ARCHITECTURES: Registry[type["HFArchitecture"]] = Registry(
    "transformers architecture", "A stock transformers causal-LM class that some slmkit models map onto exactly."
)

# Tried in this order: the most widely supported runtime class first, so a Llama-shaped model ships as Llama.
PREFERENCE = ("llama", "mistral", "qwen3", "smollm3", "stablelm", "starcoder2", "gpt2", "mpt")


class HFArchitecture:
    """One stock class: what it can express, its config.json, and where each slmkit tensor goes."""

    model_type: ClassVar[str]
    model_class: ClassVar[str]

    @classmethod
    def mismatches(cls, c: ModelConfig) -> list[str]:
        """Every part of `c` this class cannot represent exactly, each as 'field=value (why)'; empty = exportable."""
        raise NotImplementedError

    @classmethod
    def supports(cls, c: ModelConfig) -> str | None:
        found = cls.mismatches(c)
        return "; ".join(found) if found else None

    @classmethod
    def config(cls, c: ModelConfig) -> dict[str, Any]:
        """Keyword arguments of the transformers config class (special token ids are added by the caller)."""
        raise NotImplementedError

    @classmethod
    def weights(cls, state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
        """slmkit state dict -> transformers state dict; biases slmkit lacks are filled with zeros later."""
        raise NotImplementedError


def _common_mismatches(c: ModelConfig, name: str, **allowed: tuple) -> list[str]:
    """'field=value (name has only a, b)' for each field whose value is not among the allowed ones."""
    found = []
    for field, values in allowed.items():
        value = getattr(c, field)
        if value not in values:
            shown = ", ".join("none" if v is None else str(v) for v in values)
            found.append(f"{field}={value} ({name} supports {field} in: {shown})")
    return found


def _mha_only(c: ModelConfig, name: str) -> list[str]:
    if c.kv_heads != c.n_head:
        return [f"n_kv_heads={c.kv_heads} ({name} has multi-head attention only: n_kv_heads must equal n_head={c.n_head})"]
    return []


def _rope(c: ModelConfig) -> dict[str, Any]:
    # partial_rotary_factor=1.0: StableLM would otherwise rotate only a quarter of each head.
    return {"rope_type": "default", "rope_theta": float(c.rope_theta), "partial_rotary_factor": 1.0}


def _decoder_layers(state: dict[str, torch.Tensor], c: ModelConfig, names: dict[str, str], prefix: str) -> dict[str, torch.Tensor]:
    """Renames blocks.{i}.<slmkit suffix> to {prefix}{i}.<hf suffix> for each (slmkit, hf) suffix pair present."""
    out = {}
    for i in range(c.n_layer):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                key = f"blocks.{i}.{ours}.{kind}"
                if key in state:
                    out[f"{prefix}{i}.{theirs}.{kind}"] = state[key]
    return out


LLAMA_LAYER = {
    "attn_norm": "input_layernorm",
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.o_proj": "self_attn.o_proj",
    "attn.q_norm": "self_attn.q_norm",
    "attn.k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn.gate_proj": "mlp.gate_proj",
    "ffn.up_proj": "mlp.up_proj",
    "ffn.down_proj": "mlp.down_proj",
}


def _llama_layout(state: dict[str, torch.Tensor], c: ModelConfig, layer: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": state["tok_embeddings.weight"]}
    out.update(_decoder_layers(state, c, layer, "model.layers."))
    for kind in ("weight", "bias"):
        if f"final_norm.{kind}" in state:
            out[f"model.norm.{kind}"] = state[f"final_norm.{kind}"]
    if not c.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def _llama_family_config(c: ModelConfig) -> dict[str, Any]:
    return {
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.ffn_hidden_size,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.block_size,
        "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
        "rope_parameters": _rope(c),
        "attention_dropout": 0.0,
    }


@HF_ARCHITECTURES.register("llama")
class Llama(HFArchitecture):
    """rope + swiglu + rmsnorm, any heads, biases via attention_bias/mlp_bias; no window, no qk-norm."""

    model_type = "llama"
    model_class = "LlamaForCausalLM"

    @classmethod
    def mismatches(cls, c):
        found = _common_mismatches(c, cls.model_class, positions=("rope",), ffn=("swiglu",), norm=("rmsnorm",))
        if c.sliding_window is not None:
            found.append(f"sliding_window={c.sliding_window} ({cls.model_class} has no sliding-window attention)")
        if c.qk_norm:
            found.append(f"qk_norm=True ({cls.model_class} has no query/key norm)")
        return found

    @classmethod
    def config(cls, c):
        return {**_llama_family_config(c), "attention_bias": c.bias, "mlp_bias": c.bias}

    @classmethod
    def weights(cls, state, c):
        return _llama_layout(state, c, LLAMA_LAYER)


@HF_ARCHITECTURES.register("mistral")
class Mistral(HFArchitecture):
    """Llama plus a sliding window (token i sees j when i - window < j <= i, as slmkit); no biases at all."""

    model_type = "mistral"
    model_class = "MistralForCausalLM"

    @classmethod
    def mismatches(cls, c):
        found = _common_mismatches(c, cls.model_class, positions=("rope",), ffn=("swiglu",), norm=("rmsnorm",))
        if c.bias:
            found.append(f"bias=True ({cls.model_class} has no biases in attention or MLP)")
        if c.qk_norm:
            found.append(f"qk_norm=True ({cls.model_class} has no query/key norm)")
        return found

    @classmethod
    def config(cls, c):
        return {**_llama_family_config(c), "sliding_window": c.sliding_window}

    @classmethod
    def weights(cls, state, c):
        return _llama_layout(state, c, LLAMA_LAYER)


@HF_ARCHITECTURES.register("qwen3")
class Qwen3(HFArchitecture):
    """Llama plus per-head RMS qk-norm before RoPE, optional sliding window on every layer; MLP without biases."""

    model_type = "qwen3"
    model_class = "Qwen3ForCausalLM"

    @classmethod
    def mismatches(cls, c):
        found = _common_mismatches(c, cls.model_class, positions=("rope",), ffn=("swiglu",), norm=("rmsnorm",))
        if not c.qk_norm:
            found.append(f"qk_norm=False ({cls.model_class} always normalizes queries and keys)")
        if c.bias:
            found.append(f"bias=True ({cls.model_class} has no MLP biases)")
        return found

    @classmethod
    def config(cls, c):
        window = c.sliding_window is not None
        return {
            **_llama_family_config(c),
            "attention_bias": False,
            "use_sliding_window": window,
            "sliding_window": c.sliding_window,
            "max_window_layers": 0,
            "layer_types": ["sliding_attention" if window else "full_attention"] * c.n_layer,
        }

    @classmethod
    def weights(cls, state, c):
        return _llama_layout(state, c, LLAMA_LAYER)


@HF_ARCHITECTURES.register("smollm3")
class SmolLM3(HFArchitecture):
    """Llama with per-layer RoPE on/off (all off = no positions), biases, and a sliding window on every layer."""

    model_type = "smollm3"
    model_class = "SmolLM3ForCausalLM"

    @classmethod
    def mismatches(cls, c):
        found = _common_mismatches(c, cls.model_class, positions=("rope", "none"), ffn=("swiglu",), norm=("rmsnorm",))
        if c.qk_norm:
            found.append(f"qk_norm=True ({cls.model_class} has no query/key norm)")
        return found

    @classmethod
    def config(cls, c):
        window = c.sliding_window is not None
        return {
            **_llama_family_config(c),
            "attention_bias": c.bias,
            "mlp_bias": c.bias,
            "no_rope_layers": [int(c.positions == "rope")] * c.n_layer,
            "use_sliding_window": window,
            "sliding_window": c.sliding_window,
            "layer_types": ["sliding_attention" if window else "full_attention"] * c.n_layer,
        }

    @classmethod
    def weights(cls, state, c):
        return _llama_layout(state, c, LLAMA_LAYER)


@HF_ARCHITECTURES.register("stablelm")
class StableLm(HFArchitecture):
    """rope + swiglu + LayerNorm (bias zero when slmkit has none), optional per-head LayerNorm qk-norm; no biases."""

    model_type = "stablelm"
    model_class = "StableLmForCausalLM"

    @classmethod
    def mismatches(cls, c):
        found = _common_mismatches(c, cls.model_class, positions=("rope",), ffn=("swiglu",), norm=("layernorm",))
        if c.bias:
            found.append(f"bias=True ({cls.model_class} has no output-projection or MLP biases, nor qk-norm biases)")
        if c.sliding_window is not None:
            found.append(f"sliding_window={c.sliding_window} ({cls.model_class} has no sliding-window attention)")
        return found

    @classmethod
    def config(cls, c):
        return {
            "vocab_size": c.vocab_size,
            "hidden_size": c.d_model,
            "intermediate_size": c.ffn_hidden_size,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_key_value_heads": c.kv_heads,
            "hidden_act": "silu",
            "max_position_embeddings": c.block_size,
            "layer_norm_eps": c.norm_eps,
            "use_qkv_bias": False,
            "qk_layernorm": c.qk_norm,
            "use_parallel_residual": False,
            "tie_word_embeddings": c.tie_embeddings,
            "rope_parameters": _rope(c),
            "partial_rotary_factor": 1.0,
        }

    @classmethod
    def weights(cls, state, c):
        layer = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith(("attn.q_norm", "attn.k_norm"))}
        out = _llama_layout(state, c, layer)
        if c.qk_norm:
            # StableLM keeps one LayerNorm per head; slmkit shares one across heads, so each head gets a copy.
            for i in range(c.n_layer):
                for ours, theirs, heads in (("q_norm", "q_layernorm", c.n_head), ("k_norm", "k_layernorm", c.kv_heads)):
                    for h in range(heads):
                        out[f"model.layers.{i}.self_attn.{theirs}.norms.{h}.weight"] = state[f"blocks.{i}.attn.{ours}.weight"]
        return out


@HF_ARCHITECTURES.register("starcoder2")
class Starcoder2(HFArchitecture):
    """rope + non-gated MLP (exact gelu or relu2) + LayerNorm, any heads, biases, optional sliding window."""

    model_type = "starcoder2"
    model_class = "Starcoder2ForCausalLM"

    @classmethod
    def mismatches(cls, c):
        found = _common_mismatches(c, cls.model_class, positions=("rope",), ffn=("gelu", "relu2"), norm=("layernorm",))
        if c.qk_norm:
            found.append(f"qk_norm=True ({cls.model_class} has no query/key norm)")
        return found

    @classmethod
    def config(cls, c):
        return {
            "vocab_size": c.vocab_size,
            "hidden_size": c.d_model,
            "intermediate_size": c.ffn_hidden_size,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_key_value_heads": c.kv_heads,
            "hidden_act": "gelu" if c.ffn == "gelu" else "relu2",  # "gelu" is the exact erf GELU in transformers
            "max_position_embeddings": c.block_size,
            "norm_epsilon": c.norm_eps,
            "use_bias": c.bias,
            "sliding_window": c.sliding_window,
            "tie_word_embeddings": c.tie_embeddings,
            "rope_parameters": _rope(c),
            "residual_dropout": 0.0,
            "embedding_dropout": 0.0,
        }

    @classmethod
    def weights(cls, state, c):
        layer = {
            "attn_norm": "input_layernorm",
            "attn.q_proj": "self_attn.q_proj",
            "attn.k_proj": "self_attn.k_proj",
            "attn.v_proj": "self_attn.v_proj",
            "attn.o_proj": "self_attn.o_proj",
            "ffn_norm": "post_attention_layernorm",
            "ffn.up_proj": "mlp.c_fc",
            "ffn.down_proj": "mlp.c_proj",
        }
        return _llama_layout(state, c, layer)


def _fused_qkv(state: dict[str, torch.Tensor], i: int, kind: str) -> torch.Tensor | None:
    parts = [state.get(f"blocks.{i}.attn.{p}_proj.{kind}") for p in "qkv"]
    return None if parts[0] is None else torch.cat(parts, dim=0)


@HF_ARCHITECTURES.register("gpt2")
class GPT2(HFArchitecture):
    """Absolute positions (learned; sinusoidal and none become a fixed wpe table) + gelu/relu2 MLP + LayerNorm, MHA."""

    model_type = "gpt2"
    model_class = "GPT2LMHeadModel"

    @classmethod
    def mismatches(cls, c):
        found = _common_mismatches(
            c, cls.model_class, positions=("learned", "sinusoidal", "none"), ffn=("gelu", "relu2"), norm=("layernorm",)
        )
        found += _mha_only(c, cls.model_class)
        if c.sliding_window is not None:
            found.append(f"sliding_window={c.sliding_window} ({cls.model_class} has no sliding-window attention)")
        if c.qk_norm:
            found.append(f"qk_norm=True ({cls.model_class} has no query/key norm)")
        return found

    @classmethod
    def config(cls, c):
        return {
            "vocab_size": c.vocab_size,
            "n_positions": c.block_size,
            "n_embd": c.d_model,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": c.ffn_hidden_size,
            "activation_function": "gelu" if c.ffn == "gelu" else "relu2",  # not gelu_new: slmkit uses the exact erf GELU
            "layer_norm_epsilon": c.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": c.tie_embeddings,
        }

    @classmethod
    def weights(cls, state, c):
        out = {"transformer.wte.weight": state["tok_embeddings.weight"], "transformer.wpe.weight": _position_table(state, c)}
        for i in range(c.n_layer):
            p, b = f"transformer.h.{i}.", f"blocks.{i}."
            # Conv1D stores [in, out]: every projection is transposed.
            out[p + "attn.c_attn.weight"] = _fused_qkv(state, i, "weight").t()
            out[p + "attn.c_proj.weight"] = state[b + "attn.o_proj.weight"].t()
            out[p + "mlp.c_fc.weight"] = state[b + "ffn.up_proj.weight"].t()
            out[p + "mlp.c_proj.weight"] = state[b + "ffn.down_proj.weight"].t()
            if c.bias:
                out[p + "attn.c_attn.bias"] = _fused_qkv(state, i, "bias")
                out[p + "attn.c_proj.bias"] = state[b + "attn.o_proj.bias"]
                out[p + "mlp.c_fc.bias"] = state[b + "ffn.up_proj.bias"]
                out[p + "mlp.c_proj.bias"] = state[b + "ffn.down_proj.bias"]
            for ours, theirs in (("attn_norm", "ln_1"), ("ffn_norm", "ln_2")):
                for kind in ("weight", "bias"):
                    if f"{b}{ours}.{kind}" in state:
                        out[f"{p}{theirs}.{kind}"] = state[f"{b}{ours}.{kind}"]
        for kind in ("weight", "bias"):
            if f"final_norm.{kind}" in state:
                out[f"transformer.ln_f.{kind}"] = state[f"final_norm.{kind}"]
        if not c.tie_embeddings:
            out["lm_head.weight"] = state["lm_head.weight"]
        return out


def _position_table(state: dict[str, torch.Tensor], c: ModelConfig) -> torch.Tensor:
    """GPT-2's wpe for block_size positions: the learned table, slmkit's own sinusoid table, or zeros (none)."""
    if c.positions == "learned":
        return state["pos_embeddings.weight"]
    zeros = torch.zeros(1, c.block_size, c.d_model)
    if c.positions == "none":
        return zeros[0]
    # The same function the model adds at run time, so the table matches it bit for bit.
    from slmkit.model.positions import POSITIONS

    return POSITIONS.get("sinusoidal")(c).add_to_embeddings(zeros, 0)[0]


@HF_ARCHITECTURES.register("mpt")
class Mpt(HFArchitecture):
    """ALiBi (MPT's slopes equal the paper's for every head count) + exact GELU MLP of width 4*d + bias-free LayerNorm."""

    model_type = "mpt"
    model_class = "MptForCausalLM"

    @classmethod
    def mismatches(cls, c):
        found = _common_mismatches(c, cls.model_class, positions=("alibi",), ffn=("gelu",), norm=("layernorm",))
        found += _mha_only(c, cls.model_class)
        if c.bias:
            found.append(f"bias=True ({cls.model_class} has no biases)")
        if c.ffn_hidden_size != 4 * c.d_model:
            found.append(f"ffn_hidden={c.ffn_hidden_size} ({cls.model_class} fixes the MLP width at 4*d_model={4 * c.d_model})")
        if c.sliding_window is not None:
            found.append(f"sliding_window={c.sliding_window} ({cls.model_class} has no sliding-window attention)")
        if c.qk_norm:
            found.append(f"qk_norm=True ({cls.model_class}'s qk_ln normalizes all heads together, not per head)")
        return found

    @classmethod
    def config(cls, c):
        return {
            "vocab_size": c.vocab_size,
            "d_model": c.d_model,
            "n_heads": c.n_head,
            "n_layers": c.n_layer,
            "expansion_ratio": 4,
            "max_seq_len": c.block_size,
            "layer_norm_epsilon": c.norm_eps,
            "no_bias": True,
            "resid_pdrop": 0.0,
            "emb_pdrop": 0.0,
            "attn_config": {"alibi": True, "alibi_bias_max": 8, "softmax_scale": None, "clip_qkv": None, "qk_ln": False, "attn_pdrop": 0},
            "tie_word_embeddings": c.tie_embeddings,
        }

    @classmethod
    def weights(cls, state, c):
        out = {"transformer.wte.weight": state["tok_embeddings.weight"], "transformer.norm_f.weight": state["final_norm.weight"]}
        for i in range(c.n_layer):
            p, b = f"transformer.blocks.{i}.", f"blocks.{i}."
            out[p + "norm_1.weight"] = state[b + "attn_norm.weight"]
            out[p + "attn.Wqkv.weight"] = _fused_qkv(state, i, "weight")
            out[p + "attn.out_proj.weight"] = state[b + "attn.o_proj.weight"]
            out[p + "norm_2.weight"] = state[b + "ffn_norm.weight"]
            out[p + "ffn.up_proj.weight"] = state[b + "ffn.up_proj.weight"]
            out[p + "ffn.down_proj.weight"] = state[b + "ffn.down_proj.weight"]
        if not c.tie_embeddings:
            out["lm_head.weight"] = state["lm_head.weight"]
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Choosing a class and building the transformers model.

def architecture_mismatches(c: ModelConfig) -> dict[str, list[str]]:
    """Every registered class with the parts of `c` it cannot represent (empty list = exportable as that class)."""
    return {name: HF_ARCHITECTURES.get(name).mismatches(c) for name in PREFERENCE}


def select_architecture(c: ModelConfig) -> type[HFArchitecture]:
    """The preferred stock class that represents `c` exactly; SlmkitError naming the unrepresentable parts otherwise."""
    if not c.causal:
        raise SlmkitError("model.causal=False: a bidirectional encoder is not a causal LM, and export targets AutoModelForCausalLM")
    found = architecture_mismatches(c)
    for name in PREFERENCE:
        if not found[name]:
            return HF_ARCHITECTURES.get(name)
    fewest = min(len(v) for v in found.values())
    closest = [f"{HF_ARCHITECTURES.get(n).model_class}: {'; '.join(v)}" for n, v in found.items() if len(v) == fewest]
    raise SlmkitError(
        f"no stock transformers class represents this model exactly (positions={c.positions}, ffn={c.ffn}, norm={c.norm}, "
        f"n_kv_heads={c.kv_heads}/{c.n_head}, sliding_window={c.sliding_window}, qk_norm={c.qk_norm}, bias={c.bias}), "
        f"and slmkit does not export approximations. The closest classes and what they lack — "
        + " | ".join(closest)
        + ". Exportable: rope+swiglu+rmsnorm (Llama/Mistral/Qwen3/SmolLM3), none+swiglu+rmsnorm (SmolLM3), "
        "rope+swiglu+layernorm without bias (StableLM), rope+gelu|relu2+layernorm (Starcoder2), "
        "learned|sinusoidal|none+gelu|relu2+layernorm with MHA (GPT-2), alibi+gelu+layernorm, MHA, no bias, ffn 4*d (MPT)."
    )


def hf_config(c: ModelConfig, arch: type[HFArchitecture], special_ids: dict[str, int | None]):
    """The transformers config object for `c` as `arch`, with token ids and the class name recorded."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(arch.model_type, **arch.config(c), **special_ids)
    config.architectures = [arch.model_class]
    return config


def hf_state_dict(model: Transformer, arch: type[HFArchitecture], config) -> dict[str, torch.Tensor]:
    """The exported tensors, checked against the names and shapes of the transformers class.

    A bias the class has but slmkit lacks becomes zeros, which computes the same function; anything else missing
    or extra is a bug in the mapping and fails loudly rather than exporting a model that differs.
    """
    from transformers import AutoModelForCausalLM

    state = {k: v.detach() for k, v in model.state_dict().items()}
    ours = arch.weights(state, model.config)
    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(config)
    expected = {k: v for k, v in reference.state_dict().items()}
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    out = {}
    for key, meta in expected.items():
        if key in ours:
            tensor = ours[key]
        elif key.endswith(".bias"):
            tensor = torch.zeros(meta.shape)
        else:
            raise RuntimeError(f"export mapping to {arch.model_class} has no tensor for {key}")
        if tuple(tensor.shape) != tuple(meta.shape):
            raise RuntimeError(f"export mapping to {arch.model_class}: {key} is {tuple(tensor.shape)}, expected {tuple(meta.shape)}")
        out[key] = tensor.contiguous().clone()
    extra = sorted(set(ours) - set(expected))
    if extra:
        raise RuntimeError(f"export mapping to {arch.model_class} produced tensors the class does not have: {extra[:3]}")
    return out
