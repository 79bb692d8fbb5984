"""What an export costs and keeps: size on disk, and bits per byte on held-out text under any logits function.

Every format is measured on the same token windows, so the bpb change between fp32, int8 and GGUF is like for like.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

Logits = Callable[[torch.Tensor], torch.Tensor]  # input_ids [1, T] -> logits [1, T, V]


def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def heldout_windows(text: str, tokenizer, eos_id: int, block_size: int, max_tokens: int) -> tuple[list[torch.Tensor], int]:
    """Token windows of block_size+1 overlapping by one (every text token is predicted once), and the bytes they cover.

    An EOS is put first so the first token of the text is predicted too, as at the start of a training document.
    """
    ids = [eos_id] + tokenizer.encode(text, add_special_tokens=False).ids
    ids = ids[: max_tokens + 1]
    n_bytes = len(tokenizer.decode(ids[1:], skip_special_tokens=False).encode("utf-8"))
    windows = [torch.tensor(ids[i : i + block_size + 1]) for i in range(0, len(ids) - 1, block_size)]
    return [w for w in windows if len(w) > 1], n_bytes


@torch.no_grad()
def bits_per_byte(logits_fn: Logits, windows: list[torch.Tensor], n_bytes: int) -> float:
    nll = 0.0
    for window in windows:
        logits = logits_fn(window[None, :-1]).float()
        nll += F.cross_entropy(logits[0], window[1:], reduction="sum").item()
    return nll / math.log(2) / max(n_bytes, 1)
