"""A study file: a base recipe, factors (a grid over dotted keys, or named cells), seeds, the metrics to compare and
the baseline cell; read, checked whole, and expanded into the runs it stands for.

Every cell of every seed is resolved as a recipe before anything runs, so a typo in the last cell is reported before
the first run starts.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import yaml

from slmkit.checkpoint.run_folder import RunFolder
from slmkit.config import RunConfig, build_config, yaml_problem
from slmkit.errors import SlmkitError
from slmkit.options import at_least, option
from slmkit.recipe import resolve_recipe



@dataclass
class LauncherConfig:
    parallel: int = option(1, "Runs at a time on this machine (each gets cores / parallel threads); at most the machine's cores.", bounds=at_least(1))
    executor: str = option("local", "local = runs in processes on this machine; submitit = through submitit (cluster: local or slurm).", choices=("local", "submitit"))
    cluster: str = option("slurm", "submitit only: slurm, or local (submitit's local executor: the same path without a cluster).", choices=("slurm", "local"))
    slurm: dict[str, Any] = option({}, "submitit on slurm: sbatch parameters by submitit's names (partition, time, gpus_per_node, cpus_per_task, mem, ...).")


@dataclass
class StudyConfig:
    name: str = option("", "The study's name: its runs land in <runs_root>/<name>/<cell>/seed-<k>/.")
    recipe: str = option("", "The base recipe (a name from `slmkit recipes` or a recipe file).")
    overrides: list[str] = option([], "key=value overrides of the base recipe that every cell shares.")
    factors: dict[str, list[Any]] = option({}, "A grid: dotted key (or recipe group) -> its values; every combination is a cell named key=value,...")
    cells: dict[str, list[str]] = option({}, "Named cells instead of a grid: name -> the key=value overrides of that cell.")
    seeds: int = option(3, "Runs per cell, with trainer.seed = first_seed, first_seed + 1, ...", bounds=at_least(1))
    first_seed: int = option(0, "trainer.seed of each cell's first run.", bounds=at_least(0))
    metrics: list[str] = option(["val_loss"], "What to compare: a metrics.jsonl key (its last value) or eval/<task>/<metric> (the run's final evaluation).")
    baseline: Optional[str] = option(None, "The cell every other cell is tested against; None = the first cell.")
    runs_root: str = option("runs", "Folder that holds the study's folder.")
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    tune: dict[str, Any] = option({}, "A hyperparameter search instead of a grid (see `slmkit tune`): space, trials, metric, storage, pruning.")


@dataclass(frozen=True)
class PlannedRun:
    """One seed of one cell: the recipe, the overrides that make it, and its folder."""

    cell: str
    seed: int
    recipe: str
    overrides: tuple[str, ...]
    out_dir: Path

    @property
    def finished(self) -> bool:
        return RunFolder(self.out_dir).finished

    @property
    def started(self) -> bool:
        return bool(RunFolder(self.out_dir).checkpoints())

    def train_overrides(self) -> list[str]:
        """The overrides of this run's next attempt: a run with checkpoints continues from its newest one."""
        return [*self.overrides, *(["resume=true"] if self.started else [])]


@dataclass
class Study:
    config: StudyConfig
    path: Path
    cells: dict[str, list[str]]  # cell name -> its overrides, in order; the baseline first is not implied

    @property
    def folder(self) -> Path:
        return Path(self.config.runs_root) / self.config.name

    @property
    def baseline(self) -> str:
        return self.config.baseline or next(iter(self.cells))

    def seeds(self) -> list[int]:
        return [self.config.first_seed + k for k in range(self.config.seeds)]

    def runs(self) -> list[PlannedRun]:
        return [planned_run(self, cell, seed) for cell in self.cells for seed in self.seeds()]

    def run_folders(self, cell: str) -> list[Path]:
        return [self.folder / cell_folder(cell) / f"seed-{seed}" for seed in self.seeds()]

    def only(self, cells: list[str]) -> "Study":
        """The study cut to `cells` (what `slmkit study run --cells` runs); a cell it does not have is refused, named."""
        unknown = [cell for cell in cells if cell not in self.cells]
        if unknown or not cells:
            raise SlmkitError(f"--cells {','.join(cells)}: study {self.path} has no cell {unknown[0] if unknown else ''!r}"
                              f"; its cells are {', '.join(self.cells)}")
        return replace(self, cells={cell: self.cells[cell] for cell in self.cells if cell in cells})


