"""The `slmkit` command: parses arguments, calls one library function per command, prints SlmkitError as a message.

Arguments after the command are `key=value` pairs with the same dotted keys as the recipe YAML.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from slmkit.errors import SlmkitError

USAGE_EXAMPLES = """examples:
  slmkit recipes
  slmkit train recipe=legal-tiny
  slmkit train recipe=legal-125m trainer.max_steps=3 --dry-run
  slmkit train recipe=legal-tiny optim.lr=1e-3,3e-3 --multirun
  slmkit train recipe=legal-tiny resume=true
  slmkit tokenizer train recipe=legal-tiny
  slmkit data prepare recipe=legal-tiny
  slmkit eval checkpoint=runs/legal-tiny/<time> tasks=[legal_heldout]
  slmkit eval compare runs/a runs/b
  slmkit generate checkpoint=runs/legal-tiny/<time> prompt="The court held"
  slmkit export checkpoint=runs/legal-tiny/<time> out=exports/legal-tiny
"""


def _recipe_and_overrides(args: Sequence[str]) -> tuple[str, list[str]]:
    recipe = None
    overrides = []
    for arg in args:
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    if not recipe:
        raise SlmkitError("name a recipe: recipe=NAME (see `slmkit recipes` for the list)")
    return recipe, overrides


def cmd_train(ns: argparse.Namespace) -> None:
    from slmkit.recipes import expand_sweep, resolve_recipe
    from slmkit.training.run import describe, train

    # Flags may come after the key=value pairs, where argparse's remainder has already swallowed them.
    ns.dry_run = ns.dry_run or "--dry-run" in ns.args
    ns.multirun = ns.multirun or bool({"--multirun", "-m"} & set(ns.args))
    args = [a for a in ns.args if a not in ("--dry-run", "--multirun", "-m")]
    recipe, overrides = _recipe_and_overrides(args)
    combinations = list(expand_sweep(overrides)) if ns.multirun else [overrides]
    for i, combination in enumerate(combinations):
        config = resolve_recipe(recipe, combination)
        if ns.multirun:
            print(f"[sweep {i + 1}/{len(combinations)}] {' '.join(combination)}")
        if ns.dry_run:
            print(describe(config))
            continue
        result = train(config)
        val = f", final val_loss {result.final_val_loss:.4f}" if result.final_val_loss is not None else ""
        print(f"trained {result.steps} steps{val}; run folder: {result.out_dir}")


def cmd_recipes(ns: argparse.Namespace) -> None:
    from slmkit.recipes import list_recipes

    print(list_recipes(show_keys=ns.keys))


def cmd_tokenizer(ns: argparse.Namespace) -> None:
    from data_prep.prepare import train_recipe_tokenizer
    from slmkit.recipes import resolve_recipe

    config = resolve_recipe(*_recipe_and_overrides(ns.args))
    print(train_recipe_tokenizer(config.data, config.tokenizer))


def cmd_data(ns: argparse.Namespace) -> None:
    from data_prep.prepare import prepare
    from slmkit.recipes import resolve_recipe

    config = resolve_recipe(*_recipe_and_overrides(ns.args))
    prepared = prepare(config.data, config.tokenizer)
    state = "reused (inputs unchanged)" if prepared.reused else "written"
    print(f"token shards {state}: {prepared.shards_dir}")


def cmd_data_report(ns: argparse.Namespace) -> None:
    from data_prep.prepare import prepare
    from data_prep.report import render_markdown
    from slmkit.recipes import resolve_recipe

    config = resolve_recipe(*_recipe_and_overrides(ns.args))
    prepared = prepare(config.data, config.tokenizer)  # reuses the prepared data when its inputs are unchanged
    report = json.loads((prepared.shards_dir / "report" / "report.json").read_text(encoding="utf-8"))
    markdown = render_markdown(report, examples=not ns.figures_only)
    if ns.out is None:
        print(markdown, end="")
    else:
        Path(ns.out).write_text(markdown, encoding="utf-8")
        print(f"report written to {ns.out}")


def cmd_eval(ns: argparse.Namespace) -> None:
    from slmkit.config import build_config
    from slmkit.eval import EvalArgs, compare_runs, run_eval

    if ns.args and ns.args[0] == "compare":
        if len(ns.args) < 3:
            raise SlmkitError("usage: slmkit eval compare RUN_A RUN_B [RUN_C ...]")
        print(compare_runs(ns.args[1:]))
        return
    run_eval(build_config(EvalArgs, overrides=ns.args))


def cmd_export(ns: argparse.Namespace) -> None:
    from slmkit.config import build_config
    from slmkit.export import ExportArgs, run_export

    out = run_export(build_config(ExportArgs, overrides=ns.args))
    print(f"exported to {out}")


def cmd_generate(ns: argparse.Namespace) -> None:
    from slmkit.config import build_config
    from slmkit.generate import GenerateArgs, run_generate

    run_generate(build_config(GenerateArgs, overrides=ns.args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slmkit", description="Train small domain-specific language models from scratch.",
        epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("args", nargs=argparse.REMAINDER, help="key=value overrides (dotted keys as in the recipe YAML)")
        p.set_defaults(fn=fn)
        return p

    train = add("train", cmd_train, "train a recipe: slmkit train recipe=NAME [key=value ...]")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config, size, FLOPs and data status; do not train")
    train.add_argument("--multirun", "-m", action="store_true", help="sweep: comma lists / range() in overrides run one after another")
    recipes = sub.add_parser("recipes", help="list recipes with parameter counts")
    recipes.add_argument("--keys", action="store_true", help="also list every recipe key with its type, default and meaning")
    recipes.set_defaults(fn=cmd_recipes)
    tok = sub.add_parser("tokenizer", help="tokenizer commands")
    tok_sub = tok.add_subparsers(dest="action", required=True)
    tok_train = tok_sub.add_parser("train", help="train the recipe's tokenizer: slmkit tokenizer train recipe=NAME")
    tok_train.add_argument("args", nargs=argparse.REMAINDER)
    tok_train.set_defaults(fn=cmd_tokenizer)
    data = sub.add_parser("data", help="data commands")
    data_sub = data.add_subparsers(dest="action", required=True)
    prep = data_sub.add_parser("prepare", help="curate the recipe's corpus and pack token shards")
    prep.add_argument("args", nargs=argparse.REMAINDER)
    prep.set_defaults(fn=cmd_data)
    report = data_sub.add_parser(
        "report", help="print the curation report of the recipe's data (prepared first if needed): "
                       "slmkit data report [--figures-only] [--out FILE] recipe=NAME")
    report.add_argument("--figures-only", action="store_true", help="leave out every quote of corpus text")
    report.add_argument("--out", default=None, help="write the markdown to this file instead of printing it")
    report.add_argument("args", nargs=argparse.REMAINDER)
    report.set_defaults(fn=cmd_data_report)
    add("eval", cmd_eval, "evaluate a checkpoint: slmkit eval checkpoint=PATH tasks=[...] | slmkit eval compare RUN_A RUN_B")
    add("export", cmd_export, "export a checkpoint: slmkit export checkpoint=PATH out=DIR [format=hf|gguf|int8]")
    add("generate", cmd_generate, "generate text: slmkit generate checkpoint=PATH prompt=\"...\"")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not ns.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        ns.fn(ns)
    except SlmkitError as err:
        print(f"slmkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slmkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
