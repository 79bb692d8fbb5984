"""Faults for tests/test_faults.py: the `slmkit` command run as a subprocess (optionally killed at a chosen point,
signalled, or confined to a small or read-only file system), and damaged files.

Run as a script it is the driver of a kill point: `python tests/fault_helpers.py POINT N slmkit-args...` runs the CLI
in this process and SIGKILLs it at the N-th time it reaches POINT (see KILL_POINTS).
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()


# ---- running the CLI -----------------------------------------------------------------------------------------

def slmkit_command(*args: str, kill_at: tuple[str, int] | None = None) -> list[str]:
    """The argv of `slmkit ARGS`, run by this interpreter; with kill_at=(POINT, N) through the kill-point driver."""
    if kill_at is not None:
        return [sys.executable, str(SELF), kill_at[0], str(kill_at[1]), *args]
    return [sys.executable, "-m", "slmkit.cli", *args]


def run_slmkit(*args: str, env: dict | None = None, kill_at: tuple[str, int] | None = None, confine: list[str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """`slmkit ARGS` in a subprocess; `confine` is a prefix (see `confined`) that runs it in its own mount namespace."""
    command = (confine or []) + slmkit_command(*args, kill_at=kill_at)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})})


def start_slmkit(*args: str, log: Path) -> subprocess.Popen:
    """`slmkit ARGS` started in the background, stdout and stderr to `log` (a pipe nobody reads could fill and block)."""
    out = open(log, "w")
    return subprocess.Popen(slmkit_command(*args), stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, text=True)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def assert_one_message(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """Exit status `code`, no traceback, one `slmkit:` line on stderr holding every fragment."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    messages = [line for line in result.stderr.splitlines() if line.startswith("slmkit:")]
    assert len(messages) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in messages[0], (fragment, messages[0])


# ---- confined file systems -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def can_mount_privately() -> bool:
    """Whether `unshare -rm` (a user and mount namespace) works here: then tmpfs folders of a chosen size, or
    read-only, are real file systems that refuse writes with the real errors (ENOSPC, EROFS)."""
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt && umount /mnt"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def confined(folder: Path, size_kb: int | None = None, read_only: bool = False, setup: str = "") -> list[str]:
    """A command prefix running what follows with a fresh tmpfs mounted on `folder` (size-limited, and/or read-only
    after `setup`, a shell command run in it first), visible to that process only. The mount goes with the process:
    what it left in `folder` is copied to `kept(folder)` for the test to inspect."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kb}k" if size_kb else "size=64m"
    script = f'mount -t tmpfs -o {options} tmpfs "{folder}" && cd "{REPO_ROOT}"'
    if setup:
        script += f" && ({setup})"
    if read_only:
        script += f' && mount -o remount,ro "{folder}"'
    keep = kept(folder)
    script += f' || exit 125; "$@"; code=$?; mkdir -p "{keep}" && cp -a "{folder}/." "{keep}"; exit $code'
    return ["unshare", "-rm", "sh", "-c", script, "sh"]


def kept(folder: Path) -> Path:
    """Where `confined` copies what a run left in its private file system."""
    return folder.with_name(folder.name + ".kept")


# ---- damaged files -------------------------------------------------------------------------------------------

def flip_bytes(path: Path, at: float = 0.5, count: int = 4) -> None:
    """Inverts `count` bytes at the fraction `at` of the file: the size stays, the content does not."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


# ---- worker processes ----------------------------------------------------------------------------------------

