"""ReturnFreedMemory: a run hands the heap's free pages back to the system (glibc), at most every TRIM_SECONDS."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from slmkit.training.callbacks import ReturnFreedMemory, heap_trimmer
from tests.conftest import REPO_ROOT


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_heap_is_trimmed_at_most_once_per_interval():
    clock, trims = Clock(), []
    callback = ReturnFreedMemory(trims.append, seconds=10.0, clock=clock)
    for now in (104.0, 109.9, 110.0, 115.0, 119.9, 120.5, 200.0):
        clock.now = now
        callback.on_train_batch_end(None, None, None, None, 0)
    assert len(trims) == 3  # at 110.0, 120.5 and 200.0
    assert trims == [0, 0, 0]  # malloc_trim's pad: keep nothing in reserve


@pytest.mark.skipif(heap_trimmer() is None, reason="this C library has no malloc_trim (not glibc)")
def test_a_trim_returns_memory_freed_below_the_heaps_top():
    # Large blocks freed under a live one stay resident without a trim: what variable-sized tensors do in a CPU run.
    script = textwrap.dedent("""
        import torch
        from slmkit.training.callbacks import heap_trimmer
        def resident_mb():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        big = torch.ones(4 * 2**20); del big  # a 16 MB block, mmapped and freed: glibc raises its mmap threshold
        blocks = [torch.ones(2**20 + 1024 * i) for i in range(100)]  # ~4 MB each, now served from the heap
        last = blocks[-1]; del blocks  # the last block pins the heap's top
        before = resident_mb(); heap_trimmer()(0); after = resident_mb()
        print(before, after)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    before, after = map(float, out.stdout.split())
    assert before - after > 250, (before, after)  # ~400 MB freed and held; the trim returns most of it
