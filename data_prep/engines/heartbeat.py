"""Signs of life between the nodes of one datatrove run shared over a folder (`data.nodes` > 1).

A node waits on the others twice: for node 0 to list the inputs, and at the end of every stage for the other nodes'
tasks. Without a sign of life, a node that died (a lost machine, a killed job) would leave the others waiting for
ever. Each node therefore touches a file of its own every few seconds from a thread, whatever it is doing, and a
waiting node stops with a message once a node it waits on has shown nothing for `data.node_timeout_minutes`.

A node judges change, not age: it compares each file's modification stamp with the stamp it saw before, on its own
clock, so clocks that differ between machines (or a shared disk's own clock) cannot make a live node look dead.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from slmkit.errors import SlmkitError

HEARTBEAT_SECONDS = 5.0  # how often a node touches its file; a waiting node's timeout is minutes, so seconds suffice


def heartbeat_file(folder: Path, rank: int) -> Path:
    return folder / f"node-{rank:04d}.alive"


class Heartbeat:
    """This node's file under `folder`, touched every `every` seconds while the context is open."""

    def __init__(self, folder: Path, rank: int, every: float = HEARTBEAT_SECONDS):
        self.path = heartbeat_file(folder, rank)
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"slmkit-heartbeat-{rank}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._touch()

    def _touch(self) -> None:
        try:
            os.utime(self.path)  # never creates the file: node 0 removes the work folder once the run is published
        except OSError:  # a shared disk that hiccups: the next beat tries again, and only a long silence counts
            pass


class NodeWatch:
    """What a waiting node knows of the others: when, on its own clock, each one's file last changed."""

    def __init__(self, folder: Path, nodes: int, timeout_minutes: float):
        self.folder = folder
        self.nodes = nodes
        self.timeout = timeout_minutes * 60
        self._started = time.monotonic()
        self._seen: dict[int, tuple[Optional[int], float]] = {}  # rank -> (stamp, when it last changed)

    def _stamp(self, rank: int) -> Optional[int]:
        try:
            return heartbeat_file(self.folder, rank).stat().st_mtime_ns
        except OSError:
            return None

    def check(self, ranks: Iterable[int], waiting_for: str) -> None:
        """Raises once any of `ranks` has shown no change for the timeout; `waiting_for` says what they owe."""
        now = time.monotonic()
        for rank in ranks:
            stamp = self._stamp(rank)
            seen = self._seen.get(rank)
            if seen is None or seen[0] != stamp:
                # a change restarts the node's clock; a node not started yet counts from when this one began waiting
                seen = self._seen[rank] = (stamp, self._started if seen is None and stamp is None else now)
            if now - seen[1] > self.timeout:
                self._silent(rank, stamp, now - seen[1], waiting_for)

    def _silent(self, rank: int, stamp: Optional[int], seconds: float, waiting_for: str) -> None:
        state = ("has not started" if stamp is None else "has shown no sign of life")
        raise SlmkitError(
            f"node {rank} of data.nodes={self.nodes} {state} for {seconds / 60:.1f} minutes (its heartbeat file "
            f"{heartbeat_file(self.folder, rank)} unchanged) while this node waits for {waiting_for}. Start it (again) "
            f"with data.node_rank={rank} and the same recipe: finished tasks are kept and only the rest run; or raise "
            f"data.node_timeout_minutes if that node is only slow to start")
