"""The work of each datatrove task, in slmkit's terms: which inputs a task owns, and what it writes for them.

Nothing here depends on a rank beyond choosing which units a task runs: every unit (one input file, or one whole
source when it must be read in one go) and every piece of it is named by its position in the corpus, and the stages
that merge (dedup clustering, the corpus, the tokenizer, the shards) read them back in that order. So the bytes
written are the one-machine pool's, whatever the task count. No datatrove import: the steps wrap these functions.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from data_prep.chunks import Counts, load_npz, read_json, read_records, save_npz, write_json
from data_prep.clean import BoilerplateDetector
from data_prep.curate import (CORPUS_DIR, CORPUS_DONE, ChunkJob, chunk_chars, chunk_file, corpus_splits,
                              corpus_summary, curate_chunk, dedup_stats, deduplicates, empty_corpus_message,
                              finish_chunk, length_histogram, link_or_copy, no_dedup, tokenize_part)
from data_prep.dedup import Deduplicator, Fingerprint
from data_prep.plan import Plan
from data_prep.remote import source_file
from data_prep.sources import SourceStats, iter_documents, iter_file_documents, resolve_source_files, source_name
from slmkit.atomic import atomic_path
from slmkit.data_config import DataConfig, DedupConfig
from slmkit.errors import SlmkitError

UNITS = "units.json"


@dataclass(frozen=True)
class Unit:
    """What one task reads in one go: a file of a path source, or a whole source (a Hub dataset, or a source with
    max_documents, which counts across files)."""

    source: int  # index in data.sources
    path: str = ""  # "" for a whole source
    relpath: str = ""


def list_units(data: DataConfig, root: Path) -> list[Unit]:
    units = []
    for index, source in enumerate(data.sources):
        if source.hf_dataset or source.max_documents is not None:
            units.append(Unit(index))
        else:
            units += [Unit(index, str(path), relpath) for path, relpath in resolve_source_files(source, root)]
    return units


def owned(count: int, rank: int, world_size: int) -> range:
    """The items a task runs: every world_size-th, so tasks get similar shares of a corpus in source order."""
    return range(rank, count, world_size)


class Layout:
    """Where a run's per-unit and per-piece files live under the plan's work folder."""

    def __init__(self, plan: Plan, data: DataConfig):
        self.plan = plan
        self.data = data
        self.root = Path(plan.work) / "keyed"
        self._units: list[Unit] | None = None

    def units(self) -> list[Unit]:
        """The run's inputs as listed when it started (a task never lists them again: they might have changed)."""
        if self._units is None:
            self._units = [Unit(**unit) for unit in read_json(self.root / UNITS)]
        return self._units

    def write_units(self) -> list[Unit]:
        units = list_units(self.data, self.plan.root)
        write_json(self.root / UNITS, [dataclasses.asdict(unit) for unit in units])
        return units

    def job(self, unit: int, boilerplate: Any = None) -> ChunkJob:
        return ChunkJob(data=self.data, work=str(self.root / f"unit_{unit:06d}"), eval_files=tuple(self.plan.eval_files),
                        boilerplate=boilerplate)

    def unit_done(self, unit: int) -> Path:
        return self.root / f"unit_{unit:06d}" / "unit.json"

    def pieces(self) -> list[tuple[int, int]]:
        """(unit, piece) of every piece of the corpus, in corpus order (its position is the piece's global index)."""
        return [(u, p) for u in range(len(self.units())) for p in range(read_json(self.unit_done(u))["pieces"])]


def unit_documents(data: DataConfig, root: Path, unit: Unit, stats: SourceStats) -> Iterator[dict[str, Any]]:
    source = data.sources[unit.source]
    documents = (iter_file_documents(source, source_file(unit.path), unit.relpath, data.on_error, stats) if unit.path
                 else iter_documents(source, root, data.on_error, stats))
    for document in documents:
        yield {"id": document.doc_id, "source": document.source, "text": document.text}


