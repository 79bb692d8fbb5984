"""`prepare`: the one entry point that turns a data config into token shards, on the engine the recipe names.

It sits above the engines: the one-machine pool (`data_prep.prepare`, whose stage functions the datatrove engine
also runs as pipeline steps) and datatrove (`data_prep.engines.datatrove_engine`, imported only when chosen, so the
pool never needs datatrove). Keeping the choice here, rather than in `data_prep.prepare`, is what keeps the engines
from importing each other round a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from data_prep.plan import Plan
from data_prep.prepare import make_plan, prepare_on_pool, reusable_manifest, reused
from data_prep.remote import check_writable, publish_copy
from slmkit.data import MANIFEST, PreparedData
from slmkit.data_config import DataConfig, TokenizerConfig


def prepare(
    data: DataConfig, tokenizer: TokenizerConfig, out_dir: Optional[Path] = None, progress: bool = True
) -> PreparedData:
    """Curates the corpus, trains (or reuses) the tokenizer, packs token shards and writes the curation report.

    Reuses all of it when sources, config and tokenizer are unchanged; resumes a crashed run where it stopped.
    """
    plan = make_plan(data, tokenizer, out_dir)
    if data.publish_to:
        check_writable(data.publish_to)  # before any work: a destination that cannot take the result
    prepared = prepare_here(plan, data, tokenizer, progress)
    if data.publish_to and (data.engine == "local" or data.node_rank == 0):
        publish_copy(plan.folder, data.publish_to, MANIFEST)
    return prepared


def prepare_here(plan: Plan, data: DataConfig, tokenizer: TokenizerConfig, progress: bool) -> PreparedData:
    """The prepared data in the plan's folder: reused, or written by the engine the recipe names."""
    manifest = reusable_manifest(plan)
    if manifest is not None:
        return reused(plan, manifest)
    if data.engine == "datatrove":
        from data_prep.engines.datatrove_engine import prepare_on_datatrove

        return prepare_on_datatrove(plan, data, tokenizer, progress)
    return prepare_on_pool(plan, data, tokenizer, progress)