def running(pid: int | None) -> bool:
    """Whether a process is there and not a zombie (a killed orphan's zombie waits on init to reap it); a process
    whose start failed has no pid."""
    if pid is None:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_the_first_worker_while_the_second_starts(monkeypatch, early: bool = False) -> list[SpawnProcess]:
    """Makes CPython 3.11's submit/terminate race certain for a spawn pool whose workers start on demand: the first
    worker is SIGKILLed while submit() is starting the second, which the executor, marking itself broken without
    submit()'s lock, then never terminates. Late (the default), the kill lands as the second's start returns, slowly
    (a loaded machine), so the executor has not recorded it yet; `early`, before the second has been handed the
    pool's queues, which the executor has closed by then, so starting it fails with OSError("handle is closed").
    Returns the list the processes being started are appended to."""
    started: list[SpawnProcess] = []
    start = SpawnProcess.start

    def kill_the_first_worker() -> None:
        os.kill(started[0].pid, signal.SIGKILL)
        time.sleep(1)  # for the executor to notice

    def start_and_kill_the_first_worker(process: SpawnProcess) -> None:
        started.append(process)
        if early and len(started) == 2:
            kill_the_first_worker()
        start(process)
        if not early and len(started) == 2:
            kill_the_first_worker()

    monkeypatch.setattr(SpawnProcess, "start", start_and_kill_the_first_worker)
    return started


# ---- reading a run folder back -------------------------------------------------------------------------------

def metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensorboard_steps(run: Path, tag: str = "train_loss") -> list[int]:
    """The steps of a scalar as TensorBoard shows it (a resumed run's purge of the stopped attempt applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def temporaries(folder: Path) -> list[Path]:
    """Hidden files and folders anywhere below `folder`: what a killed writer leaves behind."""
    return sorted(path for path in folder.rglob(".*"))


# ---- the kill-point driver -----------------------------------------------------------------------------------

def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _countdown(n: int) -> Callable[[], bool]:
    left = [n]

    def reached() -> bool:
        left[0] -= 1
        return left[0] == 0

    return reached


def _install(point: str, n: int) -> None:
    """Patches the layer at which POINT happens, in this process, so that its N-th occurrence kills the process:
    before, halfway through or right after the N-th checkpoint write; halfway through the final weights; before the
    N-th token shard is closed. The patched names exist in slmkit before and after its reliability work, so a test
    shows the difference."""
    import torch

    reached = _countdown(n)
    real_save = torch.save

    def in_checkpoints(f) -> bool:
        return "/checkpoints/" in str(getattr(f, "name", f))

    if point in ("checkpoint-before", "checkpoint-during"):
        def save(obj, f, *args, **kwargs):
            if in_checkpoints(f) and reached():
                if point == "checkpoint-during":
                    buffer = io.BytesIO()
                    real_save(obj, buffer)
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                _kill()
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    elif point == "checkpoint-after":
        import slmkit.atomic

        real_fsync_dir = slmkit.atomic._fsync_dir

        def fsync_dir(folder):  # called right after each rename that puts a file in place
            real_fsync_dir(folder)
            if Path(folder).name == "checkpoints" and len(list(Path(folder).glob("step-*.ckpt"))) >= n:
                _kill()  # the N-th checkpoint is in place

        slmkit.atomic._fsync_dir = fsync_dir
    elif point == "weights-during":
        import slmkit.checkpoint.files

        def save_model(model, filename, *args, **kwargs):
            if reached():
                with open(filename, "wb") as f:
                    f.write(b"\0" * 4096)
                _kill()

        slmkit.checkpoint.files.save_model = save_model
    elif point == "shard-during":
        import data_prep.pack

        real_finish = data_prep.pack.ShardWriter.finish_shard

        def finish_shard(self):
            if reached():
                self.handle.flush()
                _kill()
            real_finish(self)

        data_prep.pack.ShardWriter.finish_shard = finish_shard
    else:
        raise SystemExit(f"unknown kill point {point}; one of: {', '.join(KILL_POINTS)}")


KILL_POINTS = ("checkpoint-before", "checkpoint-during", "checkpoint-after", "weights-during", "shard-during")


def main(argv: Sequence[str]) -> int:
    point, n, *args = argv
    sys.path.insert(0, str(REPO_ROOT))
    _install(point, int(n))
    from slmkit.cli import main as slmkit_main

    return slmkit_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
