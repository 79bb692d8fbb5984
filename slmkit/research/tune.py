"""`slmkit tune`: hyperparameter search with Optuna over a base recipe. TPE proposes each trial's values; a trial is an
ordinary `slmkit train` process whose validation losses, read from its metrics.jsonl as they land, let the median
pruner stop a hopeless trial (SIGTERM: it stops at a step boundary, with a checkpoint). The study lives in sqlite
beside the runs (run the command again and it goes on to the requested number of trials) or in a database URL that
several machines share. The best trial's config is written as a recipe file that `slmkit train recipe=PATH` runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from slmkit.atomic import atomic_write_text
from slmkit.checkpoint.run_folder import RunFolder
from slmkit.config import build_config, config_to_yaml
from slmkit.errors import SlmkitError
from slmkit.options import at_least, option
from slmkit.recipe import resolve_recipe
from slmkit.research.launch import RUN_LOG
from slmkit.research.results import read_run
from slmkit.research.study import Study

log = logging.getLogger("slmkit")

BEST_RECIPE = "best.yaml"
OPTUNA_DB = "optuna.db"
DISTRIBUTION = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$")


@dataclass
class TuneConfig:
    name: str = option("", "The search's name: its trials run in <runs_root>/<name>/trial-<n>/; default tune-<recipe>.")
    recipe: str = option("", "The base recipe (a name from `slmkit recipes` or a recipe file).")
    overrides: list[str] = option([], "key=value overrides of the base recipe that every trial shares.")
    space: dict[str, str] = option({}, "Dotted key -> distribution: loguniform(low,high), uniform(low,high), int(low,high), choice(a,b,...).")
    trials: int = option(20, "Finished trials (complete or pruned) to reach; running the search again goes on to this count.", bounds=at_least(1))
    metric: str = option("val_loss", "What a trial is scored by: a metrics.jsonl key (its last value) or eval/<task>/<metric>.")
    direction: str = option("minimize", "minimize or maximize the metric.", choices=("minimize", "maximize"))
    storage: Optional[str] = option(None, "The Optuna study's database URL (shared by several machines); None = sqlite <runs_root>/<name>/optuna.db.")
    sampler_seed: int = option(0, "Seed of the TPE sampler.", bounds=at_least(0))
    pruning: bool = option(True, "Stop trials whose intermediate validation loss is worse than the median of earlier trials at that step.")
    pruning_startup_trials: int = option(3, "Trials that finish unpruned before pruning starts.", bounds=at_least(0))
    runs_root: str = option("runs", "Folder that holds the search's folder.")

    @property
    def folder(self) -> Path:
        return Path(self.runs_root) / self.name


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise SlmkitError("slmkit tune needs the package optuna: pip install 'slmkit[tune]'") from None
    return optuna


def parse_distribution(key: str, spec: str) -> Any:
    """An Optuna distribution from `loguniform(1e-4,1e-2)`, `uniform(0,1)`, `int(2,8)` or `choice(a,b,c)`."""
    optuna = optuna_module()
    where = f"space.{key}={spec}"
    match = DISTRIBUTION.match(str(spec))
    kinds = ("loguniform", "uniform", "int", "choice")
    if not match or match.group(1) not in kinds:
        raise SlmkitError(f"{where}: not a distribution; write one of {', '.join(k + '(...)' for k in kinds)}")
    kind, args = match.group(1), [a.strip() for a in match.group(2).split(",") if a.strip()]
    try:
        values = [_value(a) for a in args]
    except yaml.YAMLError:
        raise SlmkitError(f"{where}: its arguments are not values") from None
    if kind == "choice":
        if not values:
            raise SlmkitError(f"{where}: choice needs at least one value")
        return optuna.distributions.CategoricalDistribution(values)
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise SlmkitError(f"{where}: {kind} takes two numbers, low and high")
    low, high = values
    if low >= high:
        raise SlmkitError(f"{where}: the range is inverted or empty ({low} >= {high}); write {kind}(low,high) with low < high")
    if kind == "loguniform" and low <= 0:
        raise SlmkitError(f"{where}: loguniform needs low > 0")
    if kind == "int":
        if not all(isinstance(v, int) for v in values):
            raise SlmkitError(f"{where}: int takes two integers")
        return optuna.distributions.IntDistribution(low, high)
    return optuna.distributions.FloatDistribution(float(low), float(high), log=kind == "loguniform")


def _value(text: str) -> Any:
    """A distribution's argument: a number (1e-4 included, which YAML reads as text), else a YAML scalar."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def load_tune(config: TuneConfig) -> tuple[TuneConfig, dict[str, Any]]:
    """The search checked whole before any trial: its distributions, and the recipe with each key of the space."""
    if not config.recipe:
        raise SlmkitError("name the base recipe: slmkit tune recipe=NAME space.optim.lr=loguniform(1e-4,1e-2) trials=20")
    if not config.space:
        raise SlmkitError("the search space is empty: add space.KEY=DISTRIBUTION, e.g. space.optim.lr=loguniform(1e-4,1e-2)")
    config = dataclasses.replace(config, name=config.name or f"tune-{Path(config.recipe).stem}")
    space = {key: parse_distribution(key, spec) for key, spec in config.space.items()}
    resolve_recipe(config.recipe, config.overrides, follow_init_from=False)
    for key, distribution in space.items():
        try:
            resolve_recipe(config.recipe, [*config.overrides, f"{key}={_sample_value(distribution)}"], follow_init_from=False)
        except SlmkitError as err:
            raise SlmkitError(f"space.{key}: {err}") from None
    return config, space


