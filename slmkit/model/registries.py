"""The registries of the body's swappable parts, declared empty here so that the config and the parts both import
them and neither imports the other (llm-foundry's layers_registry.py).

Each part module registers its variants on import; importing `slmkit.model` imports them all, so a lookup through
any module of the package finds every built-in part.
"""

from __future__ import annotations

from typing import Any, Callable

from slmkit.registry import Registry

# Entries are typed loosely on purpose: naming the part classes here would import the parts (the cycle this avoids).

ATTENTION_KERNELS: Registry[Callable[..., Any]] = Registry(
    "attention kernel", "kernel(q, k, v, mask, dropout_p) -> out, all [B, n_head, T or S, head_dim]."
)
ATTENTION_LAYERS: Registry[type] = Registry(
    "attention layer", "An AttentionLayer subclass, built as cls(config, layer_idx)."
)
POSITIONS: Registry[type] = Registry(
    "position encoding", "How the model knows token order, built as cls(config)."
)
FEEDFORWARDS: Registry[type] = Registry("feed-forward", "Position-wise MLP of a block, built as cls(config).")
NORMS: Registry[type] = Registry("norm", "Normalization over the last dimension, built as cls(dim, config).")
BLOCKS: Registry[type] = Registry(
    "block layout", "Where a block's norms sit around attention and feed-forward, built as cls(config, layer_idx)."
)
