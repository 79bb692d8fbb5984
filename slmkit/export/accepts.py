"""What a runtime's class can express of a ModelConfig, as data, and the one check that names every part it cannot.

A target row (and GGUF) states the values it `Accepts`; `unrepresentable` compares a config with them feature by
feature and words each refusal as 'field=value (why)', so no class needs its own checking code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from slmkit.model import ModelConfig

Values = tuple | None  # the values a class takes; None = any


@dataclass(frozen=True)
class Accepts:
    """The values of each feature a class represents exactly (None = any); `why` words a refusal in the class's terms.

    A `why` text replaces the feature's default reason for this class: a template over {cls} (its name) and {c} (the config).
    """

    causal: Values = (True,)  # decoders; an encoder family takes (False,)
    block: Values = ("prenorm",)
    embedding_norm: Values = (False,)
    positions: Values = None
    ffn: Values = None
    norm: Values = None
    grouped_query: Values = None  # n_kv_heads != n_head
    bias: Values = None
    ffn_width: Values = None  # ffn_hidden as a multiple of d_model, where the class fixes the MLP width
    sliding_window: Values = None
    qk_norm: Values = None
    mixed_windows: Values = (False,)  # global and sliding-window layers side by side (model.global_every)
    local_rope_theta: Values = (False,)  # another RoPE base on the sliding-window layers
    logit_softcap: Values = (False,)  # no exported family caps its logits with tanh
    why: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.why) - {feature.name for feature in FEATURES}
        if unknown:
            raise ValueError(f"Accepts.why names no feature: {sorted(unknown)}")


@dataclass(frozen=True)
class Feature:
    """One property of a ModelConfig that a class may not express: how to read it, name it, refuse it and list it."""

    name: str  # the Accepts field that holds the values a class takes
    value: Callable[[ModelConfig], Any]
    shown: Callable[[ModelConfig], str]  # how a refusal names the config's value: 'n_kv_heads=2'
    why: Callable[[str, ModelConfig, tuple], str]  # the default reason (class name, config, values it takes)
    label: Callable[[tuple], str]  # the restriction as the summary of exportable forms writes it; '' = unsaid


def _choice(name: str) -> Feature:
    """A part chosen by name (positions, ffn, norm): the class takes some of the names."""
    return Feature(
        name,
        lambda c: getattr(c, name),
        lambda c: f"{name}={getattr(c, name)}",
        lambda cls, c, values: f"{cls} supports {name} in: {', '.join(map(str, values))}",
        lambda values: "|".join(map(str, values)),
    )


def _switch(name: str, value: Callable[[ModelConfig], bool], shown: Callable[[ModelConfig], str],
            without: str, always: str, labels: tuple[str, str]) -> Feature:
    """A yes/no property: `without` is why a class that lacks it refuses it, `always` why one that always has it refuses
    its absence (both templates over {cls} and {c}); labels = (lacking, required) for the summary."""
    return Feature(
        name,
        value,
        shown,
        lambda cls, c, values: (always if values == (True,) else without).format(cls=cls, c=c),
        lambda values: {(False,): labels[0], (True,): labels[1]}.get(tuple(values), ""),
    )


# In this order a refusal lists the parts a class cannot express.
FEATURES = (
    _switch("causal", lambda c: c.causal, lambda c: f"causal={c.causal}",
            "{cls} is a bidirectional encoder", "{cls} is a causal LM; causal=False makes a bidirectional encoder",
            ("bidirectional", "")),
    Feature(
        "block",
        lambda c: c.block,
        lambda c: f"block={c.block}",
        lambda cls, c, values: f"{cls} has {' or '.join(values)} blocks",
        lambda values: "" if tuple(values) == ("prenorm",) else f"{'|'.join(values)} blocks",  # pre-norm goes unsaid
    ),
    _switch("embedding_norm", lambda c: c.embedding_norm, lambda c: f"embedding_norm={c.embedding_norm}",
            "{cls} has no norm after the embeddings", "{cls} always normalizes the embeddings",
            ("", "embedding norm")),
    _choice("positions"),
    _choice("ffn"),
    _choice("norm"),
    _switch("grouped_query", lambda c: c.kv_heads != c.n_head, lambda c: f"n_kv_heads={c.kv_heads}",
            "{cls} has multi-head attention only: n_kv_heads must equal n_head={c.n_head}",
            "{cls} has grouped-query attention only: n_kv_heads must be below n_head={c.n_head}",
            ("multi-head attention only", "grouped-query attention required")),
    _switch("bias", lambda c: c.bias, lambda c: f"bias={c.bias}",
            "{cls} has no biases", "{cls} always has biases", ("no bias", "bias required")),
    Feature(
        "ffn_width",
        lambda c: c.ffn_hidden_size / c.d_model,
        lambda c: f"ffn_hidden={c.ffn_hidden_size}",
        lambda cls, c, values: f"{cls} fixes the MLP width at {values[0]}*d_model={values[0] * c.d_model}",
        lambda values: f"ffn {values[0]}*d_model",
    ),
    _switch("sliding_window", lambda c: c.sliding_window is not None, lambda c: f"sliding_window={c.sliding_window}",
            "{cls} has no sliding-window attention", "{cls} always has a sliding window",
            ("no sliding window", "sliding window required")),
    _switch("qk_norm", lambda c: c.qk_norm, lambda c: f"qk_norm={c.qk_norm}",
            "{cls} has no query/key norm", "{cls} always normalizes queries and keys", ("no qk-norm", "qk-norm required")),
    _switch("mixed_windows", lambda c: bool(c.global_every and c.sliding_window), lambda c: f"global_every={c.global_every}",
            "{cls} gives every layer the same attention span", "{cls} alternates global and local layers",
            ("", "")),
    _switch("local_rope_theta", lambda c: c.local_rope_theta not in (None, c.rope_theta) and c.sliding_window is not None,
            lambda c: f"local_rope_theta={c.local_rope_theta}", "{cls} rotates every layer with one RoPE base",
            "{cls} needs another RoPE base on its local layers", ("", "")),
    _switch("logit_softcap", lambda c: c.logit_softcap is not None, lambda c: f"logit_softcap={c.logit_softcap}",
            "{cls} has no logit soft-capping", "{cls} always caps its logits", ("", "")),
)


def unrepresentable(c: ModelConfig, accepts: Accepts, cls: str) -> list[str]:
    """Every part of `c` the class named `cls` cannot represent exactly, each as 'field=value (why)'; empty = exportable."""
    found = []
    for feature in FEATURES:
        values = getattr(accepts, feature.name)
        if values is None or feature.value(c) in values:
            continue
        why = accepts.why.get(feature.name)
        found.append(f"{feature.shown(c)} ({why.format(cls=cls, c=c) if why else feature.why(cls, c, values)})")
    return found


def describe(accepts: Accepts) -> str:
    """The restrictions of `accepts` in a few words, e.g. 'rope, swiglu, rmsnorm, no sliding window'."""
    labels = (feature.label(getattr(accepts, feature.name)) for feature in FEATURES if getattr(accepts, feature.name) is not None)
    return ", ".join(label for label in labels if label)
