"""The data pipeline behind `slmkit data prepare` and `slmkit train`: the curated corpus (see `curate`), the
tokenizer trained on it, token shards + manifest, and the curation report.

Every product is keyed by a hash of its inputs: an unchanged recipe reuses everything, and a crash resumes at the
last finished chunk. One pool of worker processes serves every stage of a run.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from data_prep.chunks import ChunkPool, load_npz, read_json, stage_bar, write_json
from data_prep.curate import (CORPUS_DIR, TokenSpec, build_corpus, chunks_in_flight, corpus_records, corpus_splits,
                              tokenize_part, worker_count)
from data_prep.pack import STREAM, ShardPacker, write_manifest
from data_prep.plan import Plan
from data_prep.remote import RemotePath
from data_prep.report import REPORT_MARKDOWN, write_report
from data_prep.sources import resolve_data_root, resolve_source_files, source_name
from data_prep.tokenizer import tokenizer_sha256, train_tokenizer
from data_prep.vocabulary import extend_tokenizer
from slmkit.atomic import atomic_copy, remove_temporaries
from slmkit.data import FORMAT, MANIFEST, PreparedData, cache_root, token_dtype
from slmkit.data_config import DataConfig, TokenizerConfig
from slmkit.errors import SlmkitError
from slmkit.options import check_values
from slmkit.tokenizer import TOKENIZER_FILE, end_of_document_id, load_tokenizer

# DataConfig fields that cannot change any output (where it goes, how fast), and those that only change packing
NO_EFFECT_FIELDS = ("prepared_dir", "num_workers", "engine", "executor", "tasks", "workers", "bucket_tasks", "nodes",
                    "node_rank", "slurm", "publish_to", "shards_from")
PACK_ONLY_FIELDS = ("shard_tokens",)
HELDOUT_CHARS = 2_000_000  # held-out text for the tokenizer's bytes-per-token figure
TOKENIZER_REPORT = "tokenizer_report.json"
REPORT_DIR = "report"


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def validate(data: DataConfig) -> None:
    """What a recipe's data section must satisfy beyond its types; also for a DataConfig built in Python."""
    check_values(data, prefix="data.")
    if not data.sources:
        raise SlmkitError("data.sources is empty: list at least one source (path: or hf_dataset:) in the recipe's data section")
    names = [source_name(source) for source in data.sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SlmkitError(f"several data sources are named {', '.join(duplicates)}; give each a distinct `name`")


def file_print(path: Path | RemotePath) -> list[Any]:
    if isinstance(path, RemotePath):
        return path.fingerprint()
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
    if not tokenizer.extends:  # keyed as before the extension existed: data prepared then is reused
        for key in ("extend", "extend_from"):
            tokenizer_fields.pop(key)
    elif tokenizer.extend_from:
        tokenizer_fields["extend_from"] = tokenizer_sha256(user_tokenizer_path(tokenizer, "extend_from"))
    tokenizer_key = sha256_json({"corpus": corpus_sha256, "tokenizer": tokenizer_fields})
    pack_fields = {k: getattr(data, k) for k in PACK_ONLY_FIELDS}
    inputs_sha256 = sha256_json({"tokenizer": tokenizer_key, "pack": pack_fields, "format": FORMAT})
    if out_dir is not None:
        folder = Path(out_dir)
    elif data.prepared_dir:
        folder = Path(data.prepared_dir).expanduser()
    else:
        folder = cache_root() / "prepared" / inputs_sha256[:16]
    return Plan(root, folder, fingerprints, corpus_sha256, tokenizer_key, inputs_sha256, eval_file_paths(data, root))


def user_tokenizer_path(tokenizer: TokenizerConfig, key: str = "path") -> Path:
    given = getattr(tokenizer, key)
    path = Path(given).expanduser()
    if not path.is_file():
        raise SlmkitError(f"tokenizer.{key}={given!r}: no such file; point it at a tokenizer.json or unset it")
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


# ---- the tokenizer -------------------------------------------------------------------------------------------

def tokenizer_texts(plan: Plan, data: DataConfig, corpus: dict[str, Any]) -> tuple[Iterable[str], list[str]]:
    """(training texts, held-out texts): the train split, or for a tail split the head of the stream."""
    if data.split == "hash":
        heldout = take_chars((r["text"] for r in corpus_records(plan.folder, corpus, "val")), HELDOUT_CHARS)
        return (r["text"] for r in corpus_records(plan.folder, corpus, "train")), heldout
    head = int(corpus["characters"] * (1 - data.val_fraction))

    def train_texts() -> Iterator[str]:
        left = head
        for record in corpus_records(plan.folder, corpus, STREAM):
            if left <= 0:
                return
            yield record["text"][:left]
            left -= len(record["text"])

    def tail_texts() -> Iterator[str]:
        seen = 0
        for record in corpus_records(plan.folder, corpus, STREAM):
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


def cached_tokenizer_folder(plan: Plan) -> Path:
    return cache_root() / "tokenizers" / plan.tokenizer_key[:16]


def known_tokenizer(plan: Plan, tokenizer: TokenizerConfig) -> Optional[Path]:
    """The tokenizer file when it exists before the corpus does (the recipe's own, or one cached for these inputs),
    so chunks can be encoded as they are curated; None when it must first be trained on the curated corpus."""
    if tokenizer.path and not tokenizer.extends:
        return user_tokenizer_path(tokenizer)
    cached = cached_tokenizer_folder(plan)
    if (cached / TOKENIZER_FILE).is_file() and (cached / "report.json").is_file():
        return cached / TOKENIZER_FILE
    return None


def token_spec(plan: Plan, path: Path) -> TokenSpec:
    loaded = load_tokenizer(path)
    eos = end_of_document_id(loaded)  # fails now, not after curating, when there is no EOS
    folder = plan.work / f"tokens-{tokenizer_sha256(path)[:16]}"
    return TokenSpec(path=str(path), eos_id=eos, vocab_size=loaded.get_vocab_size(), folder=str(folder))


def ensure_tokenizer(
    plan: Plan, data: DataConfig, tokenizer: TokenizerConfig, corpus: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """The tokenizer for this corpus: the recipe's own file, a cached one trained (or extended) on the same inputs, or
    a new one."""
    target = plan.folder / TOKENIZER_FILE
    if tokenizer.path and not tokenizer.extends:
        source = user_tokenizer_path(tokenizer)
        report = {"path": str(source), "sha256": tokenizer_sha256(source)}
    else:
        cached = cached_tokenizer_folder(plan)
        source = cached / TOKENIZER_FILE
        report_path = cached / "report.json"
        if source.is_file() and report_path.is_file():
            report = read_json(report_path)
        else:
            texts, heldout = tokenizer_texts(plan, data, corpus)
            learn = extend_tokenizer if tokenizer.extends else train_tokenizer
            report = learn(tokenizer, texts, source, heldout)
            write_json(report_path, report)
    end_of_document_id(load_tokenizer(source))  # fail now, not after packing, when there is no EOS
    atomic_copy(source, target)
    return target, report


# ---- the pipeline --------------------------------------------------------------------------------------------

def clear_outputs(folder: Path) -> None:
    """Makes the folder incomplete (manifest first) and drops shards of an earlier run, and what writers killed
    mid-write left (shard-sized temporaries), keeping resumable work."""
    (folder / MANIFEST).unlink(missing_ok=True)
    for shard in folder.glob("*.bin"):
        shard.unlink()
    for subfolder in [folder, folder / REPORT_DIR, *folder.glob("work/*"), *folder.glob("work/*/*")]:
        remove_temporaries(subfolder)


def tokenize_corpus(plan: Plan, corpus: dict[str, Any], pool: ChunkPool, spec: TokenSpec, progress: bool) -> list[dict[str, Any]]:
    """Each chunk's token counts per source; chunks not encoded while curating are encoded now, from curated/."""
    bar = stage_bar(progress, "tokenize", total=len(corpus["parts"]), unit="chunk")
    results = []
    try:
        tasks = ((spec, index, {split: str(plan.folder / CORPUS_DIR / name) for split, name in parts.items()})
                 for index, parts in enumerate(corpus["parts"]))
        for result in pool.map(tokenize_part, tasks):
            results.append(result)
            bar.update(1)
    finally:
        bar.close()
    return results


def pack_shards(plan: Plan, data: DataConfig, spec: TokenSpec, chunks: int) -> dict[str, Any]:
    """Concatenates the chunks' tokens, in corpus order per split, into shards."""
    packer = ShardPacker(plan.folder, spec.dtype, data.shard_tokens, data.val_fraction)
    for index in range(chunks):
        arrays = load_npz(Path(spec.folder) / f"chunk_{index:05d}.npz")
        for split in corpus_splits(data):
            if f"{split}_tokens" in arrays:
                packer.add(split, arrays[f"{split}_tokens"], arrays[f"{split}_lengths"])
    return packer.finish()


def prepare_on_pool(plan: Plan, data: DataConfig, tokenizer: TokenizerConfig, progress: bool) -> PreparedData:
    """The prepared data written in the plan's folder by the one-machine process pool."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    clear_outputs(plan.folder)
    with ChunkPool(worker_count(data), chunks_in_flight(data)) as pool:
        known = known_tokenizer(plan, tokenizer)
        corpus = build_corpus(data, plan, pool, token_spec(plan, known) if known else None, progress)
        start = time.perf_counter()
        tokenizer_path, tokenizer_report = ensure_tokenizer(plan, data, tokenizer, corpus)
        tokenizer_seconds = time.perf_counter() - start
        start = time.perf_counter()
        spec = token_spec(plan, tokenizer_path)
        chunk_tokens = tokenize_corpus(plan, corpus, pool, spec, progress)
    prepared = publish(plan, data, corpus, tokenizer_path, tokenizer_report, spec, chunk_tokens,
                       {"tokenizer": tokenizer_seconds}, start)
    remove_work(plan)
    return prepared


def reused(plan: Plan, manifest: dict[str, Any]) -> PreparedData:
    report = plan.folder / REPORT_DIR / REPORT_MARKDOWN
    return PreparedData(plan.folder, plan.folder / TOKENIZER_FILE, manifest, True, report if report.is_file() else None)


def publish(plan: Plan, data: DataConfig, corpus: dict[str, Any], tokenizer_path: Path, tokenizer_report: dict[str, Any],
            spec: TokenSpec, chunk_tokens: list[dict[str, Any]], timings: dict[str, float], start: float) -> PreparedData:
    """Packs the encoded chunks into shards and writes the tokenizer report, the curation report and, last, the
    manifest; `start` is when tokenizing began (the report's tokenize+pack time)."""
    splits = pack_shards(plan, data, spec, len(corpus["parts"]))
    pack_seconds = time.perf_counter() - start
    source_tokens: dict[str, int] = {}
    for result in chunk_tokens:
        for name, tokens in result["source_tokens"].items():
            source_tokens[name] = source_tokens.get(name, 0) + tokens
    total_tokens = sum(source_tokens.values())
    sources = []
    for entry in corpus["sources"]:
        tokens = source_tokens.get(entry["name"], 0)
        sources.append({
            key: entry[key] for key in ("name", "path", "weight", "files", "documents", "characters", "replaced_chars",
                                        "skipped", "errors", "documents_used")
        } | {"tokens": tokens, "share": round(tokens / total_tokens, 6) if total_tokens else 0.0})
    manifest = {
        "format": FORMAT,
        "dtype": spec.dtype.name,
        "eos_id": spec.eos_id,
        "vocab_size": spec.vocab_size,
        "tokenizer_sha256": tokenizer_sha256(tokenizer_path),
        "inputs_sha256": plan.inputs_sha256,
        "sources": sources,
        "splits": {name: counts.as_dict() for name, counts in splits.items()},
    }
    write_json(plan.folder / TOKENIZER_REPORT, tokenizer_report)
    timings = {**corpus["timings"], **timings, "tokenize (rest)+pack": pack_seconds}
    corpus["stage_cpu_seconds"]["tokenize"] = sum(result.get("seconds", 0.0) for result in chunk_tokens)
    report_path = write_report(plan.folder / REPORT_DIR, corpus, manifest, tokenizer_report, timings)
    write_manifest(plan.folder, manifest)
    return PreparedData(plan.folder, tokenizer_path, manifest, reused=False, report_path=report_path)


def remove_work(plan: Plan) -> None:
    """The run is complete: its chunk files are no longer needed (work of other corpora in the folder stays)."""
    shutil.rmtree(plan.work, ignore_errors=True)
    try:
        plan.work.parent.rmdir()
    except OSError:
        pass  # not empty


def train_recipe_tokenizer(data: DataConfig, tokenizer: TokenizerConfig, progress: bool = True) -> str:
    """`slmkit tokenizer train`: curates the corpus and trains (or reuses) the tokenizer, without packing shards."""
    plan = make_plan(data, tokenizer, None)
    plan.folder.mkdir(parents=True, exist_ok=True)
    with ChunkPool(worker_count(data), chunks_in_flight(data)) as pool:
        corpus = build_corpus(data, plan, pool, None, progress)
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
