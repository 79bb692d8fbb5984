"""Experiment trackers by name (`logger=[tensorboard,csv,mlflow,wandb]`), each built as Lightning's logger for it:
the registry, the check that a tracker's package is installed, and how each is built (Lightning imported only then,
so that checking a config stays quick).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from slmkit.checkpoint.run_folder import TENSORBOARD
from slmkit.errors import SlmkitError
from slmkit.registry import Registry

MLFLOW_DB = "mlflow.db"  # the default MLflow store: an sqlite file in the folder that holds the run folder
RUN_FOLDER_TAG = "slmkit.run_folder"  # an MLflow run's tag naming its run folder, so a resumed run continues it


@dataclass(frozen=True)
class Tracker:
    package: str | None  # what must be importable; None for trackers of slmkit's own dependencies
    build: Callable[[Any, Path, "int | None"], Any]  # (RunConfig, run folder, step resumed from) -> Lightning logger
    config_as_params: bool = False  # the resolved config is logged as the run's parameters


LOGGERS: Registry[Tracker] = Registry("logger", "Experiment trackers a run reports to, by name (logger=[...]).")


def check_trackers(names: list[str]) -> None:
    """Refuses an unknown tracker, or one whose package is missing, before any work starts."""
    for name in names:
        package = LOGGERS.get(name).package
        if package and importlib.util.find_spec(package) is None:
            raise SlmkitError(f"logger={name} needs the package {package}: pip install 'slmkit[track]' "
                              f"(or drop {name} from logger=[...])")


def flat_config(config: Any) -> dict[str, Any]:
    """The resolved config as dotted keys -> scalars (lists as JSON), as trackers store parameters; the provenance
    (which may change when a run resumes, and MLflow refuses a changed parameter) goes as tags instead."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = json.dumps(node) if isinstance(node, (list, tuple)) else node

    tree = dataclasses.asdict(config)
    tree.pop("provenance", None)
    walk(tree, "")
    return flat


def _tensorboard(config: Any, out_dir: Path, start_step: int | None) -> Any:
    from lightning.pytorch.loggers import TensorBoardLogger

    # TensorBoard forgets what a stopped attempt logged after the step this one starts from (as metrics.jsonl does).
    return TensorBoardLogger(save_dir=str(out_dir), name=TENSORBOARD, version="", default_hp_metric=False,
                             purge_step=start_step + 1 if start_step is not None else None)


def _csv(config: Any, out_dir: Path, start_step: int | None) -> Any:
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(out_dir), name="csv", version="")


def mlflow_uri(config: Any, out_dir: Path) -> str:
    return config.track.mlflow_uri or f"sqlite:///{(out_dir.parent / MLFLOW_DB).resolve()}"


def _mlflow(config: Any, out_dir: Path, start_step: int | None) -> Any:
    from lightning.pytorch.loggers import MLFlowLogger

    uri, experiment = mlflow_uri(config, out_dir), config.track.mlflow_experiment or config.name
    folder = str(out_dir.resolve())
    existing = _mlflow_run_of(uri, experiment, folder) if start_step else None
    provenance = {f"slmkit.{key}": value for key, value in dataclasses.asdict(config.provenance).items() if value}
    return MLFlowLogger(experiment_name=experiment, run_name=out_dir.name, tracking_uri=uri, run_id=existing,
                        tags={RUN_FOLDER_TAG: folder, **provenance})


def _mlflow_run_of(uri: str, experiment: str, folder: str) -> str | None:
    """The MLflow run an earlier attempt of this run folder logged to, so a resumed run continues it."""
    import mlflow

    try:
        found = mlflow.MlflowClient(uri).search_runs(
            [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments(filter_string=f"name = '{experiment}'")],
            filter_string=f"tags.`{RUN_FOLDER_TAG}` = '{folder}'")
    except Exception:  # an unreachable store: the guarded logger reports it when the run logs
        return None
    return found[0].info.run_id if found else None


def _wandb(config: Any, out_dir: Path, start_step: int | None) -> Any:
    from lightning.pytorch.loggers import WandbLogger

    # One W&B run per run folder, across the attempts of a resumed run.
    run_id = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:16]
    return WandbLogger(project=config.track.wandb_project, name=out_dir.name, save_dir=str(out_dir), id=run_id,
                       offline=config.track.wandb_mode == "offline", resume="allow")


LOGGERS.register("tensorboard")(Tracker(None, _tensorboard))
LOGGERS.register("csv")(Tracker(None, _csv))
LOGGERS.register("mlflow")(Tracker("mlflow", _mlflow, config_as_params=True))
LOGGERS.register("wandb")(Tracker("wandb", _wandb, config_as_params=True))
