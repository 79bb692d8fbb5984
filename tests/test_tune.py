"""`slmkit tune`: Optuna over a base recipe; trials are ordinary runs, pruned from their validation losses, the study
resumes to the requested count, and the best config is a recipe file that `slmkit train recipe=PATH` runs."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from slmkit.cli import main
from slmkit.recipe import resolve_recipe
from slmkit.research.study import load_study
from slmkit.research.tune import TuneConfig, _trial, load_tune, parse_distribution, tune_from_study
from slmkit.training.run import train
from tests.test_training import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def base(shared_dir: Path) -> list[str]:
    return [*TINY, f"data.root={shared_dir / 'corpora'}", "trainer.max_steps=4", "trainer.val_every=2",
            "trainer.checkpoint_every=0"]


@pytest.mark.parametrize("space, message", [
    ("space.optim.lr=loguniform(1e-2,1e-4)", "space.optim.lr=loguniform(1e-2,1e-4): the range is inverted"),
    ("space.optim.lr=lognormal(1e-4,1e-2)", "space.optim.lr=lognormal(1e-4,1e-2): not a distribution"),
    ("space.optim.lrr=uniform(0.1,0.2)", "space.optim.lrr: unknown key optim.lrr"),
    ("space.model.n_layer=int(2,x)", "int takes two numbers"),
])
def test_a_bad_search_space_is_one_message_and_no_trial_runs(shared_dir, tmp_path, capsys, space, message):
    assert main(["tune", "recipe=legal-tiny", space, "trials=2", f"runs_root={tmp_path}", *base(shared_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_distributions_parse_as_optuna_s():
    assert parse_distribution("lr", "loguniform(1e-4,1e-2)") == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert parse_distribution("n", "int(2,8)") == optuna.distributions.IntDistribution(2, 8)
    assert parse_distribution("p", "choice(rope,alibi)").choices == ("rope", "alibi")


def test_a_search_resumes_to_its_trial_count_and_writes_a_recipe_that_trains(shared_dir, tmp_path, capsys):
    args = ["tune", "recipe=legal-tiny", "space.optim.lr=loguniform(1e-4,1e-2)", "space.model.n_layer=choice(1,2)",
            f"runs_root={tmp_path}", "name=search", f"storage=sqlite:///{tmp_path / 'shared.db'}", *base(shared_dir)]
    assert main([*args, "trials=2"]) == 0
    assert "2 complete" in capsys.readouterr().out
    assert main([*args, "trials=3"]) == 0  # as after a crash: the study goes on to the requested count
    out = capsys.readouterr().out
    assert "2 of 3 trials finished" in out and "3 complete" in out
    assert sorted(p.name for p in (tmp_path / "search").glob("trial-*")) == ["trial-0", "trial-1", "trial-2"]
    best = tmp_path / "search" / "best.yaml"
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path / 'shared.db'}")
    config = resolve_recipe(str(best))
    assert config.optim.lr == pytest.approx(study.best_params["optim.lr"])
    assert config.model.n_layer == study.best_params["model.n_layer"]
    run = train(resolve_recipe(str(best), [f"out_dir={tmp_path / 'again'}", "trainer.max_steps=1"]))
    assert run.steps == 1


class PruneAtOnce:
    """A trial that the pruner gives up on as soon as a validation loss is reported."""

    number = 0

    def __init__(self):
        self.reports, self.attrs = [], {}

    def set_user_attr(self, key, value):
        self.attrs[key] = value

    def suggest_float(self, key, low, high, log=False):
        return low

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return bool(self.reports)


def test_a_hopeless_trial_is_stopped_at_a_step_with_a_checkpoint(shared_dir, tmp_path):
    config, space = load_tune(TuneConfig(recipe="legal-tiny", space={"optim.lr": "uniform(1e-3,2e-3)"}, runs_root=str(tmp_path),
                                         overrides=[*base(shared_dir), "trainer.max_steps=500", "trainer.log_every=1"]))
    trial = PruneAtOnce()
    with pytest.raises(optuna.TrialPruned):
        _trial(config, space, trial)
    run = Path(trial.attrs["run"])
    assert trial.reports and trial.reports[0][0] == 2  # the first validation, at step 2
    assert list((run / "checkpoints").glob("step-*.ckpt")) and not (run / "model.safetensors").exists()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] < 500


def test_a_study_file_can_hold_a_search(shared_dir, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "search", "recipe": "legal-tiny", "overrides": base(shared_dir), "runs_root": str(tmp_path),
                                    "tune": {"space": {"optim.lr": "loguniform(1e-4,1e-2)"}, "trials": 5, "metric": "val_loss"}}))
    config = tune_from_study(load_study(path))
    assert config.trials == 5 and config.name == "search" and config.overrides == base(shared_dir)
    path.write_text(yaml.safe_dump({"name": "search", "recipe": "legal-tiny", "tune": {"spaec": {}}}))
    assert main(["study", "run", str(path)]) == 2


def test_a_search_whose_trials_all_fail_ends_with_a_message(shared_dir, tmp_path, capsys):
    # Each trial's run fails when it trains (its corpus folder is empty), which no check before the search can see:
    # the search must stop after as many failures as trials requested instead of replacing them for ever.
    empty = tmp_path / "empty-corpora"
    empty.mkdir()
    args = ["tune", "recipe=legal-tiny", "space.optim.lr=loguniform(1e-4,1e-2)", "trials=2", f"runs_root={tmp_path}",
            "name=failing", *base(shared_dir), f"data.root={empty}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no trial of failing finished unpruned" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "failing").glob("trial-*")) == ["trial-0", "trial-1"]
