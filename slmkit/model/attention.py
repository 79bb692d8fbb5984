"""Causal self-attention: multi-head, grouped-query and multi-query, with optional sliding window and qk-norm.

The kernel is chosen by name (ATTENTION): `sdpa` uses torch's fused scaled_dot_product_attention, `eager` spells
out softmax(QK^T/sqrt(d) + mask) V and is the reference the fused one is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.model.cache import KVCache
from slmkit.model.config import ModelConfig
from slmkit.model.norms import NORMS
from slmkit.model.positions import apply_rotary
from slmkit.registry import Registry


@dataclass
class AttentionMask:
    """What each query may see: `is_causal` alone (the fused fast path), an explicit mask, or neither (all).

    `mask` is bool [T, S] (True = may attend) or an additive float [n_head, T, S] with -inf where it may not.
    """

    is_causal: bool = False
    mask: torch.Tensor | None = None


Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMask, float], torch.Tensor]

ATTENTION: Registry[Kernel] = Registry(
    "attention kernel", "kernel(q, k, v, mask, dropout_p) -> out, all [B, n_head, T or S, head_dim]."
)


def attention_mask(
    config: ModelConfig, n_queries: int, start: int, bias: torch.Tensor | None, device: torch.device
) -> AttentionMask:
    """The mask for n_queries new tokens at positions start.. over keys at positions 0..start+n_queries-1.

    Query i sees key j when j <= i (if causal) and i - sliding_window < j (|i - j| < window if not causal).
    Returns the bare causal flag when nothing else constrains attention, so the flash kernel can run.
    """
    n_keys = start + n_queries
    # A window at least as long as the keys excludes nothing.
    window = config.sliding_window if config.sliding_window is not None and config.sliding_window < n_keys else None
    if bias is None and window is None:
        if not config.causal or n_queries == 1:
            return AttentionMask()
        if start == 0:
            return AttentionMask(is_causal=True)
    query_pos = torch.arange(start, n_keys, device=device)[:, None]
    key_pos = torch.arange(n_keys, device=device)[None, :]
    allowed = torch.ones(n_queries, n_keys, dtype=torch.bool, device=device)
    if config.causal:
        allowed &= key_pos <= query_pos
    if window is not None:
        allowed &= key_pos > query_pos - window
        if not config.causal:
            allowed &= key_pos < query_pos + window
    if bias is None:
        return AttentionMask(mask=allowed)
    return AttentionMask(mask=bias.masked_fill(~allowed, float("-inf")))


@ATTENTION.register("sdpa")
def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, dropout_p: float
) -> torch.Tensor:
    attn_mask = mask.mask
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=mask.is_causal)


@ATTENTION.register("eager")
def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, dropout_p: float
) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask.is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    elif mask.mask is not None and mask.mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask.mask, float("-inf"))
    elif mask.mask is not None:
        scores = scores + mask.mask.to(scores.dtype)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    probs = F.dropout(probs, p=dropout_p)
    return probs @ v


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, n_kv, S, D] -> [B, n_kv * n_rep, S, D]; query head h reads kv head h // n_rep (HF's repeat_kv)."""
    if n_rep == 1:
        return x
    b, n_kv, s, d = x.shape
    return x[:, :, None].expand(b, n_kv, n_rep, s, d).reshape(b, n_kv * n_rep, s, d)


class Attention(nn.Module):
    """q/k/v projections, optional per-head qk-norm, RoPE, KV cache, the kernel, and the output projection."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.kernel = ATTENTION.get(config.attention)
        self.q_proj = nn.Linear(config.d_model, self.n_head * self.head_dim, bias=config.bias)
        self.k_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=config.bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.bias)
        norm = NORMS.get(config.norm)
        self.q_norm = norm(self.head_dim, config) if config.qk_norm else None
        self.k_norm = norm(self.head_dim, config) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_head, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            # Per head, before RoPE, as in Qwen3.
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.append(self.layer_idx, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)
        n_rep = self.n_head // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        y = self.kernel(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))
