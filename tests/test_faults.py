"""Fault injection: training and data preparation killed at chosen points, stopped by SIGTERM and Ctrl-C, short of
disk space, fed damaged files and bad inputs. Each case checks the exit status, one message without a traceback, and
that nothing was lost or left looking complete; each fails on slmkit before its reliability work.

Fast cases run by default; the slow ones (`-m slow`) kill and resume whole runs in subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from fault_helpers import (REPO_ROOT, assert_one_message, can_mount_privately, confined, flip_bytes, kept, metric_steps,
                           run_slmkit, start_slmkit, temporaries, tensorboard_steps, truncate, wait_for)
from slmkit.checkpoint.files import read_state_dict
from slmkit.errors import SlmkitError
from tests.test_training import TINY, tiny_config

CORPORA_ARGS = ["recipe=legal-tiny", *TINY]


def tiny_args(shared_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """The CLI arguments of tests/test_training.py's tiny run."""
    return [*CORPORA_ARGS, f"data.root={shared_dir / 'corpora'}", f"out_dir={out_dir}", *extra]


def train_in_process(shared_dir: Path, out_dir: Path, *extra: str):
    from slmkit.training.run import train

    return train(tiny_config(shared_dir, out_dir, *extra))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "slmkit-cache"  # conftest's per-session cache, for module fixtures too


@pytest.fixture(scope="module")
def trained(shared_dir, cache, tmp_path_factory) -> Path:
    """A finished 6-step tiny run with checkpoints at steps 2, 4 and 6; tests work on copies of it."""
    run = tmp_path_factory.mktemp("faults") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLMKIT_CACHE", str(cache))
        train_in_process(shared_dir, run, "trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=3")
    return run


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, symlinks=True)
    # The copy stands for an earlier attempt, so its TensorBoard files are dated a second earlier, as a real earlier
    # attempt's would be. Written by this same process within the same second, the resumed attempt's file could sort
    # first (".10" before ".9") and TensorBoard would read the two attempts out of order.
    for path in (to / "tb").glob("events.out.tfevents.*"):
        prefix, stamp, rest = re.fullmatch(r"(events\.out\.tfevents\.)(\d+)(\..*)", path.name).groups()
        path.rename(path.with_name(f"{prefix}{int(stamp) - 1:0{len(stamp)}d}{rest}"))
    return to


def as_if_killed_after(run: Path, step: int) -> None:
    """The run folder as a run killed after `step`'s checkpoint leaves it: no later checkpoint, no final weights."""
    for path in (run / "checkpoints").glob("step-*.ckpt*"):
        if int(re.match(r"step-(\d+)", path.name).group(1)) > step:
            path.unlink()
    for path in run.glob("model.safetensors*"):
        path.unlink()


def verify_checksum(path: Path) -> bool:
    from slmkit.checksum import verify_checksum

    return verify_checksum(path)


def weights_step(path: Path) -> int | None:
    from slmkit.checkpoint import checkpoint_step

    return checkpoint_step(path)


def checkpoint_names(run: Path) -> list[str]:
    return sorted(path.name for path in (run / "checkpoints").glob("step-*.ckpt"))


def assert_finished_cleanly(run: Path, steps: int) -> None:
    """One metrics record per step 1..steps, in metrics.jsonl and in TensorBoard; final weights with their checksum;
    nothing hidden left behind."""
    assert metric_steps(run) == list(range(1, steps + 1))
    assert tensorboard_steps(run) == list(range(1, steps + 1))
    assert verify_checksum(run / "model.safetensors") and weights_step(run / "model.safetensors") == steps
    assert temporaries(run) == []


# ---- stop signals --------------------------------------------------------------------------------------------

