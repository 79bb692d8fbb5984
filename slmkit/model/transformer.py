"""The transformer body: token embeddings (-> embedding norm) -> blocks (attention, feed-forward) -> final norm ->
hidden states.

Parts are chosen by name from the registries, the block layout too (pre-norm or post-norm); the body owns its init and
its KV cache factory. What the hidden states become (next-token logits, a label, a span, a masked token) is a head's
business (heads.py), and model.py puts them together.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from slmkit.errors import SlmkitError
from slmkit.model.attention import AttentionMasks
from slmkit.model.cache import KVCache
from slmkit.model.config import ModelConfig
from slmkit.model.part import Part
from slmkit.model.positions import PositionEncoding
from slmkit.model.registries import ATTENTION_LAYERS, BLOCKS, FEEDFORWARDS, NORMS, POSITIONS



class Block(Part):
    """The parts of every layout — attn_norm, attn, ffn_norm, ffn — under the names the export tables map;
    called as block(x, masks, rotary, cache) -> x."""

    # Whether the body normalizes the last block's output: a layout whose blocks end in a norm needs none after them.
    final_norm: ClassVar[bool] = True

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = NORMS.get(config.norm)(config.d_model, config)
        self.attn = ATTENTION_LAYERS.get(config.attention)(config, layer_idx)
        self.ffn_norm = NORMS.get(config.norm)(config.d_model, config)
        self.ffn = FEEDFORWARDS.get(config.ffn)(config)
        self.resid_dropout = nn.Dropout(config.dropout)


@BLOCKS.register("prenorm")
class PreNormBlock(Block):
    """x + attn(attn_norm(x)), then x + ffn(ffn_norm(x)) (GPT-2, Llama, ModernBERT).

    After a normalized embedding the first block's attention reads it as it is: a second norm in a row would only
    add an affine map (ModernBERT's layout).
    """

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        if layer_idx == 0 and config.embedding_norm:
            self.attn_norm = nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        masks: AttentionMasks,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), masks, rotary, cache))
        return x + self.resid_dropout(self.ffn(self.ffn_norm(x)))


@BLOCKS.register("postnorm")
class PostNormBlock(Block):
    """attn_norm(x + attn(x)), then ffn_norm(x + ffn(x)): the original Transformer's and BERT's layout. Its output
    is normalized already, so the body adds no final norm."""

    final_norm = False

    def forward(
        self,
        x: torch.Tensor,
        masks: AttentionMasks,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = self.attn_norm(x + self.resid_dropout(self.attn(x, masks, rotary, cache)))
        return self.ffn_norm(x + self.resid_dropout(self.ffn(x)))


class Transformer(nn.Module):
    """A transformer body assembled from the parts that `config` names; causal or bidirectional by config."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        positions = POSITIONS.get(config.positions)(config)
        self._positions_attribute = positions.attribute
        self.add_module(positions.attribute, positions)
        self.emb_norm = NORMS.get(config.norm)(config.d_model, config) if config.embedding_norm else None
        self.emb_dropout = nn.Dropout(config.dropout)
        layout = BLOCKS.get(config.block)
        self.blocks = nn.ModuleList(layout(config, i) for i in range(config.n_layer))
        self.final_norm = NORMS.get(config.norm)(config.d_model, config) if layout.final_norm else nn.Identity()
        # Whether each layer attends through a sliding window: such layers may rotate with their own RoPE base.
        self._local = [config.layer_window(i) is not None for i in range(config.n_layer)]
        self.init_weights()

    def init_weights(self) -> None:
        """normal(0, init_std) for linear and embedding weights, zeros for biases, each norm's own reset; with
        scaled_residual_init, the layers each block part names as its residual outputs use init_std / sqrt(2 * n_layer).
        Under μP the linear layers (every one in the body is a hidden matrix, fan-in d_model or wider) take
        init_std / sqrt(width multiplier): variance 1/fan-in relative to the base width; embeddings keep init_std."""
        std = self.config.init_std
        hidden_std = std / math.sqrt(self.config.width_multiplier)
        residual_std = hidden_std / math.sqrt(2 * self.config.n_layer) if self.config.scaled_residual_init else hidden_std
        residual = {id(layer) for block in self.blocks for layer in block.attn.residual_outputs() + block.ffn.residual_outputs()}
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                linear_std = residual_std if id(module) in residual else hidden_std
                nn.init.normal_(module.weight, mean=0.0, std=linear_std if isinstance(module, nn.Linear) else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    @property
    def position_encoding(self) -> PositionEncoding:
        return getattr(self, self._positions_attribute)

    def forward(
        self, input_ids: torch.Tensor, cache: KVCache | None = None, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden states [B, T, d_model] for input_ids [B, T]; with a cache, input_ids follow the cached tokens.

        padding_mask: bool [B, S], True for real tokens, over every key the new tokens attend to (S = T without a
        cache, cached + T with one); padding keys are invisible to every query.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise SlmkitError(f"input_ids must be a non-empty [batch, time] tensor, got shape {tuple(input_ids.shape)}")
        batch, n_new = input_ids.shape
        start = 0
        if cache is not None:
            cache.check_room(batch, n_new)
            start = cache.length
        if padding_mask is not None and tuple(padding_mask.shape) != (batch, start + n_new):
            raise SlmkitError(
                f"padding_mask must be [batch, keys] = {(batch, start + n_new)}, got {tuple(padding_mask.shape)}"
            )
        self._check_token_ids(input_ids)
        positions = self.position_encoding
        tokens = self.tok_embeddings(input_ids)
        if self.config.input_multiplier != 1.0:
            tokens = tokens * self.config.input_multiplier  # μP's input multiplier, on the token embeddings only
        x = positions.add_to_embeddings(tokens, start)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        x = self.emb_dropout(x)
        rotary = {local: positions.rotary(n_new, start, input_ids.device, local=local) for local in set(self._local)}
        bias = positions.attention_bias(n_new, start + n_new, start, input_ids.device)
        masks = AttentionMasks(self.config.causal, start, n_new,
                               None if padding_mask is None else padding_mask.bool(), bias, input_ids.device)
        for block, local in zip(self.blocks, self._local):
            x = block(x, masks, rotary[local], cache)
        if cache is not None:
            cache.advance(n_new)
        return self.final_norm(x)

    def _check_token_ids(self, input_ids: torch.Tensor) -> None:
        if torch.compiler.is_compiling():
            return
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()
        if low < 0 or high >= self.config.vocab_size:
            bad = high if high >= self.config.vocab_size else low
            raise SlmkitError(
                f"token id {bad} is outside the model's vocabulary of {self.config.vocab_size}: the tokenizer does "
                "not fit the model; set model.vocab_size to at least the tokenizer's vocabulary size"
            )

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty KV cache for up to max_len tokens per sequence, on the model's device and dtype by default."""
        weight = self.tok_embeddings.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        slots = [block.attn.new_cache_slot(batch_size, max_len, device, dtype) for block in self.blocks]
        return KVCache(slots, batch_size, max_len)
