"""The decoder: token embeddings -> pre-norm blocks (attention, feed-forward) -> final norm -> lm_head.

Parts are chosen by name from the registries; the model also owns its init, parameter count, FLOP estimate,
optimizer parameter groups and KV cache factory.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slmkit.errors import SlmkitError
from slmkit.model.attention import Attention, AttentionMask, attention_mask
from slmkit.model.cache import KVCache
from slmkit.model.config import ModelConfig
from slmkit.model.feedforward import FEEDFORWARDS
from slmkit.model.norms import NORMS, RMSNorm
from slmkit.model.positions import POSITIONS, PositionEncoding


class Block(nn.Module):
    """Pre-norm residual block: x + attn(attn_norm(x)), then x + ffn(ffn_norm(x))."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = NORMS.get(config.norm)(config.d_model, config)
        self.attn = Attention(config, layer_idx)
        self.ffn_norm = NORMS.get(config.norm)(config.d_model, config)
        self.ffn = FEEDFORWARDS.get(config.ffn)(config)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), mask, rotary, cache))
        return x + self.resid_dropout(self.ffn(self.ffn_norm(x)))


class Transformer(nn.Module):
    """A decoder-only language model assembled from the parts that `config` names."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        positions = POSITIONS.get(config.positions)(config)
        self._positions_attribute = positions.attribute
        self.add_module(positions.attribute, positions)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.final_norm = NORMS.get(config.norm)(config.d_model, config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        self.init_weights()

    def init_weights(self) -> None:
        """normal(0, init_std) for linear and embedding weights, zeros for biases, ones for norm weights;
        with scaled_residual_init, o_proj and down_proj use init_std / sqrt(2 * n_layer) (GPT-2)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer) if self.config.scaled_residual_init else std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual_out = name.endswith(("attn.o_proj", "ffn.down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual_out else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @property
    def position_encoding(self) -> PositionEncoding:
        return getattr(self, self._positions_attribute)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] (fp32) for input_ids [B, T]; with a cache, input_ids follow the cached tokens."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise SlmkitError(f"input_ids must be a non-empty [batch, time] tensor, got shape {tuple(input_ids.shape)}")
        batch, n_new = input_ids.shape
        start = 0
        if cache is not None:
            cache.check_room(batch, n_new)
            start = cache.length
        self._check_token_ids(input_ids)
        positions = self.position_encoding
        x = positions.add_to_embeddings(self.tok_embeddings(input_ids), start)
        x = self.emb_dropout(x)
        rotary = positions.rotary(n_new, start, input_ids.device)
        bias = positions.attention_bias(n_new, start + n_new, start, input_ids.device)
        mask = attention_mask(self.config, n_new, start, bias, input_ids.device)
        for block in self.blocks:
            x = block(x, mask, rotary, cache)
        if cache is not None:
            cache.advance(n_new)
        return self.lm_head(self.final_norm(x)).float()

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
        return KVCache(
            self.config.n_layer,
            batch_size,
            self.config.kv_heads,
            max_len,
            self.config.head_dim,
            device=weight.device if device is None else device,
            dtype=weight.dtype if dtype is None else dtype,
        )

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Trainable size, tied weights counted once; non_embedding leaves out token and position embeddings."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.tok_embeddings.weight.numel()
            if isinstance(self.position_encoding, nn.Embedding):
                total -= self.position_encoding.weight.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), the PaLM / nanoGPT estimate 6N + 12 * L * H * Q * T.

        N counts the parameters that take part in a matmul: the non-embedding parameters plus the output
        projection (counted even when tied to the token embeddings, whose lookup is free); L = n_layer,
        H = n_head, Q = head_dim, T = seq_len (default block_size). The 12LHQT term is the attention scores
        and weighted sum (2 matmuls x 2 FLOPs x 3 for backward), not halved for the causal mask.
        """
        c = self.config
        seq_len = c.block_size if seq_len is None else seq_len
        n_matmul = self.num_parameters(non_embedding=True)
        if c.tie_embeddings:
            n_matmul += self.lm_head.weight.numel()
        return 6.0 * n_matmul + 12.0 * c.n_layer * c.n_head * c.head_dim * seq_len

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: matrices and embeddings (ndim >= 2) decay; biases and norm weights do not."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
