"""data_prep's registration with slmkit, loaded through the `slmkit.plugins` entry point (see pyproject.toml).

Registers the data preparer that `slmkit train` calls and the `slmkit data prepare|report` and `slmkit tokenizer
train` commands. Importing the pipeline also registers the tokenizer kinds (data_prep.tokenizer) and the languages
of the stopword filter (data_prep.filters), so recipes are checked against them when they resolve.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from data_prep.pipeline import prepare
from data_prep.prepare import REPORT_DIR, describe_status, make_plan, reusable_manifest, train_recipe_tokenizer
from data_prep.remote import publish_copy
from data_prep.report import REPORT_JSON, render_markdown
from slmkit.atomic import atomic_write_text
from slmkit.commands import RECIPE_COMMANDS, RecipeCommand
from slmkit.data import MANIFEST, DataPreparer, register_preparer
from slmkit.errors import SlmkitError


def prepare_command(config: Any, flags: argparse.Namespace) -> str:
    if config.data.engine == "datatrove" and config.data.executor == "slurm":
        return submit_or_report(config)
    prepared = prepare(config.data, config.tokenizer)
    state = "reused (inputs unchanged)" if prepared.reused else "written"
    lines = [f"token shards {state}: {prepared.shards_dir}"]
    if prepared.report_path is not None:
        lines.append(f"curation report: {prepared.report_path}")
    return "\n".join(lines)


def submit_or_report(config: Any) -> str:
    """SLURM runs the stages as jobs: the first call submits them, a call after they finished reports the shards."""
    plan = make_plan(config.data, config.tokenizer, None)
    manifest = reusable_manifest(plan)
    if manifest is not None:
        if config.data.publish_to:
            publish_copy(plan.folder, config.data.publish_to, MANIFEST)
        return f"token shards reused (inputs unchanged): {plan.folder}"
    from data_prep.engines.datatrove_engine import submit_to_slurm

    return submit_to_slurm(plan, config.data, config.tokenizer)


def report_command(config: Any, flags: argparse.Namespace) -> str:
    prepared = prepare(config.data, config.tokenizer)  # reuses the prepared data when its inputs are unchanged
    path = prepared.shards_dir / REPORT_DIR / REPORT_JSON
    if not path.is_file():
        raise SlmkitError(f"{prepared.shards_dir} has no curation report ({path}): delete the folder and prepare it again")
    markdown = render_markdown(json.loads(path.read_text(encoding="utf-8")), examples=not flags.figures_only)
    if flags.out is None:
        return markdown
    atomic_write_text(flags.out, markdown)
    return f"report written to {flags.out}"


def tokenizer_command(config: Any, flags: argparse.Namespace) -> str:
    return train_recipe_tokenizer(config.data, config.tokenizer)


register_preparer(DataPreparer(prepare=prepare, status=describe_status))
RECIPE_COMMANDS.register("data prepare")(RecipeCommand(
    help="curate the recipe's corpus and pack token shards: slmkit data prepare recipe=NAME", run=prepare_command))
RECIPE_COMMANDS.register("data report")(RecipeCommand(
    help="print the curation report of the recipe's data (prepared first if needed): "
         "slmkit data report [--figures-only] [--out FILE] recipe=NAME",
    run=report_command,
    flags={"--figures-only": {"action": "store_true", "help": "leave out every quote of corpus text"},
           "--out": {"default": None, "help": "write the markdown to this file instead of printing it"}},
))
RECIPE_COMMANDS.register("tokenizer train")(RecipeCommand(
    help="train the recipe's tokenizer: slmkit tokenizer train recipe=NAME", run=tokenizer_command))
