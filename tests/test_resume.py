"""Resume trusts the run's own record: every change that would alter what a checkpoint means is refused before any file
of the run is touched, naming the recorded and the requested value; safe changes go through (a longer schedule says
how it changes); the last step is validated; the printed advice after a stop works as printed; a pickle that is not
tensors only is refused without ever suggesting weights_only=False; exported files honour the umask.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import signal
import stat
from pathlib import Path

import pytest
import torch

from export_helpers import train_tokenizer
from fault_helpers import metric_steps, run_slmkit, start_slmkit, wait_for
from slmkit.checksum import write_checksum
from slmkit.errors import SlmkitError, Stopped, Terminated
from slmkit.training.resume import recorded_config
from slmkit.training.run import train
from tests.test_distill import teacher  # noqa: F401  (a fixture)
from tests.test_faults import cache, copy_run, tiny_args, train_in_process, trained  # noqa: F401  (fixtures)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: what "nothing was touched" compares."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run(trained, tmp_path) -> Path:
    return copy_run(trained, tmp_path / "run")


@pytest.mark.parametrize("override, named", [
    ("model.n_layer=3", "model.n_layer: recorded 2, requested 3"),
    ("trainer.micro_batch_size=2", "trainer.micro_batch_size: recorded 4, requested 2"),
    ("objective.name=masked_lm", "objective.name: recorded 'causal_lm', requested 'masked_lm'"),
    ("tokenizer.vocab_size=600", "tokenizer.vocab_size: recorded 512, requested 600"),
    ("data.sources=[{name: federal_rules, path: legal/federal_rules.jsonl.gz, max_documents: 60}]", "data.sources: recorded"),
    ("optim.lr=0.01", "optim.lr: recorded"),
])
def test_a_change_of_what_the_checkpoint_means_is_refused_before_anything_is_touched(run, shared_dir, override, named):
    before = snapshot(run)
    with pytest.raises(SlmkitError) as refused:
        train_in_process(shared_dir, run, "trainer.max_steps=6", "trainer.checkpoint_every=2", "resume=true", override)
    assert named in str(refused.value) and "slmkit train recipe=legal-tiny resume=true" in str(refused.value)
    assert snapshot(run) == before


def test_another_tokenizer_file_is_refused_saying_what_differs(run, shared_dir, tmp_path):
    other = train_tokenizer(tmp_path / "other-tokenizer.json")
    before = snapshot(run)
    with pytest.raises(SlmkitError, match=r"cannot resume .* with tokenizer.path=.*other-tokenizer.json: the run's has \d+ tokens"):
        train_in_process(shared_dir, run, "trainer.max_steps=6", "trainer.checkpoint_every=2", "resume=true",
                         f"tokenizer.path={other}")
    assert snapshot(run) == before


def test_other_token_shards_under_the_same_config_are_refused(run, shared_dir):
    """A source edited after the run began prepares into other shards under the same recipe: the run's recorded
    manifest (here edited to stand for the data it began on) no longer matches, and the resume is refused."""
    recorded = run / "data_manifest.json"
    manifest = json.loads(recorded.read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    recorded.write_text(json.dumps(manifest))
    before = snapshot(run)
    with pytest.raises(SlmkitError, match=rf"cannot resume {run}: the recipe's data now prepares into other token "
                                          r"shards than the run trained on .*Restore the source files"):
        train_in_process(shared_dir, run, "trainer.max_steps=8", "trainer.checkpoint_every=4", "resume=true")
    assert snapshot(run) == before


def test_safe_changes_go_through_and_a_longer_run_says_how_its_schedule_changes(run, shared_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="slmkit"):
        result = train_in_process(shared_dir, run, "trainer.max_steps=8", "trainer.checkpoint_every=4",
                                  "trainer.log_every=2", "trainer.val_every=100", "resume=true")
    assert result.steps == 8
    assert "trainer.max_steps: recorded 6, now 8; the learning rate now decays to optim.min_lr over 8 steps instead of 6" \
        in caplog.text


def test_the_last_step_is_validated_whatever_val_every_is(shared_dir, tmp_path):
    run = tmp_path / "run"
    result = train_in_process(shared_dir, run, "trainer.max_steps=7", "trainer.val_every=5", "trainer.checkpoint_every=0")
    validated = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert validated == [5, 7]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert result.final_val_loss == pytest.approx(last["val_loss"])


def test_a_resumed_run_validates_its_last_step(run, shared_dir):
    result = train_in_process(shared_dir, run, "trainer.max_steps=9", "trainer.val_every=100", "trainer.checkpoint_every=2",
                              "resume=true")
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 9 and result.final_val_loss == pytest.approx(last["val_loss"])


def test_resume_takes_the_run_record_not_the_recipe_and_refuses_another_recipe(run):
    config = recorded_config("legal-tiny", ["resume=true", f"out_dir={run}", "trainer.max_steps=9"])
    assert config.trainer.micro_batch_size == 4 and config.model.n_layer == 2  # the run's, not the recipe's
    assert config.trainer.max_steps == 9 and config.heads and config.heads[0].kind == "lm"
    with pytest.raises(SlmkitError, match=r"is a run of recipe 'legal-tiny', not 'legal-small'.*recipe=legal-tiny"):
        recorded_config("legal-small", ["resume=true", f"out_dir={run}"])
    assert recorded_config("legal-tiny", ["trainer.max_steps=9"]) is None  # not a resume: the recipe decides


def test_a_resumed_run_reads_text_with_its_own_copy_of_the_tokenizer(run):
    import yaml

    record = yaml.safe_load((run / "config.yaml").read_text())
    record["tokenizer"]["path"] = "runs/base/latest/tokenizer.json"  # where it came from; that run has moved on
    (run / "config.yaml").write_text(yaml.safe_dump(record))
    config = recorded_config("legal-tiny", ["resume=true", f"out_dir={run}"])
    assert config.tokenizer.path == str(run / "tokenizer.json")


def malicious_checkpoint(path: Path) -> None:
    """A checkpoint that pickles an object beyond tensors (a stand-in for code that would run on load), with a
    checksum that matches it, as an attacker handing over a whole run folder would write."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["callbacks"] = argparse.Namespace(run="os.system")
    torch.save(payload, path)
    write_checksum(path)


