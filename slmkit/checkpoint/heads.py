"""The heads of a run's model, as its config.yaml records them: what a checkpoint needs, beside the model section, to
rebuild its model knowing nothing of the objective that trained it.

Runs started since the heads were recorded carry a `heads:` list; older runs are read by the one legacy reader below.
"""

from __future__ import annotations

import dataclasses

from slmkit.config import HeadConfig, RunConfig
from slmkit.errors import SlmkitError
from slmkit.model import (CLASSIFIER_HEAD, EMBEDDING_HEAD, LM_HEAD, MASKED_LM_HEAD, SPAN_HEAD, TOKEN_HEAD, HeadSpec,
                          resolve_pooling)


def run_heads(config: RunConfig) -> list[HeadSpec]:
    """The heads the run's model has: those its config records, else (a run written before they were) the legacy
    reading of its objective section."""
    if config.heads:
        return [head.spec() for head in config.heads]
    return legacy_heads(config)


def with_heads(config: RunConfig, heads: list[HeadSpec]) -> RunConfig:
    """The config with its model's heads recorded, as a run saves it."""
    return dataclasses.replace(config, heads=[HeadConfig.of(spec) for spec in heads])


def legacy_heads(config: RunConfig) -> list[HeadSpec]:
    """The heads slmkit's built-in objectives put on the body before runs recorded them, read from the objective
    section those runs saved (labels and pooling already resolved there). Frozen: new objectives record their heads."""
    o = config.objective
    pooling = resolve_pooling(o.pooling, config.model.causal)
    classifier = [HeadSpec(CLASSIFIER_HEAD, tuple(o.labels), pooling, o.head_transform)]
    by_objective = {
        "causal_lm": [HeadSpec(LM_HEAD)],
        "sft": [HeadSpec(LM_HEAD)],
        "distill_lm": [HeadSpec(LM_HEAD)],
        "masked_lm": [HeadSpec(MASKED_LM_HEAD)],
        "classification": classifier,
        "distill_classification": classifier,
        "token_classification": [HeadSpec(TOKEN_HEAD, tuple(o.labels), transform=o.head_transform)],
        "span_qa": [HeadSpec(SPAN_HEAD, transform=o.head_transform)],
        "contrastive": [HeadSpec(EMBEDDING_HEAD, pooling=pooling)],
    }
    if o.name not in by_objective:
        raise SlmkitError(
            f"the run's config.yaml records no heads (it was written before slmkit recorded them) and its objective "
            f"{o.name!r} is not a built-in one: add its heads to the config.yaml, e.g. `heads: [{{kind: {LM_HEAD}}}]`"
        )
    return by_objective[o.name]
