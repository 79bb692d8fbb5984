"""The model zoo: a decoder-only causal LM assembled from swappable parts chosen by name.

Plain single-device PyTorch; importing this package registers every built-in part.
"""

from slmkit.model.attention import ATTENTION, Attention, AttentionMask
from slmkit.model.cache import KVCache
from slmkit.model.config import ModelConfig
from slmkit.model.feedforward import FEEDFORWARDS
from slmkit.model.norms import NORMS, RMSNorm
from slmkit.model.positions import POSITIONS, alibi_slopes
from slmkit.model.transformer import Block, Transformer

__all__ = [
    "ATTENTION",
    "Attention",
    "AttentionMask",
    "Block",
    "FEEDFORWARDS",
    "KVCache",
    "ModelConfig",
    "NORMS",
    "POSITIONS",
    "RMSNorm",
    "Transformer",
    "alibi_slopes",
]
