"""What every swappable part promises the assembly, so that a new variant is one class plus one registration.

A part checks the config it is given (its own requirements, nowhere else); a part inside a block also names the
layers that write into the residual stream, which get the scaled residual init whatever they are called.
"""

from __future__ import annotations

from torch import nn

from slmkit.model.config import ModelConfig


class Part(nn.Module):
    @classmethod
    def check(cls, config: ModelConfig) -> None:
        """Raises SlmkitError when `config` asks for something this part cannot do; the default accepts anything."""


class BlockPart(Part):
    """An attention layer or a feed-forward: its output is added to the residual stream."""

    def residual_outputs(self) -> list[nn.Linear]:
        """The layers whose output is added to the residual stream (GPT-2 scales their init by 1/sqrt(2*n_layer))."""
        raise NotImplementedError(f"{type(self).__name__} must name its residual output layers")
