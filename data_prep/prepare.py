"""The data pipeline behind `slmkit data prepare` and `slmkit train`: ingest -> clean -> filter -> dedup -> PII ->
decontaminate -> split -> curated corpus -> tokenizer -> shards + manifest -> report.

Work goes in chunks over all cores, each chunk's result is a file written atomically, and every product is keyed by
a hash of its inputs: an unchanged recipe reuses everything, a crash resumes at the last finished chunk.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from data_prep.clean import BoilerplateDetector, BoilerplateLines, CleanStats, clean_text
from data_prep.config import DataConfig, TokenizerConfig
from data_prep.decontaminate import DecontaminateStats, Decontaminator
from data_prep.dedup import DedupStats, Deduplicator, Fingerprint, fingerprint
from data_prep.filters import FilterStats, filter_document
from data_prep.pack import FORMAT, STREAM, pack_documents, split_of, token_dtype, write_atomic, write_manifest
from data_prep.pii import PiiStats, redact_pii
from data_prep.report import LENGTH_BINS, length_histogram, write_report
from data_prep.sources import SourceStats, iter_documents, mixture_copies, resolve_data_root, resolve_source_files, source_name
from data_prep.tokenizer import eos_id, load_tokenizer, tokenizer_sha256, train_tokenizer
from slmkit.data import MANIFEST
from slmkit.errors import SlmkitError

# DataConfig fields that cannot change any output (where it goes, how fast), and those that only change packing
NO_EFFECT_FIELDS = ("prepared_dir", "num_workers")
PACK_ONLY_FIELDS = ("shard_tokens",)
HELDOUT_CHARS = 2_000_000  # held-out text for the tokenizer's bytes-per-token figure
ENCODE_BATCH_CHARS = 4_000_000  # characters per encode_batch call when memory allows
# Python holds a chunk's text more than once while a worker processes it (decoded records, cleaned copies, output)
CHUNK_MEMORY_FACTOR = 4
CORPUS_DIR = "curated"
CORPUS_DONE = "corpus.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_REPORT = "tokenizer_report.json"


@dataclass
class PreparedData:
    shards_dir: Path
    tokenizer_path: Path
    manifest: dict[str, Any]
    reused: bool
    report_path: Optional[Path] = None


@dataclass
class Plan:
    """Where a prepare run writes, and the hashes that decide what can be reused."""

    root: Path
    folder: Path
    fingerprints: list[dict[str, Any]]
    corpus_sha256: str
    tokenizer_key: str
    inputs_sha256: str

    @property
    def work(self) -> Path:
        """Intermediate chunk files of this corpus; kept so that a crashed run resumes instead of restarting."""
        return self.folder / "work" / self.corpus_sha256[:16]


def cache_root() -> Path:
    return Path(os.environ.get("SLMKIT_CACHE") or "~/.cache/slmkit").expanduser()


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def validate(data: DataConfig) -> None:
    if not data.sources:
        raise SlmkitError("data.sources is empty: list at least one source (path: or hf_dataset:) in the recipe's data section")
    if data.split not in ("hash", "tail"):
        raise SlmkitError(f"data.split={data.split!r} is not known; use hash (by document) or tail (end of the token stream)")
    if not 0.0 <= data.val_fraction < 1.0:
        raise SlmkitError(f"data.val_fraction={data.val_fraction} must be in [0, 1)")
    if data.on_error not in ("stop", "skip"):
        raise SlmkitError(f"data.on_error={data.on_error!r} is not known; use stop or skip")
    if data.shard_tokens < 1:
        raise SlmkitError(f"data.shard_tokens={data.shard_tokens} must be at least 1")
    if data.chunk_mb <= 0 or data.memory_limit_mb < 1:
        raise SlmkitError(f"data.chunk_mb ({data.chunk_mb}) must be positive and data.memory_limit_mb ({data.memory_limit_mb}) at least 1")
    names = [source_name(source) for source in data.sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SlmkitError(f"several data sources are named {', '.join(duplicates)}; give each a distinct `name`")
    for source in data.sources:
        if source.weight < 0:
            raise SlmkitError(f"source {source_name(source)!r} has weight {source.weight}; use 0 or more")


def file_print(path: Path) -> list[Any]:
    status = path.stat()
    return [str(path.resolve()), status.st_size, status.st_mtime_ns]


def eval_file_paths(data: DataConfig, root: Path) -> list[str]:
    """data.decontaminate.eval_files with relative entries resolved against data.root when they exist there."""
    resolved = []
    for entry in data.decontaminate.eval_files:
        path = Path(entry).expanduser()
        if not path.is_absolute() and not path.exists() and glob.glob(str(root / path), recursive=True):
            path = root / path
        resolved.append(str(path))
    return resolved


def fingerprint_sources(data: DataConfig, root: Path) -> list[dict[str, Any]]:
    """Each source's (and evaluation set's) files with size and modification time: a changed file changes the hash."""
    prints = []
    for source in data.sources:
        if source.hf_dataset:
            prints.append({"name": source_name(source), "hf": [source.hf_dataset, source.hf_config, source.hf_split]})
            continue
        prints.append({"name": source_name(source), "files": [file_print(p) for p, _ in resolve_source_files(source, root)]})
    for entry in eval_file_paths(data, root):
        path = Path(entry)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [
            Path(p) for p in sorted(glob.glob(entry, recursive=True)) if Path(p).is_file()]
        prints.append({"eval": entry, "files": [file_print(p) for p in files]})
    return prints


def make_plan(data: DataConfig, tokenizer: TokenizerConfig, out_dir: Optional[Path]) -> Plan:
    validate(data)
    root = resolve_data_root(data.root)
    fingerprints = fingerprint_sources(data, root)
    data_fields = {k: v for k, v in dataclasses.asdict(data).items() if k not in NO_EFFECT_FIELDS + PACK_ONLY_FIELDS}
    data_fields.pop("root")  # the resolved file paths in the fingerprints already say where the data is
    corpus_sha256 = sha256_json({"sources": fingerprints, "data": data_fields})
    tokenizer_fields = dataclasses.asdict(tokenizer)
    if tokenizer.path:
        tokenizer_fields["path"] = tokenizer_sha256(user_tokenizer_path(tokenizer))
    tokenizer_key = sha256_json({"corpus": corpus_sha256, "tokenizer": tokenizer_fields})
    pack_fields = {k: getattr(data, k) for k in PACK_ONLY_FIELDS}
    inputs_sha256 = sha256_json({"tokenizer": tokenizer_key, "pack": pack_fields, "format": FORMAT})
    if out_dir is not None:
        folder = Path(out_dir)
    elif data.prepared_dir:
        folder = Path(data.prepared_dir).expanduser()
    else:
        folder = cache_root() / "prepared" / inputs_sha256[:16]
    return Plan(root, folder, fingerprints, corpus_sha256, tokenizer_key, inputs_sha256)


def user_tokenizer_path(tokenizer: TokenizerConfig) -> Path:
    path = Path(tokenizer.path).expanduser()
    if not path.is_file():
        raise SlmkitError(f"tokenizer.path={tokenizer.path!r}: no such file; point it at a tokenizer.json or unset it to train one")
    return path


def reusable_manifest(plan: Plan) -> Optional[dict[str, Any]]:
    """The folder's manifest when it was written from exactly these inputs and its files are intact, else None."""
    path = plan.folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if manifest.get("inputs_sha256") != plan.inputs_sha256:
        return None
    tokenizer_path = plan.folder / TOKENIZER_FILE
    if not tokenizer_path.is_file() or tokenizer_sha256(tokenizer_path) != manifest.get("tokenizer_sha256"):
        return None
    itemsize = token_dtype(manifest["vocab_size"]).itemsize
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            file = plan.folder / shard["file"]
            if not file.is_file() or file.stat().st_size != shard["tokens"] * itemsize:
                return None
    return manifest


