"""How the CPU DeepSpeed workers end: every rank waits for the others, then leaves without the C++ teardown.

gloo's threads, destroyed at interpreter shutdown or by destroy_process_group, now and then abort a rank with
"terminate called without an active exception" (CI saw it about one run in thirty at ZeRO stage 3), and torchrun then
fails a run that trained and wrote its results. Past the barrier every result is on disk, so nothing is lost by
skipping the teardown."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist


def leave() -> None:
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