def _sample_value(distribution: Any) -> Any:
    return distribution.choices[0] if hasattr(distribution, "choices") else distribution.low


def tune_from_arguments(args: list[str]) -> TuneConfig:
    """`recipe=NAME space.KEY=DIST trials=N ... key=value` -> TuneConfig; keys that are not the search's own are
    overrides of the base recipe."""
    own = {f.name for f in dataclasses.fields(TuneConfig)} - {"overrides", "space"}
    raw: dict[str, Any] = {"space": {}, "overrides": []}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SlmkitError(f"{arg!r} is not key=value: slmkit tune recipe=NAME space.optim.lr=loguniform(1e-4,1e-2) trials=20")
        if key.startswith("space."):
            raw["space"][key[len("space."):]] = value
        elif key in own:
            raw[key] = value
        else:
            raw["overrides"].append(arg)
    return build_config(TuneConfig, raw)


def tune_from_study(study: Study) -> TuneConfig:
    """The `tune:` section of a study file, over the study's recipe, overrides, name and runs_root."""
    try:
        return build_config(TuneConfig, {"name": study.config.name, "recipe": study.config.recipe,
                                         "overrides": study.config.overrides, "runs_root": study.config.runs_root,
                                         **study.config.tune})
    except SlmkitError as err:
        raise SlmkitError(f"study {study.path}: tune: {err}") from None


