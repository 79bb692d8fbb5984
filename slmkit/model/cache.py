"""KV cache for incremental decoding: preallocated per-layer key/value buffers and the position they reach.

Keys are stored after RoPE and qk-norm, with n_kv_heads heads (before grouped-query expansion).
"""

from __future__ import annotations

import torch

from slmkit.errors import SlmkitError


class KVCache:
    """Buffers [batch, n_kv_heads, max_len, head_dim] per layer; `length` positions of them hold real keys."""

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
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
        """Writes k/v [B, n_kv_heads, T, head_dim] after the cached positions; returns all keys and values so far.

        The position only moves on `advance`, so every layer of one forward pass writes to the same slots.
        """
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        """Forgets the cached tokens (the buffers are reused, not cleared)."""
        self.length = 0
