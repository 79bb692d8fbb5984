"""Normalization layers by name, over the last dimension.

Each entry is built as `NORMS.get(name)(dim, config)`; numerics follow the Hugging Face classes so exports match.
"""

from __future__ import annotations

import torch
from torch import nn

from slmkit.model.config import ModelConfig
from slmkit.model.part import Part
from slmkit.model.registries import NORMS



@NORMS.register("layernorm")
class LayerNorm(nn.LayerNorm, Part):
    """nn.LayerNorm with the model's epsilon, and a bias only when config.bias (GPT-2 has one, MPT does not)."""

    def __init__(self, dim: int, config: ModelConfig):
        super().__init__(dim, eps=config.norm_eps, bias=config.bias)


@NORMS.register("rmsnorm")
class RMSNorm(Part):
    """Root-mean-square norm computed in fp32 and cast back before the weight, exactly as HF LlamaRMSNorm."""

    def __init__(self, dim: int, config: ModelConfig):
        super().__init__()
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
