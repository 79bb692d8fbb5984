"""Reads prepared token shards: the manifest, and one split's shard files memory-mapped as a single token sequence.

Training reads data only through this module; `data_prep/pack.py` writes the files it reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.errors import SlmkitError

MANIFEST = "manifest.json"
FORMAT = "slmkit-shards/1"
REQUIRED_KEYS = ("format", "dtype", "eos_id", "vocab_size", "tokenizer_sha256", "inputs_sha256", "sources", "splits")


def read_manifest(shards_dir: Path) -> dict[str, Any]:
    path = Path(shards_dir) / MANIFEST
    remedy = "run `slmkit data prepare recipe=...` to (re)write it"
    if not path.is_file():
        raise SlmkitError(f"no {MANIFEST} in {shards_dir}: the token shards are missing or incomplete; {remedy}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SlmkitError(f"{path} is not valid JSON ({error}); {remedy}") from None
    missing = [key for key in REQUIRED_KEYS if key not in manifest] if isinstance(manifest, dict) else list(REQUIRED_KEYS)
    if missing:
        raise SlmkitError(f"{path} lacks {', '.join(missing)}: the shards are incomplete; {remedy}")
    if manifest["format"] != FORMAT:
        raise SlmkitError(f"{path} has format {manifest['format']!r}, this slmkit reads {FORMAT!r}; {remedy}")
    return manifest


class TokenShards:
    """One split of a prepared folder as one read-only token sequence spread over memory-mapped shard files."""

    def __init__(self, shards_dir: Path, split: str):
        self.shards_dir = Path(shards_dir)
        self.split = split
        self.manifest = read_manifest(self.shards_dir)
        splits = self.manifest["splits"]
        if split not in splits:
            raise SlmkitError(f"{self.shards_dir} has no {split!r} split (it has: {', '.join(splits)})")
        self.dtype = np.dtype(self.manifest["dtype"])
        self.shards: list[np.memmap] = []
        for shard in splits[split]["shards"]:
            path = self.shards_dir / shard["file"]
            expected = shard["tokens"] * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise SlmkitError(
                    f"shard {path} is missing or not {expected} bytes as the manifest says; the prepared folder is "
                    f"damaged: delete it and run `slmkit data prepare recipe=...` again"
                )
            self.shards.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(shard["tokens"],)))
        # starts[i] is the position of shard i's first token in the split
        self.starts = np.cumsum([0] + [len(shard) for shard in self.shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split, read across shard boundaries."""
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"window [{start}, {start + length}) is outside the {self.split} split of {len(self)} tokens")
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while length > 0:
            offset = start - int(self.starts[first])
            piece = self.shards[first][offset : offset + length]
            pieces.append(piece)
            start += len(piece)
            length -= len(piece)
            first += 1
        if len(pieces) == 1:
            return np.array(pieces[0])
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=self.dtype)
