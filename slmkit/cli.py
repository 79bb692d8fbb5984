"""The `slmkit` command: parses arguments, calls one library function per command, prints SlmkitError as a message.

Arguments after the command are `key=value` pairs with the same dotted keys as the recipe YAML.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from slmkit.commands import RECIPE_COMMANDS, RecipeCommand
from slmkit.errors import SlmkitError, Stopped, Terminated, file_system_error
from slmkit.plugins import missing_plugin, plugin_problem

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
  slmkit train recipe=finance-sentiment          (after recipe=finance-tiny: fine-tunes its latest run)
  slmkit predict checkpoint=runs/finance-sentiment/latest input=headlines.txt
  slmkit embed checkpoint=runs/biomedical-encoder-tiny/latest input=abstracts.jsonl out=vectors.npy
  slmkit study run studies/positions.yaml        (then: slmkit study report studies/positions.yaml)
  slmkit compare studies/positions.yaml --html report.html
  slmkit tune recipe=shakespeare-char 'space.optim.lr=loguniform(1e-4,1e-2)' 'space.model.n_layer=choice(2,4)' trials=20
  slmkit distill teacher=runs/legal-teacher-tiny/latest recipe=legal-tiny   (a student learns from a teacher)
  slmkit ladder recipe=shakespeare-char sizes=[1e4,2e4,4e4,8e4] tokens_per_param=[20]
  slmkit ladder fit ladder=runs/ladder/shakespeare-char
  slmkit ladder predict ladder=runs/ladder/shakespeare-char n=3e5
  slmkit mup coord-check recipe=shakespeare-char model.tie_embeddings=false
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
    from slmkit.recipe import expand_sweep, resolve_recipe
    from slmkit.training.resume import recorded_config

    # Flags may come after the key=value pairs, where argparse's remainder has already swallowed them.
    ns.dry_run = ns.dry_run or "--dry-run" in ns.args
    ns.multirun = ns.multirun or bool({"--multirun", "-m"} & set(ns.args))
    args = [a for a in ns.args if a not in ("--dry-run", "--multirun", "-m")]
    recipe, overrides = _recipe_and_overrides(args)
    combinations = list(expand_sweep(overrides)) if ns.multirun else [overrides]
    # Every run of a sweep is checked before the first one trains: a bad value must not wait an hour to be reported.
    # A resumed run continues from its own record (config.yaml), with the command line's keys on top.
    configs = [recorded_config(recipe, combination) or resolve_recipe(recipe, combination) for combination in combinations]
    _check_distinct_out_dirs(configs, combinations)
    from slmkit.training.run import describe, train

    for i, (combination, config) in enumerate(zip(combinations, configs)):
        if ns.multirun:
            print(f"[sweep {i + 1}/{len(combinations)}] {' '.join(combination)}")
        if ns.dry_run:
            print(describe(config))
            continue
        result = train(config)
        if not result.is_global_zero:
            continue
        val = f", final val_loss {result.final_val_loss:.4f}" if result.final_val_loss is not None else ""
        print(f"trained {result.steps} steps{val}; run folder: {result.out_dir}")


def _check_distinct_out_dirs(configs: list, combinations: list[list[str]]) -> None:
    seen: dict[Path, int] = {}
    for i, config in enumerate(configs):
        if not config.out_dir:
            continue  # each run gets a folder of its own under runs/<recipe>/
        folder = Path(config.out_dir).resolve()
        if folder in seen:
            first = seen[folder]
            raise SlmkitError(
                f"sweep runs {first + 1} ({' '.join(combinations[first])}) and {i + 1} ({' '.join(combinations[i])}) "
                f"would both write out_dir={config.out_dir}: leave out_dir unset (each run gets its own folder) or make it "
                "differ per run, e.g. 'out_dir=runs/sweep/lr${optim.lr}'"
            )
        seen[folder] = i


def cmd_distill(ns: argparse.Namespace) -> None:
    from slmkit.distill.command import train_arguments

    ns.args = train_arguments(ns.args)
    cmd_train(ns)


def cmd_recipes(ns: argparse.Namespace) -> None:
    from slmkit.recipe import list_recipes, recipe_guide

    if ns.guide:
        print(recipe_guide(), end="")
    else:
        print(list_recipes(show_keys=ns.keys))


def cmd_recipe_command(command: RecipeCommand, ns: argparse.Namespace) -> None:
    """A command a plugin registered: the recipe resolved here, the work and the text to print from the plugin."""
    from slmkit.recipe import resolve_recipe

    output = command.run(resolve_recipe(*_recipe_and_overrides(ns.args)), ns)
    print(output, end="" if output.endswith("\n") else "\n")


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


def cmd_embed(ns: argparse.Namespace) -> None:
    from slmkit.config import build_config
    from slmkit.embed import EmbedArgs, run_embed

    run_embed(build_config(EmbedArgs, overrides=ns.args))


def cmd_predict(ns: argparse.Namespace) -> None:
    from slmkit.config import build_config
    from slmkit.predict import PredictArgs, run_predict

    run_predict(build_config(PredictArgs, overrides=ns.args))


def cmd_generate(ns: argparse.Namespace) -> None:
    from slmkit.config import build_config
    from slmkit.generate import GenerateArgs, run_generate

    run_generate(build_config(GenerateArgs, overrides=ns.args))


def cmd_study(ns: argparse.Namespace) -> None:
    from slmkit.research.study import load_study

    study = load_study(ns.file)
    if ns.action == "report":
        from slmkit.research.report import study_report

        print(study_report(study))
        return
    if study.config.tune:
        from slmkit.research.tune import run_tune, tune_from_study

        print(run_tune(tune_from_study(study)))
        return
    from slmkit.research.launch import plan_text, run_study

    chosen = study.only(ns.cells.split(",")) if ns.cells else study
    if ns.dry_run:
        print(plan_text(chosen))
        return
    run_study(chosen)
    from slmkit.research.report import study_report

    print(study_report(study))


def cmd_compare(ns: argparse.Namespace) -> None:
    from slmkit.research.page import final_metrics_text, write_page

    if ns.html:
        print(f"wrote {write_page(ns.sources, ns.html)}")
    else:
        print(final_metrics_text(ns.sources))


def cmd_tune(ns: argparse.Namespace) -> None:
    from slmkit.research.tune import run_tune, tune_from_arguments

    print(run_tune(tune_from_arguments(ns.args)))


# --- scaling (#24): ladder, its fit and prediction, μP's coordinate check ----------------------------------------------
def _own_keys(args: Sequence[str], schema: type) -> tuple[list[str], list[str]]:
    """(key=value pairs whose key is a field of the command's own schema, the rest: recipe=NAME and recipe overrides)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(schema)}
    own = [a for a in args if a.split("=", 1)[0] in fields]
    return own, [a for a in args if a not in own]


def cmd_ladder(ns: argparse.Namespace) -> None:
    from slmkit.config import build_config
    from slmkit.scaling.analysis import FitArgs, PredictArgs, fit_ladder, predict
    from slmkit.scaling.ladder import LadderArgs, run_ladder

    action = ns.args[0] if ns.args and "=" not in ns.args[0] else None
    rest = ns.args[1:] if action else ns.args
    if action == "fit":
        print(fit_ladder(build_config(FitArgs, overrides=rest)), end="")
    elif action == "predict":
        print(predict(build_config(PredictArgs, overrides=rest)), end="")
    elif action is None:
        own, recipe_args = _own_keys(rest, LadderArgs)
        recipe, overrides = _recipe_and_overrides(recipe_args)
        print(run_ladder(recipe, overrides, build_config(LadderArgs, overrides=own)), end="")
    else:
        raise SlmkitError(f"unknown ladder action {action!r}: slmkit ladder recipe=NAME ... | ladder fit ladder=DIR | "
                          "ladder predict ladder=DIR n=N [d=D]")


def cmd_mup(ns: argparse.Namespace) -> None:
    from slmkit.config import build_config
    from slmkit.recipe import resolve_recipe
    from slmkit.scaling.coord_check import CoordCheckArgs, coord_check_command

    if not ns.args or ns.args[0] != "coord-check":
        raise SlmkitError("usage: slmkit mup coord-check recipe=NAME [widths=[64,128,...]] [steps=N] [seeds=N] [key=value ...]")
    own, recipe_args = _own_keys(ns.args[1:], CoordCheckArgs)
    config = resolve_recipe(*_recipe_and_overrides(recipe_args))
    print(coord_check_command(config, build_config(CoordCheckArgs, overrides=own)), end="")
# --- end scaling ------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slmkit", description="Train small domain-specific language models from scratch.",
        epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.set_defaults(commands=sub.choices)  # every command name, plugins' included, for main's check

    def add(name: str, fn: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("args", nargs=argparse.REMAINDER, help="key=value overrides (dotted keys as in the recipe YAML)")
        p.set_defaults(fn=fn)
        return p

    train = add("train", cmd_train, "train a recipe: slmkit train recipe=NAME [key=value ...]")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config, size, FLOPs and data status; do not train")
    train.add_argument("--multirun", "-m", action="store_true", help="sweep: comma lists / range() in overrides run one after another")
    distill = add("distill", cmd_distill, "train a student from a teacher: slmkit distill teacher=PATH recipe=NAME [key=value ...]")
    distill.add_argument("--dry-run", action="store_true", help="print the resolved config, size, FLOPs and data status; do not train")
    distill.add_argument("--multirun", "-m", action="store_true", help="sweep: comma lists / range() in overrides run one after another")
    recipes = sub.add_parser("recipes", help="list recipes with parameter counts")
    recipes.add_argument("--keys", action="store_true", help="also list every recipe key with its type, default and meaning")
    recipes.add_argument("--guide", action="store_true",
                         help="print the recipe guide (Markdown, kept as docs/recipe-guide.md) generated from the config")
    recipes.set_defaults(fn=cmd_recipes)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in RECIPE_COMMANDS:  # plugin commands, "GROUP ACTION"
        group, action = name.split(" ", 1)
        if group not in groups:
            groups[group] = sub.add_parser(group, help=f"{group} commands").add_subparsers(dest="action", required=True)
        command = RECIPE_COMMANDS.get(name)
        p = groups[group].add_parser(action, help=command.help, description=command.help)
        for flag, keywords in command.flags.items():
            p.add_argument(flag, **keywords)
        p.add_argument("args", nargs=argparse.REMAINDER, help="recipe=NAME, then key=value overrides")
        p.set_defaults(fn=functools.partial(cmd_recipe_command, command))
    study = sub.add_parser("study", help="studies: a recipe x factors x seeds, with statistics").add_subparsers(dest="action", required=True)
    study_run = study.add_parser("run", help="run (or continue) every run of a study file: slmkit study run FILE.yaml")
    study_run.add_argument("file", help="the study YAML")
    study_run.add_argument("--dry-run", action="store_true", help="list the runs and their state (and the sbatch script); run nothing")
    study_run.add_argument("--cells", help="run only these cells, comma-separated (the report still covers every cell)")
    study_run.set_defaults(fn=cmd_study)
    study_report = study.add_parser("report", help="statistics over seeds, per cell and metric: slmkit study report FILE.yaml")
    study_report.add_argument("file", help="the study YAML")
    study_report.set_defaults(fn=cmd_study)
    compare = sub.add_parser("compare", help="compare runs and studies: slmkit compare RUN_OR_STUDY... --html report.html")
    compare.add_argument("sources", nargs="+", help="run folders and study files")
    compare.add_argument("--html", help="write one self-contained page (curves, statistics, config diff) to this file")
    compare.set_defaults(fn=cmd_compare)
    add("tune", cmd_tune, "hyperparameter search (Optuna): slmkit tune recipe=NAME space.optim.lr=loguniform(1e-4,1e-2) trials=20")
    add("eval", cmd_eval, "evaluate a checkpoint: slmkit eval checkpoint=PATH tasks=[...] | slmkit eval compare RUN_A RUN_B")
    add("export", cmd_export, "export a checkpoint: slmkit export checkpoint=PATH out=DIR [format=hf|gguf|int8]")
    add("generate", cmd_generate, "generate text: slmkit generate checkpoint=PATH prompt=\"...\"")
    add("predict", cmd_predict, "run a fine-tuned model over records: slmkit predict checkpoint=PATH input=FILE [out=FILE]")
    add("embed", cmd_embed, "texts to vectors: slmkit embed checkpoint=PATH input=FILE out=FILE.npy|FILE.parquet")
    add("ladder", cmd_ladder, "scaling ladder: slmkit ladder recipe=NAME sizes=[...] | ladder fit ladder=DIR | ladder predict ladder=DIR n=N [d=D]")
    add("mup", cmd_mup, "μP: slmkit mup coord-check recipe=NAME [widths=[...]]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command is not None and command not in parser.get_default("commands") and plugin_problem():
        # a command that a plugin would add: say why the plugin is missing instead of argparse's bare "invalid choice"
        print(f"slmkit: error: {missing_plugin(f'the command {command!r}')}", file=sys.stderr)
        return 2
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not ns.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its notices on token ids during export and checks
    signal.signal(signal.SIGTERM, _terminate)
    try:
        ns.fn(ns)
    except Stopped as err:
        print(f"slmkit: {err}", file=sys.stderr)
        return err.exit_code
    except SlmkitError as err:
        print(f"slmkit: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # Terminated included
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"slmkit: stopped by {signal.Signals(signum).name}; files are written whole or not at all, so run the "
              "command again to continue", file=sys.stderr)
        return 128 + signum
    except OSError as err:
        explained = file_system_error(err)
        if explained is None:
            raise
        print(f"slmkit: error: {explained}", file=sys.stderr)
        return explained.exit_code
    return 0


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM stops a command where it is, as Ctrl-C does (training replaces this with a stop at the next step)."""
    raise Terminated()


if __name__ == "__main__":
    sys.exit(main())