def unit_pieces(data: DataConfig, root: Path, unit: Unit, stats: SourceStats) -> Iterator[list[dict[str, Any]]]:
    """The unit's documents cut into pieces of about data.chunk_mb, as the pool cuts its chunks."""
    limit, records, size = chunk_chars(data), [], 0
    for record in unit_documents(data, root, unit, stats):
        records.append(record)
        size += len(record["text"])
        if size >= limit:
            yield records
            records, size = [], 0
    if records:
        yield records


# ---- stage: count boilerplate lines ----------------------------------------------------------------------------

def count_unit(layout: Layout, unit: int) -> None:
    done = layout.root / "count" / f"unit_{unit:06d}.pkl"
    if done.is_file():
        return
    detector = BoilerplateDetector(layout.data.clean)
    stats = SourceStats("")
    for record in unit_documents(layout.data, layout.plan.root, layout.units()[unit], stats):
        detector.add(record["text"])
    with atomic_path(done) as tmp:
        tmp.write_bytes(pickle.dumps(detector))


def boilerplate_of(layout: Layout) -> tuple[Any, list[Any]]:
    """The boilerplate lines of the whole corpus (the counts of every unit merged in corpus order) and their report."""
    if not (layout.data.clean.enabled and layout.data.clean.boilerplate):
        return None, []
    detector = BoilerplateDetector(layout.data.clean)
    for unit in range(len(layout.units())):
        detector.merge(pickle.loads((layout.root / "count" / f"unit_{unit:06d}.pkl").read_bytes()))
    return detector.boilerplate(), detector.report()


# ---- stage: curate (clean, filter, fingerprint; without dedup also PII, decontaminate, split) -------------------

def curate_unit(layout: Layout, unit: int, boilerplate: Any) -> None:
    done = layout.unit_done(unit)
    if done.is_file():
        return
    data, spec = layout.data, layout.units()[unit]
    job = layout.job(unit, boilerplate)
    stats = SourceStats(source_name(data.sources[spec.source]))
    lengths: list[int] = []
    pieces = peak = 0
    for pieces, records in enumerate(unit_pieces(data, layout.plan.root, spec, stats), start=1):
        lengths += [len(record["text"]) for record in records]
        peak = max(peak, sum(len(record["text"]) for record in records))
        curate_chunk((job, pieces - 1, records))
    write_json(done, {"pieces": pieces, "stats": dataclasses.asdict(stats), "peak": peak,
                      "histogram": length_histogram(lengths).tolist()})


# ---- MinHash dedup: buckets, clustering (signatures come from curate, filtering is the finish stage) ------------

def bucket_layout(cfg: DedupConfig) -> tuple[int, int, int]:
    """(LSH bands, rows per band, buckets): one bucket per band, plus one for exact digests.

    The bands are datasketch's own choice for the threshold (the one-machine index uses the same), so a pair of
    documents shares a bucket key here exactly when the pool's index would return one for the other.
    """
    bands = rows = 0
    if cfg.near:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        bands, rows = lsh.b, lsh.r
    return bands, rows, bands + (1 if cfg.exact else 0)


def bucket_task_count(data: DataConfig) -> int:
    """Tasks of the bucket stage: data.bucket_tasks, which must be a multiple of the bucket count (0: one each)."""
    buckets = bucket_layout(data.dedup)[2]
    tasks = data.bucket_tasks or buckets
    if tasks % buckets:
        raise SlmkitError(
            f"data.bucket_tasks={data.bucket_tasks} cannot be used: the MinHash bucket stage has {buckets} buckets "
            f"({buckets - data.dedup.exact} LSH bands{' + exact digests' if data.dedup.exact else ''}) and each task "
            f"takes a slice of one; set it to a multiple of {buckets} (or 0 for one task per bucket)")
    return tasks


