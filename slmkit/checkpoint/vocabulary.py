"""A model's vocabulary grown for a domain vocabulary (tokenizer.extend): the weights of the model a run starts from,
each new token's rows the mean of the rows of the tokens that spelled it before.

The mean keeps a new token's embedding where the model already reads that text and its output row where the model
already scores it, so the loss at the first step is the old one, not that of a random row (see docs/benchmarks.md).
"""

from __future__ import annotations

import torch
from torch import nn

from slmkit.model import Model


def vocabulary_rows(model: Model) -> set[str]:
    """The model's tensors with a row per token: embeddings, and output layers (with their biases) over the vocabulary."""
    size = model.config.vocab_size
    return {f"{name}.{kind}" for name, module in model.named_modules()
            if (isinstance(module, nn.Embedding) and module.num_embeddings == size)
            or (isinstance(module, nn.Linear) and module.out_features == size)
            for kind in ("weight", "bias") if getattr(module, kind, None) is not None}


def grow_vocabulary(model: Model, source: Model, segmentations: dict[int, list[int]]) -> None:
    """Sets every weight of `model` (the grown vocabulary) from `source` (the model it starts from): the same tensors,
    the old tokens' rows, and for each new token (id -> the old ids that spelled it) the mean of those rows."""
    old = source.config.vocab_size
    rows = vocabulary_rows(source)
    theirs = source.state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():  # tied weights appear twice, and get the same values twice
            before = theirs[name]
            if name not in rows:
                tensor.copy_(before)
                continue
            tensor[:old].copy_(before)
            for token, parts in segmentations.items():
                tensor[token] = before[parts].mean(0)
