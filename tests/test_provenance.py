"""Every run records what comparisons need: tokens, analytic FLOPs and wall time per step in metrics.jsonl; commit,
version, machine and a seedless config hash in its config."""

from __future__ import annotations

import json

import pytest

import slmkit
from slmkit.checkpoint import load_checkpoint
from slmkit.config import load_run_config
from slmkit.provenance import RECORD_KEYS, config_hash
from slmkit.research.results import read_run
from slmkit.recipe import resolve_recipe
from slmkit.training.run import train
from tests.test_training import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_config_hash_ignores_seed_and_folder_but_not_the_configuration():
    base = resolve_recipe("legal-tiny", ["trainer.seed=1", "out_dir=runs/a"])
    assert config_hash(base) == config_hash(resolve_recipe("legal-tiny", ["trainer.seed=2", "out_dir=runs/b"]))
    assert config_hash(base) != config_hash(resolve_recipe("legal-tiny", ["trainer.seed=1", "optim.lr=1e-3"]))


def test_a_run_records_tokens_flops_wall_time_and_its_provenance(shared_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(shared_dir, run, "trainer.max_steps=4", "trainer.seed=7"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    flops_per_token = load_checkpoint(run).model.flops_per_token()
    assert [r["flops"] for r in records] == [pytest.approx(r["tokens"] * flops_per_token) for r in records]
    walls = [r["wall_s"] for r in records]
    assert len(walls) == 4 and walls == sorted(walls) and walls[0] > 0
    config = load_run_config(run / "config.yaml")
    assert config.trainer.seed == 7
    assert config.provenance.version == slmkit.__version__
    assert config.provenance.commit and config.provenance.machine
    assert config.provenance.config_hash == config_hash(config)
    # Every record says which seed, source and configuration it belongs to, as the run's config does.
    for record in records:
        assert {key: record[key] for key in RECORD_KEYS} == {
            "seed": 7, "commit": config.provenance.commit, "version": slmkit.__version__,
            "config_hash": config.provenance.config_hash}
    assert not set(RECORD_KEYS) & set(read_run(run).metric_names())  # labels, not metrics to compare
