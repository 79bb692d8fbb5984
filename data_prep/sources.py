"""Reads a recipe's corpus sources into a stream of `Document`s: local files in many formats, or a Hub dataset.

Bad records are reported with file and line; `on_error` decides whether they stop the run or are skipped and counted.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import hashlib
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional

from data_prep.remote import RemotePath, list_files, relative_name
from slmkit.filesystems import is_url
from slmkit.data_config import SourceConfig
from slmkit.errors import SlmkitError

TEXT_FORMATS = (".txt", ".md")
RECORD_FORMATS = (".jsonl", ".json", ".parquet", ".csv")
COMPRESSIONS = (".gz", ".zst", ".bz2")
ERROR_EXAMPLES = 5  # error messages kept per source for the report
REPLACEMENT = "\ufffd"
UTF8_REPLACEMENT = REPLACEMENT.encode("utf-8")


@dataclass
class Document:
    text: str
    source: str
    doc_id: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceStats:
    """What reading one source found: counts for the manifest and report, and the first few problems."""

    name: str
    files: int = 0
    documents: int = 0
    characters: int = 0
    replaced_chars: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.errors) < ERROR_EXAMPLES:
            self.errors.append(message)

    def merge(self, other: "SourceStats") -> None:
        """Adds what reading a later part of the same source found (parts merged in source order)."""
        for name in ("files", "documents", "characters", "replaced_chars"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, count in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        self.errors.extend(other.errors[: max(0, ERROR_EXAMPLES - len(self.errors))])

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "files": self.files, "documents": self.documents, "characters": self.characters,
            "replaced_chars": self.replaced_chars, "skipped": dict(sorted(self.skipped.items())),
            "errors": list(self.errors),
        }


class BadRecord(Exception):
    """One unreadable record or file; `reason` is a short key for counting, the message says where and why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def resolve_data_root(config_root: Optional[str]) -> Path:
    """data.root if set, else $SLMKIT_DATA, else ./data."""
    root = config_root or os.environ.get("SLMKIT_DATA") or "data"
    return Path(root).expanduser()


def source_name(source: SourceConfig) -> str:
    if source.name:
        return source.name
    if source.hf_dataset:
        return source.hf_dataset
    if source.path:
        parts = [part for part in Path(source.path).parts if not glob.has_magic(part)]
        if len(parts) < len(Path(source.path).parts):  # a glob: name it after the folder it searches
            return parts[-1] if parts else source.path
        base = Path(source.path).name
        for suffix in COMPRESSIONS + TEXT_FORMATS + RECORD_FORMATS:
            base = base.removesuffix(suffix)
        return base or source.path
    raise SlmkitError("a data source has neither `path` nor `hf_dataset`: give one of them for every entry of data.sources")


def file_format(path: Path) -> tuple[str, str]:
    """(format suffix, compression suffix or '') of a file name such as corpus.jsonl.zst."""
    name = path.name.lower()
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), "")
    base = name.removesuffix(compression)
    fmt = next((f for f in TEXT_FORMATS + RECORD_FORMATS if base.endswith(f)), "")
    return fmt, compression


def is_supported(path: Path) -> bool:
    fmt, compression = file_format(path)
    return bool(fmt) and not (fmt == ".parquet" and compression)


def resolve_source_files(source: SourceConfig, root: Path) -> list[tuple[Path, str]]:
    """The files of a path source in a stable order, each with its name relative to the source (a stable doc id part).

    A path is one file, every supported file under a folder, or a glob.
    """
    name = source_name(source)
    if is_url(source.path):
        return remote_source_files(source, name)
    pattern = Path(source.path).expanduser()
    full = pattern if pattern.is_absolute() else root / pattern
    if glob.has_magic(str(full)):
        found = sorted(Path(p) for p in glob.glob(str(full), recursive=True))
        files = [p for p in found if p.is_file() and is_supported(p)]
        base = Path(*[part for part in full.parts[: next(i for i, part in enumerate(full.parts) if glob.has_magic(part))]])
    elif full.is_dir():
        files = sorted(p for p in full.rglob("*") if p.is_file() and is_supported(p))
        base = full
    elif full.is_file():
        if not is_supported(full):
            raise SlmkitError(
                f"source {name!r}: {full} has an unsupported format; use .txt, .md, .jsonl, .json, .parquet or .csv "
                f"(optionally compressed as .gz, .zst or .bz2; parquet uncompressed)"
            )
        files = [full]
        base = full.parent
    else:
        files = []
    if not files:
        raise SlmkitError(
            f"source {name!r}: no data files found at {full.resolve()} (path {source.path!r} relative to data root "
            f"{root.resolve()}); put the files there, or point elsewhere with data.root=/path/to/data, "
            f"the SLMKIT_DATA environment variable, or an absolute path in the source's `path`"
        )
    return [(path, path.relative_to(base).as_posix()) for path in files]


