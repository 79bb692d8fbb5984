"""μP's multipliers folded into the weights: the standard-parametrization model that computes the same outputs.

Export reads a model as the stock transformers classes compute it, which know no input, query or readout multiplier;
each multiplier is linear in one weight, so scaling that weight gives the same function with no multiplier left.
"""

from __future__ import annotations

import dataclasses

import torch

from slmkit.errors import SlmkitError
from slmkit.model.model import Model


def standard_equivalent(model: Model) -> Model:
    """`model` itself under the standard parametrization; under μP, a new model (parametrization=standard, same heads)
    whose weights carry the multipliers: token embeddings x input multiplier, queries x query scale (through q_norm's
    weight when queries are normalized, else q_proj), language-model readout x readout multiplier."""
    c = model.config
    if not c.mup:
        return model
    folded = Model(dataclasses.replace(c, parametrization="standard"), model.head_specs)
    folded.load_state_dict(model.state_dict())
    folded.to(next(model.parameters()).device).train(model.training)
    with torch.no_grad():
        folded.body.tok_embeddings.weight.mul_(c.input_multiplier)
        for block in folded.body.blocks:
            attn = block.attn
            target = getattr(attn, "q_norm", None) or getattr(attn, "q_proj", None)
            if target is None:
                raise SlmkitError(f"the {c.attention} attention layer has neither q_norm nor q_proj to fold μP's query "
                                  "scale into: it cannot be exported as a standard model")
            for tensor in (target.weight, getattr(target, "bias", None)):
                if tensor is not None:
                    tensor.mul_(c.query_scale)
        if "lm" in folded.heads:
            folded.heads["lm"].proj.weight.mul_(c.readout_multiplier)
    return folded
