"""The trackers a run reports to (`logger=[...]`, see slmkit.training.trackers), each guarded: a tracker that fails
mid-run (server gone, disk full) is reported once and dropped, and training goes on. The run folder (metrics.jsonl,
config.yaml) stays the source of truth whatever the trackers do.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger

from slmkit.config import RunConfig
from slmkit.training.trackers import LOGGERS, check_trackers, flat_config

log = logging.getLogger("slmkit")


def build_loggers(config: RunConfig, out_dir: Path, start_step: int | None) -> list[Logger]:
    """The run's trackers, guarded, those that take it with the resolved config logged as parameters."""
    check_trackers(config.logger)
    loggers = []
    for name in config.logger:
        tracker = LOGGERS.get(name)
        logger = GuardedLogger(name, tracker.build(config, out_dir, start_step))
        if tracker.config_as_params:
            logger.log_hyperparams(flat_config(config))
        loggers.append(logger)
    return loggers


class GuardedLogger(Logger):
    """A tracker whose failures are reported once and then ignored: a tracker must never stop training."""

    def __init__(self, tracker: str, inner: Logger):
        super().__init__()
        self.tracker = tracker
        self.inner = inner
        self.failed = False

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self.failed:
            return
        try:
            getattr(self.inner, method)(*args, **kwargs)
        except Exception as err:  # whatever the tracker's client raises: network, disk, its own server's refusals
            self.failed = True
            log.warning("logger %s failed (%s: %s); training goes on without it, and metrics.jsonl in the run folder "
                        "keeps every record", self.tracker, type(err).__name__, str(err).splitlines()[0] if str(err) else "")

    @property
    def name(self) -> str | None:
        return self.inner.name

    @property
    def version(self) -> Any:
        return self.inner.version

    @property
    def save_dir(self) -> str | None:
        return self.inner.save_dir

    @property
    def log_dir(self) -> str | None:
        return getattr(self.inner, "log_dir", None)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._call("log_metrics", metrics, step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self._call("log_hyperparams", params, *args, **kwargs)

    def save(self) -> None:
        self._call("save")

    def finalize(self, status: str) -> None:
        self._call("finalize", status)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self._call("after_save_checkpoint", checkpoint_callback)
