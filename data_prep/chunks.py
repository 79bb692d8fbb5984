"""Chunk files and the worker pool that the data pipeline runs its per-chunk stages on.

Every file is written atomically (`slmkit.atomic`), so a crash never leaves a file that looks finished; a chunk
whose result file exists is done and is never redone.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import signal
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from data_prep.workers import WatchedPool, WorkerEnd
from slmkit.atomic import atomic_path
from slmkit.errors import SlmkitError


def write_records(path: Path, records: Iterable[dict[str, Any]], level: int = 1) -> None:
    """Gzip JSON lines, atomically; mtime=0 and no name in the header make the bytes depend on the records only.

    Level 1: compressing is on the pipeline's critical path, and level 3+ costs ~40% more time for ~10% less space.
    """
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0) as out:
            out.write(lines)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def write_json(path: Path, value: Any) -> None:
    """Chunk results and markers: atomic, not fsynced (a run that loses them to a power cut redoes the chunk)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1, sort_keys=True), encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:  # the suffix keeps np.savez from appending one
        np.savez(tmp, **arrays)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read once (an NpzFile decompresses an array again on every access)."""
    with np.load(path) as npz:
        return {name: npz[name] for name in npz.files}


# ---- the worker pool -----------------------------------------------------------------------------------------

_worker_cache: dict[Any, Any] = {}  # objects a worker builds once and reuses across tasks (tokenizer, eval n-grams)


def worker_cached(key: Any, build: Callable[[], Any]) -> Any:
    if key not in _worker_cache:
        _worker_cache[key] = build()
    return _worker_cache[key]


def _init_worker() -> None:
    # Each worker encodes with one tokenizer thread: the pool supplies the parallelism, and a second layer of
    # threads would only compete for the same cores.
    os.environ["RAYON_NUM_THREADS"] = "1"
    # Ctrl-C is the main process's to handle: it stops the workers itself, and a worker that died of the signal
    # would look like one the out-of-memory killer took.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_died(end: WorkerEnd, workers: int) -> str:
    advice = (f"Give each worker less text at once: lower data.num_workers (it is {workers}), data.memory_limit_mb or "
              f"data.chunk_mb, and run again" if end.killed else "Fix that and run again")
    return (f"a data worker process {end}; the run is stopped. {advice}: finished chunks are kept, so it resumes where "
            f"this one stopped")


class ChunkPool:
    """One set of worker processes for every stage of a run; results in task order, at most `in_flight` at once.

    Tasks are pulled from the iterator only when a slot frees, so the producer (e.g. reading sources) never runs
    more than `in_flight` chunks ahead. With one worker everything runs in this process. A worker that dies (the
    out-of-memory killer's SIGKILL) stops the run with a SlmkitError in bounded time (see `workers`).
    """

    def __init__(self, workers: int, in_flight: int):
        self.workers = workers
        self.in_flight = max(1, in_flight)
        self.pool = WatchedPool(workers, initializer=_init_worker) if workers > 1 else None

    def map(self, function: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        if self.pool is None:
            for task in tasks:
                yield function(task)
            return
        pending: collections.deque[Future] = collections.deque()
        try:
            for task in tasks:
                pending.append(self.pool.submit(function, task))
                if len(pending) >= self.in_flight:
                    yield self.pool.result(pending.popleft())
            while pending:
                yield self.pool.result(pending.popleft())
        except BrokenProcessPool:
            raise SlmkitError(worker_died(self.pool.how_a_worker_went(), self.workers)) from None

    def close(self, kill: bool = False) -> None:
        """Ends the workers; `kill` drops queued tasks and kills them at once: a failed or interrupted run waits for no
        chunk nobody will read."""
        if self.pool is not None:
            self.pool.close(kill)
            self.pool = None

    def __enter__(self) -> "ChunkPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(kill=exc[0] is not None)


# ---- counting and progress -----------------------------------------------------------------------------------

class Counts:
    """Documents and characters per source at one stage, mergeable and JSON-friendly."""

    def __init__(self, data: Optional[dict[str, list[int]]] = None):
        self.data = data if data is not None else {}

    def add(self, source: str, characters: int, documents: int = 1) -> None:
        entry = self.data.setdefault(source, [0, 0])
        entry[0] += documents
        entry[1] += characters

    def merge(self, other: dict[str, list[int]]) -> None:
        for source, (documents, characters) in other.items():
            self.add(source, characters, documents)


def stage_bar(progress: bool, desc: str, total: Optional[int] = None, unit: str = "doc") -> tqdm:
    return tqdm(desc=desc, total=total, unit=unit, unit_scale=True, disable=not progress, dynamic_ncols=True)


def show_rate(bar: tqdm, characters: int) -> None:
    bar.set_postfix_str(f"{characters / 1e6 / max(bar.format_dict['elapsed'], 1e-9):.1f} MB/s", refresh=False)
