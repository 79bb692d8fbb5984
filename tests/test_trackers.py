"""Trackers by name: logger=[tensorboard,csv,mlflow,wandb] report every metric and the resolved config; MLflow to an
sqlite store beside the runs, W&B offline; a missing package names the extra; a failing tracker never stops training."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slmkit.errors import SlmkitError
from slmkit.training import trackers
from slmkit.training.run import train
from slmkit.training.trackers import LOGGERS, Tracker
from tests.test_training import TINY, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mlflow_finds_the_run_with_its_validation_loss_and_parameters(shared_dir, tmp_path):
    import mlflow

    run = tmp_path / "runs" / "lr"
    train(tiny_config(shared_dir, run, "trainer.max_steps=4", "optim.lr=0.002", "logger=[tensorboard,csv,mlflow]"))
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"  # beside the run folder
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["legal-tiny"], filter_string="params.`optim.lr` = '0.002'")
    assert len(found) == 1
    assert found["metrics.val_loss"][0] > 0 and found["metrics.train_loss"][0] > 0
    assert found["params.model.n_layer"][0] == "2" and found["tags.slmkit.config_hash"][0]
    assert any((run / "tb").iterdir()) and (run / "csv" / "metrics.csv").is_file()


def test_wandb_offline_writes_its_run_folder_without_a_network(shared_dir, tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rn", "true"]).returncode != 0:
        pytest.skip("no network namespace here (unshare -rn) to prove that W&B makes no connection")
    run = tmp_path / "run"
    overrides = [*TINY, f"data.root={shared_dir / 'corpora'}", f"out_dir={run}", "trainer.max_steps=2", "logger=[wandb]"]
    # A network namespace of its own has no interface but loopback: any connection out would fail the run.
    result = subprocess.run(["unshare", "-rn", sys.executable, "-m", "slmkit.cli", "train", "recipe=legal-tiny", *overrides],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr[-2000:]
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert "failed" not in result.stderr


def test_a_missing_tracker_package_names_the_extra(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(LOGGERS._entries, "mlflow", Tracker("slmkit_no_such_package", trackers._mlflow))
    with pytest.raises(SlmkitError, match=r"pip install 'slmkit\[track\]'"):
        train(tiny_config(shared_dir, tmp_path / "run", "logger=[mlflow]"))
    assert not (tmp_path / "run").exists()


def test_an_unknown_tracker_is_refused_with_the_names(shared_dir, tmp_path):
    with pytest.raises(SlmkitError, match="tensorboard"):
        tiny_config(shared_dir, tmp_path / "run", "logger=[tensorbord]")


class Failing:
    """A tracker whose server went away after the first record."""

    calls = 0

    def log_metrics(self, metrics, step=None):
        Failing.calls += 1
        if Failing.calls > 1:
            raise ConnectionError("tracking server unreachable")

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    name, version, save_dir = "failing", "0", None

    def save(self):
        pass

    def finalize(self, status):
        pass


def test_a_tracker_failing_mid_run_is_reported_once_and_training_finishes(shared_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(LOGGERS._entries, "failing", Tracker(None, lambda config, out_dir, start: Failing()))
    with caplog.at_level(logging.WARNING, logger="slmkit"):
        result = train(tiny_config(shared_dir, tmp_path / "run", "trainer.max_steps=6", "logger=[tensorboard,failing]"))
    assert result.steps == 6 and (tmp_path / "run" / "model.safetensors").is_file()
    reports = [r.message for r in caplog.records if "logger failing failed" in r.message]
    assert len(reports) == 1 and "tracking server unreachable" in reports[0]
    assert Failing.calls == 2  # dropped after its failure
