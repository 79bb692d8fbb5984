"""A model is a transformer body and its named heads: the language-model head, a classifier, a span head, ...

`Model(config, heads)` builds both; calling it runs the body once and one head (the first by default). The model
also owns what depends on all of it: parameter count and training FLOP estimate.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from slmkit.errors import SlmkitError
from slmkit.model.cache import KVCache
from slmkit.model.config import ModelConfig
from slmkit.model.heads import HEADS, LM_HEAD, HeadSpec
from slmkit.model.transformer import Transformer

class Model(nn.Module):
    """`body` (Transformer) + `heads` (ModuleDict by head kind); the first head is the one `forward` runs by default."""

    def __init__(self, config: ModelConfig, heads: Sequence[HeadSpec] = (HeadSpec(LM_HEAD),)):
        super().__init__()
        if not heads:
            raise SlmkitError("a model needs at least one head")
        kinds = [spec.kind for spec in heads]
        if len(set(kinds)) != len(kinds):
            raise SlmkitError(f"each head kind may appear once, got {kinds}")
        self.body = Transformer(config)
        self.config = self.body.config
        self.head_specs = tuple(heads)
        self.heads = nn.ModuleDict({spec.kind: HEADS.get(spec.kind)(config, spec, self.body) for spec in heads})

    @property
    def default_head(self) -> str:
        return self.head_specs[0].kind

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        padding_mask: torch.Tensor | None = None,
        head: str | None = None,
    ) -> torch.Tensor:
        """The output of one head (default: the first) for input_ids [B, T]; see Transformer.forward for the rest."""
        hidden = self.body(input_ids, cache=cache, padding_mask=padding_mask)
        name = head or self.default_head
        if name not in self.heads:
            raise SlmkitError(f"this model has no {name!r} head; it has: {', '.join(self.heads)}")
        head_mask = padding_mask if padding_mask is None or cache is None else padding_mask[:, -input_ids.shape[1]:]
        return self.heads[name](hidden, head_mask)

    def new_cache(self, batch_size: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        return self.body.new_cache(batch_size, max_len, device=device, dtype=dtype)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Trainable size, tied weights counted once; non_embedding leaves out token and position embeddings."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.body.tok_embeddings.weight.numel()
            if isinstance(self.body.position_encoding, nn.Embedding):
                total -= self.body.position_encoding.weight.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), the PaLM / nanoGPT estimate 6N + 12 * L * H * Q * T.

        N counts the parameters that take part in a matmul: the non-embedding parameters plus a tied language-model
        head (counted although it shares the token embeddings, whose lookup is free); L = n_layer, H = n_head,
        Q = head_dim, T = seq_len (default block_size). The 12LHQT term is the attention scores and weighted sum
        (2 matmuls x 2 FLOPs x 3 for backward), not halved for the causal mask.
        """
        c = self.config
        seq_len = c.block_size if seq_len is None else seq_len
        n_matmul = self.num_parameters(non_embedding=True)
        if c.tie_embeddings and LM_HEAD in self.heads:
            n_matmul += self.body.tok_embeddings.weight.numel()
        return 6.0 * n_matmul + 12.0 * c.n_layer * c.n_head * c.head_dim * seq_len
