"""Typed config of the recipe's `data:` and `tokenizer:` sections: which sources, how to curate, split and pack them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from data_prep.clean import CleanConfig
from data_prep.decontaminate import DecontaminateConfig
from data_prep.dedup import DedupConfig
from data_prep.filters import FilterConfig
from data_prep.pii import PiiConfig
from slmkit.options import option


@dataclass
class SourceConfig:
    name: str = option("", "Label of this source in manifests and reports (defaults to the file or dataset name).")
    path: Optional[str] = option(None, "File, directory or glob under data.root (.txt, .md, .jsonl, .json, .jsonl.gz, .parquet, .csv; .gz/.zst/.bz2).")
    hf_dataset: Optional[str] = option(None, "Hugging Face Hub dataset id, loaded with `datasets` (needs network); instead of path.")
    hf_config: Optional[str] = option(None, "Configuration name of the Hub dataset, if it has several.")
    hf_split: str = option("train", "Split of the Hub dataset to read.")
    text_field: str = option("text", "Field holding the document text in jsonl/json/parquet/csv/Hub records.")
    weight: float = option(1.0, "Sampling weight in the mixture: 2.0 repeats the source twice, 0.5 keeps half of it.")
    txt_documents: str = option("file", "How a .txt/.md file splits into documents: file (one per file) or blank_line (one per blank-line block).", choices=("file", "blank_line"))
    max_documents: Optional[int] = option(None, "Read at most this many documents from the source (quick runs and tests).")


@dataclass
class DataConfig:
    root: Optional[str] = option(None, "Folder that source paths are relative to; default $SLMKIT_DATA, else ./data.")
    sources: list[SourceConfig] = field(default_factory=list, metadata={"doc": "The corpus: a list of sources."})
    split: str = option("hash", "Train/val split: hash (by seeded document hash) or tail (last val_fraction of the token stream, as nanoGPT's char task).", choices=("hash", "tail"))
    val_fraction: float = option(0.01, "Fraction of documents (hash) or tokens (tail) held out for validation.")
    seed: int = option(1337, "Seed of the document-level split and of mixture sampling.")
    prepared_dir: Optional[str] = option(None, "Where curated corpus and token shards go; default a cache folder keyed by inputs ($SLMKIT_CACHE, else ~/.cache/slmkit).")
    on_error: str = option("stop", "On a bad record or file: stop (error with file and line) or skip (count and report it).", choices=("stop", "skip"))
    num_workers: int = option(0, "Processes for tokenizing and curation; 0 = all cores.")
    shard_tokens: int = option(64 * 2**20, "Tokens per shard file at most (64Mi tokens = 128 MiB as uint16).")
    chunk_mb: float = option(2.0, "Text per work chunk in MB: the unit of parallel curation and of resuming after a crash. Small chunks keep every worker busy to the end of a run (16 MB left one of two cores idle for ~15% of the legal corpus).")
    memory_limit_mb: int = option(4096, "Bound on document text buffered at once (chunks in flight, tokenizer batches); chunks shrink to fit.")
    clean: CleanConfig = field(default_factory=CleanConfig, metadata={"doc": "Text cleaning (Unicode repair, invisible characters, whitespace)."})
    filter: FilterConfig = field(default_factory=FilterConfig, metadata={"doc": "Quality filters (Gopher heuristics, language)."})
    dedup: DedupConfig = field(default_factory=DedupConfig, metadata={"doc": "Exact and MinHash near-duplicate removal across all sources."})
    pii: PiiConfig = field(default_factory=PiiConfig, metadata={"doc": "Personal data redaction (off by default)."})
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig, metadata={"doc": "Removal of documents sharing long n-grams with evaluation sets."})


@dataclass
class TokenizerConfig:
    kind: str = option("bpe", "Tokenizer model by name: bpe (byte-level), unigram, wordpiece, char.")
    vocab_size: int = option(32000, "Target vocabulary size including special tokens (char: an upper bound).")
    special_tokens: list[str] = option(["<|endoftext|>"], "Special tokens; the first one separates documents (EOS).")
    min_frequency: int = option(2, "Minimum pair/token frequency for a merge (bpe, wordpiece).")
    path: Optional[str] = option(None, "Use this existing tokenizer.json instead of training one.")
    train_chars: int = option(200_000_000, "Train on at most this many characters of the train split (bounds time and memory).")
