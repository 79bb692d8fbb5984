"""The ladder's size rule: a recipe's model reshaped to a target count of non-embedding parameters.

The rule keeps the recipe's head size, queries per key-value head and feed-forward ratio. At each depth L it takes the
width d (a multiple of the head size) whose count is nearest the target; of the depths whose count lands within
SIZE_TOLERANCE of the target it keeps the one whose aspect ratio d / L is nearest the recipe's (OLMo-core and nanochat
tie width to depth the same way); where none lands that close, the nearest count wins.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from slmkit.errors import SlmkitError
from slmkit.model import Model, ModelConfig

MAX_LAYERS = 64
MAX_HEADS = 256
SIZE_TOLERANCE = 0.1  # a count within 10% of the target counts as hitting it


def non_embedding_parameters(config: ModelConfig) -> int:
    """Non-embedding parameters of the model (counted on the meta device: nothing allocated)."""
    with torch.device("meta"):
        return Model(dataclasses.replace(config, vocab_size=max(config.vocab_size, 1))).num_parameters(non_embedding=True)


def reshape(base: ModelConfig, d_model: int, n_layer: int) -> ModelConfig:
    """`base` at this width and depth, with its head size, head grouping and feed-forward ratio kept."""
    head_dim = base.head_dim
    n_head = d_model // head_dim
    group = base.n_head // base.kv_heads
    if d_model % head_dim or n_head % group:
        raise SlmkitError(f"width {d_model} does not split into heads of {head_dim} in groups of {group} queries per "
                          "key-value head")
    ffn_hidden = None if base.ffn_hidden is None else max(1, round(base.ffn_hidden * d_model / base.d_model))
    return dataclasses.replace(base, d_model=d_model, n_layer=n_layer, n_head=n_head, ffn_hidden=ffn_hidden,
                               n_kv_heads=None if base.n_kv_heads is None else n_head // group)


def shape_for(base: ModelConfig, target: float) -> ModelConfig:
    """The recipe's model reshaped to about `target` non-embedding parameters, by the rule in the module docstring."""
    head_dim = base.head_dim
    group = base.n_head // base.kv_heads
    step = head_dim * group  # widths whose head count the grouping divides
    if base.mup and base.mup_base_width:
        step = step * base.mup_base_width // math.gcd(step, base.mup_base_width)  # and a multiple of μP's base width
    aspect = base.d_model / base.n_layer
    # A count is affine in depth at a fixed width (every block is alike): two meta builds per width give every depth.
    widths: list[tuple[int, int, int]] = []  # (width, count at depth 1, count per extra block)
    for d_model in range(step, step * MAX_HEADS + 1, step):
        one = non_embedding_parameters(reshape(base, d_model, 1))
        widths.append((d_model, one, non_embedding_parameters(reshape(base, d_model, 2)) - one))
        if one > target:
            break
    candidates = []
    for n_layer in range(1, MAX_LAYERS + 1):
        miss, d_model, count = min((abs(math.log((one + (n_layer - 1) * per_block) / target)), d_model,
                                    one + (n_layer - 1) * per_block) for d_model, one, per_block in widths)
        candidates.append((miss, abs(math.log(d_model / n_layer / aspect)), n_layer, d_model, count))
    close = [c for c in candidates if c[0] <= math.log(1 + SIZE_TOLERANCE)]
    miss, _, n_layer, d_model, count = min(close, key=lambda c: (c[1], c[0])) if close else min(candidates)
    if miss > math.log(2):
        raise SlmkitError(f"no shape of this recipe has about {target:,.0f} non-embedding parameters (the nearest has "
                          f"{count:,}): choose sizes between {non_embedding_parameters(reshape(base, step, 1)):,} and "
                          "the largest the recipe's head size allows")
    return reshape(base, d_model, n_layer)
