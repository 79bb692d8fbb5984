"""Feed-forward networks by name: gelu (GPT-2/MPT MLP), swiglu (Llama), relu2 (squared ReLU, Primer).

Each entry is built as `FEEDFORWARDS.get(name)(config)`; projection names match the Hugging Face Llama MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.model.config import ModelConfig
from slmkit.registry import Registry

FEEDFORWARDS: Registry[type[nn.Module]] = Registry("feed-forward", "Position-wise MLP of a block, built as cls(config).")


@FEEDFORWARDS.register("gelu")
class GeluMLP(nn.Module):
    """down_proj(gelu(up_proj(x))) with the exact erf GELU (not the tanh approximation)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=config.bias)
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


@FEEDFORWARDS.register("swiglu")
class SwiGLU(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)), as in Llama."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=config.bias)
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=config.bias)
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@FEEDFORWARDS.register("relu2")
class SquaredReluMLP(nn.Module):
    """down_proj(relu(up_proj(x)) ** 2), the squared ReLU of Primer (So et al., 2021)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=config.bias)
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())
