"""Tokenizes documents into flat token shards ({split}_{index:05d}.bin, EOS after every document) and the manifest.

The train/val split lives here too: by seeded document hash, or the tail of the token stream (nanoGPT's char task).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from data_prep.sources import unit_hash
from slmkit.errors import SlmkitError

FORMAT = "slmkit-shards/1"
SPLITS = ("train", "val")
STREAM = "stream"  # the tail split's single token stream, cut into train and val once its length is known
BATCH_CHARS = 4_000_000  # characters per encode_batch call: large enough to keep every tokenizer thread busy


def split_of(doc_id: str, seed: int, val_fraction: float) -> str:
    """The hash split: a document goes to val with probability val_fraction, decided by its id alone."""
    return "val" if unit_hash(f"split:{seed}:{doc_id}") < val_fraction else "train"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Written last: a prepared folder is complete exactly when it has a manifest."""
    write_atomic(out_dir / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))


class ShardWriter:
    """Appends token arrays to {split}_{index:05d}.bin files of at most shard_tokens tokens each."""

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
                self.tmp = self.out_dir / f".{name}.{os.getpid()}.tmp"
                self.handle = open(self.tmp, "wb")
                self.shards.append({"file": name, "tokens": 0})
                self.filled = 0
            room = self.shard_tokens - self.filled
            self.handle.write(tokens[:room].tobytes())
            taken = min(room, len(tokens))
            self.filled += taken
            self.shards[-1]["tokens"] = self.filled
            tokens = tokens[taken:]
            if self.filled == self.shard_tokens:
                self.finish_shard()

    def finish_shard(self) -> None:
        self.handle.close()
        os.replace(self.tmp, self.out_dir / self.shards[-1]["file"])
        self.handle = None

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


@dataclass
class PackResult:
    splits: dict[str, SplitCounts]
    source_tokens: dict[str, int]
    characters: int


_worker: dict[str, Any] = {}


def _init_worker(tokenizer_path: str, eos_id: int, dtype: str, threads: Optional[int]) -> None:
    if threads is not None:
        # in a process pool each worker encodes with one thread; the pool supplies the parallelism
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    from tokenizers import Tokenizer

    _worker.update(tokenizer=Tokenizer.from_file(tokenizer_path), eos_id=eos_id, dtype=np.dtype(dtype))


def _encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(all tokens of the batch with EOS after each document, tokens per document including its EOS)."""
    encodings = _worker["tokenizer"].encode_batch_fast(texts, add_special_tokens=False)
    ids = [encoding.ids for encoding in encodings]
    for doc in ids:
        doc.append(_worker["eos_id"])
    lengths = np.fromiter((len(doc) for doc in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=_worker["dtype"], count=int(lengths.sum()))
    return flat, lengths


class BatchEncoder:
    """Encodes batches of texts, in this process (tokenizers' own threads) or in a process pool.

    Results come back in submission order, so the shards do not depend on the number of processes.
    """

    def __init__(self, tokenizer_path: Path, eos_id: int, dtype: np.dtype, processes: int):
        self.processes = processes
        if processes > 1:
            # spawn, not fork: a forked child inherits tokenizers' thread pool state and would encode serially
            context = multiprocessing.get_context("spawn")
            self.pool = context.Pool(
                processes, initializer=_init_worker, initargs=(str(tokenizer_path), eos_id, dtype.str, 1)
            )
        else:
            _init_worker(str(tokenizer_path), eos_id, dtype.str, None)

    def encode(self, batches: Iterable[list[str]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.processes > 1:
            yield from self.pool.imap(_encode_batch, batches)
        else:
            for batch in batches:
                yield _encode_batch(batch)

    def close(self) -> None:
        if self.processes > 1:
            self.pool.close()
            self.pool.join()


def batched(items: Iterable[tuple[str, str, str]], batch_chars: int) -> Iterator[list[tuple[str, str, str]]]:
    batch: list[tuple[str, str, str]] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item[2])
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def pack_documents(
    documents: Iterable[tuple[str, str, str]],
    tokenizer_path: Path,
    out_dir: Path,
    *,
    eos_id: int,
    dtype: np.dtype,
    shard_tokens: int,
    val_fraction: float = 0.0,
    processes: int = 1,
    batch_chars: int = BATCH_CHARS,
    progress: Optional[Any] = None,
) -> PackResult:
    """Tokenizes (split, source name, text) items into shards under out_dir, EOS after each document.

    split is train or val (hash split), or `stream` for every item of a tail split, whose last val_fraction of
    tokens becomes val once the stream is complete.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[str, ShardWriter] = {}
    counts: dict[str, SplitCounts] = {}
    source_tokens: dict[str, int] = {}
    doc_ends: list[int] = []  # tail split only: where each document ends in the stream
    characters = 0
    in_flight: list[list[tuple[str, str, str]]] = []

    def texts_of(batches: Iterator[list[tuple[str, str, str]]]) -> Iterator[list[str]]:
        for batch in batches:
            in_flight.append(batch)
            yield [text for _, _, text in batch]

    encoder = BatchEncoder(tokenizer_path, eos_id, dtype, processes)
    try:
        for flat, lengths in encoder.encode(texts_of(batched(documents, batch_chars))):
            batch = in_flight.pop(0)
            splits = [split for split, _, _ in batch]
            for index, (split, source, text) in enumerate(batch):
                source_tokens[source] = source_tokens.get(source, 0) + int(lengths[index])
                characters += len(text)
            for split in sorted(set(splits)):
                keep = np.fromiter((s == split for s in splits), dtype=bool, count=len(splits))
                tokens = flat if keep.all() else flat[np.repeat(keep, lengths)]
                if split not in writers:
                    writers[split] = ShardWriter(out_dir, split, dtype, shard_tokens)
                    counts[split] = SplitCounts(split)
                if split == STREAM:
                    doc_ends.extend((counts[split].tokens + np.cumsum(lengths[keep])).tolist())
                writers[split].write(tokens)
                counts[split].tokens += len(tokens)
                counts[split].documents += int(keep.sum())
            if progress is not None:
                progress.update(len(batch))
                elapsed = max(progress.format_dict["elapsed"], 1e-9)
                progress.set_postfix_str(f"{characters / 1e6 / elapsed:.1f} MB/s", refresh=False)
    finally:
        encoder.close()
    for split, writer in writers.items():
        counts[split].shards = writer.close()
    if STREAM in counts:
        counts = cut_tail(out_dir, counts[STREAM], np.array(doc_ends, dtype=np.int64), dtype, val_fraction)
    for split in SPLITS:
        counts.setdefault(split, SplitCounts(split))
    return PackResult(splits=counts, source_tokens=source_tokens, characters=characters)


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
            target.shards.append({"file": name, "tokens": shard["tokens"]})
            target.tokens += shard["tokens"]
            continue
        tokens = np.memmap(path, dtype=dtype, mode="r")
        for target, part in ((train, tokens[: cut - start]), (val, tokens[cut - start :])):
            name = next_shard_name(target)
            write_atomic(out_dir / name, part.tobytes())
            target.shards.append({"file": name, "tokens": len(part)})
            target.tokens += len(part)
        del tokens
        path.unlink()
    return {"train": train, "val": val}


def next_shard_name(split: SplitCounts) -> str:
    return f"{split.name}_{len(split.shards):05d}.bin"
