"""Feed-forward networks by name: the position-wise MLP of a block.

Each entry is built as `FEEDFORWARDS.get(name)(config)` and derives its own default hidden width from d_model;
projection names match the Hugging Face Llama MLP.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.model.config import ModelConfig
from slmkit.model.part import BlockPart
from slmkit.model.registries import FEEDFORWARDS



class FeedForward(BlockPart):
    """An MLP whose last layer, down_proj, writes into the residual stream."""

    @classmethod
    def default_hidden_size(cls, config: ModelConfig) -> int:
        """The hidden width when model.ffn_hidden is unset: 4 * d_model, as GPT-2."""
        return 4 * config.d_model

    def residual_outputs(self) -> list[nn.Linear]:
        return [self.down_proj]


class GatedFeedForward(FeedForward):
    """A gated MLP has three matrices instead of two: 2/3 of the width keeps the parameter count of a 4*d MLP."""

    @classmethod
    def default_hidden_size(cls, config: ModelConfig) -> int:
        hidden = int(8 * config.d_model / 3)
        return -(-hidden // config.ffn_multiple_of) * config.ffn_multiple_of


@FEEDFORWARDS.register("gelu")
class GeluMLP(FeedForward):
    """down_proj(gelu(up_proj(x))) with the exact erf GELU (not the tanh approximation)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=config.bias)
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class GatedLinearUnit(GatedFeedForward):
    """down_proj(activation(gate_proj(x)) * up_proj(x)): the gated MLPs below differ only in their activation."""

    activation: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=config.bias)
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=config.bias)
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x))


@FEEDFORWARDS.register("swiglu")
class SwiGLU(GatedLinearUnit):
    """down_proj(silu(gate_proj(x)) * up_proj(x)), as in Llama."""

    activation = staticmethod(F.silu)


@FEEDFORWARDS.register("geglu")
class GeGLU(GatedLinearUnit):
    """down_proj(gelu(gate_proj(x)) * up_proj(x)) with the exact erf GELU, as ModernBERT (Shazeer, 2020)."""

    activation = staticmethod(F.gelu)


@FEEDFORWARDS.register("gelu_tanh")
class GeluTanhMLP(GeluMLP):
    """down_proj(gelu(up_proj(x))) with GELU's tanh approximation: GPT-2's `gelu_new`, StarCoder2's
    `gelu_pytorch_tanh`; a model imported from them computes exactly what it was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


@FEEDFORWARDS.register("relu2")
class SquaredReluMLP(FeedForward):
    """down_proj(relu(up_proj(x)) ** 2), the squared ReLU of Primer (So et al., 2021)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=config.bias)
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())