def test_a_checkpoint_that_is_not_tensors_only_is_refused_before_the_folder_is_touched(run, shared_dir):
    malicious_checkpoint(run / "checkpoints" / "step-6.ckpt")
    before = snapshot(run)
    with pytest.raises(SlmkitError) as refused:
        train_in_process(shared_dir, run, "trainer.max_steps=8", f"resume={run / 'checkpoints' / 'step-6.ckpt'}")
    message = str(refused.value)
    assert "other than tensors" in message and "may be unsafe" in message and "weights_only" not in message
    assert snapshot(run) == before


def test_resume_true_passes_over_a_checkpoint_that_is_not_tensors_only(run, shared_dir, caplog):
    malicious_checkpoint(run / "checkpoints" / "step-6.ckpt")
    with caplog.at_level(logging.WARNING, logger="slmkit"):
        result = train_in_process(shared_dir, run, "trainer.max_steps=6", "trainer.checkpoint_every=2", "resume=true")
    assert result.steps == 6 and "step-6.ckpt is damaged" in caplog.text and "weights_only" not in caplog.text


def test_exported_files_are_as_readable_as_the_umask_allows(trained, tmp_path):
    from slmkit.atomic import FILE_MODE
    from slmkit.export.run import ExportArgs, run_export

    out = tmp_path / "int8"
    run_export(ExportArgs(checkpoint=str(trained), out=str(out), format="int8"))
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert modes["model.int8.safetensors"] == FILE_MODE and set(modes.values()) == {FILE_MODE}, modes


