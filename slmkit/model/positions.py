"""Positional encodings by name: how the model knows token order.

An encoding may add to the token embeddings, rotate queries and keys, or bias the attention scores; the
Transformer asks each one for all three and uses what it gets. Everything but `learned` is computed on the fly
in fp32 from absolute positions, so a KV cache only has to say where the new tokens start.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slmkit.errors import SlmkitError
from slmkit.model.config import ModelConfig
from slmkit.model.part import Part
from slmkit.model.registries import POSITIONS



class PositionEncoding(Part):
    """The three hooks of an encoding, each doing nothing unless a subclass overrides it."""

    # The Transformer holds the encoding under this attribute; learned positions keep GPT-2's `pos_embeddings`.
    attribute = "positions"

    def add_to_embeddings(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """x [B, T, d_model] holds tokens at positions start..start+T-1."""
        return x

    def rotary(self, n: int, start: int, device: torch.device, local: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin), each fp32 [n, head_dim], for positions start..start+n-1; None when queries are not rotated.
        `local` asks for the rotation of a sliding-window layer, which may differ from a global layer's."""
        return None

    def attention_bias(self, n_queries: int, n_keys: int, start: int, device: torch.device) -> torch.Tensor | None:
        """Additive fp32 bias [n_head, n_queries, n_keys]; queries sit at start.., keys at 0..; None for no bias."""
        return None


@POSITIONS.register("none")
class NoPositions(PositionEncoding):
    """No position information: with causal attention the model can still infer order from what it sees."""

    def __init__(self, config: ModelConfig):
        super().__init__()


@POSITIONS.register("learned")
class LearnedPositions(nn.Embedding, PositionEncoding):
    """An absolute position table of block_size rows added to the token embeddings (GPT-2's wpe)."""

    attribute = "pos_embeddings"

    def __init__(self, config: ModelConfig):
        nn.Embedding.__init__(self, config.block_size, config.d_model)

    def add_to_embeddings(self, x: torch.Tensor, start: int) -> torch.Tensor:
        end = start + x.shape[1]
        if end > self.num_embeddings:
            raise SlmkitError(
                f"sequence of {end} tokens is longer than the model's block_size={self.num_embeddings}, "
                "the most learned positions it has; shorten the input or train with a larger model.block_size"
            )
        return x + self.weight[start:end]


@POSITIONS.register("sinusoidal")
class SinusoidalPositions(PositionEncoding):
    """Fixed sin/cos waves added to the embeddings (Vaswani et al., 2017): sin on even, cos on odd channels."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.d_model = config.d_model

    def add_to_embeddings(self, x: torch.Tensor, start: int) -> torch.Tensor:
        position = torch.arange(start, start + x.shape[1], device=x.device, dtype=torch.float32)
        channel_pairs = torch.arange(0, self.d_model, 2, device=x.device, dtype=torch.float32)
        angle = position[:, None] * torch.exp(channel_pairs * (-math.log(10000.0) / self.d_model))[None, :]
        table = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)[:, : self.d_model]
        return x + table.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension (the HF Llama layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x [..., T, head_dim] by the angles whose cos/sin [T, head_dim] are given."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def rope_frequencies(head_dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/head_dim), i < head_dim/2, computed as transformers computes them."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta**exponents)


@POSITIONS.register("rope")
class RotaryPositions(PositionEncoding):
    """Rotary embeddings (Su et al., 2021) in the rotate-half layout: q*cos + rotate_half(q)*sin, cos = cat(f, f)."""

    @classmethod
    def check(cls, config: ModelConfig) -> None:
        if config.head_dim % 2:
            raise SlmkitError(f"model.positions={config.positions} rotates pairs of channels and needs an even head "
                              f"dimension; d_model/n_head = {config.head_dim}")

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        self.local_theta = config.local_rope_theta

    def rotary(self, n: int, start: int, device: torch.device, local: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.local_theta if local and self.local_theta is not None else self.theta
        position = torch.arange(start, start + n, device=device, dtype=torch.float32)
        freqs = position[:, None] * rope_frequencies(self.head_dim, theta, device)[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Per-head slopes of Press et al. (2022): 2^(-8i/n) for i = 1..n when n is a power of two; otherwise the
    slopes of the next lower power of two, then every other slope of the next higher one."""

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    lower = 2 ** math.floor(math.log2(n_head))
    slopes = geometric(lower) + geometric(2 * lower)[0::2][: n_head - lower]
    return torch.tensor(slopes, dtype=torch.float32)


@POSITIONS.register("alibi")
class AlibiPositions(PositionEncoding):
    """Attention with linear biases: score(i, j) -= slope_h * |i - j|; no embedding and no rotation."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head

    def attention_bias(self, n_queries: int, n_keys: int, start: int, device: torch.device) -> torch.Tensor:
        query_pos = torch.arange(start, start + n_queries, device=device)
        key_pos = torch.arange(n_keys, device=device)
        distance = (query_pos[:, None] - key_pos[None, :]).abs().float()
        return -alibi_slopes(self.n_head).to(device)[:, None, None] * distance
