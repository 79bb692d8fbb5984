"""The model's typed config: every architectural choice of the transformer body, each part chosen by name.

Plain dataclass, no I/O: the recipe's `model:` section maps onto it one key per field. What a part needs of the
config (an even head size, its own hidden width) the part checks and derives itself, through the hooks of its kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from slmkit.errors import SlmkitError
from slmkit.options import option


@dataclass
class ModelConfig:
    vocab_size: int = option(32000, "Vocabulary size; must be >= the tokenizer's vocabulary (padded up is fine); 0 = the tokenizer's size.")
    block_size: int = option(1024, "Context length in tokens: the longest sequence the model sees.")
    n_layer: int = option(12, "Number of transformer blocks.")
    n_head: int = option(12, "Number of query heads.")
    n_kv_heads: Optional[int] = option(
        None, "Key/value heads: None or n_head = multi-head, 1 = multi-query, between = grouped-query."
    )
    d_model: int = option(768, "Width of the residual stream (embedding size).")
    attention: str = option("multihead", "Attention layer by name: how queries, keys and values are formed, masked and cached.", choices="slmkit.model.attention:ATTENTION_LAYERS")
    attention_kernel: str = option("sdpa", "Attention kernel by name: how softmax(QK^T/sqrt(d) + mask) V is computed.", choices="slmkit.model.attention:ATTENTION_KERNELS")
    sliding_window: Optional[int] = option(None, "If set, each token attends only to the last this-many tokens (itself included).")
    qk_norm: bool = option(False, "Normalize queries and keys per head (with the model's norm) before attention.")
    positions: str = option("rope", "Positional encoding by name.", choices="slmkit.model.positions:POSITIONS")
    rope_theta: float = option(10000.0, "RoPE base frequency.")
    ffn: str = option("swiglu", "Feed-forward by name.", choices="slmkit.model.feedforward:FEEDFORWARDS")
    ffn_hidden: Optional[int] = option(None, "Hidden width of the feed-forward; None = the feed-forward's own default for d_model.")
    ffn_multiple_of: int = option(64, "Round a derived hidden width of a gated feed-forward up to a multiple of this.")
    norm: str = option("rmsnorm", "Normalization by name.", choices="slmkit.model.norms:NORMS")
    norm_eps: float = option(1e-5, "Epsilon of every norm.")
    bias: bool = option(False, "Biases in linear layers and LayerNorm (GPT-2 uses them; Llama does not).")
    tie_embeddings: bool = option(True, "Share the token embedding matrix with the language-model head.")
    dropout: float = option(0.0, "Dropout on embeddings, attention probabilities and residual branches.")
    init_std: float = option(0.02, "Standard deviation of the normal init of linear and embedding weights.")
    scaled_residual_init: bool = option(True, "Scale the init of the layers that write into the residual stream by 1/sqrt(2*n_layer) (GPT-2).")
    causal: bool = option(True, "Causal (decoder) attention; False gives a bidirectional encoder body.")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_hidden_size(self) -> int:
        """ffn_hidden, or the width the chosen feed-forward derives from d_model (its own rule)."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        from slmkit.model.feedforward import FEEDFORWARDS  # the parts import this module: resolved at call time

        return FEEDFORWARDS.get(self.ffn).default_hidden_size(self)

    def validate(self) -> "ModelConfig":
        """Raises SlmkitError naming the inconsistent fields; returns self so calls chain.

        Checks the shape of the whole model here, then asks each chosen part for its own requirements.
        """
        for name, value in [("vocab_size", self.vocab_size), ("block_size", self.block_size), ("n_layer", self.n_layer),
                            ("n_head", self.n_head), ("d_model", self.d_model), ("ffn_multiple_of", self.ffn_multiple_of)]:
            if value < 1:
                raise SlmkitError(f"model.{name} must be positive, got {value}")
        if self.d_model % self.n_head:
            raise SlmkitError(f"model.d_model={self.d_model} must be divisible by model.n_head={self.n_head}")
        if self.kv_heads < 1 or self.n_head % self.kv_heads:
            raise SlmkitError(f"model.n_head={self.n_head} must be divisible by model.n_kv_heads={self.kv_heads} (at least 1)")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise SlmkitError("model.sliding_window must be a positive number of tokens, or null to disable it")
        if self.ffn_hidden is not None and self.ffn_hidden < 1:
            raise SlmkitError(f"model.ffn_hidden must be positive or null, got {self.ffn_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise SlmkitError(f"model.dropout={self.dropout} must be in [0, 1)")
        if not self.norm_eps > 0 or not self.init_std > 0 or not self.rope_theta > 0:
            raise SlmkitError(
                f"model.norm_eps ({self.norm_eps}), model.init_std ({self.init_std}) and model.rope_theta "
                f"({self.rope_theta}) must be positive"
            )
        for part in chosen_parts(self):
            part.check(self)
        return self


def chosen_parts(config: ModelConfig) -> list[type]:
    """The part classes this config names, looked up in their registries (an unknown name raises with the choices).

    Imported here, not at the top: the part modules import ModelConfig.
    """
    from slmkit.model.attention import ATTENTION_LAYERS
    from slmkit.model.feedforward import FEEDFORWARDS
    from slmkit.model.norms import NORMS
    from slmkit.model.positions import POSITIONS

    return [
        ATTENTION_LAYERS.get(config.attention),
        POSITIONS.get(config.positions),
        FEEDFORWARDS.get(config.ffn),
        NORMS.get(config.norm),
    ]