def bucket_keys(arrays: dict[str, np.ndarray], bucket: int, bands: int, rows: int) -> Iterator[tuple[int, bytes]]:
    """(row, key) of the documents of one piece that have a key in this bucket."""
    if bucket == bands:  # the exact-digest bucket
        for row, digest in enumerate(arrays["exact"]):
            yield row, digest.tobytes()
        return
    for row in np.flatnonzero(arrays["has_signature"]):
        yield int(row), arrays["signatures"][row, bucket * rows:(bucket + 1) * rows].tobytes()


def bucket_task(layout: Layout, rank: int, world_size: int) -> None:
    """One slice of one bucket: documents sharing a key in it are candidates; written as (piece, row) pairs."""
    done = layout.root / "buckets" / f"task_{rank:05d}.npz"
    if done.is_file():
        return
    bands, rows, buckets = bucket_layout(layout.data.dedup)
    bucket, part, parts = rank % buckets, rank // buckets, world_size // buckets
    first: dict[bytes, tuple[int, int]] = {}
    candidates: set[tuple[int, int]] = set()
    for index, (unit, piece) in enumerate(layout.pieces()):
        arrays = load_npz(chunk_file(layout.job(unit), "curate", piece, ".npz"))
        for row, key in bucket_keys(arrays, bucket, bands, rows):
            if zlib.crc32(key) % parts != part:
                continue
            seen = first.setdefault(key, (index, row))
            if seen != (index, row):
                candidates.update((seen, (index, row)))
    found = np.array(sorted(candidates), dtype=np.int64).reshape(-1, 2)
    save_npz(done, pieces=found[:, 0], rows=found[:, 1])


def cluster(layout: Layout, bucket_tasks: int) -> None:
    """The one-process stage: replays the pool's dedup index, in corpus order, over the candidates alone.

    A document that shares no bucket key with another is kept by the pool's index and never returned by it, so
    leaving it out changes no decision; memory grows with the duplicates, not with the corpus.
    """
    done = layout.root / "cluster.json"
    if done.is_file():
        return
    data = layout.data
    candidates: dict[int, set[int]] = {}
    for task in range(bucket_tasks):
        found = load_npz(layout.root / "buckets" / f"task_{task:05d}.npz")
        for piece, row in zip(found["pieces"].tolist(), found["rows"].tolist()):
            candidates.setdefault(piece, set()).add(row)
    deduplicator = Deduplicator(data.dedup)
    kept, drops = Counts(), {}
    for index, (unit, piece) in enumerate(layout.pieces()):
        job = layout.job(unit)
        result = read_json(chunk_file(job, "curate", piece, ".json"))
        kept.merge(result["counts"]["filter"])
        rows = candidates.get(index)
        if not rows:  # counted as checked and kept, as the pool's index counts them, without reading the piece
            deduplicator.stats.documents += result["documents"]
            deduplicator.stats.characters += result["characters"]
            continue
        arrays = load_npz(chunk_file(job, "curate", piece, ".npz"))
        for row, record in enumerate(read_records(chunk_file(job, "curate", piece, ".jsonl.gz"))):
            if row not in rows:
                deduplicator.stats.documents += 1
                deduplicator.stats.characters += len(record["text"])
                continue
            signature = arrays["signatures"][row].copy() if arrays["has_signature"][row] else None
            fp = Fingerprint(exact=arrays["exact"][row].tobytes(), signature=signature, characters=len(record["text"]))
            if not deduplicator.check_fingerprint(record["id"], fp, record["text"]).keep:
                drops.setdefault(str(index), []).append(row)
                kept.add(record["source"], -len(record["text"]), documents=-1)
    write_json(done, {"drops": drops, "stats": dedup_stats(deduplicator.stats), "counts": kept.data, "seconds": 0.0})


def finish_piece(layout: Layout, index: int, unit: int, piece: int) -> None:
    drops = read_json(layout.root / "cluster.json")["drops"].get(str(index), [])
    finish_chunk((layout.job(unit), piece, drops))


