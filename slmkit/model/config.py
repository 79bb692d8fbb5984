"""The model's typed config: every architectural choice of the transformer body, each part chosen by name.

Plain dataclass, no I/O: the recipe's `model:` section maps onto it one key per field. What a part needs of the
config (an even head size, its own hidden width) the part checks and derives itself, through the hooks of its kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from slmkit.errors import SlmkitError
from slmkit.model.registries import ATTENTION_LAYERS, BLOCKS, FEEDFORWARDS, NORMS, POSITIONS
from slmkit.options import above, at_least, between, check_values, option


@dataclass
class ModelConfig:
    vocab_size: int = option(32000, "Vocabulary size; must be >= the tokenizer's vocabulary (padded up is fine); 0 = the tokenizer's size.", bounds=at_least(0))
    block_size: int = option(1024, "Context length in tokens: the longest sequence the model sees.", bounds=at_least(1))
    n_layer: int = option(12, "Number of transformer blocks.", bounds=at_least(1))
    n_head: int = option(12, "Number of query heads.", bounds=at_least(1))
    n_kv_heads: Optional[int] = option(
        None, "Key/value heads: None or n_head = multi-head, 1 = multi-query, between = grouped-query.", bounds=at_least(1)
    )
    d_model: int = option(768, "Width of the residual stream (embedding size).", bounds=at_least(1))
    attention: str = option("multihead", "Attention layer by name: how queries, keys and values are formed, masked and cached.", choices="slmkit.model.attention:ATTENTION_LAYERS")
    attention_kernel: str = option("sdpa", "Attention kernel by name: how softmax(QK^T/sqrt(d) + mask) V is computed.", choices="slmkit.model.attention:ATTENTION_KERNELS")
    sliding_window: Optional[int] = option(None, "If set, each token attends only to the last this-many tokens (itself included); in a bidirectional model, to the tokens less than this far away on either side.", bounds=at_least(1))
    global_every: int = option(0, "With sliding_window: layers 0, n, 2n, ... attend globally and the others through the window, as ModernBERT alternates them (n=3); 0 = the window on every layer.", bounds=at_least(0))
    qk_norm: bool = option(False, "Normalize queries and keys per head (with the model's norm) before attention.")
    positions: str = option("rope", "Positional encoding by name.", choices="slmkit.model.positions:POSITIONS")
    rope_theta: float = option(10000.0, "RoPE base frequency.", bounds=above(0))
    local_rope_theta: Optional[float] = option(None, "RoPE base frequency of the layers with a sliding window (ModernBERT: 10,000 there, 160,000 on global layers); None = rope_theta.", bounds=above(0))
    ffn: str = option("swiglu", "Feed-forward by name.", choices="slmkit.model.feedforward:FEEDFORWARDS")
    ffn_hidden: Optional[int] = option(None, "Hidden width of the feed-forward; None = the feed-forward's own default for d_model.", bounds=at_least(1))
    ffn_multiple_of: int = option(64, "Round a derived hidden width of a gated feed-forward up to a multiple of this.", bounds=at_least(1))
    norm: str = option("rmsnorm", "Normalization by name.", choices="slmkit.model.norms:NORMS")
    norm_eps: float = option(1e-5, "Epsilon of every norm.", bounds=above(0))
    block: str = option("prenorm", "Block layout by name: where the norms sit around attention and feed-forward.", choices="slmkit.model.transformer:BLOCKS")
    embedding_norm: bool = option(False, "Normalize the embeddings before the first block (BERT, ModernBERT); a pre-norm first block then reads them without a norm of its own.")
    bias: bool = option(False, "Biases in linear layers and LayerNorm (GPT-2 uses them; Llama does not).")
    tie_embeddings: bool = option(True, "Share the token embedding matrix with the language-model head.")
    logit_softcap: Optional[float] = option(None, "Squash the language-model logits into (-cap, cap) with cap * tanh(logits / cap); None = raw logits.", bounds=above(0))
    dropout: float = option(0.0, "Dropout on embeddings, attention probabilities and residual branches.", bounds=between(0, 1, high_open=True))
    init_std: float = option(0.02, "Standard deviation of the normal init of linear and embedding weights.", bounds=above(0))
    scaled_residual_init: bool = option(True, "Scale the init of the layers that write into the residual stream by 1/sqrt(2*n_layer) (GPT-2).")
    causal: bool = option(True, "Causal (decoder) attention; False gives a bidirectional encoder body.")
    parametrization: str = option("standard", "standard, or mup (maximal update parametrization): init, learning rates and multipliers scaled by the width multiplier d_model / mup_base_width, so a learning rate tuned at the base width holds at any width (README: Scaling).", choices=("standard", "mup"))
    mup_base_width: Optional[int] = option(None, "mup only: the width (d_model) the hyperparameters were tuned at; d_model must be a multiple of it.")
    mup_input_multiplier: float = option(1.0, "mup only: constant that multiplies the token embeddings (a tunable, width-independent alpha).", bounds=above(0))
    mup_output_multiplier: float = option(1.0, "mup only: constant of the readout; the language-model logits are multiplied by it / width multiplier.", bounds=above(0))
    mup_readout_init: str = option("zero", "mup only: the language-model readout's init: zero (Tensor Programs V), or normal (init_std, as every other matrix; its logits, times 1/width multiplier, still vanish as the width grows). At short horizons zero starves the body of gradient until the readout has grown: docs/benchmarks.md, μP.", choices=("zero", "normal"))

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def mup(self) -> bool:
        return self.parametrization == "mup"

    @property
    def width_multiplier(self) -> float:
        """μP's m = d_model / mup_base_width: hidden init std / sqrt(m), hidden AdamW lr / m, readout / m; 1 otherwise."""
        return self.d_model / self.mup_base_width if self.mup else 1.0

    @property
    def input_multiplier(self) -> float:
        return self.mup_input_multiplier if self.mup else 1.0

    @property
    def readout_multiplier(self) -> float:
        """What the language-model logits are multiplied by: μP's output multiplier / m (TP5's readout scaling)."""
        return self.mup_output_multiplier / self.width_multiplier if self.mup else 1.0

    @property
    def query_scale(self) -> float:
        """Extra factor on the queries: μP's attention is softmax(QK^T / head_dim), the kernel's 1/sqrt(head_dim) times
        this 1/sqrt(head_dim) (with head_dim growing, the query-key products grow like head_dim, not its root)."""
        return self.head_dim ** -0.5 if self.mup else 1.0

    def layer_window(self, layer_idx: int) -> Optional[int]:
        """The sliding window of layer `layer_idx`, or None when it attends globally (see global_every)."""
        if self.sliding_window is None or (self.global_every and layer_idx % self.global_every == 0):
            return None
        return self.sliding_window

    @property
    def ffn_hidden_size(self) -> int:
        """ffn_hidden, or the width the chosen feed-forward derives from d_model (its own rule)."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return FEEDFORWARDS.get(self.ffn).default_hidden_size(self)

    def validate(self) -> "ModelConfig":
        """Raises SlmkitError naming the inconsistent fields; returns self so calls chain.

        Checks the shape of the whole model here, then asks each chosen part for its own requirements.
        """
        check_values(self, prefix="model.")
        if self.vocab_size < 1:
            raise SlmkitError("model.vocab_size is 0 (the tokenizer's size), which is known only once the tokenizer is; "
                              "build the model with the vocabulary size set")
        if self.d_model % self.n_head:
            raise SlmkitError(f"model.d_model={self.d_model} must be divisible by model.n_head={self.n_head}")
        if self.n_head % self.kv_heads:
            raise SlmkitError(f"model.n_head={self.n_head} must be divisible by model.n_kv_heads={self.kv_heads}")
        if self.global_every and self.sliding_window is None:
            raise SlmkitError(f"model.global_every={self.global_every} alternates global and sliding-window layers: set "
                              "model.sliding_window too, or global_every=0")
        self._validate_mup()
        for part in chosen_parts(self):
            part.check(self)
        return self


    def _validate_mup(self) -> None:
        if not self.mup:
            return
        if self.mup_base_width is None or self.mup_base_width < 1:
            raise SlmkitError(f"model.parametrization=mup needs model.mup_base_width, a positive width (d_model) the "
                              f"hyperparameters were tuned at; got {self.mup_base_width}")
        if self.d_model % self.mup_base_width:
            raise SlmkitError(f"model.d_model={self.d_model} is not a multiple of model.mup_base_width="
                              f"{self.mup_base_width}: μP scales by the width multiplier d_model / mup_base_width; choose "
                              "a base width that divides every width you train (e.g. the smallest)")
        if self.tie_embeddings:
            raise SlmkitError("model.parametrization=mup gives the readout its own init (zero) and multiplier, which a "
                              "head tied to the token embeddings cannot have: set model.tie_embeddings=false")


def chosen_parts(config: ModelConfig) -> list[type]:
    """The part classes this config names, looked up in their registries (an unknown name raises with the choices)."""
    return [
        BLOCKS.get(config.block),
        ATTENTION_LAYERS.get(config.attention),
        POSITIONS.get(config.positions),
        FEEDFORWARDS.get(config.ffn),
        NORMS.get(config.norm),
    ]
