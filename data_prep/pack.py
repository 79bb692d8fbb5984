"""Token shards: documents encoded with EOS after each, packed into flat {split}_{index:05d}.bin files, and the manifest.

The format (file names, token dtype, manifest keys) is `slmkit.data`'s, which training reads with. The train/val
split lives here too: by seeded document hash, or the tail of the token stream (nanoGPT's char task).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from data_prep.sources import unit_hash
from slmkit.atomic import atomic_write_bytes, naming
from slmkit.data import MANIFEST, REQUIRED_KEYS

SPLITS = ("train", "val")
STREAM = "stream"  # the tail split's single token stream, cut into train and val once its length is known
BATCH_CHARS = 4_000_000  # characters per encode_batch call: large enough to keep every tokenizer thread busy


def split_of(doc_id: str, seed: int, val_fraction: float) -> str:
    """The hash split: a document goes to val with probability val_fraction, decided by its id alone."""
    return "val" if unit_hash(f"split:{seed}:{doc_id}") < val_fraction else "train"


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Written last: a prepared folder is complete exactly when it has a manifest."""
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:  # a bug in the writer: training would refuse the folder
        raise ValueError(f"the manifest lacks {', '.join(missing)}")
    atomic_write_bytes(out_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))


class ShardWriter:
    """Appends token arrays to {split}_{index:05d}.bin files of at most shard_tokens tokens each, recording each
    file's sha256 as it is written (training checks a streamed copy of a shard against it)."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out_dir = out_dir
        self.split = split
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.handle = None
        self.filled = 0

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            if self.handle is None:
                name = f"{self.split}_{len(self.shards):05d}.bin"
                self.shards.append({"file": name, "tokens": 0, "sha256": ""})
                self.digest = hashlib.sha256()
                self.tmp = self.out_dir / f".{name}.{os.getpid()}.tmp"
                with self.naming_errors():
                    self.handle = open(self.tmp, "wb")
                self.filled = 0
            room = self.shard_tokens - self.filled
            data = tokens[:room].tobytes()
            self.digest.update(data)
            with self.naming_errors():
                self.handle.write(data)
            taken = min(room, len(tokens))
            self.filled += taken
            self.shards[-1]["tokens"] = self.filled
            tokens = tokens[taken:]
            if self.filled == self.shard_tokens:
                self.finish_shard()

    def finish_shard(self) -> None:
        self.shards[-1]["sha256"] = self.digest.hexdigest()
        with self.naming_errors():
            self.handle.close()
            os.replace(self.tmp, self.out_dir / self.shards[-1]["file"])
        self.handle = None

    @contextlib.contextmanager
    def naming_errors(self) -> Iterator[None]:
        """A refused write (full disk) names the shard; its partial temporary goes at once, not at the next run."""
        try:
            yield
        except OSError as err:
            if self.handle is not None:
                self.handle.close()
                self.handle = None
            self.tmp.unlink(missing_ok=True)
            raise naming(err, self.out_dir / self.shards[-1]["file"]) from None

    def close(self) -> list[dict[str, Any]]:
        if self.handle is not None:
            self.finish_shard()
        return self.shards


@dataclass
class SplitCounts:
    name: str
    documents: int = 0
    tokens: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "tokens": self.tokens, "shards": self.shards}


def encode_texts(tokenizer: Any, texts: list[str], eos_id: int, dtype: np.dtype,
                 batch_chars: int = BATCH_CHARS) -> tuple[np.ndarray, np.ndarray]:
    """(all tokens with EOS after each document, tokens per document including its EOS), batch by batch.

    Batches bound the memory of tokenizers' Encoding objects and of the Python int lists they hand back.
    """
    parts, lengths = [], []
    for batch in batched(texts, batch_chars):
        ids = [encoding.ids for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False)]
        for doc in ids:
            doc.append(eos_id)
        counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(counts.sum())))
        lengths.append(counts)
    if not parts:
        return np.empty(0, dtype=dtype), np.empty(0, dtype=np.int64)
    return np.concatenate(parts), np.concatenate(lengths)


def batched(texts: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class ShardPacker:
    """Appends each split's token arrays, in the order given, to shards of at most shard_tokens tokens.

    A split named `stream` (the tail split) is cut into train and val by `finish` once its length is known.
    """

    def __init__(self, out_dir: Path, dtype: np.dtype, shard_tokens: int, val_fraction: float = 0.0):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.val_fraction = val_fraction
        self.writers: dict[str, ShardWriter] = {}
        self.counts: dict[str, SplitCounts] = {}
        self.doc_ends: list[np.ndarray] = []  # tail split only: where each document ends in the stream

    def add(self, split: str, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Tokens of consecutive documents of one split, with each document's token count (EOS included)."""
        if split not in self.writers:
            self.writers[split] = ShardWriter(self.out_dir, split, self.dtype, self.shard_tokens)
            self.counts[split] = SplitCounts(split)
        if split == STREAM:
            self.doc_ends.append(self.counts[split].tokens + np.cumsum(lengths))
        self.writers[split].write(tokens)
        self.counts[split].tokens += len(tokens)
        self.counts[split].documents += len(lengths)

    def finish(self) -> dict[str, SplitCounts]:
        counts = self.counts
        for split, writer in self.writers.items():
            counts[split].shards = writer.close()
        if STREAM in counts:
            ends = np.concatenate(self.doc_ends) if self.doc_ends else np.empty(0, dtype=np.int64)
            counts = cut_tail(self.out_dir, counts[STREAM], ends, self.dtype, self.val_fraction)
        for split in SPLITS:
            counts.setdefault(split, SplitCounts(split))
        return counts


def cut_tail(
    out_dir: Path, stream: SplitCounts, doc_ends: np.ndarray, dtype: np.dtype, val_fraction: float
) -> dict[str, SplitCounts]:
    """Renames the stream's shards to train/val, cutting the shard that holds the boundary (nanoGPT: data[:int(n*0.9)]).

    A document counts for train when it ends before the cut; the one cut in two counts for val.
    """
    cut = int(stream.tokens * (1 - val_fraction))
    trained = int(np.searchsorted(doc_ends, cut, side="right"))
    train, val = SplitCounts("train", documents=trained), SplitCounts("val", documents=stream.documents - trained)
    offset = 0
    for shard in stream.shards:
        path = out_dir / shard["file"]
        start, end = offset, offset + shard["tokens"]
        offset = end
        if end <= cut or start >= cut:
            target = train if end <= cut else val
            name = next_shard_name(target)
            os.replace(path, out_dir / name)
            target.shards.append({"file": name, "tokens": shard["tokens"], "sha256": shard["sha256"]})
            target.tokens += shard["tokens"]
            continue
        tokens = np.memmap(path, dtype=dtype, mode="r")
        for target, part in ((train, tokens[: cut - start]), (val, tokens[cut - start :])):
            name, data = next_shard_name(target), part.tobytes()
            atomic_write_bytes(out_dir / name, data)
            target.shards.append({"file": name, "tokens": len(part), "sha256": hashlib.sha256(data).hexdigest()})
            target.tokens += len(part)
        del tokens
        path.unlink()
    return {"train": train, "val": val}


def next_shard_name(split: SplitCounts) -> str:
    return f"{split.name}_{len(split.shards):05d}.bin"
