"""The spawned worker processes both data engines run their tasks on, watched so that none is waited on for ever.

concurrent.futures' process pool alone can wait for ever on a worker that was killed (the out-of-memory killer's
SIGKILL), in two ways. It learns of a death from the worker's end of a pipe closing, and a process the worker forked
keeps that end open after the worker is killed (datatrove's manager process, which every datatrove task's run forks).
And (CPython 3.11) its manager thread marks the pool broken without the lock that submit() holds, so a worker killed
while submit() is still starting the next one (workers start on demand) leaves that next one unterminated, which the
manager thread then joins for ever (as shutdown(wait=True) joins the manager thread). Nor does the pool list its
workers, so nothing outside it could end the one it forgot.

So `WatchedPool` records every process it starts, its waits check the workers' exit codes every POLL_SECONDS, and
closing it waits on nothing unboundedly: what has not exited is killed, with everything it started. The one-machine
pool (`chunks.ChunkPool`) and datatrove's local executor (`engines.datatrove_engine`) both run on it; it imports
neither (the one-machine path never imports datatrove).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any, Callable, Iterable, Optional

POLL_SECONDS = 0.5  # how long a dead worker can go unnoticed
WORKERS_EXIT_SECONDS = 10  # how long a finished run's idle workers get to exit before they are killed


class WatchedSpawn(SpawnContext):
    """The spawn context, keeping every process it starts: the executor has no public list of its workers, and the
    one it forgets in the submit() race is in no list of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[SpawnProcess] = []

    def Process(self, *args: Any, **kwargs: Any) -> SpawnProcess:  # noqa: N802 (the name the executor calls)
        process = SpawnProcess(*args, **kwargs)
        self.started.append(process)
        return process


class WatchedPool:
    """A spawn process pool whose every way of losing a worker surfaces as BrokenProcessPool, in bounded time.

    Spawn, not fork: forked children would inherit tokenizers' and numpy's thread pools in an unusable state.
    `initializer` runs in each worker after it has become the leader of a process group of its own.
    """

    def __init__(self, workers: int, initializer: Optional[Callable[[], None]] = None):
        self.context = WatchedSpawn()
        self.executor = ProcessPoolExecutor(workers, mp_context=self.context, initializer=start_worker,
                                            initargs=(initializer,))

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        try:
            return self.executor.submit(function, *args)
        except OSError:
            if not self.lost_a_worker():
                raise  # the system's refusal to start a process, with every worker alive
            # the executor, noticing a worker killed while submit() starts the next one, closes the queue that the
            # next one is then handed: that fails as OSError("handle is closed"), not BrokenProcessPool
            raise BrokenProcessPool("a worker process died while the pool was starting another") from None

    def wait(self, futures: Iterable[Future]) -> None:
        """Returns once every future is done; a task's own error is raised as it is, a dead worker as
        BrokenProcessPool."""
        pending = set(futures)
        while pending:
            if self.lost_a_worker():
                raise BrokenProcessPool("a worker process died")
            done, pending = concurrent.futures.wait(pending, POLL_SECONDS, concurrent.futures.FIRST_EXCEPTION)
            for future in done:
                future.result()

    def result(self, future: Future) -> Any:
        self.wait([future])
        return future.result()

    def lost_a_worker(self) -> bool:
        """Whether a worker has exited, which none does before the pool is closed unless it was killed."""
        return any(process.exitcode is not None for process in self.context.started)

    def how_a_worker_went(self) -> WorkerEnd:
        """How the first worker that left went: a kill (memory, most likely) and an error of its own want different
        advice, and the pool's BrokenProcessPool says neither."""
        deadline = time.monotonic() + POLL_SECONDS  # the pool may report the loss before the lost one is reaped
        while True:
            codes = [code for code in (process.exitcode for process in self.context.started) if code not in (None, 0)]
            if codes or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        # once one worker is lost the executor terminates the rest (SIGTERM): their ends are effects, not the cause
        causes = [code for code in codes if code > 0] or [code for code in codes if code != -signal.SIGTERM] or codes
        return WorkerEnd(causes[0] if causes else None)

    def close(self, kill: bool) -> None:
        """Ends every worker: idle ones get WORKERS_EXIT_SECONDS to exit, and a failed or interrupted run (`kill`)
        waits for no task nobody will read: a killed task leaves nothing that looks finished, so a rerun does it
        again."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + (0 if kill else WORKERS_EXIT_SECONDS)
        for process in self.context.started:
            if process.pid is None:  # its start failed (the pool broke under submit())
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode != 0:
                # still running, or killed: end it, then what it started (its process group, once it leads one)
                process.kill()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.join(WORKERS_EXIT_SECONDS)


@dataclass(frozen=True)
class WorkerEnd:
    """A lost worker's exit code (negative: the signal that ended it; None: unknown, as when its start failed)."""

    exitcode: Optional[int]

    @property
    def killed(self) -> bool:
        return self.exitcode is None or self.exitcode < 0

    def __str__(self) -> str:
        guard = ("in a Python script that prepares data, the usual one is a missing `if __name__ == \"__main__\":` guard, "
                 "since every worker process runs the script's top level again")
        if not self.killed:
            # spawn runs the main module again in every worker: a script without the guard fails there, at start
            return f"exited with code {self.exitcode}, an error in the worker itself (its traceback is printed above; {guard})"
        if self.exitcode in (None, -signal.SIGTERM):
            # the executor stops every worker with SIGTERM once one is lost, and may reach the one that failed before
            # it has exited on its own: then nothing tells its own error from a kill
            return (f"stopped as the pool broke, for a cause no exit code shows: a "
                    f"traceback printed above is a worker's own error ({guard}); with none, most likely the "
                    f"out-of-memory killer")
        try:
            by = signal.Signals(-self.exitcode).name  # type: ignore[operator]  (None is handled above)
        except ValueError:  # a number no signal has
            by = "a signal"
        return f"died without a word (killed by {by}, most likely by the out-of-memory killer)"


def start_worker(initializer: Optional[Callable[[], None]]) -> None:
    """A worker's initializer: the worker leads a process group of its own, which closing the pool kills whole.

    Signals sent to the main process's group (a terminal's Ctrl-C) then reach the main process alone, which stops
    the workers itself; and a worker whose main process is gone, however it went, ends its group too.
    """
    os.setpgrp()
    parent = multiprocessing.parent_process()
    threading.Thread(target=end_the_group_with, args=(parent.sentinel,), daemon=True).start()
    if initializer is not None:
        initializer()


def end_the_group_with(parent_sentinel: int) -> None:
    multiprocessing.connection.wait([parent_sentinel])
    os.killpg(0, signal.SIGKILL)
