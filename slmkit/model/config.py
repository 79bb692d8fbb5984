"""The model's typed config: every architectural choice of the decoder, each part chosen by name.

Plain dataclass, no I/O: the recipe's `model:` section maps onto it one key per field.
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
    attention: str = option("sdpa", "Attention kernel by name: sdpa (torch scaled_dot_product_attention, flash on GPU) or eager.")
    sliding_window: Optional[int] = option(None, "If set, each token attends only to the last this-many tokens (itself included).")
    qk_norm: bool = option(False, "Normalize queries and keys per head (with the model's norm) before attention.")
    positions: str = option("rope", "Positional encoding by name: learned, sinusoidal, rope, alibi, none.")
    rope_theta: float = option(10000.0, "RoPE base frequency.")
    ffn: str = option("swiglu", "Feed-forward by name: gelu, swiglu, relu2.")
    ffn_hidden: Optional[int] = option(
        None, "Hidden width of the feed-forward; None = 4*d_model (gelu, relu2) or 8/3*d_model rounded up to ffn_multiple_of (swiglu)."
    )
    ffn_multiple_of: int = option(64, "Round a derived swiglu hidden width up to a multiple of this.")
    norm: str = option("rmsnorm", "Normalization by name: layernorm or rmsnorm.")
    norm_eps: float = option(1e-5, "Epsilon of every norm.")
    bias: bool = option(False, "Biases in linear layers and LayerNorm (GPT-2 uses them; Llama does not).")
    tie_embeddings: bool = option(True, "Share the token embedding matrix with the output projection.")
    dropout: float = option(0.0, "Dropout on embeddings, attention probabilities and residual branches.")
    init_std: float = option(0.02, "Standard deviation of the normal init of linear and embedding weights.")
    scaled_residual_init: bool = option(True, "Scale the init of residual output projections by 1/sqrt(2*n_layer) (GPT-2).")
    causal: bool = option(True, "Causal (decoder) attention; False gives a bidirectional encoder body.")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_hidden_size(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if self.ffn == "swiglu":
            hidden = int(8 * self.d_model / 3)
            return -(-hidden // self.ffn_multiple_of) * self.ffn_multiple_of
        return 4 * self.d_model

    def validate(self) -> "ModelConfig":
        """Raises SlmkitError naming the inconsistent fields; returns self so calls chain."""
        if self.d_model % self.n_head:
            raise SlmkitError(f"model.d_model={self.d_model} must be divisible by model.n_head={self.n_head}")
        if self.head_dim % 2 and self.positions == "rope":
            raise SlmkitError(f"rope needs an even head dimension; d_model/n_head = {self.head_dim}")
        if self.n_head % self.kv_heads:
            raise SlmkitError(f"model.n_head={self.n_head} must be divisible by model.n_kv_heads={self.kv_heads}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise SlmkitError("model.sliding_window must be a positive number of tokens, or null to disable it")
        if not 0.0 <= self.dropout < 1.0:
            raise SlmkitError(f"model.dropout={self.dropout} must be in [0, 1)")
        for name, value in [("vocab_size", self.vocab_size), ("block_size", self.block_size), ("n_layer", self.n_layer)]:
            if value < 1:
                raise SlmkitError(f"model.{name} must be positive, got {value}")
        return self