def _stop_with(signum: int, shared_dir: Path, tmp_path: Path) -> tuple[Path, int, str]:
    run = tmp_path / "run"
    log = tmp_path / "train.log"
    process = start_slmkit("train", *tiny_args(shared_dir, run, "trainer.max_steps=100000", "trainer.checkpoint_every=0"), log=log)
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file() and len(metric_steps(run)) >= 2, 240, "training to log steps")
        process.send_signal(signum)
        code = process.wait(timeout=240)
    finally:
        process.kill()
    output = log.read_text()
    assert "Traceback" not in output, output[-3000:]
    assert code == 128 + signum, (code, output[-3000:])
    step = int(re.search(rf"training stopped by {signal.Signals(signum).name} at step (\d+) of 100000", output).group(1))
    assert checkpoint_names(run) == [f"step-{step}.ckpt"] and verify_checksum(run / "checkpoints" / f"step-{step}.ckpt")
    assert not (run / "model.safetensors").exists()  # a run folder has final weights only when the run finished
    assert metric_steps(run) == list(range(1, step + 1))  # the last step is logged, once
    return run, step, output


def test_sigterm_stops_at_a_step_with_a_checkpoint_and_export_says_the_run_did_not_finish(shared_dir, tmp_path):
    run, step, _ = _stop_with(signal.SIGTERM, shared_dir, tmp_path)
    exported = run_slmkit("export", f"checkpoint={run}", f"out={tmp_path / 'export'}", "verify=false")
    assert exported.returncode == 0 and "Traceback" not in exported.stderr, exported.stderr[-3000:]
    assert f"step-{step}.ckpt holds the weights of step {step} of the 100000" in exported.stderr
    assert f"the run stopped at step {step} of the 100000 it planned" in (tmp_path / "export" / "README.md").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_at_a_step_with_a_checkpoint_and_resume_continues(shared_dir, tmp_path):
    run, step, _ = _stop_with(signal.SIGINT, shared_dir, tmp_path)
    resumed = run_slmkit("train", *tiny_args(shared_dir, run, f"trainer.max_steps={step + 2}", "trainer.checkpoint_every=0", "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_finished_cleanly(run, step + 2)


# ---- crashes: what a killed run leaves, and resuming from it -------------------------------------------------

def test_resume_cuts_the_stopped_attempts_history_back_and_prunes_what_it_resumed_from(trained, shared_dir, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    as_if_killed_after(run, 4)  # metrics.jsonl and TensorBoard hold steps 5 and 6 of the killed attempt
    (run / "checkpoints" / ".step-6.ckpt.k3j2.tmp").write_bytes(b"\0" * 100_000)  # the write it was killed in
    train_in_process(shared_dir, run, "trainer.max_steps=10", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=2",
                     "resume=true")
    assert checkpoint_names(run) == ["step-10.ckpt", "step-8.ckpt"]  # step-4, resumed from, and step-2 are pruned
    assert_finished_cleanly(run, 10)


def test_the_record_of_the_checkpointed_step_survives_a_kill_before_it_was_written(trained, shared_dir, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    as_if_killed_after(run, 4)
    records = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in records if json.loads(line)["step"] < 4))
    train_in_process(shared_dir, run, "trainer.max_steps=6", "trainer.checkpoint_every=2", "resume=true")
    assert metric_steps(run) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[3])["train_loss"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("point", ["checkpoint-before", "checkpoint-during", "checkpoint-after"])
def test_a_run_killed_around_a_checkpoint_write_resumes_to_a_clean_finish(point, shared_dir, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(shared_dir, run, "trainer.max_steps=10", "trainer.checkpoint_every=3", "trainer.keep_checkpoints=2")
    killed = run_slmkit("train", *args, kill_at=(point, 2))  # at the second checkpoint, step 6
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    expected_latest = "step-6.ckpt" if point == "checkpoint-after" else "step-3.ckpt"
    assert checkpoint_names(run)[-1] == expected_latest
    resumed = run_slmkit("train", *args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint_names(run) == ["step-10.ckpt", "step-9.ckpt"]
    assert_finished_cleanly(run, 10)


@pytest.mark.slow
def test_a_run_killed_while_writing_its_final_weights_leaves_none_and_resumes(shared_dir, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(shared_dir, run, "trainer.max_steps=4", "trainer.checkpoint_every=2")
    killed = run_slmkit("train", *args, kill_at=("weights-during", 1))
    assert killed.returncode == -signal.SIGKILL
    assert not (run / "model.safetensors").exists() and checkpoint_names(run) == ["step-2.ckpt", "step-4.ckpt"]
    resumed = run_slmkit("train", *args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_finished_cleanly(run, 4)


@pytest.mark.slow
def test_data_prepare_killed_mid_shard_leaves_no_manifest_and_completes_when_run_again(shared_dir, tmp_path):
    prepared = tmp_path / "prepared"
    args = [*CORPORA_ARGS, f"data.root={shared_dir / 'corpora'}", f"data.prepared_dir={prepared}", "data.shard_tokens=20000"]
    killed = run_slmkit("data", "prepare", *args, kill_at=("shard-during", 2))
    assert killed.returncode == -signal.SIGKILL
    assert not (prepared / "manifest.json").exists() and list(prepared.glob(".train_*.tmp"))
    again = run_slmkit("data", "prepare", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (prepared / "manifest.json").is_file() and temporaries(prepared) == []


# ---- damaged files -------------------------------------------------------------------------------------------

def test_flipped_bytes_in_a_checkpoint_are_refused_naming_the_file(trained, shared_dir, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    damaged = run / "checkpoints" / "step-6.ckpt"
    flip_bytes(damaged)
    with pytest.raises(SlmkitError, match=r"step-6\.ckpt does not match the checksum written with it"):
        read_state_dict(damaged)
    with pytest.raises(SlmkitError, match=r"resume=.*step-6\.ckpt does not match the checksum"):
        train_in_process(shared_dir, run, "trainer.max_steps=8", f"resume={damaged}")


def test_a_damaged_latest_checkpoint_gives_way_to_the_newest_intact_one(trained, shared_dir, tmp_path, caplog):
    run = copy_run(trained, tmp_path / "run")
    as_if_killed_after(run, 6)
    truncate(run / "checkpoints" / "step-6.ckpt")
    result = train_in_process(shared_dir, run, "trainer.max_steps=8", "trainer.checkpoint_every=2", "resume=true")
    assert "step-6.ckpt is damaged" in caplog.text and "resuming from step-4.ckpt" in caplog.text
    assert result.steps == 8
    assert_finished_cleanly(run, 8)


def test_checkpoint_load_errors_do_not_advise_loading_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hook": Payload()}, crafted)
    with pytest.raises(SlmkitError) as err:
        read_state_dict(crafted)
    assert "weights_only" not in str(err.value) and "such as posix.system" in str(err.value)
    assert not (tmp_path / "ran").exists()


def test_deepspeed_files_load_with_the_allowed_deepspeed_objects_only(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from slmkit.training.trainer import load_deepspeed_file

    shard = tmp_path / "optim_states.pt"
    torch.save({"zero_stage": ZeroStageEnum(2), "loss_scaler": LossScaler(128.0), "w": torch.ones(2)}, shard)
    loaded = load_deepspeed_file(shard)
    assert loaded["zero_stage"] == ZeroStageEnum(2) and loaded["loss_scaler"].cur_scale == 128.0

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"zero_stage": ZeroStageEnum(2), "hook": Payload()}, shard)
    with pytest.raises(SlmkitError, match="such as posix.system"):
        load_deepspeed_file(shard)
    assert not (tmp_path / "ran").exists()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_a_deepspeed_engine_resumes_through_the_safe_loader_and_refuses_a_crafted_folder(stage, tmp_path):
    worker = Path(__file__).parent / "distributed" / "zero_resume_worker.py"
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), str(stage),
           str(tmp_path / "checkpoint"), str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in json.loads(out.read_text()):
        assert rank["client_step"] == 2 and rank["rng_is_tensor"]
        assert rank["resumed"] == pytest.approx(rank["expected"], abs=1e-6)
        assert "such as posix.system" in rank["crafted"] and not rank["payload_ran"]


# ---- a full disk ---------------------------------------------------------------------------------------------

def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one(trained, shared_dir, tmp_path):
    folder = tmp_path / "small"
    checkpoint_size = (trained / "checkpoints" / "step-2.ckpt").stat().st_size
    args = tiny_args(shared_dir, folder / "run", "trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=3")
    if can_mount_privately():  # a real full disk: room for one checkpoint and the small files, not for two
        result = run_slmkit("train", *args, confine=confined(folder, size_kb=(checkpoint_size * 3 // 2) // 1024))
        assert_one_message(result, 2, "cannot write", "step-4.ckpt", "the disk is full")
        run = kept(folder) / "run"
        assert checkpoint_names(run) == ["step-2.ckpt"] and verify_checksum(run / "checkpoints" / "step-2.ckpt")
    else:  # a file-size limit below a checkpoint's size: the file system refuses the first one
        import resource

        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (checkpoint_size // 2, checkpoint_size // 2))

        result = _run_with(limit, "train", *args)
        assert_one_message(result, 2, "cannot write", "step-2.ckpt")
        run = folder / "run"
        assert checkpoint_names(run) == []
    assert not (run / "model.safetensors").exists()
    assert temporaries(run) == []


def _run_with(preexec: Callable[[], None], *args: str):
    return subprocess.run([sys.executable, "-m", "slmkit.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT, preexec_fn=preexec)


@pytest.mark.slow
def test_a_full_disk_during_the_final_weights_keeps_the_final_checkpoint(trained, shared_dir, tmp_path):
    if not can_mount_privately():
        pytest.skip("needs `unshare -rm` to mount a size-limited tmpfs")
    folder = tmp_path / "small"
    checkpoint_size = (trained / "checkpoints" / "step-2.ckpt").stat().st_size
    weights_size = (trained / "model.safetensors").stat().st_size
    size_kb = (checkpoint_size + weights_size // 2 + 64 * 1024) // 1024  # the checkpoint and small files, half the weights
    result = run_slmkit("train", *tiny_args(shared_dir, folder / "run", "trainer.max_steps=2", "trainer.checkpoint_every=0"),
                        confine=confined(folder, size_kb=size_kb))
    assert_one_message(result, 2, "cannot write", "model.safetensors", "the disk is full")
    run = kept(folder) / "run"
    assert checkpoint_names(run) == ["step-2.ckpt"] and verify_checksum(run / "checkpoints" / "step-2.ckpt")
    assert not (run / "model.safetensors").exists() and temporaries(run) == []


@pytest.mark.slow
def test_a_full_disk_during_data_prepare_leaves_no_manifest(shared_dir, tmp_path):
    if not can_mount_privately():
        pytest.skip("needs `unshare -rm` to mount a size-limited tmpfs")
    folder = tmp_path / "small"
    args = [*CORPORA_ARGS, f"data.root={shared_dir / 'corpora'}", f"data.prepared_dir={folder / 'prepared'}"]
    result = run_slmkit("data", "prepare", *args, confine=confined(folder, size_kb=160))
    assert_one_message(result, 2, "cannot write", str(folder / "prepared"), "the disk is full")
    assert (kept(folder) / "prepared").is_dir() and not (kept(folder) / "prepared" / "manifest.json").exists()


# ---- small things that used to go wrong quietly --------------------------------------------------------------

def test_a_run_shorter_than_log_every_logs_its_last_step(shared_dir, tmp_path):
    train_in_process(shared_dir, tmp_path / "run", "trainer.max_steps=3", "trainer.log_every=10")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3] and records[0]["train_loss"] is not None and records[0]["grad_norm"] is not None


def test_final_weights_carry_a_checksum_their_step_and_the_usual_file_mode(trained):
    from slmkit.atomic import FILE_MODE

    weights = trained / "model.safetensors"
    assert verify_checksum(weights) and weights_step(weights) == 6
    assert stat.S_IMODE(weights.stat().st_mode) == FILE_MODE == stat.S_IMODE((trained / "config.yaml").stat().st_mode)


def test_a_run_config_is_read_without_resolvers(trained, tmp_path, monkeypatch):
    from slmkit.checkpoint import load_checkpoint
    from slmkit.export.model_card import model_card

    run = copy_run(trained, tmp_path / "run")
    config = run / "config.yaml"
    config.write_text(re.sub(r"(?m)^name: .*$", "name: ${oc.env:SLMKIT_TEST_SECRET}", config.read_text()))
    monkeypatch.setenv("SLMKIT_TEST_SECRET", "hunter2")
    loaded = load_checkpoint(run)
    assert loaded.config.name == "${oc.env:SLMKIT_TEST_SECRET}"
    assert "hunter2" not in model_card(loaded.config, run, {"format": "safetensors"})


# ---- bad inputs: one message, no traceback, nothing touched --------------------------------------------------

@dataclass
class BadInput:
    """One CLI call that must fail with `fragments` in one message; `prepare` makes its files and returns the
    arguments, `unchanged` the paths that must be left exactly as they were (or absent)."""

    id: str
    prepare: Callable[[dict], list[str]]
    fragments: tuple[str, ...]
    env: Callable[[dict], dict] = lambda c: {}
    confine: Callable[[dict], list[str] | None] = lambda c: None
    unchanged: Callable[[dict], list[Path]] = lambda c: []
    needs_mount: bool = False
    stdout_lacks: str = ""
    skip: str = ""


def _never(c: dict, override: str) -> Path:
    """The out_dir of a run that the bad `override` must stop before it starts (one per case)."""
    return c["tmp"] / ("never-" + re.sub(r"[^\w.-]", "_", override))


def _train(c: dict, override: str) -> list[str]:
    return ["train", *tiny_args(c["shared"], _never(c, override), "trainer.max_steps=2", override)]


def _broken_recipes(c: dict) -> Path:
    from slmkit.recipe import recipes_dir

    folder = c["tmp"] / "recipes"
    if not folder.exists():
        shutil.copytree(recipes_dir(), folder)
        (folder / "broken.yaml").write_text("defaults:\n  - model: tiny\n  - _self_\ntrainer: {max_steps: [1,\n")
    return folder


def _corrupt_parquet(c: dict) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = c["tmp"] / "parquet"
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.table({"text": ["The court held that the statute applies. " * 20] * 200}), folder / "good.parquet",
                   compression="snappy")
    data = bytearray((folder / "good.parquet").read_bytes())
    for i in range(100, 600):  # the data pages; the footer stays readable
        data[i] ^= 0x5A
    (folder / "corrupt.parquet").write_bytes(bytes(data))
    return ["data", "prepare", *CORPORA_ARGS, "data.sources=[{name: p, path: corrupt.parquet}]", f"data.root={folder}",
            f"data.prepared_dir={folder / 'prepared'}"]


def _damaged_run(c: dict, name: str, damage: Callable[[Path], None]) -> Path:
    run = copy_run(c["run"], c["tmp"] / name)
    damage(run)
    return run


def _not_safetensors(run: Path) -> None:
    (run / "model.safetensors").write_text("not weights")
    (run / "model.safetensors.sha256").unlink(missing_ok=True)  # as from a tool that keeps no checksum


def _read_only(c: dict, *setup: str) -> list[str]:
    return confined(c["tmp"] / "read-only", read_only=True, setup=" && ".join(setup) or "true")


def _file(c: dict, name: str) -> Path:
    path = c["tmp"] / name
    path.write_text("a file where a folder should be\n")
    return path


# One case per kind of mistake by default; MORE_BAD_INPUTS (slow) repeats the kinds elsewhere.
BAD_INPUTS = [
    BadInput("override-yaml-syntax", lambda c: _train(c, "model.n_layer=[1,"), ("'model.n_layer=[1,' is not valid YAML",),
             unchanged=lambda c: [_never(c, "model.n_layer=[1,")]),
    BadInput("recipe-file-yaml-syntax", lambda c: ["train", "recipe=broken"], ("broken.yaml is not valid YAML", "(line "),
             env=lambda c: {"SLMKIT_RECIPES": str(_broken_recipes(c))}),
    BadInput("micro-batch-zero", lambda c: _train(c, "trainer.micro_batch_size=0"), ("trainer.micro_batch_size is 0", "at least 1"),
             unchanged=lambda c: [_never(c, "trainer.micro_batch_size=0")]),
    BadInput("zero-lr", lambda c: _train(c, "optim.lr=0"), ("optim.lr is 0",), unchanged=lambda c: [_never(c, "optim.lr=0")]),
    BadInput("negative-grad-accum", lambda c: _train(c, "trainer.grad_accum=-1"), ("trainer.grad_accum is -1",),
             unchanged=lambda c: [_never(c, "trainer.grad_accum=-1")]),
    BadInput("negative-checkpoint-every", lambda c: _train(c, "trainer.checkpoint_every=-5"),
             ("trainer.checkpoint_every is -5", "at least 0"), unchanged=lambda c: [_never(c, "trainer.checkpoint_every=-5")]),
    BadInput("nan-temperature", lambda c: ["generate", f"checkpoint={c['run']}", "prompt=The", "temperature=nan"],
             ("temperature is nan",)),
    BadInput("missing-cuda", lambda c: ["generate", f"checkpoint={c['run']}", "prompt=The", "device=cuda"],
             ("device=cuda but no CUDA GPU is visible",), skip="this machine has CUDA" if torch.cuda.is_available() else ""),
    BadInput("corrupt-parquet", _corrupt_parquet, ("corrupt.parquet: damaged parquet data",),
             unchanged=lambda c: [c["tmp"] / "parquet" / "prepared" / "manifest.json"]),
    BadInput("flipped-final-weights",
             lambda c: ["generate", f"checkpoint={_damaged_run(c, 'flipped', lambda r: flip_bytes(r / 'model.safetensors', at=0.9))}", "prompt=The"],
             ("flipped/model.safetensors does not match the checksum",), stdout_lacks="The"),
    BadInput("out-dir-is-a-file", lambda c: ["train", *tiny_args(c["shared"], _file(c, "out-file"), "trainer.max_steps=1")],
             ("out_dir=", "out-file is a file"), unchanged=lambda c: [c["tmp"] / "out-file"]),
    BadInput("export-to-read-only", lambda c: ["export", f"checkpoint={c['run']}", f"out={c['tmp'] / 'read-only' / 'exports' / 'tiny'}"],
             ("read-only", "exports"), confine=lambda c: _read_only(c, f"mkdir {c['tmp'] / 'read-only' / 'exports'}"), needs_mount=True),
    BadInput("sweep-bad-value", lambda c: ["train", *tiny_args(c["shared"], c["tmp"] / "sweep-${model.n_layer}"),
                                           "model.n_layer=2,abc", "--multirun"],
             ("bad value 'abc' for model.n_layer",), stdout_lacks="[sweep", unchanged=lambda c: [c["tmp"] / "sweep-2"]),
    BadInput("sweep-shared-out-dir", lambda c: ["train", *tiny_args(c["shared"], c["tmp"] / "shared-out"), "optim.lr=1e-3,2e-3", "--multirun"],
             ("sweep runs 1", "would both write out_dir"), stdout_lacks="[sweep", unchanged=lambda c: [c["tmp"] / "shared-out"]),
]

MORE_BAD_INPUTS = [
    BadInput("eval-tasks-yaml-syntax", lambda c: ["eval", f"checkpoint={c['run']}", "tasks=[legal_heldout"],
             ("'tasks=[legal_heldout' is not valid YAML",), unchanged=lambda c: [c["run"] / "eval"]),
    BadInput("negative-lr", lambda c: _train(c, "optim.lr=-1"), ("optim.lr is -1", "greater than 0"),
             unchanged=lambda c: [_never(c, "optim.lr=-1")]),
    BadInput("negative-max-new-tokens", lambda c: ["generate", f"checkpoint={c['run']}", "prompt=The", "max_new_tokens=-5"],
             ("max_new_tokens is -5",)),
    BadInput("truncated-final-weights",
             lambda c: ["generate", f"checkpoint={_damaged_run(c, 'truncated', lambda r: truncate(r / 'model.safetensors'))}", "prompt=The"],
             ("truncated/model.safetensors does not match the checksum",), stdout_lacks="The"),
    BadInput("not-safetensors",
             lambda c: ["generate", f"checkpoint={_damaged_run(c, 'foreign', _not_safetensors)}", "prompt=The"],
             ("foreign/model.safetensors: it is not a whole safetensors file",), stdout_lacks="The"),
    BadInput("cache-is-a-file", lambda c: ["data", "prepare", *CORPORA_ARGS, f"data.root={c['shared'] / 'corpora'}"],
             ("cache-file", "a part of this path is a file"), env=lambda c: {"SLMKIT_CACHE": str(_file(c, "cache-file"))},
             unchanged=lambda c: [c["tmp"] / "cache-file"]),
    BadInput("generate-out-to-read-only",
             lambda c: ["generate", f"checkpoint={c['run']}", f"prompts_file={_prompts(c)}", "max_new_tokens=2",
                        f"out={c['tmp'] / 'read-only' / 'completions.jsonl'}"],
             ("read-only", "completions.jsonl"), confine=lambda c: _read_only(c), needs_mount=True),
    BadInput("data-report-out-to-read-only",
             lambda c: ["data", "report", "--out", str(c["tmp"] / "read-only" / "report.md"), *CORPORA_ARGS,
                        f"data.root={c['shared'] / 'corpora'}"],
             ("read-only", "report.md"), confine=lambda c: _read_only(c), needs_mount=True),
]


def _prompts(c: dict) -> Path:
    path = c["tmp"] / "prompts.txt"
    path.write_text("The court\n")
    return path


def _snapshot(paths: list[Path]) -> dict[Path, bytes | None]:
    return {path: (path.read_bytes() if path.is_file() else b"<folder>" if path.exists() else None) for path in paths}


def _run_bad_inputs(cases: list[BadInput], context: dict, cache: Path) -> dict[str, tuple]:
    """Every runnable case, two CLI processes at a time (each mostly waits for its imports)."""
    runnable = [case for case in cases if not case.skip and (can_mount_privately() or not case.needs_mount)]

    def run(case: BadInput) -> tuple:
        args, env, confine = case.prepare(context), case.env(context), case.confine(context)
        before = _snapshot(case.unchanged(context))
        try:
            result = run_slmkit(*args, env={"SLMKIT_CACHE": str(cache), **env}, confine=confine, timeout=180)
        except subprocess.TimeoutExpired as timeout:  # judged with its case, not as the whole table's error
            result = subprocess.CompletedProcess(timeout.cmd, None, "", f"timed out after {timeout.timeout}s")
        return result, before, _snapshot(case.unchanged(context))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip((case.id for case in runnable), pool.map(run, runnable)))


def _check_bad_input(case: BadInput, results: dict[str, tuple]) -> None:
    if case.skip:
        pytest.skip(case.skip)
    if case.needs_mount and case.id not in results:
        pytest.skip("needs `unshare -rm` for a read-only file system (root writes through file permissions)")
    result, before, after = results[case.id]
    assert_one_message(result, 2, *case.fragments)
    assert before == after
    if case.stdout_lacks:
        assert case.stdout_lacks not in result.stdout


@pytest.fixture(scope="module")
def bad_input_context(trained, shared_dir, tmp_path_factory) -> dict:
    return {"run": trained, "shared": shared_dir, "tmp": tmp_path_factory.mktemp("bad-inputs")}


@pytest.fixture(scope="module")
def bad_input_results(bad_input_context, cache) -> dict[str, tuple]:
    return _run_bad_inputs(BAD_INPUTS, bad_input_context, cache)


@pytest.fixture(scope="module")
def more_bad_input_results(bad_input_context, cache) -> dict[str, tuple]:
    return _run_bad_inputs(MORE_BAD_INPUTS, bad_input_context, cache)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.id for case in BAD_INPUTS])
def test_a_bad_input_gets_one_message_and_changes_nothing(case, bad_input_results):
    _check_bad_input(case, bad_input_results)


@pytest.mark.slow
@pytest.mark.parametrize("case", MORE_BAD_INPUTS, ids=[case.id for case in MORE_BAD_INPUTS])
def test_more_bad_inputs_get_one_message_and_change_nothing(case, more_bad_input_results):
    _check_bad_input(case, more_bad_input_results)
