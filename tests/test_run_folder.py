"""A checkpoint describes itself (its config.yaml records the model's heads), and one RunFolder owns the run folder:
file names, checkpoint naming and steps, the newest checkpoint, pruning, the resume point."""

from __future__ import annotations

import pytest
import torch
import yaml

from export_helpers import tiny_model, train_tokenizer
from slmkit.checkpoint import RunFolder, checkpoint_step, load_checkpoint, save_inference_checkpoint
from slmkit.checkpoint.run_folder import remove_checkpoint
from slmkit.checksum import write_checksum
from slmkit.config import ObjectiveConfig, RunConfig
from slmkit.errors import SlmkitError
from slmkit.model import CLASSIFIER_HEAD, HeadSpec


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def classifier_run(folder, tokenizer_path, objective: str):
    model = tiny_model(head=HeadSpec(CLASSIFIER_HEAD, ("no", "yes"), "mean"))
    config = RunConfig(name="heads-test", model=model.config,
                       objective=ObjectiveConfig(name=objective, labels=["no", "yes"], pooling="mean"))
    save_inference_checkpoint(folder, model, config, tokenizer_path, step=7)
    return model


def test_a_checkpoint_records_its_heads_and_loads_without_its_objective(tmp_path, tokenizer_path):
    # An objective no slmkit knows (a plugin not installed here): the recorded heads are all loading needs.
    model = classifier_run(tmp_path, tokenizer_path, "someone_elses_objective")
    recorded = yaml.safe_load((tmp_path / "config.yaml").read_text())["heads"]
    assert recorded == [{"kind": CLASSIFIER_HEAD, "labels": ["no", "yes"], "pooling": "mean", "transform": "none",
                         "decoding": "argmax"}]
    loaded = load_checkpoint(tmp_path)
    assert loaded.model.head_specs == model.head_specs and loaded.step == 7
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(loaded.model(ids), model(ids))


def test_a_run_written_before_heads_were_recorded_still_loads(tmp_path, tokenizer_path):
    model = classifier_run(tmp_path, tokenizer_path, "classification")
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del raw["heads"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    loaded = load_checkpoint(tmp_path)
    assert loaded.model.head_specs == model.head_specs
    assert [h.spec() for h in loaded.config.heads] == list(model.head_specs)  # what it loaded with, said explicitly


def test_an_old_run_of_an_unknown_objective_says_how_to_record_its_heads(tmp_path, tokenizer_path):
    classifier_run(tmp_path, tokenizer_path, "someone_elses_objective")
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del raw["heads"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SlmkitError, match="records no heads.*someone_elses_objective.*heads:"):
        load_checkpoint(tmp_path)


def fake_checkpoint(path, payload=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload or {"global_step": 0}, path)
    write_checksum(path)


def test_the_run_folder_names_lists_and_prunes_checkpoints_by_step(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.newest_checkpoint() is None and folder.checkpoints() == []
    for step in (2, 10, 4):
        fake_checkpoint(folder.checkpoint(step))
    (folder.checkpoints_dir / ".step-12.ckpt.x1.tmp").write_bytes(b"partial")  # a write still under way
    (folder.checkpoints_dir / "notes.ckpt").write_bytes(b"")
    assert [step for step, _ in folder.checkpoints()] == [2, 4, 10]
    assert folder.newest_checkpoint() == folder.checkpoint(10) == tmp_path / "checkpoints" / "step-10.ckpt"
    folder.prune(keep=2)
    assert [step for step, _ in folder.checkpoints()] == [4, 10]
    assert not (tmp_path / "checkpoints" / "step-2.ckpt.sha256").exists()


def test_the_resume_point_is_the_newest_intact_checkpoint(tmp_path, caplog):
    folder = RunFolder(tmp_path)
    with pytest.raises(SlmkitError, match="holds no checkpoint"):
        folder.resume_point()
    fake_checkpoint(folder.checkpoint(3))
    fake_checkpoint(folder.checkpoint(6))
    folder.checkpoint(6).write_bytes(folder.checkpoint(6).read_bytes()[:-10])  # cut short after its checksum
    assert folder.resume_point() == folder.checkpoint(3)
    assert "step-6.ckpt is damaged" in caplog.text


def test_begin_attempt_cuts_the_folder_back_to_the_step_it_continues_from(tmp_path):
    folder = RunFolder(tmp_path)
    for step in (2, 4, 6):
        fake_checkpoint(folder.checkpoint(step))
    folder.weights.write_bytes(b"final weights of an earlier finish")
    folder.begin_attempt(4)
    assert [step for step, _ in folder.checkpoints()] == [2, 4] and not folder.weights.exists()


def test_a_checkpoint_step_is_read_from_its_name_its_metadata_or_its_record(tmp_path, tokenizer_path):
    assert checkpoint_step(tmp_path / "checkpoints" / "step-42.ckpt") == 42
    classifier_run(tmp_path, tokenizer_path, "classification")
    assert checkpoint_step(RunFolder(tmp_path).weights) == 7
    fake_checkpoint(tmp_path / "renamed.ckpt", {"global_step": 9})
    assert checkpoint_step(tmp_path / "renamed.ckpt") == 9
    remove_checkpoint(tmp_path / "renamed.ckpt")
    assert not (tmp_path / "renamed.ckpt").exists()


def test_loading_refuses_a_pickle_without_suggesting_weights_only_false(tmp_path):
    import argparse  # any object beyond tensors: torch.load(weights_only=True) refuses to build it

    torch.save({"global_step": argparse.Namespace(step=3)}, tmp_path / "odd.ckpt")
    with pytest.raises(SlmkitError) as refused:
        checkpoint_step(tmp_path / "odd.ckpt")
    assert "weights_only" not in str(refused.value) and "other than tensors" in str(refused.value)


def test_loading_a_checkpoint_imports_no_training_eval_or_distillation_code(tmp_path, tokenizer_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    classifier_run(tmp_path, tokenizer_path, "someone_elses_objective")
    code = (f"import sys; from slmkit.checkpoint import load_checkpoint; load_checkpoint({str(tmp_path)!r}); "
            "print(sorted(m for m in sys.modules if m.startswith(('slmkit.objectives', 'slmkit.eval', 'slmkit.distill', "
            "'slmkit.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