# ---- the corpus, then tokens -----------------------------------------------------------------------------------

def piece_results(layout: Layout) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(curate result, final result) of every piece, in corpus order."""
    curated, finals = [], []
    for unit, piece in layout.pieces():
        job = layout.job(unit)
        curated.append(read_json(chunk_file(job, "curate", piece, ".json")))
        finals.append(read_json(chunk_file(job, "final", piece, ".json")) if deduplicates(layout.data)
                      else curated[-1]["final"])
    return curated, finals


def ingest_summary(layout: Layout) -> dict[str, Any]:
    """What the pool's reader counts, merged from every unit in corpus order."""
    data = layout.data
    stats = {index: SourceStats(source_name(source)) for index, source in enumerate(data.sources)}
    histogram = np.zeros(len(length_histogram([])), dtype=np.int64)
    for index, unit in enumerate(layout.units()):
        done = read_json(layout.unit_done(index))
        stats[unit.source].merge(SourceStats(**done["stats"]))
        histogram += np.array(done["histogram"], dtype=np.int64)
    sources = [{**stats[i].as_dict(), "path": source.path or source.hf_dataset, "weight": source.weight}
               for i, source in enumerate(data.sources)]
    return {"documents": sum(s.documents for s in stats.values()), "characters": sum(s.characters for s in stats.values()),
            "sources": sources, "histogram": histogram.tolist()}


def build_keyed_corpus(layout: Layout, boilerplate_report: list[Any], tasks: int) -> dict[str, Any]:
    """Links every piece's final parts, in corpus order, into `curated/` with its summary, as the pool does."""
    plan, data = layout.plan, layout.data
    curated, finals = piece_results(layout)
    dedup = read_json(layout.root / "cluster.json") if deduplicates(data) else no_dedup(data)
    partial = Path(plan.folder) / f"{CORPUS_DIR}.partial"
    folder = Path(plan.folder) / CORPUS_DIR
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    parts: list[dict[str, str]] = []
    split_documents = {split: 0 for split in corpus_splits(data)}
    for index, ((unit, piece), result) in enumerate(zip(layout.pieces(), finals)):
        parts.append({})
        for split, count in sorted(result["splits"].items()):
            name = f"{split}-{index:05d}.jsonl.gz"
            link_or_copy(chunk_file(layout.job(unit), "final", piece, f".{split}.jsonl.gz"), partial / name)
            parts[-1][split] = name
            split_documents[split] += count
    summary = corpus_summary(data, plan.corpus_sha256, ingest_summary(layout), curated, dedup, finals, split_documents)
    peak = max((read_json(layout.unit_done(u))["peak"] for u in range(len(layout.units()))), default=0)
    summary.update(timings={}, boilerplate=boilerplate_report, chunks=len(curated), parts=parts, workers=tasks,
                   peak_buffered_chars=peak, memory_limit_chars=int(data.memory_limit_mb * 1e6))
    if sum(split_documents.values()) == 0:
        raise SlmkitError(empty_corpus_message(summary))
    write_json(partial / CORPUS_DONE, summary)
    replace_folder(partial, folder)
    return summary


def replace_folder(partial: Path, folder: Path) -> None:
    """The curated folder is replaced whole: it never mixes two corpora (a crash between leaves it absent)."""
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def tokenize_index(spec: Any, corpus: dict[str, Any], folder: Path, index: int) -> dict[str, Any]:
    parts = {split: str(folder / CORPUS_DIR / name) for split, name in corpus["parts"][index].items()}
    return tokenize_part((spec, index, parts))


def tokenized(spec: Any, corpus: dict[str, Any]) -> list[dict[str, Any]]:
    """Every chunk's token result, read back in corpus order (the tokenize stage wrote them)."""
    return [read_json(Path(spec.folder) / f"chunk_{index:05d}.json") for index in range(len(corpus["parts"]))]