def planned_run(study: Study, cell: str, seed: int) -> PlannedRun:
    out_dir = study.folder / cell_folder(cell) / f"seed-{seed}"
    overrides = (*study.config.overrides, *study.cells[cell], f"trainer.seed={seed}", f"out_dir={out_dir}")
    return PlannedRun(cell, seed, study.config.recipe, overrides, out_dir)


def cell_folder(cell: str) -> str:
    """A cell's folder name: its name with path separators and spaces replaced."""
    return re.sub(r"[/\\\s]+", "_", cell)


def override_value(value: Any) -> str:
    """A grid value as it is written after `key=` on the command line (lists and mappings as YAML flow)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


def load_study(path: str | Path, check_runs: bool = True) -> Study:
    """The study in `path`, checked whole: every entry, and (check_runs) every cell resolved as a recipe."""
    path = Path(path)
    if not path.is_file():
        raise SlmkitError(f"no study file at {path}: pass the path of a study YAML (see the README's Studies section)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SlmkitError(f"study {path} is not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(raw, dict):
        raise SlmkitError(f"study {path} holds no mapping of keys: write name, recipe, factors or cells, seeds, metrics")
    try:
        config = build_config(StudyConfig, raw)
    except SlmkitError as err:
        raise SlmkitError(f"study {path}: {err}") from None
    study = Study(config, path, _cells(config, path))
    if study.baseline not in study.cells:
        raise SlmkitError(f"study {path}: baseline {config.baseline!r} is not a cell of the study; its cells: "
                          f"{', '.join(study.cells)}")
    if check_runs:
        check_study_runs(study)
    return study


def _cells(config: StudyConfig, path: Path) -> dict[str, list[str]]:
    where = f"study {path}"
    if not config.name or "/" in config.name:
        raise SlmkitError(f"{where}: name the study (name: positions), a folder name without '/'")
    if not config.recipe:
        raise SlmkitError(f"{where}: name the base recipe (recipe: legal-tiny), as `slmkit train recipe=` takes it")
    if config.tune:
        return {"tune": []}  # a search makes its own trials; see slmkit.research.tune
    if config.factors and config.cells:
        raise SlmkitError(f"{where}: give either factors (a grid) or cells (named), not both")
    if config.cells:
        for name, overrides in config.cells.items():
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise SlmkitError(f"{where}: cells.{name}: {bad[0]!r} is not a key=value override")
        return {name: list(overrides) for name, overrides in config.cells.items()}
    if not config.factors:
        raise SlmkitError(f"{where}: the study has no cells: give factors (a grid, key: [values]) or cells (name: [key=value])")
    for key, values in config.factors.items():
        if not values:
            raise SlmkitError(f"{where}: factors.{key} has no values; list at least one (a grid over nothing runs nothing)")
    short = _short_names(list(config.factors))
    cells = {}
    for combination in itertools.product(*config.factors.values()):
        overrides = [f"{key}={override_value(value)}" for key, value in zip(config.factors, combination)]
        name = ",".join(f"{short[key]}={override_value(value)}" for key, value in zip(config.factors, combination))
        cells[name] = overrides
    return cells


def _short_names(keys: list[str]) -> dict[str, str]:
    """Each factor's key as a cell name shows it: its last part, or the whole key where last parts collide."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: part if last.count(part) == 1 else key for key, part in zip(keys, last)}


def check_study_runs(study: Study) -> list[RunConfig]:
    """Every run of the study resolved as `slmkit train` would resolve it; a bad key or value names its cell."""
    where = f"study {study.path}"
    for key, values in study.config.factors.items():
        try:
            resolve_recipe(study.config.recipe, [*study.config.overrides, f"{key}={override_value(values[0])}"],
                           follow_init_from=False)
        except SlmkitError as err:
            raise SlmkitError(f"{where}: factors.{key}: {err}") from None
    configs = []
    for cell, overrides in study.cells.items():
        try:
            # One seed per cell is enough: the seed and folder are the only keys that differ between its runs.
            configs.append(resolve_recipe(study.config.recipe, planned_run(study, cell, study.seeds()[0]).overrides,
                                          follow_init_from=False))
        except SlmkitError as err:
            entry = "overrides" if not overrides else f"cell {cell!r}"
            raise SlmkitError(f"{where}: {entry}: {err}") from None
    return configs
