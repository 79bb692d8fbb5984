"""`slmkit ladder`: a small ladder on shakespeare-char plans, trains, records and resumes; fit and predict answer from
its results; bad input is refused whole before anything trains."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from slmkit.errors import SlmkitError
from slmkit.recipe import resolve_recipe
from slmkit.scaling.analysis import FitArgs, PredictArgs, fit_ladder, predict
from slmkit.scaling.ladder import LadderArgs, plan, run_ladder
from slmkit.scaling.sizes import non_embedding_parameters, shape_for

# Short rungs: the point is the plumbing, not the law (the real ladder is a benchmark, docs/benchmarks.md).
FAST = ["model.n_head=8", "trainer.micro_batch_size=4", "trainer.val_batches=2", "trainer.progress_bar=false",
        "trainer.log_every=1"]


def _overrides(shared_dir):
    return [*FAST, f"data.root={shared_dir / 'corpora'}"]


def test_the_size_rule_hits_each_target_within_ten_percent_and_keeps_the_head_size():
    base = resolve_recipe("shakespeare-char", ["model.n_head=8"]).model
    for target in [2.5e4, 1e5, 4e5]:
        shape = shape_for(base, target)
        assert abs(non_embedding_parameters(shape) / target - 1) <= 0.1
        assert shape.head_dim == base.head_dim and shape.d_model % shape.n_head == 0


def test_a_ladder_trains_records_resumes_and_its_fit_predicts_with_an_interval(shared_dir, tmp_path):
    out = tmp_path / "ladder"
    args = LadderArgs(sizes=[6e3, 1.2e4, 2.5e4, 5e4], tokens_per_param=[0.5], holdout_sizes=[1e5], out=str(out))
    trained = []

    def counting_train(config):
        from slmkit.training.run import train

        trained.append(config.out_dir)
        return train(config)

    summary = run_ladder("shakespeare-char", _overrides(shared_dir), args, train=counting_train)
    assert len(trained) == 5 and "fit them with" in summary
    results = json.loads((out / "results.json").read_text())
    assert [r["holdout"] for r in results] == [False] * 4 + [True]
    ns = [r["n_non_embedding"] for r in results]
    assert ns == sorted(ns) and all(r["val_loss"] > 0 for r in results)
    for r in results:
        assert r["tokens"] >= 0.5 * r["n_non_embedding"] and r["flops"] > 6 * r["n_non_embedding"] * r["tokens"]
        assert r["n_total"] > r["n_non_embedding"]
    # A second call finds every rung finished and trains nothing.
    run_ladder("shakespeare-char", _overrides(shared_dir), args, train=counting_train)
    assert len(trained) == 5
    text = fit_ladder(FitArgs(ladder=str(out)))
    assert "L(N) = E + A * N^-alpha fitted to 4 rungs" in text and "held out" in text
    fit = json.loads((out / "fit.json").read_text())
    assert fit["holdout"][0]["interval"][0] <= fit["holdout"][0]["predicted"] <= fit["holdout"][0]["interval"][1]
    assert (out / "fit.png").stat().st_size > 1000
    answer = predict(PredictArgs(ladder=str(out), n=2e5))
    assert answer.startswith("predicted final validation loss at N = 2e+05, D = 1e+05:") and "interval" in answer
    with pytest.raises(SlmkitError, match="at 0.5 tokens per parameter"):
        predict(PredictArgs(ladder=str(out), n=2e5, d=1e7))


def test_a_fit_across_ladders_of_different_data_is_refused(tmp_path):
    for name, source in [("a", "general/tinyshakespeare.txt"), ("b", "general/other.txt")]:
        (tmp_path / name).mkdir()
        record = {"name": f"{name}0", "run": str(tmp_path / name), "holdout": False, "val_loss": 2.0,
                  "data": {"sources": [source]}, "tokenizer": {"kind": "char"}}
        (tmp_path / name / "results.json").write_text(json.dumps([record]))
    with pytest.raises(SlmkitError, match="different data settings"):
        fit_ladder(FitArgs(ladder=str(tmp_path / "a"), also=[str(tmp_path / "b")]))


@pytest.mark.parametrize("args, message", [
    (["sizes=[1e4,2e4,4e4]"], "the power law needs at least 4"),
    (["sizes=[1e4,4e4,2e4,8e4]"], "must be strictly increasing"),
    (["sizes=[2.5e4,2.6e4,2.7e4,2.8e4]"], "cannot build increasing sizes"),
    (["sizes=[1e4,2e4,4e4,8e4]", "model.n_kv_heads=3"], "must be divisible by model.n_kv_heads=3"),
    (["sizes=[1e4,2e4,4e4,8e4]", "model.parametrization=mup", "model.mup_base_width=0", "model.tie_embeddings=false"],
     "positive width"),
    (["sizes=[1e4,2e4,4e4]", "tokens_per_param=[10,20]"], "the parametric law needs at least 6"),
])
def test_bad_ladders_get_one_message_and_start_no_run(tmp_path, args, message):
    out = tmp_path / "ladder"
    result = subprocess.run([sys.executable, "-m", "slmkit.cli", "ladder", "recipe=shakespeare-char", f"out={out}", *args],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_plan_scales_lr_and_batch_as_power_laws_of_size():
    args = LadderArgs(sizes=[1e4, 2e4, 4e4, 8e4], tokens_per_param=[20], lr_exponent=-0.5, batch_exponent=0.5)
    rungs = plan("shakespeare-char", ["model.n_head=8"], args)
    lrs = [float(next(o for o in r.overrides if o.startswith("optim.lr=")).split("=")[1]) for r in rungs]
    batches = [int(next(o for o in r.overrides if o.startswith("trainer.micro_batch_size=")).split("=")[1]) for r in rungs]
    assert lrs[0] == 1e-3 and lrs[-1] < lrs[0] / 2
    assert batches[0] == 12 and batches[-1] > 2 * batches[0]