def remote_source_files(source: SourceConfig, name: str) -> list[tuple[RemotePath, str]]:
    """The files of a source whose path is an fsspec URL, as `resolve_source_files` gives local ones."""
    files, base = list_files(source.path)
    unsupported = [str(f) for f in files if not is_supported(f)]
    files = [f for f in files if is_supported(f)]
    if not files:
        raise SlmkitError(f"source {name!r}: no supported data files at {source.path}"
                          f"{f' (only {unsupported[:3]})' if unsupported else ''}; check the URL")
    return [(f, relative_name(f, base)) for f in files]


def open_binary(path: Path | RemotePath) -> IO[bytes]:
    _, compression = file_format(path)
    source: Any = path.open() if isinstance(path, RemotePath) else path  # the decompressors take a file object too
    if compression == ".gz":
        return gzip.open(source, "rb")
    if compression == ".bz2":
        return bz2.open(source, "rb")
    if compression == ".zst":
        import zstandard

        return zstandard.open(source, "rb")
    return source if isinstance(path, RemotePath) else open(path, "rb")


def decode(data: bytes) -> tuple[str, int]:
    """UTF-8 text with undecodable bytes replaced by U+FFFD, and how many were replaced (not counting real U+FFFDs)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count(REPLACEMENT) - data.count(UTF8_REPLACEMENT)


def hf_offline_error(source: SourceConfig, reason: str) -> SlmkitError:
    return SlmkitError(
        f"source {source_name(source)!r}: the Hugging Face Hub dataset {source.hf_dataset!r} could not be reached "
        f"({reason}); download it where there is network (e.g. `huggingface-cli download --repo-type dataset "
        f"{source.hf_dataset} --local-dir DIR`) and point this source's `path` at the local files instead of hf_dataset"
    )


def iter_hf_records(source: SourceConfig) -> Iterator[tuple[str, Any]]:
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        raise hf_offline_error(source, "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set")
    import datasets

    try:
        dataset = datasets.load_dataset(source.hf_dataset, source.hf_config, split=source.hf_split, streaming=True)
        for index, record in enumerate(dataset):
            yield f"row {index}", dict(record)
    except SlmkitError:
        raise
    except Exception as error:  # the Hub client raises many types for "no network"; all mean the same to a user
        raise hf_offline_error(source, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}") from error


class FileReader:
    """Reads the records of one local file as (location, record dict), raising BadRecord for anything unreadable."""

    def __init__(self, path: Path, text_field: str, txt_documents: str, stats: SourceStats):
        self.path = path
        self.text_field = text_field
        self.txt_documents = txt_documents
        self.stats = stats
        self.format, _ = file_format(path)

    def records(self) -> Iterator[tuple[str, dict[str, Any] | BadRecord]]:
        if self.format == ".parquet":
            yield from self.parquet_records()
            return
        with open_binary(self.path) as raw:
            stream = ErrorLocatingStream(raw, self.path)
            head = stream.peek_head()
            if not head.strip():
                raise BadRecord("empty_file", f"{self.path}: empty file (no text)")
            if b"\0" in head:
                raise BadRecord("binary_file", f"{self.path}: looks like a binary file (NUL bytes), not text")
            readers: dict[str, Callable[[ErrorLocatingStream], Iterator[tuple[str, Any]]]] = {
                ".txt": self.text_records, ".md": self.text_records, ".jsonl": self.jsonl_records,
                ".json": self.json_records, ".csv": self.csv_records,
            }
            yield from readers[self.format](stream)

    def decoded(self, data: bytes) -> str:
        text, replaced = decode(data)
        self.stats.replaced_chars += replaced
        return text

    def text_records(self, stream: ErrorLocatingStream) -> Iterator[tuple[str, Any]]:
        if self.txt_documents == "file":
            yield "line 1", {"text": self.decoded(stream.read_all())}
            return
        if self.txt_documents != "blank_line":
            raise SlmkitError(f"txt_documents={self.txt_documents!r} is not known; use file or blank_line")
        block: list[str] = []
        start = 1
        for number, line in stream.lines():
            text = self.decoded(line)
            if text.strip():
                if not block:
                    start = number
                block.append(text)
            elif block:
                yield f"line {start}", {"text": "".join(block).rstrip("\n")}
                block = []
        if block:
            yield f"line {start}", {"text": "".join(block).rstrip("\n")}

    def jsonl_records(self, stream: ErrorLocatingStream) -> Iterator[tuple[str, Any]]:
        for number, line in stream.lines():
            if not line.strip():
                continue
            where = f"{self.path}:{number}"
            try:
                record = json.loads(self.decoded(line))
            except json.JSONDecodeError as error:
                yield where, BadRecord("bad_json", f"{where}: invalid JSON ({error.msg} at column {error.colno})")
                continue
            if not isinstance(record, dict):
                yield where, BadRecord("bad_json", f"{where}: expected a JSON object per line, got {type(record).__name__}")
                continue
            yield f"line {number}", record

    def json_records(self, stream: ErrorLocatingStream) -> Iterator[tuple[str, Any]]:
        try:
            data = json.loads(self.decoded(stream.read_all()))
        except json.JSONDecodeError as error:
            raise BadRecord("bad_json", f"{self.path}:{error.lineno}: invalid JSON ({error.msg})") from None
        records = data if isinstance(data, list) else [data]
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                where = f"{self.path}: record {index}"
                yield where, BadRecord("bad_json", f"{where} is a {type(record).__name__}, not an object")
                continue
            yield f"record {index}", record

    def csv_records(self, stream: ErrorLocatingStream) -> Iterator[tuple[str, Any]]:
        csv.field_size_limit(2**31 - 1)  # legal and scientific documents easily exceed csv's 128 KB field default
        reader = csv.DictReader(self.decoded(line) for _, line in stream.lines())
        for record in reader:
            yield f"line {reader.line_num}", dict(record)

    def parquet_records(self) -> Iterator[tuple[str, Any]]:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path.open() if isinstance(self.path, RemotePath) else self.path)
        except Exception as error:  # pyarrow raises ArrowInvalid/OSError subclasses for damaged files
            raise BadRecord("corrupt_file", f"{self.path}: not a readable parquet file ({error})") from None
        row = 0
        batches = parquet.iter_batches(batch_size=1024)
        while True:
            try:
                batch = next(batches, None)
                records = batch.to_pylist() if batch is not None else []
            except Exception as error:  # a damaged page past the footer: pyarrow's OSError/ArrowInvalid
                raise BadRecord("corrupt_file", f"{self.path}: damaged parquet data after row {row} ({error})") from None
            if batch is None:
                return
            for record in records:
                yield f"row {row}", record
                row += 1

    def documents(self, source: str, relpath: str) -> Iterator[Document | BadRecord]:
        """Documents, or a BadRecord for one bad record (the file reads on); a bad file raises BadRecord."""
        field_name = "text" if self.format in TEXT_FORMATS else self.text_field
        for location, record in self.records():
            if isinstance(record, BadRecord):
                yield record
                continue
            if field_name not in record:
                fields = ", ".join(sorted(record)) or "none"
                yield BadRecord(
                    "missing_text_field",
                    f"{self.path} {location}: no field {field_name!r} (fields: {fields}); set the source's text_field",
                )
                continue
            text = record.pop(field_name)
            if not isinstance(text, str):
                yield BadRecord("bad_text", f"{self.path} {location}: field {field_name!r} is not a string")
                continue
            record["file"] = relpath
            yield Document(text=text, source=source, doc_id=f"{source}/{relpath}#{location}", metadata=record)


class ErrorLocatingStream(io.RawIOBase):
    """A binary stream that remembers the line it is on, and turns decompression failures into BadRecord."""

    HEAD = 8192

    def __init__(self, raw: IO[bytes], path: Path):
        self.raw = raw
        self.path = path
        self.line = 0
        self.head = b""
        self.head_consumed = True

    def readable(self) -> bool:
        return True

    def guarded(self, read: Callable[[], bytes]) -> bytes:
        try:
            return read()
        except (OSError, EOFError, zlib.error, ValueError) as error:
            raise BadRecord(
                "corrupt_file", f"{self.path}:{self.line + 1}: cannot decompress/read the file ({error})"
            ) from None

    def peek_head(self) -> bytes:
        self.head = self.guarded(lambda: self.raw.read(self.HEAD))
        self.head_consumed = False
        return self.head

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        prefix = b""
        if not self.head_consumed:
            prefix, self.head_consumed = self.head, True
            if size is not None and size >= 0:
                if len(prefix) > size:
                    self.head, self.head_consumed = prefix[size:], False
                    return prefix[:size]
                size -= len(prefix)
        if size == 0:
            return prefix
        return prefix + self.guarded(lambda: self.raw.read(size))

    def read_all(self) -> bytes:
        return self.read(-1)

    def lines(self) -> Iterator[tuple[int, bytes]]:
        buffered = io.BufferedReader(self, buffer_size=1 << 16)
        while True:
            line = buffered.readline()
            if not line:
                return
            self.line += 1
            yield self.line, line


def mixture_copies(doc_id: str, weight: float, seed: int) -> int:
    """How many times a document enters the mixture: floor(weight), plus one more for a seeded-hash fraction of docs."""
    whole = int(weight)
    fraction = weight - whole
    if fraction <= 0:
        return whole
    return whole + (unit_hash(f"mix:{seed}:{doc_id}") < fraction)


def unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) from a string (same on every machine and Python run, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") / 2**64


def iter_documents(source: SourceConfig, root: Path, on_error: str, stats: SourceStats) -> Iterator[Document]:
    """Every document of one source, in a stable order, before mixture weighting; counts go into `stats`."""
    if on_error not in ("stop", "skip"):
        raise SlmkitError(f"data.on_error={on_error!r} is not known; use stop or skip")
    name = source_name(source)
    limit = source.max_documents
    if source.hf_dataset:
        for location, record in iter_hf_records(source):
            if limit is not None and stats.documents >= limit:
                return
            if not isinstance(record.get(source.text_field), str):
                message = f"{source.hf_dataset} {location}: no string field {source.text_field!r}"
                if on_error == "stop":
                    raise SlmkitError(message + "; set the source's text_field")
                stats.skip("missing_text_field", message)
                continue
            text = record.pop(source.text_field)
            yield counted(Document(text, name, f"{name}#{location}", record), stats)
        return
    if not source.path:
        raise SlmkitError(f"source {name!r} has neither `path` nor `hf_dataset`; give one of them")
    for path, relpath in resolve_source_files(source, root):
        if limit is not None and stats.documents >= limit:
            return
        yield from iter_file_documents(source, path, relpath, on_error, stats, limit)


def iter_file_documents(source: SourceConfig, path: Path, relpath: str, on_error: str, stats: SourceStats,
                        limit: Optional[int] = None) -> Iterator[Document]:
    """The documents of one file of a path source, until `stats` has counted `limit` documents of the source."""
    name = source_name(source)
    stats.files += 1
    reader = FileReader(path, source.text_field, source.txt_documents, stats)
    try:
        for item in reader.documents(name, relpath):
            if limit is not None and stats.documents >= limit:
                return
            if isinstance(item, BadRecord):
                handle_bad(item, name, on_error, stats)
            elif not item.text.strip():
                stats.skip("empty_text", f"{item.doc_id}: empty text")
            else:
                yield counted(item, stats)
    except BadRecord as bad:  # the rest of this file cannot be read
        handle_bad(bad, name, on_error, stats)


def handle_bad(bad: BadRecord, name: str, on_error: str, stats: SourceStats) -> None:
    if on_error == "stop":
        raise SlmkitError(f"source {name!r}: {bad} (set data.on_error=skip to skip and count such records)")
    stats.skip(bad.reason, str(bad))


def counted(document: Document, stats: SourceStats) -> Document:
    stats.documents += 1
    stats.characters += len(document.text)
    return document
