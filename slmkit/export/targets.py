"""The stock transformers families an slmkit model can become and come from, one row each: what it accepts, its
config and its weights, both ways.

`select_target` takes the first row, in table order, that represents a config exactly and refuses with the closest
rows' reasons otherwise — never an approximation. The most widely supported class comes first: Llama-shaped ships as Llama.
Read backwards (`reads`, each weight map's `back`), a row turns the family's config.json into a ModelConfig and names
which class tensors become which slmkit tensors; slmkit/checkpoint/hf_import.py streams them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from slmkit.errors import SlmkitError
from slmkit.export.accepts import Accepts, describe, unrepresentable
from slmkit.model import (CLASSIFIER_HEAD, CRF_PREFIX, EMBEDDING_HEAD, LM_HEAD, MASKED_LM_HEAD, SPAN_HEAD, TOKEN_HEAD, HeadSpec,
                          ModelConfig)
from slmkit.model.crf import TagTransitions

# The config.json key that carries a token-classification head's tag decoding (objective.decoding): transformers keeps
# keys it does not know and ignores them, slmkit's import reads it back, so the tags a re-imported model predicts are
# the exporter's (argmax where the key is absent: a model from elsewhere).
TAG_DECODING_KEY = "slmkit_tag_decoding"
# The config.json key that carries a crf-decoded head's learned transitions ({start, transitions, end} as lists): the
# class's weights hold only the per-token scores, which the CRF reads but does not change, so the few transition
# scores travel beside them as numbers (a float32 written as JSON reads back bit for bit).
TAG_TRANSITIONS_KEY = "slmkit_tag_transitions"

State = dict[str, torch.Tensor]
WeightMap = Callable[[State, ModelConfig], State]  # slmkit's flat state dict -> the class's tensors
Shapes = dict[str, tuple[int, ...]]  # slmkit's tensor shapes by flat name (tok_embeddings.weight, heads.lm.proj.weight)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass(frozen=True)
class Piece:
    """One slmkit tensor read back from the class: `ours` = combine(*tensors named `theirs`).

    A piece names tensors only, so an importer can read them one at a time from the weights file.
    """

    ours: str  # slmkit's flat name (as slmkit_state names it)
    theirs: tuple[str, ...]
    combine: Callable[..., torch.Tensor] = _same


BackMap = Callable[[ModelConfig, Shapes], list[Piece]]  # which class tensors make each slmkit tensor


@dataclass(frozen=True)
class TwoWay:
    """A weight map that also reads back: called as the forward map (slmkit -> class), `back` lists the pieces."""

    forward: WeightMap
    back: BackMap

    def __call__(self, state: State, c: ModelConfig) -> State:
        return self.forward(state, c)


def _rows(t: torch.Tensor, start: int, size: int) -> torch.Tensor:
    return t[start:start + size]


def _split(ours: tuple[str, ...], theirs: str, shapes: Shapes, transposed: bool = False) -> list[Piece]:
    """The slmkit tensors `ours` stacked along dim 0 into the one class tensor `theirs` (fused q/k/v, gate/up); a
    transposed (Conv1D) class tensor is turned back first."""
    pieces, start = [], 0
    for name in ours:
        size = shapes[name][0]
        pieces.append(Piece(name, (theirs,), lambda t, start=start, size=size: _rows(t.t() if transposed else t, start, size)))
        start += size
    return pieces


def _transposed(t: torch.Tensor) -> torch.Tensor:
    return t.t()


@dataclass(frozen=True)
class HeadClass:
    """A head of a family: the transformers class, the Auto class that loads it, where the head's tensors go, and
    what the class needs of it.

    body_prefix renames the body's top module when this class keeps it under another attribute than the family's
    causal LM (LlamaForQuestionAnswering has `transformer.` where LlamaForCausalLM has `model.`); `output` reads the
    class's output as slmkit's head returns it (with `bare`, the class is the bare body and its output is compared
    with slmkit's hidden states); `poolings` and `transforms` are the poolings and head transforms the class computes
    (None = any); `config` adds the config keywords that describe the head (its pooling); `reads` is its inverse,
    the HeadSpec fields of the head a config describes (labels come from the config's id2label).
    """

    model_class: str
    auto_class: str
    weights: TwoWay
    body_prefix: tuple[str, str] | None = None
    output: Callable[[Any], torch.Tensor] = lambda out: out.logits
    poolings: tuple[str, ...] | None = None
    transforms: tuple[str, ...] | None = ("none",)
    config: Callable[[HeadSpec], dict[str, Any]] = lambda spec: {}
    bare: bool = False
    reads: Callable[[dict[str, Any]], dict[str, Any]] = lambda hf: {}


def head_keywords(target: "Target", head: HeadSpec) -> dict[str, Any]:
    """The config keywords that describe `head` in `target`'s class: the class's own (its pooling) and a token head's
    tag decoding. Export writes them and import compares a folder's config against them: one list for both ways."""
    keywords = dict(target.heads[head.kind].config(head))
    if head.kind == TOKEN_HEAD:
        keywords[TAG_DECODING_KEY] = head.decoding
    return keywords


def transitions_keyword(state: State) -> dict[str, Any]:
    """The TAG_TRANSITIONS_KEY entry of a crf-decoded token head's tensors (state as slmkit_state names them); empty
    for any other head."""
    crf = {name.removeprefix(CRF_PREFIX): t.float().tolist() for name, t in state.items() if name.startswith(CRF_PREFIX)}
    return {TAG_TRANSITIONS_KEY: crf} if crf else {}


def transitions_of(hf: dict[str, Any], num_labels: int) -> dict[str, torch.Tensor]:
    """The learned transitions a config.json carries, as TagTransitions' state dict; SlmkitError when they are not
    exactly the tensors of a `num_labels`-label CRF."""
    crf = TagTransitions(num_labels)
    shapes = [list(t.shape) for t in crf.state_dict().values()]
    entry = hf.get(TAG_TRANSITIONS_KEY)
    try:
        crf.load_state_dict({name: torch.tensor(value, dtype=torch.float32) for name, value in entry.items()})
    except (AttributeError, TypeError, ValueError, RuntimeError):
        raise SlmkitError(f"its {TAG_TRANSITIONS_KEY} is not the CRF of a {num_labels}-label head "
                          f"({', '.join(crf.state_dict())} of shapes {shapes}): export the model again with slmkit") from None
    return crf.state_dict()


@dataclass(frozen=True)
class Target:
    """One stock family: what it accepts, its config keywords, where the body's tensors go, and its heads by kind.

    `reads` is `config` backwards: the ModelConfig fields of a config.json of the family (as transformers' config
    class dict). It need not check anything: the importer writes the result forward again with `config` and refuses
    every key that then differs, so whatever the row cannot represent is named by its field. `exports` = False keeps
    a row for import only (a family slmkit reads exactly but never writes, as another row writes the same model).
    """

    name: str
    model_type: str  # transformers' config type, as AutoConfig.for_model takes it
    accepts: Accepts
    config: Callable[[ModelConfig], dict[str, Any]]  # config-class keywords; the caller adds the special token ids
    body: TwoWay | "Renames"  # embeddings, blocks, final norm; a bias the class has and slmkit lacks is zero-filled
    heads: dict[str, HeadClass]  # by slmkit head kind: lm, sequence_classification, token_classification, span
    reads: Callable[[dict[str, Any]], dict[str, Any]]
    exports: bool = True


# Rows in preference order; a row added later is tried last.
TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    if target.name in TARGETS:
        raise ValueError(f"export target {target.name!r} is registered twice")
    TARGETS[target.name] = target
    return target


@dataclass(frozen=True)
class Renames:
    """A weight map that only renames modules, weight and bias wherever slmkit has them.

    `top` maps whole-model modules; `layer` maps block i's modules to names under `layers` ('model.layers.{i}.').
    A tuple of slmkit modules is stacked into one class module (fused q/k/v); `transposed` names the class's Conv1D
    modules, which store weights [in, out].
    """

    top: dict[str, str]
    layers: str
    layer: dict[str | tuple[str, ...], str]
    transposed: tuple[str, ...] = ()

    def pairs(self, c: ModelConfig) -> list[tuple[tuple[str, ...], str]]:
        pairs = [((ours,), theirs) for ours, theirs in self.top.items()]
        for i in range(c.n_layer):
            pairs += [(_in_block(i, ours), self.layers.format(i=i) + theirs) for ours, theirs in self.layer.items()]
        return pairs

    def back(self, c: ModelConfig, shapes: Shapes) -> list[Piece]:
        pieces = []
        for ours, theirs in self.pairs(c):
            for kind in ("weight", "bias"):
                keys = tuple(f"{module}.{kind}" for module in ours)
                if keys[0] not in shapes:
                    continue
                transposed = kind == "weight" and theirs.endswith(self.transposed)
                if len(keys) > 1:
                    pieces += _split(keys, f"{theirs}.{kind}", shapes, transposed)
                elif transposed:
                    pieces.append(Piece(keys[0], (f"{theirs}.{kind}",), _transposed))
                else:
                    pieces.append(Piece(keys[0], (f"{theirs}.{kind}",)))
        return pieces

    def __call__(self, state: State, c: ModelConfig) -> State:
        out = {}
        for ours, theirs in self.pairs(c):
            for kind in ("weight", "bias"):
                keys = [f"{module}.{kind}" for module in ours]
                if keys[0] in state:
                    tensor = torch.cat([state[k] for k in keys]) if len(keys) > 1 else state[keys[0]]
                    out[f"{theirs}.{kind}"] = tensor.t() if kind == "weight" and theirs.endswith(self.transposed) else tensor
        return out


def _in_block(i: int, ours: str | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"blocks.{i}.{module}" for module in (ours if isinstance(ours, tuple) else (ours,)))


def _in_head(kind: str, layers: dict[str, str]) -> TwoWay:
    """The head's layers (weight and bias where they exist) under the class's names: {slmkit layer: class layer}."""
    names = [(f"heads.{kind}.{ours}.{p}", f"{theirs}.{p}") for ours, theirs in layers.items() for p in ("weight", "bias")]

    def weights(state: State, c: ModelConfig) -> State:
        return {theirs: state[ours] for ours, theirs in names if ours in state}

    return TwoWay(weights, lambda c, shapes: [Piece(ours, (theirs,)) for ours, theirs in names if ours in shapes])


def same_copies(*tensors: torch.Tensor) -> torch.Tensor:
    """Copies that must agree (BERT's decoder bias twice, StableLM's per-head norms): the first, when all are equal."""
    for t in tensors[1:]:
        if not torch.equal(t, tensors[0]):
            raise ValueError("copies differ")
    return tensors[0]


def _lm_head_forward(state: State, c: ModelConfig) -> State:
    """The LM head's own matrix; a tied one is the token embedding, which the class ties too."""
    return {} if c.tie_embeddings else {"lm_head.weight": state["heads.lm.proj.weight"]}


# Tied, the importer reads nothing more: the head shares the embeddings read with the body, as the class ties them.
_lm_head_weights = TwoWay(_lm_head_forward, lambda c, shapes: [Piece("heads.lm.proj.weight", ("lm_head.weight",))])


def _renamed(kind: str, ours: str, theirs: str) -> TwoWay:
    """The head's layer `ours` (weight, and bias where it has one) as the class's layer `theirs`."""
    return _in_head(kind, {ours: theirs})


def lm_head(model_class: str) -> HeadClass:
    return HeadClass(model_class, "AutoModelForCausalLM", _lm_head_weights)


def sequence_head(model_class: str) -> HeadClass:
    # transformers pools the rightmost token that is not the pad token: slmkit's `last` pooling of right-padded input.
    return HeadClass(model_class, "AutoModelForSequenceClassification", _renamed(CLASSIFIER_HEAD, "score", "score"),
                poolings=("last",))


def token_head(model_class: str, layer: str = "score") -> HeadClass:
    return HeadClass(model_class, "AutoModelForTokenClassification", _renamed(TOKEN_HEAD, "score", layer))


def span_head(model_class: str, body_prefix: tuple[str, str] | None = None) -> HeadClass:
    return HeadClass(model_class, "AutoModelForQuestionAnswering", _renamed(SPAN_HEAD, "qa_outputs", "qa_outputs"), body_prefix,
                output=lambda out: torch.stack([out.start_logits, out.end_logits], dim=-1))


def task_heads(family: str, qa: bool = True, qa_prefix: tuple[str, str] | None = None, token_layer: str = "score") -> dict[str, HeadClass]:
    """The causal-LM head and the task heads transformers has for a family named like `Llama` (LlamaForCausalLM, ...)."""
    heads = {
        LM_HEAD: lm_head(f"{family}ForCausalLM"),
        CLASSIFIER_HEAD: sequence_head(f"{family}ForSequenceClassification"),
        TOKEN_HEAD: token_head(f"{family}ForTokenClassification", token_layer),
    }
    if qa:
        heads[SPAN_HEAD] = span_head(f"{family}ForQuestionAnswering", qa_prefix)
    return heads


MODEL_AS_TRANSFORMER = ("model.", "transformer.")  # the generic QA classes of some families name their body so


QKV = ("attn.q_proj", "attn.k_proj", "attn.v_proj")
ROPE_DECODER_LAYER = {
    "attn_norm": "input_layernorm",
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.o_proj": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
}
GATED_MLP = {"ffn.gate_proj": "mlp.gate_proj", "ffn.up_proj": "mlp.up_proj", "ffn.down_proj": "mlp.down_proj"}
LLAMA_WEIGHTS = Renames(
    top={"tok_embeddings": "model.embed_tokens", "final_norm": "model.norm"},
    layers="model.layers.{i}.",
    layer={**ROPE_DECODER_LAYER, "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm", **GATED_MLP},
)


def _rope(c: ModelConfig) -> dict[str, Any]:
    # partial_rotary_factor=1.0: StableLM would otherwise rotate only a quarter of each head.
    return {"rope_type": "default", "rope_theta": float(c.rope_theta), "partial_rotary_factor": 1.0}


def _rope_decoder_config(c: ModelConfig) -> dict[str, Any]:
    """The keywords the rope-decoder config classes (Llama family, StableLM, Starcoder2) all name alike."""
    return {
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.ffn_hidden_size,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.kv_heads,
        "max_position_embeddings": c.block_size,
        "tie_word_embeddings": c.tie_embeddings,
        "rope_parameters": _rope(c),
    }


def _llama_config(c: ModelConfig) -> dict[str, Any]:
    return {**_rope_decoder_config(c), "head_dim": c.head_dim, "hidden_act": "silu", "rms_norm_eps": c.norm_eps, "attention_dropout": 0.0}


def _window_layers(c: ModelConfig) -> dict[str, Any]:
    """The same attention on every layer: sliding when slmkit has a window (token i sees j when i - window < j <= i)."""
    window = c.sliding_window is not None
    return {
        "use_sliding_window": window,
        "sliding_window": c.sliding_window,
        "layer_types": ["sliding_attention" if window else "full_attention"] * c.n_layer,
    }


def _rope_theta(hf: dict[str, Any], layer_type: str | None = None) -> float:
    rope = hf.get("rope_parameters") or {}
    if layer_type is not None:
        rope = rope.get(layer_type) or {}
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _read_rope_decoder(hf: dict[str, Any]) -> dict[str, Any]:
    """`_rope_decoder_config` backwards."""
    return {
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "ffn_hidden": hf["intermediate_size"],
        "n_layer": hf["num_hidden_layers"],
        "n_head": hf["num_attention_heads"],
        "n_kv_heads": hf.get("num_key_value_heads") or hf["num_attention_heads"],
        "block_size": hf["max_position_embeddings"],
        "tie_embeddings": hf["tie_word_embeddings"],
        "positions": "rope",
        "rope_theta": _rope_theta(hf),
    }


def _read_llama(hf: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {**_read_rope_decoder(hf), "ffn": "swiglu", "norm": "rmsnorm", "norm_eps": hf["rms_norm_eps"],
            "bias": bool(hf.get("attention_bias", False)), **more}


def _read_window(hf: dict[str, Any]) -> int | None:
    return hf.get("sliding_window") if hf.get("use_sliding_window", True) else None


# rope + swiglu + rmsnorm, any heads, biases via attention_bias/mlp_bias; no window, no qk-norm.
register(Target(
    name="llama",
    model_type="llama",
    accepts=Accepts(positions=("rope",), ffn=("swiglu",), norm=("rmsnorm",), sliding_window=(False,), qk_norm=(False,)),
    config=lambda c: {**_llama_config(c), "attention_bias": c.bias, "mlp_bias": c.bias},
    body=LLAMA_WEIGHTS,
    heads=task_heads("Llama", qa_prefix=MODEL_AS_TRANSFORMER),
    reads=_read_llama,
))

# Llama plus a sliding window (token i sees j when i - window < j <= i, as slmkit); no biases at all.
register(Target(
    name="mistral",
    model_type="mistral",
    accepts=Accepts(
        positions=("rope",), ffn=("swiglu",), norm=("rmsnorm",), bias=(False,), qk_norm=(False,),
        why={"bias": "{cls} has no biases in attention or MLP"},
    ),
    config=lambda c: {**_llama_config(c), "sliding_window": c.sliding_window},
    body=LLAMA_WEIGHTS,
    heads=task_heads("Mistral"),
    reads=lambda hf: _read_llama(hf, bias=False, sliding_window=hf.get("sliding_window")),
))

# Llama plus per-head RMS qk-norm before RoPE, optional sliding window on every layer; MLP without biases.
register(Target(
    name="qwen3",
    model_type="qwen3",
    accepts=Accepts(
        positions=("rope",), ffn=("swiglu",), norm=("rmsnorm",), bias=(False,), qk_norm=(True,),
        why={"bias": "{cls} has no MLP biases"},
    ),
    config=lambda c: {**_llama_config(c), "attention_bias": False, "max_window_layers": 0, **_window_layers(c)},
    body=LLAMA_WEIGHTS,
    heads=task_heads("Qwen3", qa_prefix=MODEL_AS_TRANSFORMER),
    reads=lambda hf: _read_llama(hf, bias=False, qk_norm=True, sliding_window=_read_window(hf)),
))

# Llama with biases on q, k and v only: read as slmkit's biases everywhere, the output projection's and the MLP's zero
# (the same function). Import only: slmkit writes such a model as Llama with attention and MLP biases.
register(Target(
    name="qwen2",
    model_type="qwen2",
    accepts=Accepts(positions=("rope",), ffn=("swiglu",), norm=("rmsnorm",), bias=(True,), qk_norm=(False,)),
    config=lambda c: {k: v for k, v in _llama_config(c).items() if k != "head_dim"} | {"max_window_layers": 0, **_window_layers(c)},
    body=LLAMA_WEIGHTS,
    heads=task_heads("Qwen2", qa_prefix=MODEL_AS_TRANSFORMER),
    reads=lambda hf: _read_llama(hf, bias=True, sliding_window=_read_window(hf)),
    exports=False,
))

# Llama with per-layer RoPE on/off (all off = no positions), biases, and a sliding window on every layer.
register(Target(
    name="smollm3",
    model_type="smollm3",
    accepts=Accepts(positions=("rope", "none"), ffn=("swiglu",), norm=("rmsnorm",), qk_norm=(False,)),
    config=lambda c: {
        **_llama_config(c),
        "attention_bias": c.bias,
        "mlp_bias": c.bias,
        "no_rope_layers": [int(c.positions == "rope")] * c.n_layer,
        **_window_layers(c),
    },
    body=LLAMA_WEIGHTS,
    heads=task_heads("SmolLM3", qa_prefix=MODEL_AS_TRANSFORMER),
    reads=lambda hf: _read_llama(hf, positions="rope" if any(hf.get("no_rope_layers") or [1]) else "none",
                                 bias=bool(hf.get("attention_bias", False)), sliding_window=_read_window(hf)),
))


STABLELM_WEIGHTS = Renames(top=LLAMA_WEIGHTS.top, layers=LLAMA_WEIGHTS.layers, layer={**ROPE_DECODER_LAYER, **GATED_MLP})


def _stablelm_back(c: ModelConfig, shapes: Shapes) -> list[Piece]:
    pieces = STABLELM_WEIGHTS.back(c, shapes)
    if c.qk_norm:  # the heads' copies must agree: slmkit keeps one norm for all heads
        for i in range(c.n_layer):
            for ours, theirs, heads in (("q_norm", "q_layernorm", c.n_head), ("k_norm", "k_layernorm", c.kv_heads)):
                pieces.append(Piece(f"blocks.{i}.attn.{ours}.weight",
                                    tuple(f"model.layers.{i}.self_attn.{theirs}.norms.{h}.weight" for h in range(heads)), same_copies))
    return pieces


def _stablelm_forward(state: State, c: ModelConfig) -> State:
    out = STABLELM_WEIGHTS(state, c)
    if c.qk_norm:
        # StableLM keeps one LayerNorm per head; slmkit shares one across heads, so each head gets a copy.
        for i in range(c.n_layer):
            for ours, theirs, heads in (("q_norm", "q_layernorm", c.n_head), ("k_norm", "k_layernorm", c.kv_heads)):
                for h in range(heads):
                    out[f"model.layers.{i}.self_attn.{theirs}.norms.{h}.weight"] = state[f"blocks.{i}.attn.{ours}.weight"]
    return out


_stablelm_weights = TwoWay(_stablelm_forward, _stablelm_back)


# rope + swiglu + LayerNorm (bias zero when slmkit has none), optional per-head LayerNorm qk-norm; no biases.
register(Target(
    name="stablelm",
    model_type="stablelm",
    accepts=Accepts(
        positions=("rope",), ffn=("swiglu",), norm=("layernorm",), bias=(False,), sliding_window=(False,),
        why={"bias": "{cls} has no output-projection or MLP biases, nor qk-norm biases"},
    ),
    config=lambda c: {
        **_rope_decoder_config(c),
        "hidden_act": "silu",
        "layer_norm_eps": c.norm_eps,
        "use_qkv_bias": False,
        "qk_layernorm": c.qk_norm,
        "use_parallel_residual": False,
        "partial_rotary_factor": 1.0,
    },
    body=_stablelm_weights,
    heads=task_heads("StableLm", qa=False),
    reads=lambda hf: {**_read_rope_decoder(hf), "ffn": "swiglu", "norm": "layernorm", "norm_eps": hf["layer_norm_eps"],
                      "bias": False, "qk_norm": bool(hf.get("qk_layernorm"))},
))

def _activation(names: dict[str, str]) -> tuple[Callable[[ModelConfig], str], Callable[[str], str]]:
    """A class's activation name for slmkit's ffn and back; a name slmkit lacks reads as itself and is refused by name."""
    ours = {theirs: ffn for ffn, theirs in names.items()}
    return (lambda c: names[c.ffn]), (lambda theirs: ours.get(theirs, theirs))


# "gelu" is the exact erf GELU in transformers, "gelu_pytorch_tanh" and "gelu_new" its tanh approximation.
STARCODER2_ACT, STARCODER2_FFN = _activation({"gelu": "gelu", "relu2": "relu2", "gelu_tanh": "gelu_pytorch_tanh"})

# rope + non-gated MLP (exact or tanh gelu, relu2) + LayerNorm, any heads, biases, optional sliding window.
register(Target(
    name="starcoder2",
    model_type="starcoder2",
    accepts=Accepts(positions=("rope",), ffn=("gelu", "relu2", "gelu_tanh"), norm=("layernorm",), qk_norm=(False,)),
    config=lambda c: {
        **_rope_decoder_config(c),
        "hidden_act": STARCODER2_ACT(c),
        "norm_epsilon": c.norm_eps,
        "use_bias": c.bias,
        "sliding_window": c.sliding_window,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
    },
    body=Renames(
        top=LLAMA_WEIGHTS.top,
        layers=LLAMA_WEIGHTS.layers,
        layer={**ROPE_DECODER_LAYER, "ffn.up_proj": "mlp.c_fc", "ffn.down_proj": "mlp.c_proj"},
    ),
    heads=task_heads("Starcoder2", qa=False),
    reads=lambda hf: {**_read_rope_decoder(hf), "ffn": STARCODER2_FFN(hf["hidden_act"]), "norm": "layernorm",
                      "norm_eps": hf["norm_epsilon"], "bias": bool(hf.get("use_bias")), "sliding_window": hf.get("sliding_window")},
))


GPT2_WEIGHTS = Renames(
    top={"tok_embeddings": "transformer.wte", "final_norm": "transformer.ln_f"},
    layers="transformer.h.{i}.",
    layer={"attn_norm": "ln_1", QKV: "attn.c_attn", "attn.o_proj": "attn.c_proj", "ffn_norm": "ln_2",
           "ffn.up_proj": "mlp.c_fc", "ffn.down_proj": "mlp.c_proj"},
    transposed=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
)


def _gpt2_forward(state: State, c: ModelConfig) -> State:
    return {**GPT2_WEIGHTS(state, c), "transformer.wpe.weight": _position_table(state, c)}


# An imported GPT-2 has learned positions: its wpe is the table slmkit learns.
_gpt2_weights = TwoWay(_gpt2_forward, lambda c, shapes: [*GPT2_WEIGHTS.back(c, shapes),
                                                          Piece("pos_embeddings.weight", ("transformer.wpe.weight",))])


def _position_table(state: State, c: ModelConfig) -> torch.Tensor:
    """GPT-2's wpe for block_size positions: the learned table, slmkit's own sinusoid table, or zeros (none)."""
    if c.positions == "learned":
        return state["pos_embeddings.weight"]
    zeros = torch.zeros(1, c.block_size, c.d_model)
    if c.positions == "none":
        return zeros[0]
    # The same function the model adds at run time, so the table matches it bit for bit.
    from slmkit.model.positions import POSITIONS

    return POSITIONS.get("sinusoidal")(c).add_to_embeddings(zeros, 0)[0]


GPT2_ACT, GPT2_FFN = _activation({"gelu": "gelu", "relu2": "relu2", "gelu_tanh": "gelu_new"})

# Absolute positions (learned; sinusoidal and none become a fixed wpe table) + gelu/relu2 MLP + LayerNorm, MHA.
register(Target(
    name="gpt2",
    model_type="gpt2",
    accepts=Accepts(
        positions=("learned", "sinusoidal", "none"), ffn=("gelu", "relu2", "gelu_tanh"), norm=("layernorm",),
        grouped_query=(False,), sliding_window=(False,), qk_norm=(False,),
    ),
    config=lambda c: {
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_embd": c.d_model,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": c.ffn_hidden_size,
        "activation_function": GPT2_ACT(c),
        "layer_norm_epsilon": c.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": c.tie_embeddings,
    },
    body=_gpt2_weights,
    heads={**task_heads("GPT2", token_layer="classifier"), LM_HEAD: lm_head("GPT2LMHeadModel")},
    # GPT-2 always has biases, so an imported one does too.
    reads=lambda hf: {
        "vocab_size": hf["vocab_size"], "block_size": hf["n_positions"], "d_model": hf["n_embd"], "n_layer": hf["n_layer"],
        "n_head": hf["n_head"], "ffn_hidden": hf.get("n_inner") or 4 * hf["n_embd"], "positions": "learned",
        "ffn": GPT2_FFN(hf["activation_function"]), "norm": "layernorm", "norm_eps": hf["layer_norm_epsilon"],
        "bias": True, "tie_embeddings": hf["tie_word_embeddings"],
    },
))

# ALiBi (MPT's slopes equal the paper's for every head count) + exact GELU MLP of width 4*d + bias-free LayerNorm.
register(Target(
    name="mpt",
    model_type="mpt",
    accepts=Accepts(
        positions=("alibi",), ffn=("gelu",), norm=("layernorm",), grouped_query=(False,), bias=(False,), ffn_width=(4,),
        sliding_window=(False,), qk_norm=(False,),
        why={"qk_norm": "{cls}'s qk_ln normalizes all heads together, not per head"},
    ),
    config=lambda c: {
        "vocab_size": c.vocab_size,
        "d_model": c.d_model,
        "n_heads": c.n_head,
        "n_layers": c.n_layer,
        "expansion_ratio": c.ffn_hidden_size // c.d_model,
        "max_seq_len": c.block_size,
        "layer_norm_epsilon": c.norm_eps,
        "no_bias": True,
        "resid_pdrop": 0.0,
        "emb_pdrop": 0.0,
        "attn_config": {"alibi": True, "alibi_bias_max": 8, "softmax_scale": None, "clip_qkv": None, "qk_ln": False, "attn_pdrop": 0},
        "tie_word_embeddings": c.tie_embeddings,
    },
    body=Renames(
        top={"tok_embeddings": "transformer.wte", "final_norm": "transformer.norm_f"},
        layers="transformer.blocks.{i}.",
        layer={"attn_norm": "norm_1", QKV: "attn.Wqkv", "attn.o_proj": "attn.out_proj", "ffn_norm": "norm_2",
               "ffn.up_proj": "ffn.up_proj", "ffn.down_proj": "ffn.down_proj"},
    ),
    heads=task_heads("Mpt", token_layer="classifier"),
    reads=lambda hf: {
        "vocab_size": hf["vocab_size"], "d_model": hf["d_model"], "n_head": hf["n_heads"], "n_layer": hf["n_layers"],
        "ffn_hidden": hf["expansion_ratio"] * hf["d_model"], "block_size": hf["max_seq_len"], "positions": "alibi",
        "ffn": "gelu", "norm": "layernorm", "norm_eps": hf["layer_norm_epsilon"], "bias": False,
        "tie_embeddings": hf["tie_word_embeddings"],
    },
))


# ---------------------------------------------------------------------------------------------------------------------
# Encoders (model.causal=false): the masked-LM head and the task heads, each class with the head transform it applies.

def _masked_lm_weights(transform: dict[str, str], decoder: str, extra_bias: tuple[str, ...] = ()) -> TwoWay:
    """The prediction transform and the decoder (tied or not, the class holds its weight); BERT keeps the decoder's
    bias a second time as `cls.predictions.bias`."""
    layers = _in_head(MASKED_LM_HEAD, {f"transform.{ours}": theirs for ours, theirs in transform.items()})

    def weights(state: State, c: ModelConfig) -> State:
        bias = state["heads.masked_lm.decoder.bias"]
        return {**layers(state, c), f"{decoder}.weight": state["heads.masked_lm.decoder.weight"], f"{decoder}.bias": bias,
                **{name: bias for name in extra_bias}}

    def back(c: ModelConfig, shapes: Shapes) -> list[Piece]:
        return [*layers.back(c, shapes), Piece("heads.masked_lm.decoder.weight", (f"{decoder}.weight",)),
                Piece("heads.masked_lm.decoder.bias", (f"{decoder}.bias", *extra_bias), same_copies)]

    return TwoWay(weights, back)


NO_WEIGHTS = TwoWay(lambda state, c: {}, lambda c, shapes: [])


def _bare_body(model_class: str, body_prefix: tuple[str, str]) -> HeadClass:
    """The body alone (AutoModel): what an embedding model exports as, its vectors pooled by sentence-transformers."""
    return HeadClass(model_class, "AutoModel", NO_WEIGHTS, body_prefix, output=lambda out: out.last_hidden_state,
                transforms=None, bare=True)


MODERNBERT_HEAD = {"dense": "head.dense", "norm": "head.norm"}  # ModernBertPredictionHead, before every head's output
MODERNBERT_POOLING = {"first": "cls", "mean": "mean"}


def _modernbert_config(c: ModelConfig) -> dict[str, Any]:
    window = c.sliding_window or c.block_size
    local_theta = c.local_rope_theta if c.local_rope_theta is not None else c.rope_theta
    return {
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.ffn_hidden_size,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "hidden_activation": MODERNBERT_ACT(c),  # "gelu" is the exact erf GELU in transformers
        "max_position_embeddings": c.block_size,
        "norm_eps": c.norm_eps,
        "norm_bias": c.bias,
        "attention_bias": c.bias,
        "mlp_bias": c.bias,
        "classifier_bias": c.bias,
        "decoder_bias": True,
        "classifier_activation": "gelu",
        "layer_types": ["sliding_attention" if c.layer_window(i) else "full_attention" for i in range(c.n_layer)],
        # ModernBERT lets token i see j when |i - j| <= local_attention // 2; slmkit's window, when |i - j| < window.
        "local_attention": 2 * (window - 1),
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": float(c.rope_theta)},
                            "sliding_attention": {"rope_type": "default", "rope_theta": float(local_theta)}},
        "embedding_dropout": 0.0,
        "attention_dropout": 0.0,
        "mlp_dropout": 0.0,
        "classifier_dropout": 0.0,
        "tie_word_embeddings": c.tie_embeddings,
    }


def _read_modernbert(hf: dict[str, Any]) -> dict[str, Any]:
    """`_modernbert_config` backwards: the layer types give the window's layers, local_attention its width."""
    types = hf.get("layer_types") or ["full_attention"] * hf["num_hidden_layers"]
    full = [i for i, kind in enumerate(types) if kind == "full_attention"]
    windowed = len(full) < len(types)
    global_every = (full[1] if len(full) > 1 else len(types)) if windowed and full else 0
    return {
        "vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"], "ffn_hidden": hf["intermediate_size"],
        "n_layer": hf["num_hidden_layers"], "n_head": hf["num_attention_heads"], "block_size": hf["max_position_embeddings"],
        "causal": False, "embedding_norm": True, "positions": "rope", "norm": "layernorm", "norm_eps": hf["norm_eps"],
        "ffn": MODERNBERT_FFN(hf["hidden_activation"]), "bias": bool(hf.get("norm_bias")),
        "sliding_window": hf["local_attention"] // 2 + 1 if windowed else None, "global_every": global_every,
        "rope_theta": _rope_theta(hf, "full_attention"),
        "local_rope_theta": _rope_theta(hf, "sliding_attention") if windowed else None,
        "tie_embeddings": hf["tie_word_embeddings"],
    }


MODERNBERT_ACT, MODERNBERT_FFN = _activation({"geglu": "gelu", "swiglu": "silu"})

# Pre-norm encoder: LayerNorm after the embeddings (the first block reads them unnormed again), RoPE with its own base
# on the sliding-window layers, GeGLU or SwiGLU, multi-head attention; every head passes its prediction head first.
register(Target(
    name="modernbert",
    model_type="modernbert",
    accepts=Accepts(
        causal=(False,), embedding_norm=(True,), positions=("rope",), ffn=("geglu", "swiglu"), norm=("layernorm",),
        grouped_query=(False,), qk_norm=(False,), mixed_windows=None, local_rope_theta=None,
    ),
    config=_modernbert_config,
    body=Renames(
        top={"tok_embeddings": "model.embeddings.tok_embeddings", "emb_norm": "model.embeddings.norm",
             "final_norm": "model.final_norm"},
        layers="model.layers.{i}.",
        layer={"attn_norm": "attn_norm", QKV: "attn.Wqkv", "attn.o_proj": "attn.Wo", "ffn_norm": "mlp_norm",
               ("ffn.gate_proj", "ffn.up_proj"): "mlp.Wi", "ffn.down_proj": "mlp.Wo"},
    ),
    heads={
        MASKED_LM_HEAD: HeadClass("ModernBertForMaskedLM", "AutoModelForMaskedLM", _masked_lm_weights(MODERNBERT_HEAD, "decoder"),
                          transforms=None),
        CLASSIFIER_HEAD: HeadClass(
            "ModernBertForSequenceClassification", "AutoModelForSequenceClassification",
            _in_head(CLASSIFIER_HEAD, {"transform.dense": "head.dense", "transform.norm": "head.norm", "score": "classifier"}),
            poolings=tuple(MODERNBERT_POOLING), transforms=("prediction",),
            config=lambda spec: {"classifier_pooling": MODERNBERT_POOLING.get(spec.pooling, spec.pooling)},
            reads=lambda hf: {"pooling": {v: k for k, v in MODERNBERT_POOLING.items()}.get(hf["classifier_pooling"], hf["classifier_pooling"])}),
        TOKEN_HEAD: HeadClass(
            "ModernBertForTokenClassification", "AutoModelForTokenClassification",
            _in_head(TOKEN_HEAD, {"transform.dense": "head.dense", "transform.norm": "head.norm", "score": "classifier"}),
            transforms=("prediction",)),
        SPAN_HEAD: HeadClass(
            "ModernBertForQuestionAnswering", "AutoModelForQuestionAnswering",
            _in_head(SPAN_HEAD, {"transform.dense": "head.dense", "transform.norm": "head.norm", "qa_outputs": "classifier"}),
            output=lambda out: torch.stack([out.start_logits, out.end_logits], dim=-1), transforms=("prediction",)),
        EMBEDDING_HEAD: _bare_body("ModernBertModel", ("model.", "")),
    },
    reads=_read_modernbert,
))


def _bert_forward(state: State, c: ModelConfig) -> State:
    # BERT adds a token-type embedding to every token; with one type of zeros it adds nothing.
    return {**BERT_WEIGHTS(state, c), "bert.embeddings.position_embeddings.weight": _position_table(state, c),
            "bert.embeddings.token_type_embeddings.weight": torch.zeros(1, c.d_model)}


def _with_first_type(positions: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    return positions + types[0]


# slmkit reads every text as BERT's first segment (token type 0), which BERT adds to every position: an imported BERT
# folds that row into its learned position table, so it computes the same for every input slmkit gives it.
_bert_weights = TwoWay(_bert_forward, lambda c, shapes: [
    *BERT_WEIGHTS.back(c, shapes),
    Piece("pos_embeddings.weight", ("bert.embeddings.position_embeddings.weight", "bert.embeddings.token_type_embeddings.weight"),
          _with_first_type),
])


BERT_WEIGHTS = Renames(
    top={"tok_embeddings": "bert.embeddings.word_embeddings", "emb_norm": "bert.embeddings.LayerNorm"},
    layers="bert.encoder.layer.{i}.",
    layer={"attn.q_proj": "attention.self.query", "attn.k_proj": "attention.self.key", "attn.v_proj": "attention.self.value",
           "attn.o_proj": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
           "ffn.up_proj": "intermediate.dense", "ffn.down_proj": "output.dense", "ffn_norm": "output.LayerNorm"},
)


# The classic post-norm encoder: absolute positions (learned; sinusoidal and none become a fixed table), LayerNorm after
# the embeddings and after each residual sum, exact-GELU MLP, multi-head attention; biases everywhere (zero when slmkit
# has none). The masked LM transforms with dense + GELU + LayerNorm; the sequence classifier reads the first token
# through the pooler (dense + tanh); token and span classes read the hidden states as they are.
register(Target(
    name="bert",
    model_type="bert",
    accepts=Accepts(
        causal=(False,), block=("postnorm",), embedding_norm=(True,), positions=("learned", "sinusoidal", "none"),
        ffn=("gelu",), norm=("layernorm",), grouped_query=(False,), sliding_window=(False,), qk_norm=(False,),
    ),
    config=lambda c: {
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "intermediate_size": c.ffn_hidden_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": c.block_size,
        "type_vocab_size": 1,
        "layer_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
    },
    body=_bert_weights,
    heads={
        MASKED_LM_HEAD: HeadClass("BertForMaskedLM", "AutoModelForMaskedLM",
                          _masked_lm_weights({"dense": "cls.predictions.transform.dense", "norm": "cls.predictions.transform.LayerNorm"},
                                             "cls.predictions.decoder", extra_bias=("cls.predictions.bias",)),
                          transforms=None),
        CLASSIFIER_HEAD: HeadClass(
            "BertForSequenceClassification", "AutoModelForSequenceClassification",
            _in_head(CLASSIFIER_HEAD, {"transform.dense": "bert.pooler.dense", "score": "classifier"}),
            poolings=("first",), transforms=("pooler",)),
        TOKEN_HEAD: HeadClass("BertForTokenClassification", "AutoModelForTokenClassification",
                                     _renamed(TOKEN_HEAD, "score", "classifier")),
        SPAN_HEAD: span_head("BertForQuestionAnswering"),
    },
    reads=lambda hf: {
        "vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"], "n_layer": hf["num_hidden_layers"],
        "n_head": hf["num_attention_heads"], "ffn_hidden": hf["intermediate_size"], "block_size": hf["max_position_embeddings"],
        "causal": False, "block": "postnorm", "embedding_norm": True, "positions": "learned", "ffn": "gelu",
        "norm": "layernorm", "norm_eps": hf["layer_norm_eps"], "bias": True, "tie_embeddings": hf["tie_word_embeddings"],
    },
))


# ---------------------------------------------------------------------------------------------------------------------
# Choosing a row.

def target_mismatches(c: ModelConfig, target: Target, head: str = LM_HEAD) -> list[str]:
    """Every part of `c` the target's class for `head` cannot represent, each as 'field=value (why)'; empty = exportable."""
    return unrepresentable(c, target.accepts, target.heads[head].model_class)


def select_target(c: ModelConfig, head: str = LM_HEAD) -> Target:
    """The first row whose `head` class represents `c` exactly; SlmkitError naming the unrepresentable parts otherwise."""
    rows = [t for t in TARGETS.values() if head in t.heads and t.exports]
    if not rows:
        raise SlmkitError(f"no stock transformers class has a {head} head of this kind; slmkit exports {head} models to none")
    found = {t.name: target_mismatches(c, t, head) for t in rows}
    for t in rows:
        if not found[t.name]:
            return t
    fewest = min(len(v) for v in found.values())
    closest = [f"{t.heads[head].model_class}: {'; '.join(found[t.name])}" for t in rows if len(found[t.name]) == fewest]
    raise SlmkitError(
        f"no stock transformers class represents this model exactly (positions={c.positions}, ffn={c.ffn}, norm={c.norm}, "
        f"n_kv_heads={c.kv_heads}/{c.n_head}, sliding_window={c.sliding_window}, qk_norm={c.qk_norm}, bias={c.bias}), "
        f"and slmkit does not export approximations. The closest classes and what they lack — "
        + " | ".join(closest)
        + f". Exportable: {exportable_forms(head)}."
    )


def exportable_forms(head: str = LM_HEAD) -> str:
    """What each row's `head` class takes, from the table: 'LlamaForCausalLM (rope, swiglu, rmsnorm, ...); ...'."""
    return "; ".join(f"{t.heads[head].model_class} ({describe(t.accepts)})" for t in TARGETS.values()
                     if head in t.heads and t.exports)
