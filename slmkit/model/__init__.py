"""The model zoo: a transformer body assembled from swappable parts chosen by name, and heads on top of it.

Plain single-device PyTorch; importing this package registers every built-in part and head.
"""

from slmkit.model.attention import ATTENTION_KERNELS, ATTENTION_LAYERS, AttentionLayer, AttentionMask, AttentionMasks
from slmkit.model.cache import KVCache, KVSlot
from slmkit.model.config import ModelConfig
from slmkit.model.feedforward import FEEDFORWARDS, FeedForward
from slmkit.model.heads import (ARGMAX_DECODING, CLASSIFIER_HEAD, CRF_DECODING, CRF_PREFIX, EMBEDDING_HEAD, HEADS, IGNORE_INDEX, LM_HEAD, MASKED_LM_HEAD, POOLINGS, SPAN_HEAD,
                                 TOKEN_HEAD, TRANSFORMS, Head, HeadSpec, resolve_pooling)
from slmkit.model.model import Model
from slmkit.model.norms import NORMS, RMSNorm
from slmkit.model.positions import POSITIONS, PositionEncoding, alibi_slopes
from slmkit.model.transformer import BLOCKS, Block, Transformer

__all__ = [
    "ARGMAX_DECODING",
    "ATTENTION_KERNELS",
    "ATTENTION_LAYERS",
    "BLOCKS",
    "CLASSIFIER_HEAD",
    "CRF_DECODING",
    "CRF_PREFIX",
    "EMBEDDING_HEAD",
    "AttentionLayer",
    "AttentionMask",
    "AttentionMasks",
    "Block",
    "FEEDFORWARDS",
    "FeedForward",
    "HEADS",
    "Head",
    "HeadSpec",
    "IGNORE_INDEX",
    "KVCache",
    "KVSlot",
    "LM_HEAD",
    "MASKED_LM_HEAD",
    "Model",
    "ModelConfig",
    "NORMS",
    "POOLINGS",
    "POSITIONS",
    "PositionEncoding",
    "RMSNorm",
    "SPAN_HEAD",
    "TOKEN_HEAD",
    "TRANSFORMS",
    "Transformer",
    "alibi_slopes",
    "resolve_pooling",
]
