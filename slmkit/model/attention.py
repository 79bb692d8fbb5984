"""Self-attention: layers by name (how queries, keys and values are formed, masked and cached) and kernels by name.

`multihead` covers multi-head, grouped-query and multi-query attention with an optional sliding window and qk-norm.
Kernels compute softmax(QK^T/sqrt(d) + mask) V: `sdpa` is torch's fused scaled_dot_product_attention, `eager`
spells it out and is the reference the fused one is tested against. Causal or bidirectional is a setting
(model.causal), and a padding mask may hide keys; the masks are built once per forward pass and shared by layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.model.cache import KVCache, KVSlot
from slmkit.model.config import ModelConfig
from slmkit.model.norms import NORMS
from slmkit.model.part import BlockPart
from slmkit.model.positions import apply_rotary
from slmkit.model.registries import ATTENTION_KERNELS, ATTENTION_LAYERS


@dataclass
class AttentionMask:
    """What each query may see: `is_causal` alone (the fused fast path), an explicit mask, or neither (all).

    `mask` is bool (True = may attend) or additive float (-inf where it may not), broadcastable to
    [B, n_head, T, S]: [T, S] without a padding mask, [B, 1, T, S] or [B, n_head, T, S] with one or with a bias.
    """

    is_causal: bool = False
    mask: torch.Tensor | None = None


class AttentionMasks:
    """The masks of one forward pass: n_queries new tokens at positions start.. over keys at positions 0..start+n-1.

    Query i sees key j when j <= i (if causal), i - window < j (and j < i + window if not causal) for a layer with a
    sliding window, and key j is not padding. Built on first use per window and shared by every layer asking for it.
    `padding_mask` is bool [B, n_keys], True for real tokens; `bias` an additive fp32 [n_head, n_queries, n_keys].
    """

    def __init__(self, causal: bool, start: int, n_queries: int, padding_mask: torch.Tensor | None,
                 bias: torch.Tensor | None, device: torch.device):
        self.causal = causal
        self.start = start
        self.n_queries = n_queries
        self.n_keys = start + n_queries
        self.padding_mask = padding_mask
        self.bias = bias
        self.device = device
        self._built: dict[int | None, AttentionMask] = {}

    def for_window(self, window: int | None) -> AttentionMask:
        # A window at least as long as the keys excludes nothing.
        if window is not None and window >= self.n_keys:
            window = None
        if window not in self._built:
            self._built[window] = self._build(window)
        return self._built[window]

    def _build(self, window: int | None) -> AttentionMask:
        if self.bias is None and window is None and self.padding_mask is None:
            if not self.causal or self.n_queries == 1:
                return AttentionMask()
            if self.start == 0:
                return AttentionMask(is_causal=True)
        query_pos = torch.arange(self.start, self.n_keys, device=self.device)[:, None]
        key_pos = torch.arange(self.n_keys, device=self.device)[None, :]
        allowed = torch.ones(self.n_queries, self.n_keys, dtype=torch.bool, device=self.device)
        if self.causal:
            allowed &= key_pos <= query_pos
        if window is not None:
            allowed &= key_pos > query_pos - window
            if not self.causal:
                allowed &= key_pos < query_pos + window
        if self.padding_mask is not None:
            # A padding query still sees itself: a row with no key at all would turn the softmax into NaN.
            allowed = (allowed[None] & self.padding_mask[:, None, :]) | (key_pos == query_pos)[None]
            allowed = allowed[:, None]
        if self.bias is None:
            return AttentionMask(mask=allowed)
        return AttentionMask(mask=torch.where(allowed, self.bias, float("-inf")))


Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMask, float], torch.Tensor]



@ATTENTION_KERNELS.register("sdpa")
def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, dropout_p: float
) -> torch.Tensor:
    attn_mask = mask.mask
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=mask.is_causal)


@ATTENTION_KERNELS.register("eager")
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


class AttentionLayer(BlockPart):
    """The contract of an attention layer: built as cls(config, layer_idx), called as
    layer(x [B, T, d_model], masks, rotary, cache) -> [B, T, d_model], and sizing its own KV-cache slot."""

    def new_cache_slot(self, batch_size: int, max_len: int, device: torch.device | str | None,
                       dtype: torch.dtype | None) -> KVSlot:
        raise NotImplementedError(f"{type(self).__name__} must say what it caches per token")




@ATTENTION_LAYERS.register("multihead")
class MultiHeadAttention(AttentionLayer):
    """q/k/v projections (n_kv_heads of keys and values: MHA, GQA or MQA), optional per-head qk-norm, RoPE,
    KV cache, the kernel, and the output projection."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.window = config.layer_window(layer_idx)
        self.kernel = ATTENTION_KERNELS.get(config.attention_kernel)
        self.query_scale = config.query_scale
        self.q_proj = nn.Linear(config.d_model, self.n_head * self.head_dim, bias=config.bias)
        self.k_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=config.bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.bias)
        norm = NORMS.get(config.norm)
        self.q_norm = norm(self.head_dim, config) if config.qk_norm else None
        self.k_norm = norm(self.head_dim, config) if config.qk_norm else None

    def residual_outputs(self) -> list[nn.Linear]:
        return [self.o_proj]

    def new_cache_slot(self, batch_size, max_len, device, dtype) -> KVSlot:
        # Keys after RoPE and qk-norm, before the grouped-query expansion: n_kv_heads per token.
        return KVSlot(batch_size, self.n_kv_heads, max_len, self.head_dim, device=device, dtype=dtype)

    def forward(
        self,
        x: torch.Tensor,
        masks: AttentionMasks,
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
        if self.query_scale != 1.0:
            q = q * self.query_scale  # μP's 1/head_dim attention, the kernel keeping its own 1/sqrt(head_dim)
        if cache is not None:
            k, v = cache.append(self.layer_idx, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)
        n_rep = self.n_head // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        y = self.kernel(q, k, v, masks.for_window(self.window), self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))
