"""LoRA through `peft`: low-rank adapters on named linear layers of a model, and merging them back into plain weights.

peft injects its adapters into slmkit's own modules (any nn.Linear, chosen by name), so no wrapper model is needed:
the base weights freeze, the adapters train, and every head but the language-model head trains in full (a task head
is new, so it must). Merged, the model is a plain slmkit model again: same keys, exportable and loadable anywhere.
"""

from __future__ import annotations

import re

from torch import nn

from slmkit.config import LoraConfig
from slmkit.errors import SlmkitError
from slmkit.model import LM_HEAD, Model

ADAPTER_KEY = re.compile(r"\.lora_(A|B)\.|\.base_layer\.")  # state-dict names that only a model with adapters has


def add_lora(model: Model, lora: LoraConfig) -> Model:
    """Injects adapters (in place) into the linear layers `lora.targets` names; returns the model."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    if lora.rank < 1 or lora.alpha <= 0 or not 0 <= lora.dropout < 1:
        raise SlmkitError(f"lora.rank={lora.rank} must be >= 1, lora.alpha={lora.alpha} positive and lora.dropout={lora.dropout} in [0, 1)")
    linear = [name for name, module in model.body.named_modules() if isinstance(module, nn.Linear)]
    if not lora.targets:
        names = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise SlmkitError(f"lora.targets is empty, so LoRA would adapt nothing: name the linear layers that get adapters "
                          f"(this model's are: {', '.join(names)}), or set lora.rank=0 to train every weight")
    for target in lora.targets:
        if not any(name == target or name.endswith("." + target) for name in linear):
            names = sorted({name.rsplit(".", 1)[-1] for name in linear})
            raise SlmkitError(f"lora.targets names {target!r}, which is no linear layer of this model; its linear layers are: {', '.join(names)}")
    config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.targets))
    inject_adapter_in_model(config, model.body)
    for name, head in model.heads.items():
        for parameter in head.parameters():
            # A tied language-model head is the frozen embedding matrix: it stays frozen with the body.
            parameter.requires_grad = name != LM_HEAD
    return model


def has_adapters(state: dict) -> bool:
    return any(ADAPTER_KEY.search(key) for key in state)


def merge_lora(model: Model) -> Model:
    """Folds every adapter into its base weight (W + alpha/r * B @ A) and puts the plain linear layer back."""
    from peft.tuners.lora import LoraLayer

    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, module in adapted:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    for parameter in model.parameters():
        parameter.requires_grad = True
    return model