def worker_count(data: DataConfig) -> int:
    return data.num_workers if data.num_workers > 0 else (os.cpu_count() or 1)


def chunk_chars(data: DataConfig) -> int:
    """Characters per chunk: data.chunk_mb, shrunk so that the reader's chunk plus one in a worker fit the memory limit."""
    return max(1, int(min(data.chunk_mb, data.memory_limit_mb / (2 * CHUNK_MEMORY_FACTOR)) * 1e6))


def chunks_in_flight(data: DataConfig) -> int:
    """Chunks in workers at once: one per worker, fewer when the memory limit (minus the reader's chunk) is short."""
    fits = int(data.memory_limit_mb * 1e6 // (CHUNK_MEMORY_FACTOR * chunk_chars(data))) - 1
    return max(1, min(worker_count(data), fits))


# ---- chunk files and the pool that processes them -----------------------------------------------------------

def write_records(path: Path, records: Iterable[dict[str, Any]], level: int = 3) -> None:
    """Gzip JSON lines, atomically; mtime=0 and no name in the header make the bytes depend on the records only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0) as out:
        for record in records:
            out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    os.replace(tmp, path)


def read_corpus(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode("utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


_context: dict[str, Any] = {}  # what every chunk task of one stage needs; set once per worker process


def _set_context(context: dict[str, Any]) -> None:
    _context.clear()
    _context.update(context)


class ChunkPool:
    """Runs a function over chunk tasks in worker processes, results in task order, at most `in_flight` at once.

    Tasks are pulled from the iterator only when a slot frees, so the producer (e.g. reading sources) never runs
    more than `in_flight` chunks ahead. With one worker everything runs in this process.
    """

    def __init__(self, workers: int, in_flight: int, context: dict[str, Any]):
        self.in_flight = max(1, in_flight)
        self.pool = None
        if workers > 1:
            # spawn: forked children would inherit tokenizers' and numpy's thread pools in an unusable state
            self.pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_set_context, initargs=(context,))
        else:
            _set_context(context)

    def map(self, function: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        if self.pool is None:
            for task in tasks:
                yield function(task)
            return
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append(self.pool.apply_async(function, (task,)))
            if len(pending) >= self.in_flight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


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


# ---- stage 1: ingest (this process) --------------------------------------------------------------------------

class Ingest:
    """Reads every source in order into chunk files of about chunk_chars characters; resumable as a whole."""

    def __init__(self, data: DataConfig, plan: Plan, bar: tqdm):
        self.data = data
        self.plan = plan
        self.bar = bar
        self.folder = plan.work / "ingest"
        self.done = self.folder / "done.json"
        self.summary: dict[str, Any] = {}
        self.buffered = 0  # characters of the chunk being filled, for the memory bound's accounting
        self.chunk_sizes: list[int] = []

    def chunks(self) -> Iterator[int]:
        if self.done.is_file():
            self.summary = read_json(self.done)
            self.chunk_sizes = self.summary["chunk_chars"]
            self.bar.update(self.summary["documents"])
            yield from range(self.summary["chunks"])
            return
        limit = chunk_chars(self.data)
        records: list[dict[str, Any]] = []
        lengths: list[int] = []
        index = documents = characters = 0
        sources, histogram = [], np.zeros(len(LENGTH_BINS) - 1, dtype=np.int64)
        for source in self.data.sources:
            stats = SourceStats(source_name(source))
            for document in iter_documents(source, self.plan.root, self.data.on_error, stats):
                records.append({"id": document.doc_id, "source": document.source, "text": document.text})
                lengths.append(len(document.text))
                self.buffered += len(document.text)
                documents += 1
                characters += len(document.text)
                self.bar.update(1)
                show_rate(self.bar, characters)
                if self.buffered >= limit:
                    histogram += length_histogram(lengths)
                    yield self.flush(index, records)
                    records, lengths = [], []
                    index += 1
            sources.append({**stats.as_dict(), "path": source.path or source.hf_dataset, "weight": source.weight})
        if records:
            histogram += length_histogram(lengths)
            yield self.flush(index, records)
            index += 1
        self.summary = {"chunks": index, "documents": documents, "characters": characters, "sources": sources,
                        "histogram": histogram.tolist(), "chunk_chars": self.chunk_sizes}
        write_json(self.done, self.summary)

    def flush(self, index: int, records: list[dict[str, Any]]) -> int:
        write_records(self.folder / f"chunk_{index:05d}.jsonl.gz", records, level=1)
        self.chunk_sizes.append(self.buffered)
        self.buffered = 0
        return index


class MemoryAccount:
    """Characters of document text buffered at once: the reader's partial chunk plus the chunks handed to workers."""

    def __init__(self, ingest: Ingest):
        self.ingest = ingest
        self.in_workers = 0
        self.peak = 0

    def handed_out(self, tasks: Iterable[int]) -> Iterator[int]:
        for index in tasks:
            self.in_workers += self.ingest.chunk_sizes[index]
            self.peak = max(self.peak, self.in_workers + self.ingest.buffered)
            yield index

    def returned(self, index: int) -> None:
        self.in_workers -= self.ingest.chunk_sizes[index]


# ---- stage 2: clean, filter, fingerprint (workers, per chunk) ------------------------------------------------

def count_boilerplate(index: int) -> BoilerplateDetector:
    data: DataConfig = _context["data"]
    detector = BoilerplateDetector(data.clean)
    for record in read_corpus(Path(_context["work"]) / "ingest" / f"chunk_{index:05d}.jsonl.gz"):
        detector.add(record["text"])
    return detector


def curate_chunk(index: int) -> dict[str, Any]:
    """Cleans and filters one ingested chunk and fingerprints what is kept; the stats file marks it done."""
    work = Path(_context["work"])
    data: DataConfig = _context["data"]
    done = work / "curate" / f"chunk_{index:05d}.json"
    if done.is_file():
        return read_json(done)
    boilerplate: Optional[BoilerplateLines] = _context.get("boilerplate")
    clean_stats = CleanStats(max_examples=data.clean.max_examples)
    filter_stats = FilterStats(max_examples=data.filter.max_examples)
    cleaned, kept = Counts(), Counts()
    seconds = {"clean": 0.0, "filter": 0.0, "dedup": 0.0}
    records, exact, signatures, lengths = [], [], [], []
    deduplicate = data.dedup.exact or data.dedup.near
    for record in read_corpus(work / "ingest" / f"chunk_{index:05d}.jsonl.gz"):
        start = time.perf_counter()
        text = clean_text(record["text"], data.clean, boilerplate, clean_stats)
        middle = time.perf_counter()
        reason = filter_document(text, data.filter) if text else "empty_after_cleaning"
        filter_stats.record(text, reason)
        end = time.perf_counter()
        seconds["clean"] += middle - start
        seconds["filter"] += end - middle
        cleaned.add(record["source"], len(text))
        if reason is not None:
            continue
        kept.add(record["source"], len(text))
        records.append({**record, "text": text})
        lengths.append(len(text))
        if deduplicate:
            fp = fingerprint(text, data.dedup)
            exact.append(np.frombuffer(fp.exact, dtype=np.uint8))
            signatures.append(fp.signature if fp.signature is not None else np.zeros(data.dedup.num_perm, np.uint32))
            seconds["dedup"] += time.perf_counter() - end
    write_records(work / "curate" / f"chunk_{index:05d}.jsonl.gz", records, level=1)
    if deduplicate:
        has_signature = [bool(s.any()) for s in signatures]
        save_npz(work / "curate" / f"chunk_{index:05d}.npz",
                 exact=np.array(exact, dtype=np.uint8).reshape(len(records), 16),
                 signatures=np.array(signatures, dtype=np.uint32).reshape(len(records), data.dedup.num_perm),
                 has_signature=np.array(has_signature, dtype=bool))
    result = {"clean": dataclasses.asdict(clean_stats), "filter": dataclasses.asdict(filter_stats),
              "counts": {"clean": cleaned.data, "filter": kept.data}, "seconds": seconds,
              "documents": len(records), "characters": sum(lengths)}
    write_json(done, result)
    return result


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# ---- stage 3: dedup (this process, corpus order) -------------------------------------------------------------

def deduplicate(data: DataConfig, plan: Plan, chunks: int, progress: bool) -> dict[str, Any]:
    """Keeps the first document of every exact or near-duplicate cluster across all sources; resumable as a whole."""
    done = plan.work / "dedup.json"
    if done.is_file():
        return read_json(done)
    start = time.perf_counter()
    drops: dict[str, list[int]] = {}
    kept = Counts()
    stats: dict[str, Any] = dataclasses.asdict(DedupStats(max_examples=data.dedup.max_examples))
    if data.dedup.exact or data.dedup.near:
        deduplicator = Deduplicator(data.dedup)
        bar = stage_bar(progress, "dedup")
        for index in range(chunks):
            folder = plan.work / "curate"
            arrays = np.load(folder / f"chunk_{index:05d}.npz")
            for row, record in enumerate(read_corpus(folder / f"chunk_{index:05d}.jsonl.gz")):
                signature = arrays["signatures"][row] if arrays["has_signature"][row] else None
                fp = Fingerprint(exact=arrays["exact"][row].tobytes(), signature=signature, characters=len(record["text"]))
                if deduplicator.check_fingerprint(record["id"], fp, record["text"]).keep:
                    kept.add(record["source"], len(record["text"]))
                else:
                    drops.setdefault(str(index), []).append(row)
                bar.update(1)
        bar.close()
        stats = dataclasses.asdict(deduplicator.stats)
    clusters = sorted(stats.pop("clusters").items(), key=lambda item: (-len(item[1]), item[0]))
    stats["clusters"] = len(clusters)
    stats["largest_clusters"] = [{"kept": first, "size": len(dups) + 1, "dropped": dups[:5]} for first, dups in clusters[:10]]
    result = {"drops": drops, "stats": stats, "counts": kept.data, "seconds": time.perf_counter() - start}
    write_json(done, result)
    return result


# ---- stage 4: PII, decontamination, mixture weights, split (workers, per chunk) ------------------------------

def finalize_chunk(task: tuple[int, list[int]]) -> dict[str, Any]:
    """Applies dedup drops, PII redaction and decontamination to one chunk, then weights and splits it."""
    index, dropped = task
    work = Path(_context["work"])
    data: DataConfig = _context["data"]
    decontaminator: Optional[Decontaminator] = _context.get("decontaminator")
    done = work / "final" / f"chunk_{index:05d}.json"
    if done.is_file():
        return read_json(done)
    pii_stats = PiiStats(max_examples=data.pii.max_examples)
    decon_stats = DecontaminateStats(max_examples=data.decontaminate.max_examples)
    weights = {source_name(source): source.weight for source in data.sources}
    after_pii, after_decon, final = Counts(), Counts(), Counts()
    seconds = {"pii": 0.0, "decontaminate": 0.0}
    outputs: dict[str, list[dict[str, Any]]] = {}
    lengths: list[int] = []
    skip = set(dropped)
    for row, record in enumerate(read_corpus(work / "curate" / f"chunk_{index:05d}.jsonl.gz")):
        if row in skip:
            continue
        start = time.perf_counter()
        text = redact_pii(record["text"], data.pii, pii_stats)
        middle = time.perf_counter()
        keep = decontaminator is None or decontaminator.keep(text, decon_stats)
        seconds["pii"] += middle - start
        seconds["decontaminate"] += time.perf_counter() - middle
        after_pii.add(record["source"], len(text))
        if not keep:
            continue
        after_decon.add(record["source"], len(text))
        copies = mixture_copies(record["id"], weights[record["source"]], data.seed)
        split = STREAM if data.split == "tail" else split_of(record["id"], data.seed, data.val_fraction)
        for _ in range(copies):
            outputs.setdefault(split, []).append({**record, "text": text})
            final.add(record["source"], len(text))
            lengths.append(len(text))
    for split, records in outputs.items():
        write_records(work / "final" / f"chunk_{index:05d}.{split}.jsonl.gz", records)
    result = {"pii": dataclasses.asdict(pii_stats), "decontaminate": dataclasses.asdict(decon_stats),
              "counts": {"pii": after_pii.data, "decontaminate": after_decon.data, "final": final.data},
              "splits": {split: len(records) for split, records in outputs.items()},
              "histogram": length_histogram(lengths).tolist(), "seconds": seconds}
    write_json(done, result)
    return result


# ---- the curated corpus: all stages, then the chunks joined per split ----------------------------------------

def corpus_files(data: DataConfig) -> tuple[str, ...]:
    return (STREAM,) if data.split == "tail" else ("train", "val")


def merge_stats(cls: type, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Merges the stats dataclass dicts of all chunks, in chunk order (so kept examples are the same every run)."""
    total = cls(max_examples=items[0]["max_examples"]) if items else cls()
    for item in items:
        total.merge(cls(**item))
    return dataclasses.asdict(total)


def build_corpus(data: DataConfig, plan: Plan, progress: bool) -> dict[str, Any]:
    """Runs ingest -> clean -> filter -> dedup -> PII -> decontaminate -> split and writes curated/{split}.jsonl.gz."""
    folder = plan.folder / CORPUS_DIR
    done = folder / CORPUS_DONE
    if done.is_file():
        summary = read_json(done)
        if summary.get("corpus_sha256") == plan.corpus_sha256:
            return summary
    workers = worker_count(data)
    in_flight = chunks_in_flight(data)
    context = {"data": data, "work": str(plan.work)}
    timings: dict[str, float] = {}

    start = time.perf_counter()
    read_bar = stage_bar(progress, "read + clean + filter")
    ingest = Ingest(data, plan, read_bar)
    if data.clean.enabled and data.clean.boilerplate:
        # boilerplate lines are known only after counting the whole corpus, so reading finishes first
        chunk_list = list(ingest.chunks())
        pool = ChunkPool(workers, in_flight, context)
        detector = BoilerplateDetector(data.clean)
        for part in pool.map(count_boilerplate, chunk_list):
            detector.merge(part)
        pool.close()
        context["boilerplate"] = detector.boilerplate()
        boilerplate_report = detector.report()
        tasks: Iterable[int] = chunk_list
    else:
        boilerplate_report = []
        tasks = ingest.chunks()
    pool = ChunkPool(workers, in_flight, context)
    memory = MemoryAccount(ingest)
    curated = []
    try:
        for result in pool.map(curate_chunk, memory.handed_out(tasks)):
            memory.returned(len(curated))
            curated.append(result)
    finally:
        pool.close()
        read_bar.close()
    timings["read+clean+filter+fingerprint"] = time.perf_counter() - start

    start = time.perf_counter()
    dedup = deduplicate(data, plan, len(curated), progress)
    timings["dedup index"] = time.perf_counter() - start

    start = time.perf_counter()
    context["decontaminator"] = build_decontaminator(data, plan.root)
    pool = ChunkPool(workers, in_flight, context)
    finals = []
    final_bar = stage_bar(progress, "pii + decontaminate + split", total=len(curated), unit="chunk")
    try:
        for result in pool.map(finalize_chunk, ((i, dedup["drops"].get(str(i), [])) for i in range(len(curated)))):
            finals.append(result)
            final_bar.update(1)
    finally:
        pool.close()
        final_bar.close()
    timings["pii+decontaminate+split"] = time.perf_counter() - start

    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    split_documents = {}
    for split in corpus_files(data):
        parts = [plan.work / "final" / f"chunk_{i:05d}.{split}.jsonl.gz" for i, r in enumerate(finals) if r["splits"].get(split)]
        join_gzip(parts, folder / f"{split}.jsonl.gz")
        split_documents[split] = sum(r["splits"].get(split, 0) for r in finals)
    timings["write corpus"] = time.perf_counter() - start

    summary = corpus_summary(data, plan, ingest.summary, curated, dedup, finals, split_documents)
    summary.update(timings=timings, boilerplate=boilerplate_report, chunks=len(curated), workers=workers,
                   peak_buffered_chars=memory.peak, memory_limit_chars=int(data.memory_limit_mb * 1e6))
    if sum(split_documents.values()) == 0:
        raise SlmkitError(empty_corpus_message(summary))
    write_json(done, summary)
    shutil.rmtree(plan.work, ignore_errors=True)  # the corpus is complete: the chunk files are no longer needed
    return summary


def build_decontaminator(data: DataConfig, root: Path) -> Optional[Decontaminator]:
    config = dataclasses.replace(data.decontaminate, eval_files=eval_file_paths(data, root))
    return Decontaminator.from_config(config)


def join_gzip(parts: list[Path], target: Path) -> None:
    """Concatenates gzip files (a valid multi-member gzip) atomically; no parts gives an empty gzip file."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        if not parts:
            out.write(gzip.compress(b"", mtime=0))
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    os.replace(tmp, target)


def corpus_summary(
    data: DataConfig, plan: Plan, ingest: dict[str, Any], curated: list[dict[str, Any]], dedup: dict[str, Any],
    finals: list[dict[str, Any]], split_documents: dict[str, int],
) -> dict[str, Any]:
    """Documents and characters per source after every stage, with each stage's own statistics."""
    stages: dict[str, Counts] = {name: Counts() for name in ("clean", "filter", "dedup", "pii", "decontaminate", "final")}
    ingested = Counts({s["name"]: [s["documents"], s["characters"]] for s in ingest["sources"]})
    for result in curated:
        stages["clean"].merge(result["counts"]["clean"])
        stages["filter"].merge(result["counts"]["filter"])
    stages["dedup"] = Counts(dedup["counts"]) if (data.dedup.exact or data.dedup.near) else Counts(
        {k: list(v) for k, v in stages["filter"].data.items()})
    for result in finals:
        for name in ("pii", "decontaminate", "final"):
            stages[name].merge(result["counts"][name])
    seconds: dict[str, float] = collections.defaultdict(float)
    for result in curated + finals:
        for name, value in result["seconds"].items():
            seconds[name] += value
    histogram = np.sum([r["histogram"] for r in finals], axis=0).tolist() if finals else []
    sources = []
    for entry in ingest["sources"]:
        name = entry["name"]
        per_stage = {"ingest": ingested.data.get(name, [0, 0])}
        per_stage.update({stage: counts.data.get(name, [0, 0]) for stage, counts in stages.items()})
        sources.append({**entry, "stages": per_stage, "documents_used": per_stage["final"][0]})
    return {
        "corpus_sha256": plan.corpus_sha256,
        "sources": sources,
        "documents": split_documents,
        "characters": sum(c for _, c in stages["final"].data.values()),
        "clean": merge_stats(CleanStats, [r["clean"] for r in curated]),
        "filter": merge_stats(FilterStats, [r["filter"] for r in curated]),
        "dedup": dedup["stats"],
        "pii": merge_stats(PiiStats, [r["pii"] for r in finals]),
        "decontaminate": merge_stats(DecontaminateStats, [r["decontaminate"] for r in finals]),
        "histograms": {"ingest": ingest["histogram"], "final": histogram},
        "stage_cpu_seconds": dict(seconds),
    }


def empty_corpus_message(summary: dict[str, Any]) -> str:
    described = []
    for s in summary["sources"]:
        counts = s["stages"]
        described.append(
            f"{s['name']} ({s['path']}): {s['documents']} documents read, skipped {s['skipped'] or 'none'}, "
            f"{counts['filter'][0]} after filters, {counts['dedup'][0]} after dedup, {counts['final'][0]} used"
        )
    reasons = summary["filter"]["dropped_documents"]
    return (
        f"the corpus is empty: no documents are left ({'; '.join(described)}; filter drops: {reasons or 'none'}); "
        f"check each source's path and text_field, that the files hold text, and loosen data.filter "
        f"(or set data.filter.enabled=false) if it drops everything"
    )


def corpus_items(plan: Plan, data: DataConfig) -> Iterator[tuple[str, str, str]]:
    """(split, source, text) of every curated document, in corpus order, for packing."""
    for split in corpus_files(data):
        for record in read_corpus(plan.folder / CORPUS_DIR / f"{split}.jsonl.gz"):
            yield split, record["source"], record["text"]


# ---- the tokenizer -------------------------------------------------------------------------------------------

def tokenizer_texts(plan: Plan, data: DataConfig, corpus: dict[str, Any]) -> tuple[Iterable[str], list[str]]:
    """(training texts, held-out texts): the train split, or for a tail split the head of the stream."""
    folder = plan.folder / CORPUS_DIR
    if data.split == "hash":
        heldout = take_chars((r["text"] for r in read_corpus(folder / "val.jsonl.gz")), HELDOUT_CHARS)
        return (r["text"] for r in read_corpus(folder / "train.jsonl.gz")), heldout
    head = int(corpus["characters"] * (1 - data.val_fraction))

    def train_texts() -> Iterator[str]:
        left = head
        for record in read_corpus(folder / f"{STREAM}.jsonl.gz"):
            if left <= 0:
                return
            yield record["text"][:left]
            left -= len(record["text"])

    def tail_texts() -> Iterator[str]:
        seen = 0
        for record in read_corpus(folder / f"{STREAM}.jsonl.gz"):
            text = record["text"]
            if seen + len(text) > head:
                yield text[max(head - seen, 0):]
            seen += len(text)

    return train_texts(), take_chars(tail_texts(), HELDOUT_CHARS)


def take_chars(texts: Iterable[str], limit: int) -> list[str]:
    taken, size = [], 0
    for text in texts:
        if size >= limit:
            break
        taken.append(text[: limit - size])
        size += len(taken[-1])
    return taken


def ensure_tokenizer(
    plan: Plan, data: DataConfig, tokenizer: TokenizerConfig, corpus: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """The tokenizer for this corpus: the recipe's own file, a cached one trained on the same inputs, or a new one."""
    target = plan.folder / TOKENIZER_FILE
    if tokenizer.path:
        source = user_tokenizer_path(tokenizer)
        report = {"path": str(source), "sha256": tokenizer_sha256(source)}
    else:
        cached = cache_root() / "tokenizers" / plan.tokenizer_key[:16]
        source = cached / TOKENIZER_FILE
        report_path = cached / "report.json"
        if source.is_file() and report_path.is_file():
            report = read_json(report_path)
        else:
            texts, heldout = tokenizer_texts(plan, data, corpus)
            report = train_tokenizer(tokenizer, texts, source, heldout)
            write_json(report_path, report)
    eos_id(load_tokenizer(source), tokenizer.special_tokens)  # fail now, not after packing, when EOS is missing
    copy_atomic(source, target)
    return target, report


def copy_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


# ---- the pipeline --------------------------------------------------------------------------------------------

def clear_outputs(folder: Path) -> None:
    """Makes the folder incomplete (manifest first) and drops shards of an earlier run, keeping resumable work."""
    (folder / MANIFEST).unlink(missing_ok=True)
    for shard in folder.glob("*.bin"):
        shard.unlink()


def prepare(
    data: DataConfig, tokenizer: TokenizerConfig, out_dir: Optional[Path] = None, progress: bool = True
) -> PreparedData:
    """Curates the corpus, trains (or reuses) the tokenizer, packs token shards and writes the curation report.

    Reuses all of it when sources, config and tokenizer are unchanged; resumes a crashed run where it stopped.
    """
    plan = make_plan(data, tokenizer, out_dir)
    manifest = reusable_manifest(plan)
    if manifest is not None:
        report = plan.folder / "report" / "report.md"
        return PreparedData(plan.folder, plan.folder / TOKENIZER_FILE, manifest, True, report if report.is_file() else None)
    plan.folder.mkdir(parents=True, exist_ok=True)
    clear_outputs(plan.folder)
    corpus = build_corpus(data, plan, progress)
    start = time.perf_counter()
    tokenizer_path, tokenizer_report = ensure_tokenizer(plan, data, tokenizer, corpus)
    tokenizer_seconds = time.perf_counter() - start
    loaded = load_tokenizer(tokenizer_path)
    vocab_size = loaded.get_vocab_size()
    eos = eos_id(loaded, tokenizer.special_tokens)
    dtype = token_dtype(vocab_size)
    start = time.perf_counter()
    batch_chars = min(ENCODE_BATCH_CHARS, chunk_chars(data))
    bar = stage_bar(progress, "tokenize + pack", total=sum(corpus["documents"].values()))
    try:
        # a process pool pays off only when there are several batches to spread over it
        packed = pack_documents(
            corpus_items(plan, data), tokenizer_path, plan.folder, eos_id=eos, dtype=dtype,
            shard_tokens=data.shard_tokens, val_fraction=data.val_fraction, batch_chars=batch_chars,
            processes=min(worker_count(data), -(-corpus["characters"] // batch_chars)), progress=bar,
        )
    finally:
        bar.close()
    pack_seconds = time.perf_counter() - start
    total_tokens = sum(packed.source_tokens.values())
    sources = []
    for entry in corpus["sources"]:
        tokens = packed.source_tokens.get(entry["name"], 0)
        sources.append({
            key: entry[key] for key in ("name", "path", "weight", "files", "documents", "characters", "replaced_chars",
                                        "skipped", "errors", "documents_used")
        } | {"tokens": tokens, "share": round(tokens / total_tokens, 6) if total_tokens else 0.0})
    manifest = {
        "format": FORMAT,
        "dtype": dtype.name,
        "eos_id": eos,
        "vocab_size": vocab_size,
        "tokenizer_sha256": tokenizer_sha256(tokenizer_path),
        "inputs_sha256": plan.inputs_sha256,
        "sources": sources,
        "splits": {name: counts.as_dict() for name, counts in packed.splits.items()},
    }
    write_json(plan.folder / TOKENIZER_REPORT, tokenizer_report)
    timings = {**corpus["timings"], "tokenizer": tokenizer_seconds, "tokenize+pack": pack_seconds}
    report_path = write_report(plan.folder / "report", corpus, manifest, tokenizer_report, timings)
    write_manifest(plan.folder, manifest)
    return PreparedData(plan.folder, tokenizer_path, manifest, reused=False, report_path=report_path)


def train_recipe_tokenizer(data: DataConfig, tokenizer: TokenizerConfig, progress: bool = True) -> str:
    """`slmkit tokenizer train`: curates the corpus and trains (or reuses) the tokenizer, without packing shards."""
    plan = make_plan(data, tokenizer, None)
    plan.folder.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(data, plan, progress)
    path, report = ensure_tokenizer(plan, data, tokenizer, corpus)
    details = ", ".join(f"{key} {value}" for key, value in report.items() if key in ("kind", "vocab_size", "bytes_per_token"))
    return f"tokenizer: {path} ({details})"


def describe_status(data: DataConfig, tokenizer: TokenizerConfig) -> str:
    """One line for `slmkit train --dry-run`: are the shards for this recipe ready, and where."""
    try:
        plan = make_plan(data, tokenizer, None)
    except SlmkitError as error:
        return f"data: not ready: {error}"
    manifest = reusable_manifest(plan)
    if manifest is None:
        return f"data: not prepared yet; `slmkit data prepare` (or training) will write token shards to {plan.folder}"
    splits = ", ".join(f"{name} {split['tokens']:,} tokens" for name, split in manifest["splits"].items())
    return f"data: prepared at {plan.folder} ({splits}; vocabulary {manifest['vocab_size']:,})"
