"""Token shards, the contract between data preparation and training: the format, reading a prepared folder (the
manifest, and one split's shard files memory-mapped as a single token sequence), and the hook that prepares one.

Training reads data only through this module. A plugin (data_prep) writes the files, with the names and rules
defined here, and registers the preparer that `slmkit train` calls.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from slmkit.data_config import DataConfig, TokenizerConfig
from slmkit.errors import SlmkitError
from slmkit.plugins import load_plugins, missing_plugin

MANIFEST = "manifest.json"
RUN_MANIFEST = "data_manifest.json"  # the manifest a run trained on, copied into its run folder
FORMAT = "slmkit-shards/1"
REQUIRED_KEYS = ("format", "dtype", "eos_id", "vocab_size", "tokenizer_sha256", "inputs_sha256", "sources", "splits")
REMEDY = "run `slmkit data prepare recipe=...` to (re)write it"


def cache_root() -> Path:
    """Where slmkit keeps what it derives from its inputs (prepared data, tokenizers): $SLMKIT_CACHE, else ~/.cache/slmkit."""
    return Path(os.environ.get("SLMKIT_CACHE") or "~/.cache/slmkit").expanduser()


def token_dtype(vocab_size: int) -> np.dtype:
    """Token ids are stored in the smallest unsigned type that holds every id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass
class PreparedData:
    """What a data preparer hands to training: the shards folder with its manifest, and the tokenizer that wrote it."""

    shards_dir: Path
    tokenizer_path: Path
    manifest: dict[str, Any]
    reused: bool  # True when an earlier run's shards fitted these inputs and nothing was written
    report_path: Optional[Path] = None  # the curation report, when the preparer writes one


@dataclass(frozen=True)
class DataPreparer:
    """How `slmkit train` gets its token shards; a plugin registers one with `register_preparer`."""

    prepare: Callable[[DataConfig, TokenizerConfig], PreparedData]  # writes the shards, or reuses unchanged ones
    status: Callable[[DataConfig, TokenizerConfig], str]  # one line for the dry run: ready or not, and where


_preparer: Optional[DataPreparer] = None


def register_preparer(preparer: DataPreparer) -> None:
    global _preparer
    _preparer = preparer


def data_preparer() -> DataPreparer:
    """The registered preparer (the installed plugins are loaded first); a SlmkitError saying why when there is none."""
    load_plugins()
    if _preparer is None:
        raise missing_plugin("data preparation (the data_prep package: `slmkit data prepare`, and data for training)")
    return _preparer


def read_manifest(shards_dir: Path) -> dict[str, Any]:
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise SlmkitError(f"no {MANIFEST} in {shards_dir}: the token shards are missing or incomplete; {REMEDY}")
    return parse_manifest(path.read_bytes(), str(path))


def parse_manifest(content: bytes, where: str) -> dict[str, Any]:
    """The manifest in `content` (read from `where`, a file or URL), checked for the keys and format training reads."""
    try:
        manifest = json.loads(content.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SlmkitError(f"{where} is not valid JSON ({error}); {REMEDY}") from None
    missing = [key for key in REQUIRED_KEYS if key not in manifest] if isinstance(manifest, dict) else list(REQUIRED_KEYS)
    if missing:
        raise SlmkitError(f"{where} lacks {', '.join(missing)}: the shards are incomplete; {REMEDY}")
    if manifest["format"] != FORMAT:
        raise SlmkitError(f"{where} has format {manifest['format']!r}, this slmkit reads {FORMAT!r}; {REMEDY}")
    return manifest


class TokenShards:
    """One split of a prepared folder as one read-only token sequence spread over memory-mapped shard files.

    A shard is opened when a window first reads from it. `fetch`, when given, is called with the shard's manifest
    entry first and brings its file into the folder (a streamed copy, `slmkit.streamed`), so a reader fetches only
    the shards it reads; without it every file must be in the folder already, which is checked at once.
    """

    def __init__(self, shards_dir: Path, split: str, fetch: Optional[Callable[[dict[str, Any]], Path]] = None):
        self.shards_dir = Path(shards_dir)
        self.split = split
        self.fetch = fetch
        self.manifest = read_manifest(self.shards_dir)
        splits = self.manifest["splits"]
        if split not in splits:
            raise SlmkitError(f"{self.shards_dir} has no {split!r} split (it has: {', '.join(splits)})")
        self.dtype = np.dtype(self.manifest["dtype"])
        self.entries: list[dict[str, Any]] = splits[split]["shards"]
        self.shards: list[Optional[np.memmap]] = [None] * len(self.entries)
        if fetch is None:
            for entry in self.entries:
                self._checked(self.shards_dir / entry["file"], entry)
        # starts[i] is the position of shard i's first token in the split
        self.starts = np.cumsum([0] + [entry["tokens"] for entry in self.entries])

    def _checked(self, path: Path, entry: dict[str, Any]) -> Path:
        expected = entry["tokens"] * self.dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise SlmkitError(
                f"shard {path} is missing or not {expected} bytes as the manifest says; the prepared folder is "
                f"damaged: delete it and run `slmkit data prepare recipe=...` again"
            )
        return path

    def shard(self, index: int) -> np.memmap:
        """Shard `index` memory-mapped, fetched first when the folder is a streamed copy."""
        if self.shards[index] is None:
            entry = self.entries[index]
            path = self.fetch(entry) if self.fetch is not None else self.shards_dir / entry["file"]
            self.shards[index] = np.memmap(self._checked(path, entry), dtype=self.dtype, mode="r", shape=(entry["tokens"],))
        return self.shards[index]

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
            piece = self.shard(first)[offset : offset + length]
            pieces.append(piece)
            start += len(piece)
            length -= len(piece)
            first += 1
        if len(pieces) == 1:
            return np.array(pieces[0])
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=self.dtype)
