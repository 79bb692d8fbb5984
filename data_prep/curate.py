"""The curated corpus: ingest -> clean -> filter -> dedup -> PII -> decontaminate -> mixture -> split, per chunk.

The main process reads the sources into chunks of about `data.chunk_mb` and hands them to the pool; a worker runs
every per-document stage of a chunk in one go and, when the tokenizer is already known, encodes the result too,
so each document is decoded, cleaned and tokenized while it is in memory once. Deduplication needs every earlier
document, so with dedup on the chunk work is cut in two around a pass over the fingerprints in corpus order.

Each chunk's result file marks it done: a crashed run reads the sources again but redoes no finished chunk.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from data_prep.chunks import (ChunkPool, Counts, load_npz, read_json, read_records, save_npz, show_rate, stage_bar,
                              worker_cached, write_json, write_records)
from data_prep.clean import BoilerplateDetector, BoilerplateLines, CleanStats, clean_text
from data_prep.decontaminate import DecontaminateStats, Decontaminator
from data_prep.dedup import DedupStats, Deduplicator, Fingerprint, fingerprint
from data_prep.filters import FilterStats, filter_document
from data_prep.pack import STREAM, encode_texts, split_of
from data_prep.pii import PiiStats, redact_pii
from data_prep.plan import Plan
from data_prep.sources import SourceStats, iter_documents, mixture_copies, source_name
from slmkit.atomic import atomic_path, remove_temporaries
from slmkit.data import token_dtype
from slmkit.data_config import DataConfig
from slmkit.errors import SlmkitError

CORPUS_DIR = "curated"
CORPUS_DONE = "corpus.json"
# The corpus summary (and the report) counts documents and characters per source after each of these, in order;
# a chunk result's "counts" holds the stages its task ran, under these names.
STAGES = ("ingest", "clean", "filter", "dedup", "pii", "decontaminate", "final")
# document lengths in characters, on a log scale from 1 to 100M (8 bins per decade)
LENGTH_BINS = np.logspace(0, 8, 65)
# Python holds a chunk's text more than once while a worker processes it (decoded records, cleaned copies, output)
CHUNK_MEMORY_FACTOR = 4


@dataclass(frozen=True)
class TokenSpec:
    """The tokenizer a chunk is encoded with, and where its tokens go."""

    path: str
    eos_id: int
    vocab_size: int
    folder: str  # work/tokens-<tokenizer sha>: tokens of another tokenizer never mix in

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)


@dataclass(frozen=True)
class ChunkJob:
    """What a chunk task needs besides its own documents; sent with every task (small next to a chunk's text)."""

    data: DataConfig
    work: str
    eval_files: tuple[str, ...] = ()
    boilerplate: Optional[BoilerplateLines] = None
    tokens: Optional[TokenSpec] = None


def length_histogram(lengths: Iterable[int]) -> np.ndarray:
    values = np.fromiter(lengths, dtype=np.float64)
    return np.histogram(np.clip(values, 1, LENGTH_BINS[-1]), bins=LENGTH_BINS)[0].astype(np.int64)


def worker_count(data: DataConfig) -> int:
    return data.num_workers if data.num_workers > 0 else (os.cpu_count() or 1)


def chunk_chars(data: DataConfig) -> int:
    """Characters per chunk: data.chunk_mb, shrunk so that the reader's chunk plus one in a worker fit the memory limit."""
    return max(1, int(min(data.chunk_mb, data.memory_limit_mb / (2 * CHUNK_MEMORY_FACTOR)) * 1e6))


def chunks_in_flight(data: DataConfig) -> int:
    """Chunks in workers at once: one per worker, fewer when the memory limit (minus the reader's chunk) is short."""
    fits = int(data.memory_limit_mb * 1e6 // (CHUNK_MEMORY_FACTOR * chunk_chars(data))) - 1
    return max(1, min(worker_count(data), fits))


def deduplicates(data: DataConfig) -> bool:
    return data.dedup.exact or data.dedup.near


def corpus_splits(data: DataConfig) -> tuple[str, ...]:
    return (STREAM,) if data.split == "tail" else ("train", "val")


# ---- stage 1: ingest (this process) --------------------------------------------------------------------------

class Ingest:
    """Reads every source in order and cuts the documents into chunks of about chunk_chars characters.

    Chunks hold the same documents on every pass, so a resumed run (or the boilerplate count before cleaning)
    reads them again instead of keeping a copy on disk. `done(index)` says which chunks need no records.
    """

    def __init__(self, data: DataConfig, root: Path, bar: tqdm):
        self.data = data
        self.root = root
        self.bar = bar
        self.summary: dict[str, Any] = {}
        self.buffered = 0  # characters of the chunk being filled, for the memory bound's accounting

    def chunks(self, done: Any = lambda index: False) -> Iterator[tuple[int, Optional[list[dict[str, Any]]]]]:
        """(index, records) per chunk; records is None for a chunk `done` says is finished."""
        limit = chunk_chars(self.data)
        records: list[dict[str, Any]] = []
        lengths: list[int] = []
        index = documents = characters = 0
        sources, histogram = [], np.zeros(len(LENGTH_BINS) - 1, dtype=np.int64)
        self.bar.reset()
        for source in self.data.sources:
            stats = SourceStats(source_name(source))
            for document in iter_documents(source, self.root, self.data.on_error, stats):
                records.append({"id": document.doc_id, "source": document.source, "text": document.text})
                lengths.append(len(document.text))
                self.buffered += len(document.text)
                documents += 1
                characters += len(document.text)
                self.bar.update(1)
                if self.buffered >= limit:
                    histogram += length_histogram(lengths)
                    chunk, records, lengths, self.buffered = records, [], [], 0  # the chunk is the workers' now
                    yield index, (None if done(index) else chunk)
                    index += 1
            sources.append({**stats.as_dict(), "path": source.path or source.hf_dataset, "weight": source.weight})
        if records:
            histogram += length_histogram(lengths)
            self.buffered = 0
            yield index, (None if done(index) else records)
            index += 1
        self.summary = {"chunks": index, "documents": documents, "characters": characters, "sources": sources,
                        "histogram": histogram.tolist()}


class MemoryAccount:
    """Characters of document text buffered at once: the reader's partial chunk plus the chunks handed to workers."""

    def __init__(self, ingest: Ingest):
        self.ingest = ingest
        self.sizes: dict[int, int] = {}
        self.peak = 0

    def handed_out(self, tasks: Iterable[tuple[Any, int, Any]]) -> Iterator[tuple[Any, int, Any]]:
        for task in tasks:
            _, index, records = task
            self.sizes[index] = sum(len(record["text"]) for record in records or ())
            self.peak = max(self.peak, sum(self.sizes.values()) + self.ingest.buffered)
            yield task

    def returned(self, index: int) -> int:
        """Forgets a finished chunk; returns its characters."""
        return self.sizes.pop(index, 0)


# ---- stage 2: every per-document step of a chunk (workers) ---------------------------------------------------

def count_boilerplate(task: tuple[ChunkJob, int, list[dict[str, Any]]]) -> BoilerplateDetector:
    job, _, records = task
    detector = BoilerplateDetector(job.data.clean)
    for record in records:
        detector.add(record["text"])
    return detector


def chunk_file(job: ChunkJob, stage: str, index: int, suffix: str) -> Path:
    return Path(job.work) / stage / f"chunk_{index:05d}{suffix}"


def curate_chunk(task: tuple[ChunkJob, int, Optional[list[dict[str, Any]]]]) -> dict[str, Any]:
    """Cleans and filters one chunk; then, without dedup, finishes it too (see `finish_records`).

    With dedup the kept documents and their fingerprints are written for the dedup pass instead.
    """
    job, index, records = task
    data = job.data
    done = chunk_file(job, "curate", index, ".json")
    if done.is_file():
        return read_json(done)
    clean_stats = CleanStats(max_examples=data.clean.max_examples)
    filter_stats = FilterStats(max_examples=data.filter.max_examples)
    cleaned, kept_counts = Counts(), Counts()
    # CPU time of this worker per stage: wall time would also count the time spent waiting for a core
    seconds = {"clean": 0.0, "filter": 0.0, "dedup": 0.0}
    kept, exact, signatures = [], [], []
    for record in records:
        start = time.process_time()
        text = clean_text(record["text"], data.clean, job.boilerplate, clean_stats)
        middle = time.process_time()
        reason = filter_document(text, data.filter) if text else "empty_after_cleaning"
        filter_stats.record(text, reason)
        end = time.process_time()
        seconds["clean"] += middle - start
        seconds["filter"] += end - middle
        cleaned.add(record["source"], len(text))
        if reason is not None:
            continue
        kept_counts.add(record["source"], len(text))
        kept.append({**record, "text": text})
        if deduplicates(data):
            fp = fingerprint(text, data.dedup)
            exact.append(np.frombuffer(fp.exact, dtype=np.uint8))
            signatures.append(fp.signature if fp.signature is not None else np.zeros(data.dedup.num_perm, np.uint32))
            seconds["dedup"] += time.process_time() - end
    result = {"clean": dataclasses.asdict(clean_stats), "filter": dataclasses.asdict(filter_stats),
              "counts": {"clean": cleaned.data, "filter": kept_counts.data}, "seconds": seconds,
              "documents": len(kept), "characters": sum(len(r["text"]) for r in kept)}
    if deduplicates(data):
        write_records(chunk_file(job, "curate", index, ".jsonl.gz"), kept)
        save_npz(chunk_file(job, "curate", index, ".npz"),
                 exact=np.array(exact, dtype=np.uint8).reshape(len(kept), 16),
                 signatures=np.array(signatures, dtype=np.uint32).reshape(len(kept), data.dedup.num_perm),
                 has_signature=np.array([bool(s.any()) for s in signatures], dtype=bool))
    else:
        result["final"] = finish_records(job, index, kept)
    write_json(done, result)
    return result


def finish_chunk(task: tuple[ChunkJob, int, list[int]]) -> dict[str, Any]:
    """After dedup: drops one chunk's duplicates, then finishes it (see `finish_records`)."""
    job, index, dropped = task
    done = chunk_file(job, "final", index, ".json")
    if done.is_file():
        return read_json(done)
    skip = set(dropped)
    records = [r for row, r in enumerate(read_records(chunk_file(job, "curate", index, ".jsonl.gz"))) if row not in skip]
    return finish_records(job, index, records)


def decontaminator_of(job: ChunkJob) -> Optional[Decontaminator]:
    config = dataclasses.replace(job.data.decontaminate, eval_files=list(job.eval_files))
    return worker_cached(("decontaminator", repr(config)), lambda: Decontaminator.from_config(config))


def finish_records(job: ChunkJob, index: int, records: list[dict[str, Any]]) -> dict[str, Any]:
    """PII redaction, decontamination, mixture weights and the split of one chunk's documents; writes each split's
    part of the curated corpus and, when the job names a tokenizer, its tokens. The result file marks it done."""
    data = job.data
    pii_stats = PiiStats(max_examples=data.pii.max_examples)
    decon_stats = DecontaminateStats(max_examples=data.decontaminate.max_examples)
    decontaminator = decontaminator_of(job)
    weights = {source_name(source): source.weight for source in data.sources}
    after_pii, after_decon, final = Counts(), Counts(), Counts()
    seconds = {"pii": 0.0, "decontaminate": 0.0}
    outputs: dict[str, list[dict[str, Any]]] = {}
    lengths: list[int] = []
    for record in records:
        start = time.process_time()
        text = redact_pii(record["text"], data.pii, pii_stats)
        middle = time.process_time()
        keep = decontaminator is None or decontaminator.keep(text, decon_stats)
        seconds["pii"] += middle - start
        seconds["decontaminate"] += time.process_time() - middle
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
    start = time.process_time()
    for split, kept in outputs.items():
        write_records(chunk_file(job, "final", index, f".{split}.jsonl.gz"), kept)
    seconds["write"] = time.process_time() - start
    result = {"pii": dataclasses.asdict(pii_stats), "decontaminate": dataclasses.asdict(decon_stats),
              "counts": {"pii": after_pii.data, "decontaminate": after_decon.data, "final": final.data},
              "splits": {split: len(kept) for split, kept in outputs.items()},
              "histogram": length_histogram(lengths).tolist(), "seconds": seconds}
    if job.tokens is not None:
        encode_chunk(job.tokens, index, outputs)
    write_json(chunk_file(job, "final", index, ".json"), result)
    return result


# ---- tokens of a chunk (workers) -----------------------------------------------------------------------------

def token_files(spec: TokenSpec, index: int) -> tuple[Path, Path]:
    folder = Path(spec.folder)
    return folder / f"chunk_{index:05d}.npz", folder / f"chunk_{index:05d}.json"


def encode_chunk(spec: TokenSpec, index: int, splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Encodes one chunk's documents per split into {split}_tokens / {split}_lengths arrays; the JSON marks it done."""
    from tokenizers import Tokenizer

    start = time.process_time()
    tokenizer = worker_cached(("tokenizer", spec.path), lambda: Tokenizer.from_file(spec.path))
    arrays: dict[str, np.ndarray] = {}
    source_tokens: dict[str, int] = collections.defaultdict(int)
    for split, records in splits.items():
        tokens, lengths = encode_texts(tokenizer, [r["text"] for r in records], spec.eos_id, spec.dtype)
        arrays[f"{split}_tokens"], arrays[f"{split}_lengths"] = tokens, lengths
        for record, length in zip(records, lengths.tolist()):
            source_tokens[record["source"]] += length
    npz, done = token_files(spec, index)
    save_npz(npz, **arrays)
    result = {"source_tokens": dict(source_tokens), "splits": sorted(splits), "seconds": time.process_time() - start}
    write_json(done, result)
    return result


def tokenize_part(task: tuple[TokenSpec, int, dict[str, str]]) -> dict[str, Any]:
    """Encodes one chunk of the finished corpus, read back from its curated parts (split -> file)."""
    spec, index, parts = task
    _, done = token_files(spec, index)
    if done.is_file():
        return read_json(done)
    return encode_chunk(spec, index, {split: list(read_records(Path(path))) for split, path in parts.items()})


# ---- stage 3: dedup (this process, corpus order) -------------------------------------------------------------

def deduplicate(data: DataConfig, work: Path, chunks: int, progress: bool) -> dict[str, Any]:
    """Keeps the first document of every exact or near-duplicate cluster across all sources; resumable as a whole."""
    done = work / "dedup.json"
    if done.is_file():
        return read_json(done)
    start = time.perf_counter()
    drops: dict[str, list[int]] = {}
    kept = Counts()
    deduplicator = Deduplicator(data.dedup)
    bar = stage_bar(progress, "dedup")
    for index in range(chunks):
        arrays = load_npz(work / "curate" / f"chunk_{index:05d}.npz")
        for row, record in enumerate(read_records(work / "curate" / f"chunk_{index:05d}.jsonl.gz")):
            # copies: a row kept as a view would pin the whole chunk's array in the index
            signature = arrays["signatures"][row].copy() if arrays["has_signature"][row] else None
            fp = Fingerprint(exact=arrays["exact"][row].tobytes(), signature=signature, characters=len(record["text"]))
            if deduplicator.check_fingerprint(record["id"], fp, record["text"]).keep:
                kept.add(record["source"], len(record["text"]))
            else:
                drops.setdefault(str(index), []).append(row)
            bar.update(1)
    bar.close()
    result = {"drops": drops, "stats": dedup_stats(deduplicator.stats), "counts": kept.data,
              "seconds": time.perf_counter() - start}
    write_json(done, result)
    return result


def dedup_stats(stats: DedupStats) -> dict[str, Any]:
    """The report's view of the dedup statistics: cluster count and the largest clusters instead of all of them."""
    summary = dataclasses.asdict(stats)
    clusters = sorted(summary.pop("clusters").items(), key=lambda item: (-len(item[1]), item[0]))
    summary["clusters"] = len(clusters)
    summary["largest_clusters"] = [{"kept": first, "size": len(dups) + 1, "dropped": dups[:5]} for first, dups in clusters[:10]]
    return summary


def no_dedup(data: DataConfig) -> dict[str, Any]:
    stats = dataclasses.asdict(DedupStats(max_examples=data.dedup.max_examples))
    stats.pop("clusters")
    return {"drops": {}, "stats": {**stats, "clusters": 0, "largest_clusters": []}, "counts": None, "seconds": 0.0}


# ---- the whole corpus ----------------------------------------------------------------------------------------

def corpus_is_complete(folder: Path, corpus_sha256: str) -> Optional[dict[str, Any]]:
    """The summary of the curated corpus in `folder` when it was built from these inputs and its parts exist."""
    done = folder / CORPUS_DONE
    if not done.is_file():
        return None
    summary = read_json(done)
    if summary.get("corpus_sha256") != corpus_sha256:
        return None
    if not all((folder / name).is_file() for parts in summary["parts"] for name in parts.values()):
        return None
    return summary


def build_corpus(data: DataConfig, plan: Plan, pool: ChunkPool, tokens: Optional[TokenSpec], progress: bool) -> dict[str, Any]:
    """Curates the corpus into `curated/` (one gzip JSON-lines part per chunk and split) and returns its summary.

    With `tokens`, chunks are encoded on the way. Intermediate chunk files stay in the plan's work folder until the
    run is done, so a crash at any point resumes at the last finished chunk.
    """
    folder = plan.folder / CORPUS_DIR
    summary = corpus_is_complete(folder, plan.corpus_sha256)
    if summary is not None:
        return summary
    job = ChunkJob(data=data, work=str(plan.work), eval_files=tuple(plan.eval_files), tokens=tokens)
    timings: dict[str, float] = {}
    first = _curate_chunks(job, plan.root, pool, progress, timings)
    if deduplicates(data):
        dedup, finals = _finish_chunks(first.job, plan, pool, len(first.curated), progress, timings)
    else:
        dedup, finals = no_dedup(data), [result["final"] for result in first.curated]

    def summarize(split_documents: dict[str, int], parts: list[dict[str, str]]) -> dict[str, Any]:
        summary = corpus_summary(data, plan.corpus_sha256, first.ingest.summary, first.curated, dedup, finals,
                                 split_documents)
        summary.update(timings=timings, boilerplate=first.boilerplate_report, chunks=len(first.curated), parts=parts,
                       workers=worker_count(data), peak_buffered_chars=first.memory.peak,
                       memory_limit_chars=int(data.memory_limit_mb * 1e6))
        return summary

    return _write_corpus(folder, first.job, finals, summarize)


@dataclass
class CuratedChunks:
    """The first phase's outcome: the job (with the corpus's boilerplate lines), the reader (its summary of the
    sources), the boilerplate report, each chunk's result, and the account of memory held."""

    job: ChunkJob
    ingest: Ingest
    boilerplate_report: list[Any]
    curated: list[dict[str, Any]]
    memory: MemoryAccount


def _curate_chunks(job: ChunkJob, root: Path, pool: ChunkPool, progress: bool,
                   timings: dict[str, float]) -> CuratedChunks:
    """The first phase over every chunk: read, clean, filter, then fingerprint (deduplicating corpora) or split (and
    tokenize)."""
    data, tokens = job.data, job.tokens
    # the steps each phase runs name its progress bar and its timing
    first_phase = ["read", "clean", "filter"]
    first_phase += ["fingerprint"] if deduplicates(data) else ["split"] + (["tokenize"] if tokens else [])
    start = time.perf_counter()
    read_bar = stage_bar(progress, " + ".join(first_phase))
    ingest = Ingest(data, root, read_bar)
    boilerplate_report: list[Any] = []
    if data.clean.enabled and data.clean.boilerplate:
        # boilerplate lines are known only after counting the whole corpus: a first reading pass counts them
        detector = BoilerplateDetector(data.clean)
        for part in pool.map(count_boilerplate, ((job, i, records) for i, records in ingest.chunks())):
            detector.merge(part)
        job = dataclasses.replace(job, boilerplate=detector.boilerplate())
        boilerplate_report = detector.report()
    memory = MemoryAccount(ingest)
    curated: list[dict[str, Any]] = []
    processed = 0
    try:
        tasks = ((job, index, records) for index, records in
                 ingest.chunks(done=lambda index: chunk_file(job, "curate", index, ".json").is_file()))
        for result in pool.map(curate_chunk, memory.handed_out(tasks)):
            # the rate of finished chunks: reading runs ahead of the workers by the chunks in flight
            processed += memory.returned(len(curated))
            show_rate(read_bar, processed)
            curated.append(result)
    finally:
        read_bar.close()
    timings["+".join(first_phase)] = time.perf_counter() - start
    return CuratedChunks(job, ingest, boilerplate_report, curated, memory)


def _finish_chunks(job: ChunkJob, plan: Plan, pool: ChunkPool, chunks: int, progress: bool,
                   timings: dict[str, float]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A deduplicating corpus's second phase: the dedup index over every chunk's fingerprints, then each chunk's
    duplicates dropped, personal data redacted, eval text removed, and the rest split (and tokenized)."""
    start = time.perf_counter()
    dedup = deduplicate(job.data, plan.work, chunks, progress)
    timings["dedup index"] = time.perf_counter() - start
    start = time.perf_counter()
    finals = []
    last_phase = ["pii", "decontaminate", "split"] + (["tokenize"] if job.tokens else [])
    final_bar = stage_bar(progress, " + ".join(last_phase), total=chunks, unit="chunk")
    try:
        tasks = ((job, i, dedup["drops"].get(str(i), [])) for i in range(chunks))
        for result in pool.map(finish_chunk, tasks):
            finals.append(result)
            final_bar.update(1)
    finally:
        final_bar.close()
    timings["+".join(last_phase)] = time.perf_counter() - start
    return dedup, finals


def _write_corpus(folder: Path, job: ChunkJob, finals: list[dict[str, Any]],
                  summarize: Callable[[dict[str, int], list[dict[str, str]]], dict[str, Any]]) -> dict[str, Any]:
    """Links the finished parts into a new folder that replaces `folder` whole, in one step (slmkit.atomic): the
    folder never mixes two corpora and is never missing, and the chunk files stay in work/ until the run is done, so
    a crash here loses nothing. Refuses a corpus left empty."""
    remove_temporaries(folder.parent, of=[folder.name])
    with atomic_path(folder) as partial:
        partial.mkdir()
        parts: list[dict[str, str]] = []
        split_documents = {split: 0 for split in corpus_splits(job.data)}
        for index, result in enumerate(finals):
            parts.append({})
            for split, count in sorted(result["splits"].items()):
                name = f"{split}-{index:05d}.jsonl.gz"
                link_or_copy(chunk_file(job, "final", index, f".{split}.jsonl.gz"), partial / name)
                parts[-1][split] = name
                split_documents[split] += count
        summary = summarize(split_documents, parts)
        if sum(split_documents.values()) == 0:
            raise SlmkitError(empty_corpus_message(summary))
        write_json(partial / CORPUS_DONE, summary)
    return summary


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def merge_stats(cls: type, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Merges the stats dataclass dicts of all chunks, in chunk order (so kept examples are the same every run)."""
    total = cls(max_examples=items[0]["max_examples"]) if items else cls()
    for item in items:
        total.merge(cls(**item))
    return dataclasses.asdict(total)


def corpus_summary(
    data: DataConfig, corpus_sha256: str, ingest: dict[str, Any], curated: list[dict[str, Any]], dedup: dict[str, Any],
    finals: list[dict[str, Any]], split_documents: dict[str, int],
) -> dict[str, Any]:
    """Documents and characters per source after every stage, with each stage's own statistics."""
    stages: dict[str, Counts] = {name: Counts() for name in STAGES}
    stages["ingest"] = Counts({s["name"]: [s["documents"], s["characters"]] for s in ingest["sources"]})
    for result in curated + finals:
        for name, counts in result["counts"].items():
            stages[name].merge(counts)
    stages["dedup"] = Counts(dedup["counts"] if dedup["counts"] is not None else
                             {k: list(v) for k, v in stages["filter"].data.items()})
    seconds: dict[str, float] = collections.defaultdict(float)
    for result in curated + finals:
        for name, value in result["seconds"].items():
            seconds[name] += value
    histogram = np.sum([r["histogram"] for r in finals], axis=0).tolist() if finals else []
    sources = []
    for entry in ingest["sources"]:
        name = entry["name"]
        per_stage = {stage: stages[stage].data.get(name, [0, 0]) for stage in STAGES}
        sources.append({**entry, "stages": per_stage, "documents_used": per_stage["final"][0]})
    return {
        "corpus_sha256": corpus_sha256,
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


def corpus_records(folder: Path, summary: dict[str, Any], split: str) -> Iterator[dict[str, Any]]:
    """Every curated document of one split, in corpus order."""
    for parts in summary["parts"]:
        if split in parts:
            yield from read_records(folder / CORPUS_DIR / parts[split])