def run_tune(config: TuneConfig) -> str:
    """Runs trials until `trials` have finished; writes the best config as a recipe; returns what to tell the user."""
    optuna = optuna_module()
    config, space = load_tune(config)
    config.folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(
        config.storage or f"sqlite:///{(config.folder / OPTUNA_DB).resolve()}",
        # A trial whose process died (a crash, a preemption) stops beating and is marked failed, then replaced.
        heartbeat_interval=30, grace_period=120)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=config.pruning_startup_trials) if config.pruning \
        else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=config.name, storage=storage, load_if_exists=True, direction=config.direction,
                                sampler=optuna.samplers.TPESampler(seed=config.sampler_seed), pruner=pruner)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study.get_trials(states=done))
    if finished < config.trials:
        print(f"tune {config.name}: {finished} of {config.trials} trials finished; running the rest")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        failed_before = len(study.get_trials(states=(optuna.trial.TrialState.FAIL,)))

        def stop_when_trials_keep_failing(study: Any, trial: Any) -> None:
            # A failed trial (a crash, a config that only fails when it trains) is replaced, but a search whose
            # trials all fail would otherwise run for ever: as many failures as trials requested ends it.
            if len(study.get_trials(states=(optuna.trial.TrialState.FAIL,))) - failed_before >= config.trials:
                study.stop()

        study.optimize(lambda trial: _trial(config, space, trial), catch=(SlmkitError,),
                       callbacks=[optuna.study.MaxTrialsCallback(config.trials, states=done),
                                  stop_when_trials_keep_failing])
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise SlmkitError(f"no trial of {config.name} finished unpruned, so there is no best configuration: see the "
                          f"trials' {RUN_LOG} under {config.folder}")
    best = study.best_trial
    recipe = write_best_recipe(Path(best.user_attrs["run"]), config.folder / BEST_RECIPE)
    counts = {state.name.lower(): len(study.get_trials(states=(state,))) for state in (*done, optuna.trial.TrialState.FAIL)}
    return (f"tune {config.name}: {', '.join(f'{n} {s}' for s, n in counts.items())}; best trial {best.number}: "
            f"{config.metric} {best.value:.4g} with {json.dumps(best.params)}\n"
            f"best config: {recipe}  (train it: slmkit train recipe={recipe})")


def _trial(config: TuneConfig, space: dict[str, Any], trial: Any) -> float:
    optuna = optuna_module()
    values = {key: _suggest(trial, key, distribution) for key, distribution in space.items()}
    out_dir = config.folder / f"trial-{trial.number}"
    trial.set_user_attr("run", str(out_dir))
    overrides = [*config.overrides, *(f"{key}={value}" for key, value in values.items()), f"out_dir={out_dir}",
                 "trainer.progress_bar=false"]
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / RUN_LOG, "a", encoding="utf-8") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "slmkit.cli", "train", f"recipe={config.recipe}", *overrides],
                                   stdout=log_file, stderr=subprocess.STDOUT)
        seen = 0
        try:
            while process.poll() is None:
                time.sleep(0.5)
                seen = _report_new(out_dir, trial, seen)
                if config.pruning and trial.should_prune():
                    raise optuna.TrialPruned()
        finally:
            if process.poll() is None:  # pruned, or the search itself stopped: the run stops at a step, with a checkpoint
                process.send_signal(signal.SIGTERM)
            process.wait()
    _report_new(out_dir, trial, seen)
    if process.returncode != 0:
        raise SlmkitError(f"trial {trial.number} failed (exit {process.returncode}): see {out_dir / RUN_LOG}")
    value = read_run(out_dir).final(config.metric)
    if value is None:
        raise SlmkitError(f"trial {trial.number} reported no {config.metric}: choose a metric its runs log")
    return value


def _suggest(trial: Any, key: str, distribution: Any) -> Any:
    distributions = optuna_module().distributions
    if isinstance(distribution, distributions.CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, distributions.IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high)
    return trial.suggest_float(key, distribution.low, distribution.high, log=distribution.log)


def _report_new(out_dir: Path, trial: Any, seen: int) -> int:
    """Reports the validation losses metrics.jsonl gained since line `seen`; returns the lines read."""
    path = RunFolder(out_dir).metrics
    if not path.is_file():
        return seen
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    complete = lines if text.endswith("\n") else lines[:-1]  # the last line may be half written
    for line in complete[seen:]:
        record = json.loads(line)
        if isinstance(record.get("val_loss"), (int, float)):
            trial.report(record["val_loss"], record["step"])
    return len(complete)


def write_best_recipe(run: Path, path: Path) -> Path:
    """The best trial's resolved config as a recipe file: every key as it trained, minus its folder and provenance."""
    config = read_run(run).config
    config = dataclasses.replace(config, out_dir=None, resume=None, provenance=type(config.provenance)())
    atomic_write_text(path, f"# the best trial of a search: {run}\n" + config_to_yaml(config))
    return path