def test_the_advice_printed_after_a_stop_works_as_printed(shared_dir, tmp_path):
    run = tmp_path / "run"
    first = start_slmkit("train", *tiny_args(shared_dir, run, "trainer.max_steps=100000", "trainer.checkpoint_every=0",
                                             "trainer.micro_batch_size=2"), log=tmp_path / "first.log")
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file() and len(metric_steps(run)) >= 2, 240, "training to log steps")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=240) == 128 + signal.SIGTERM
    finally:
        first.kill()
    console = (tmp_path / "first.log").read_text()
    # A quiet console: no library advertisement or deprecation note, no line printed twice.
    assert "Tip:" not in console and "LeafSpec" not in console and "Traceback" not in console, console[-3000:]
    lines = [line for line in console.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), console[-3000:]
    advice = re.search(r"Continue with: (slmkit train .*)$", console, re.MULTILINE).group(1)
    stopped_at = metric_steps(run)[-1]
    command = shlex.split(advice)
    assert command[:2] == ["slmkit", "train"]
    # Run exactly as printed (the micro-batch of 2 and the data root come from the record, not from the command).
    second = start_slmkit(*command[1:], log=tmp_path / "second.log")
    try:
        wait_for(lambda: len(metric_steps(run)) >= stopped_at + 2 or second.poll() is not None, 240, "the resumed run")
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=240)
    finally:
        second.kill()
    output = (tmp_path / "second.log").read_text()
    assert "Traceback" not in output and "slmkit: error" not in output, output[-3000:]
    assert metric_steps(run)[:stopped_at + 2] == list(range(1, stopped_at + 3))
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["examples"] == metric_steps(run)[-1] * 2


# ---- a stop at each phase, finished by the printed command ----------------------------------------------------

def finish_as_printed(stopped: Stopped) -> None:
    """Runs the command the stop printed, as printed (in this process, through the CLI's entry point)."""
    from slmkit.cli import main

    advice = re.search(r"(?:Continue|Finish) with: (slmkit train .*)$", str(stopped)).group(1)
    assert main(shlex.split(advice)[1:]) == 0


def test_a_stop_during_validation_is_continued_by_the_printed_command(shared_dir, tmp_path, monkeypatch):
    from slmkit.training.module import TrainingTask

    run = tmp_path / "run"
    signalled = []

    def stop_once(self):
        if not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the step-4 validation runs

    monkeypatch.setattr(TrainingTask, "on_validation_start", stop_once, raising=False)
    with pytest.raises(Stopped) as stopped:
        train_in_process(shared_dir, run, "trainer.max_steps=8", "trainer.checkpoint_every=0")
    monkeypatch.undo()
    finish_as_printed(stopped.value)
    assert metric_steps(run) == list(range(1, 9)) and (run / "model.safetensors").is_file()


@pytest.mark.parametrize("phase", ["final weights", "final evaluation"])
def test_a_stop_after_the_last_step_is_finished_by_the_printed_command(phase, shared_dir, tmp_path, monkeypatch):
    import slmkit.training.run as run_module

    run = tmp_path / "run"
    real = run_module.save_inference_checkpoint if phase == "final weights" else run_module._final_evaluation
    name = "save_inference_checkpoint" if phase == "final weights" else "_final_evaluation"
    monkeypatch.setattr(run_module, name, lambda *args, **kwargs: (_ for _ in ()).throw(Terminated()))
    extra = ["eval.tasks=[legal_heldout]", "eval.limit=2"] if phase == "final evaluation" else []
    with pytest.raises(Stopped, match="after the last step") as stopped:
        train_in_process(shared_dir, run, "trainer.max_steps=4", "trainer.checkpoint_every=0", *extra)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    monkeypatch.setattr(run_module, name, real)
    finish_as_printed(stopped.value)
    assert (run / "model.safetensors").is_file() and metric_steps(run) == [1, 2, 3, 4]
    if phase == "final evaluation":
        assert (run / "eval" / "results.json").is_file()


def test_a_distillation_resumes_from_its_record_and_refuses_another_teacher_weight(shared_dir, teacher, tmp_path):
    from tests.test_distill import student_config

    out = tmp_path / "student"
    train(student_config(shared_dir, teacher, out, "trainer.max_steps=2", "trainer.checkpoint_every=2"))
    with pytest.raises(SlmkitError, match=r"distill.alpha: recorded 0.5, requested 0.9"):
        train(recorded_config("legal-tiny", ["resume=true", f"out_dir={out}", "trainer.max_steps=4", "distill.alpha=0.9"]))
    result = train(recorded_config("legal-tiny", ["resume=true", f"out_dir={out}", "trainer.max_steps=4"]))
    assert result.steps == 4 and metric_steps(out) == [1, 2, 3, 4]


def test_verbose_shows_the_library_lines_once_each(shared_dir, tmp_path):
    result = run_slmkit("-v", "train", *tiny_args(shared_dir, tmp_path / "run", "trainer.max_steps=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "available" in line]  # Lightning's device lines
    assert lines and len(lines) == len(set(lines)), result.stderr[-3000:]
