"""Studies: one file expands into cells x seeds of ordinary runs, runs them (again: finished ones skipped, a stopped one
resumed), and reports mean, spread, interval and Welch's p-value per cell; a bad study file is one message naming
its entry, before any run starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from slmkit.cli import main
from slmkit.errors import SlmkitError
from slmkit.research.launch import plan_text, sbatch_script
from slmkit.research.report import study_report, study_results, study_statistics
from slmkit.research.stats import compare_cells
from slmkit.research.study import check_study_runs, load_study
from slmkit.training.run import train
from tests.conftest import REPO_ROOT
from tests.test_training import TINY, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def write_study(tmp_path: Path, shared_dir: Path, **entries) -> Path:
    study = {
        "name": "lr", "recipe": "legal-tiny", "runs_root": str(tmp_path / "runs"),
        "overrides": [*TINY, f"data.root={shared_dir / 'corpora'}", "trainer.max_steps=4", "trainer.val_every=2",
                      "trainer.checkpoint_every=2", "optim.decay_steps=4"],
        "cells": {"low": ["optim.lr=1e-3"], "high": ["optim.lr=3e-3"]}, "seeds": 2, "metrics": ["val_loss", "train_loss"],
        **entries,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_grid_names_its_cells_by_key_and_value(shared_dir, tmp_path):
    path = write_study(tmp_path, shared_dir, cells={}, factors={"model.positions": ["rope", "alibi"], "optim.lr": [0.001]},
                       baseline="positions=alibi,lr=0.001")
    study = load_study(path)
    assert list(study.cells) == ["positions=rope,lr=0.001", "positions=alibi,lr=0.001"]
    assert study.cells["positions=rope,lr=0.001"] == ["model.positions=rope", "optim.lr=0.001"]
    runs = study.runs()
    assert [r.out_dir.relative_to(tmp_path) for r in runs[:2]] == [
        Path("runs/lr/positions=rope,lr=0.001/seed-0"), Path("runs/lr/positions=rope,lr=0.001/seed-1")]
    assert "trainer.seed=1" in runs[1].overrides


@pytest.mark.parametrize("entries, named", [
    ({"seedz": 3}, "seedz"),
    ({"factors": {"model.positons": ["rope"]}, "cells": {}}, "factors.model.positons"),
    ({"factors": {"model.positions": []}, "cells": {}}, "factors.model.positions has no values"),
    ({"cells": {}}, "no cells"),
    ({"seeds": 0}, "seeds"),
    ({"baseline": "medium"}, "baseline 'medium'"),
    ({"cells": {"low": ["optim.lr=-1"]}}, "cell 'low'"),
    ({"launcher": {"slurm": {"partitoin": "gpu"}, "executor": "submitit"}}, "partitoin"),
])
def test_a_bad_study_file_is_one_message_naming_the_entry_and_nothing_runs(shared_dir, tmp_path, capsys, entries, named):
    path = write_study(tmp_path, shared_dir, **entries)
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_statistics_over_seeds_and_against_the_baseline():
    rows = {r.cell: r for r in compare_cells({"a": [1.0, 1.2, 1.1], "b": [2.0, 2.1, 2.2], "one": [1.5]}, "loss", "a")}
    assert rows["a"].baseline and rows["a"].mean == pytest.approx(1.1) and rows["a"].std == pytest.approx(0.1)
    low, high = rows["a"].interval
    assert low == pytest.approx(1.1 - 4.303 * 0.1 / 3 ** 0.5, abs=1e-3) and high > 1.1
    assert rows["b"].difference == pytest.approx(1.0) and rows["b"].p_value < 0.01
    assert rows["one"].p_value is None and "no test possible" in rows["one"].note and rows["one"].interval is None


def test_cells_picks_the_cells_a_run_covers_and_refuses_one_the_study_lacks(shared_dir, tmp_path, capsys):
    path = write_study(tmp_path, shared_dir)
    assert main(["study", "run", str(path), "--cells", "high", "--dry-run"]) == 0
    planned = capsys.readouterr().out.splitlines()
    assert len(planned) == 2 and all("/lr/high/seed-" in line for line in planned)
    assert main(["study", "run", str(path), "--cells", "high,medium"]) == 2
    err = capsys.readouterr().err
    assert "has no cell 'medium'; its cells are low, high" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_study_runs_reports_and_continues_where_it_stopped(shared_dir, tmp_path, capsys):
    path = write_study(tmp_path, shared_dir)
    study = load_study(path)
    # seed 0 of "low" was stopped at step 2: a checkpoint and no final weights. The study resumes it.
    stopped = study.runs()[0]
    train(tiny_config(shared_dir, stopped.out_dir, *stopped.overrides[len(TINY) + 1:], "trainer.max_steps=2"))
    (stopped.out_dir / "model.safetensors").unlink()
    assert main(["study", "run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 to resume, 3 to start" in out and "(resuming)" in out
    assert "## val_loss" in out and "| high | 2 |" in out
    reference = tmp_path / "reference"
    train(tiny_config(shared_dir, reference, *stopped.overrides[len(TINY) + 1:-1]))
    losses = [[(r["step"], r.get("train_loss")) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
              for run in (stopped.out_dir, reference)]
    assert losses[0] == losses[1]  # resumed exactly: the same history as a run that never stopped

    results = study_results(study)
    assert {cell: len(runs) for cell, runs in results.items()} == {"low": 2, "high": 2}
    rows = {r.cell: r for r in study_statistics(study, results)["val_loss"]}
    assert rows["low"].baseline and rows["high"].p_value is not None and 0 <= rows["high"].p_value <= 1
    assert len({run.config.provenance.config_hash for run in results["low"]}) == 1  # seeds of one configuration

    assert main(["study", "run", str(path)]) == 0  # again: nothing left to do
    assert "4 finished, 0 to resume, 0 to start" in capsys.readouterr().out
    assert "2 of 4" not in study_report(study) and "4 of 4 runs finished" in study_report(study)


def test_one_seed_reports_that_no_test_is_possible(shared_dir, tmp_path, capsys):
    path = write_study(tmp_path, shared_dir, seeds=1, metrics=["train_loss"], cells={"low": ["optim.lr=1e-3"], "high": ["optim.lr=3e-3"]},
                       overrides=[*TINY, f"data.root={shared_dir / 'corpora'}", "trainer.max_steps=2"])
    assert main(["study", "run", str(path)]) == 0
    assert "no test possible" in capsys.readouterr().out


def test_slurm_parameters_are_checked_and_rendered_without_submitting(shared_dir, tmp_path):
    path = write_study(tmp_path, shared_dir, launcher={"executor": "submitit", "slurm": {"partition": "gpu", "time": 60, "gpus_per_node": 1}})
    text = plan_text(load_study(path))
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --gpus-per-node=1" in text
    assert text.count("start    ") == 4
    with pytest.raises(SlmkitError, match="unknown sbatch parameter 'gpus'"):
        sbatch_script({"gpus": 1}, tmp_path)


def test_runs_go_n_at_a_time_as_processes_and_through_submitit(shared_dir, tmp_path, capsys):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("two runs at a time need two cores")
    small = [*TINY, f"data.root={shared_dir / 'corpora'}", "trainer.max_steps=2"]
    path = write_study(tmp_path, shared_dir, seeds=1, overrides=small, launcher={"parallel": 2})
    assert main(["study", "run", str(path)]) == 0
    assert capsys.readouterr().out.count("[done]") == 2
    local = write_study(tmp_path, shared_dir, name="lr-submitit", seeds=1, overrides=small,
                        launcher={"executor": "submitit", "cluster": "local"})
    assert main(["study", "run", str(local)]) == 0
    assert capsys.readouterr().out.count("[done]") == 2
    assert all((tmp_path / "runs" / "lr-submitit" / cell / "seed-0" / "model.safetensors").is_file() for cell in ("low", "high"))


def test_more_parallel_runs_than_cores_are_refused(shared_dir, tmp_path, capsys):
    path = write_study(tmp_path, shared_dir, launcher={"parallel": 10_000})
    assert main(["study", "run", str(path)]) == 2
    assert "launcher.parallel=10000" in capsys.readouterr().err


def test_a_busy_machine_is_noted_before_the_runs_start(monkeypatch):
    from slmkit.research import launch

    said: list[str] = []
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5 * (os.cpu_count() or 1), 0.0, 0.0))
    launch.warn_if_busy(said.append)
    assert len(said) == 1 and "busy before the study starts" in said[0] and "results are unaffected" in said[0]
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    launch.warn_if_busy(said.append)
    assert len(said) == 1


def test_the_research_layer_composes_runs_and_never_reaches_into_the_trainer():
    from tests.test_layering import imports, is_within, module_name, modules

    for path in modules("slmkit/research"):
        inside = sorted(m for m in imports(path) if is_within(m, ("slmkit.training", "lightning")) and m != "slmkit.training.run")
        assert not inside, f"{module_name(path)} imports {inside}; studies go through slmkit.training.run.train only"


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_study_loads_with_every_cell_resolved(path):
    study = load_study(path)  # every cell resolved as `slmkit train` would, before anything runs
    assert study.baseline in study.cells and study.config.seeds >= 2


@pytest.mark.parametrize("name, metric, rates", [("fin-sentiment", "eval/fin_sentiment/acc", [3e-4, 1e-4, 1e-3, 3e-4]),
                                                 ("ncbi-ner", "eval/ncbi_disease/entity_f1", [1e-3, 5e-4, 2e-3, 1e-3])])
def test_the_baseline_gap_studies_compare_fine_tuning_rates_and_lengths_over_three_seeds(name, metric, rates):
    study = load_study(REPO_ROOT / "studies" / f"{name}.yaml")
    cells = ["ft600", *(f"lr{lr:.0e}".replace("e-0", "e-") for lr in rates[1:3]), "ft1200"]
    assert list(study.cells)[:4] == cells and study.baseline == "ft600" and study.seeds() == [0, 1, 2]
    assert study.config.metrics[0] == metric
    configs, later = check_study_runs(study)[:4], check_study_runs(study)[4:]
    assert [c.trainer.max_steps for c in configs] == [600, 600, 600, 1200]
    assert [c.optim.lr for c in configs] == pytest.approx(rates)
    assert [c.optim.min_lr for c in configs] == pytest.approx([lr / 10 for lr in rates])
    if name == "ncbi-ner":
        assert {c.objective.decoding for c in configs} == {"bio"}
        assert {c.init_from for c in configs} == {"runs/biomedical-encoder-tiny-long/latest"}
        # Then the levers at the recipe's rate and length: a learned CRF (at two rates of its own) and an encoder
        # pretrained with whole-word masking.
        assert list(study.cells)[4:] == ["crf", "crf-lr30x", "wwm", "wwm-crf"]
        assert [c.objective.decoding for c in later] == ["crf", "crf", "bio", "crf"]
        assert [c.optim.crf_lr_multiplier for c in later] == [1.0, 30.0, 30.0, 30.0]
        assert [c.init_from for c in later[2:]] == ["runs/biomedical-encoder-tiny-wwm/latest"] * 2
        assert {(c.trainer.max_steps, c.optim.lr) for c in later} == {(600, 1e-3)}
