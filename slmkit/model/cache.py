"""KV cache for incremental decoding: each attention layer's preallocated slot, and the position they all reach.

Every layer sizes its own slot (what it keeps per token is its business); the cache only says where new tokens go.
"""

from __future__ import annotations

import torch

from slmkit.errors import SlmkitError


class KVSlot:
    """One layer's keys and values, buffers [batch, heads, max_len, head_dim]."""

    def __init__(self, batch_size: int, n_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        shape = (batch_size, n_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)

    def expanded(self, batch_size: int, max_len: int, length: int) -> "KVSlot":
        """A slot of batch_size rows and room for max_len tokens, each row holding this batch-1 slot's first length."""
        slot = KVSlot(batch_size, self.keys.shape[1], max_len, self.keys.shape[3], device=self.keys.device, dtype=self.keys.dtype)
        slot.keys[:, :, :length] = self.keys[:, :, :length]
        slot.values[:, :, :length] = self.values[:, :, :length]
        return slot

    def write(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores k/v [B, heads, T, head_dim] at positions start..start+T-1; returns all keys and values up to there."""
        end = start + k.shape[2]
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """One slot per layer; `length` positions of every slot hold real keys."""

    def __init__(self, slots: list[KVSlot], batch_size: int, max_len: int):
        self.slots = slots
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0

    def check_room(self, batch_size: int, n_new: int) -> None:
        """Raises SlmkitError unless n_new more tokens of a batch of batch_size fit."""
        if batch_size != self.batch_size:
            raise SlmkitError(f"a KV cache made for batch size {self.batch_size} was given a batch of {batch_size}")
        if self.length + n_new > self.max_len:
            raise SlmkitError(
                f"KV cache holds {self.length} of at most {self.max_len} tokens and cannot take {n_new} more; "
                "create it with a larger max_len"
            )

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes a layer's new keys/values after the cached positions; returns all of that layer's keys and values.

        The position only moves on `advance`, so every layer of one forward pass writes to the same positions.
        """
        return self.slots[layer].write(self.length, k, v)

    def expanded(self, batch_size: int, max_len: int) -> "KVCache":
        """A cache whose batch_size sequences all continue this batch-1 cache's tokens: one shared prefix, computed
        once, scored against several continuations (the choices of a multiple-choice question)."""
        if self.batch_size != 1:
            raise SlmkitError(f"only a cache of one sequence can be shared, this one holds {self.batch_size}")
        cache = KVCache([slot.expanded(batch_size, max_len, self.length) for slot in self.slots], batch_size, max_len)
        cache.length = self.length
        return cache

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        """Forgets the cached tokens (the buffers are reused, not cleared)."""
        self.length = 0
