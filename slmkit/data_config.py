"""Typed config of the recipe's `data:` and `tokenizer:` sections: which sources, how to curate, split and pack them,
and which tokenizer encodes them.

The schemas live in slmkit, so that a recipe resolves and is checked whole before any data work; data_prep, which
does that work, imports them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from slmkit.errors import SlmkitError
from slmkit.options import FRACTION, SEED, above, at_least, between, check_bounds, check_values, option
from slmkit.registry import Registry

NORMALIZATION_FORMS = ("NFC", "NFKC", "none")
PII_KINDS = ("email", "card", "ssn", "phone")  # the order they are replaced in: longer digit runs first
DECONTAMINATE_ACTIONS = ("drop", "report")

STOPWORD_LANGUAGES: Registry[frozenset[str]] = Registry(
    "stopword language", "The function words of one language (a frozenset of lowercase words) for data.filter's "
    "target-language check: running prose of that language is ~35-50% such words, other languages near 0%."
)


@dataclass
class SourceConfig:
    name: str = option("", "Label of this source in manifests and reports (defaults to the file or dataset name).")
    path: Optional[str] = option(None, "File, directory or glob under data.root (.txt, .md, .jsonl, .json, .jsonl.gz, .parquet, .csv; .gz/.zst/.bz2).")
    hf_dataset: Optional[str] = option(None, "Hugging Face Hub dataset id, loaded with `datasets` (needs network); instead of path.")
    hf_config: Optional[str] = option(None, "Configuration name of the Hub dataset, if it has several.")
    hf_split: str = option("train", "Split of the Hub dataset to read.")
    text_field: str = option("text", "Field holding the document text in jsonl/json/parquet/csv/Hub records.")
    weight: float = option(1.0, "Sampling weight in the mixture: 2.0 repeats the source twice, 0.5 keeps half of it.", bounds=at_least(0))
    txt_documents: str = option("file", "How a .txt/.md file splits into documents: file (one per file) or blank_line (one per blank-line block).", choices=("file", "blank_line"))
    max_documents: Optional[int] = option(None, "Read at most this many documents from the source (quick runs and tests).", bounds=at_least(1))


@dataclass
class CleanConfig:
    enabled: bool = option(True, "Run the cleaning step at all.")
    unicode_normalization: str = option("NFC", "Unicode normalization: NFC (composes accents, changes nothing visible), NFKC (also folds ligatures, full-width forms, superscripts) or none.")
    fix_mojibake: bool = option(True, "Repair text decoded with the wrong encoding (e.g. 'Ã©' for 'é') with ftfy; only encoding fixes, no quote or width changes.")
    remove_control_chars: bool = option(True, "Remove C0/C1 control characters except newline and tab; \\r, \\f, \\v and Unicode line separators become newlines.")
    remove_invisible_chars: bool = option(True, "Remove zero-width spaces/joiners, word joiners, byte-order marks and bidirectional marks.")
    remove_soft_hyphens: bool = option(True, "Remove soft hyphens (U+00AD) and rejoin the word they split; one before a capital or digit becomes '-'.")
    normalize_whitespace: bool = option(True, "Non-breaking and other Unicode spaces become ' ', trailing spaces go, blank-line runs are capped, the document is stripped.")
    max_blank_lines: int = option(1, "Longest run of blank lines kept when normalizing whitespace.", bounds=at_least(0))
    rejoin_hyphenated_words: bool = option(True, "Rejoin words hyphenated across a line break ('regu-\\nlation' -> 'regulation') when the next line starts in lowercase.")
    boilerplate: bool = option(False, "Remove lines that recur in many documents (page headers/footers); needs a counting pass over the corpus first. Off by default: in the legal corpora such lines are section headings.")
    boilerplate_min_doc_fraction: float = option(0.5, "A line is boilerplate when it occurs in more than this fraction of the counted documents ...", bounds=between(0, 1, low_open=True))
    boilerplate_min_docs: int = option(10, "... and in at least this many documents.", bounds=at_least(1))
    boilerplate_min_line_chars: int = option(10, "Lines shorter than this (after normalization) are never boilerplate: '(a)', 'v.' and short headings are structure.", bounds=at_least(0))
    boilerplate_max_tracked_lines: int = option(200_000, "Memory bound of the line counter (distinct lines tracked per worker); rarer lines are forgotten first.", bounds=at_least(1))
    max_examples: int = option(5, "Short before/after examples kept per kind of fix for the curation report.", bounds=at_least(0))

    def __post_init__(self) -> None:
        if self.unicode_normalization not in NORMALIZATION_FORMS:
            raise SlmkitError(
                f"data.clean.unicode_normalization is {self.unicode_normalization!r}; use one of {list(NORMALIZATION_FORMS)}."
            )
        check_values(self, prefix="data.clean.")


@dataclass
class FilterConfig:
    enabled: bool = option(True, "Run the quality filters at all.")
    # Defaults follow Gopher except where its web-text thresholds were measured to wipe out real legal prose
    # (statutes repeat long formulas and cite many numbers); each such field names the Gopher value to restore it.
    min_words: Optional[int] = option(20, "Drop documents with fewer whitespace-separated words (Gopher: 50; 20 keeps short statute sections); null disables.", bounds=at_least(0))
    max_words: Optional[int] = option(100_000, "Drop documents with more words (Gopher: 100,000); null disables.", bounds=at_least(0))
    min_chars: Optional[int] = option(None, "Drop documents shorter than this many characters; null disables.", bounds=at_least(0))
    max_chars: Optional[int] = option(None, "Drop documents longer than this many characters; null disables.", bounds=at_least(0))
    min_mean_word_length: Optional[float] = option(3.0, "Drop if the mean word length is below this (Gopher: 3); null disables.", bounds=at_least(0))
    max_mean_word_length: Optional[float] = option(10.0, "Drop if the mean word length is above this (Gopher: 10); null disables.", bounds=at_least(0))
    max_symbol_word_ratio: Optional[float] = option(0.1, "Drop if ('#' + ellipses) per word exceeds this (Gopher: 0.1); null disables.", bounds=at_least(0))
    max_bullet_lines_fraction: Optional[float] = option(0.9, "Drop if more than this fraction of lines start with a bullet (Gopher: 0.9); null disables.", bounds=FRACTION)
    max_ellipsis_lines_fraction: Optional[float] = option(0.3, "Drop if more than this fraction of lines end in an ellipsis (Gopher: 0.3); null disables.", bounds=FRACTION)
    min_alpha_words_fraction: Optional[float] = option(0.7, "Drop if fewer than this fraction of words contain a letter (Gopher: 0.8; 0.7 keeps citation-dense rules); null disables.", bounds=FRACTION)
    gopher_min_words: int = option(50, "The stopword and n-gram repetition rules judge only documents with at least this many words (Gopher's own floor); in shorter ones a single repeated name decides.", bounds=at_least(0))
    min_gopher_stopwords: Optional[int] = option(2, "Drop if fewer than this many of the, be, to, of, and, that, have, with occur (Gopher: 2; English only); null disables.", bounds=at_least(0))
    language: str = option("en", "Target language of the stopword check.", choices="slmkit.data_config:STOPWORD_LANGUAGES")
    min_stopword_ratio: Optional[float] = option(0.1, "Drop as non-target-language if fewer than this fraction of words are stopwords of `language`; null disables.", bounds=FRACTION)
    max_duplicate_lines_fraction: Optional[float] = option(0.3, "Drop if more than this fraction of lines repeat an earlier line (Gopher: 0.3); null disables.", bounds=FRACTION)
    max_duplicate_line_chars_fraction: Optional[float] = option(0.2, "Drop if repeated lines hold more than this fraction of characters (Gopher: 0.2); null disables.", bounds=FRACTION)
    max_duplicate_paragraphs_fraction: Optional[float] = option(0.3, "Drop if more than this fraction of paragraphs repeat an earlier one (Gopher: 0.3); null disables.", bounds=FRACTION)
    max_duplicate_paragraph_chars_fraction: Optional[float] = option(0.2, "Drop if repeated paragraphs hold more than this fraction of characters (Gopher: 0.2); null disables.", bounds=FRACTION)
    max_top_ngram_chars_fraction: dict[int, float] = option(
        {2: 0.2, 3: 0.18, 4: 0.16},
        "Per n: drop if the most frequent word n-gram covers more than this fraction of characters (Gopher); {} disables.",
    )
    max_duplicate_ngram_chars_fraction: dict[int, float] = option(
        {5: 0.65, 6: 0.62, 7: 0.60, 8: 0.58, 9: 0.56, 10: 0.55},
        "Per n: drop if word n-grams occurring more than once cover more than this fraction of characters "
        "(Gopher: 0.15 for n=5 down to 0.10 for n=10, which drops ~90% of DC session laws); {} disables.",
    )
    max_examples: int = option(5, "Short examples kept per drop reason for the curation report.", bounds=at_least(0))

    def __post_init__(self) -> None:
        if self.language not in STOPWORD_LANGUAGES:
            raise SlmkitError(
                f"data.filter.language is {self.language!r}, which has no stopword list"
                f"{STOPWORD_LANGUAGES.choices_hint(self.language)}; or set data.filter.min_stopword_ratio: null to skip "
                f"the language check."
            )
        check_values(self, prefix="data.filter.")
        for name in ("max_top_ngram_chars_fraction", "max_duplicate_ngram_chars_fraction"):
            for n, value in getattr(self, name).items():
                if not isinstance(n, int) or n < 1:
                    raise SlmkitError(f"data.filter.{name} n-gram sizes must be positive integers, got {n!r}.")
                check_bounds(f"data.filter.{name}[{n}]", value, FRACTION)
        for low, high in (("min_words", "max_words"), ("min_chars", "max_chars"), ("min_mean_word_length", "max_mean_word_length")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise SlmkitError(f"data.filter.{low} ({lo}) is larger than data.filter.{high} ({hi}); no document could pass.")


@dataclass
class DedupConfig:
    exact: bool = option(True, "Drop documents whose normalized text (lowercase, punctuation and spacing removed) equals an earlier one.")
    near: bool = option(True, "Drop near duplicates of an earlier document, found with MinHash LSH.")
    threshold: float = option(0.8, "Near duplicate when the estimated Jaccard similarity of word-shingle sets is at least this.", bounds=between(0, 1, low_open=True))
    num_perm: int = option(128, "MinHash permutations: more estimate Jaccard better and cost proportionally more time and memory.", bounds=at_least(16))
    shingle_words: int = option(5, "Words per shingle (word n-gram) of the sets compared for near duplicates.", bounds=at_least(1))
    seed: int = option(1, "Seed of the MinHash permutations; fingerprints from different seeds cannot be compared.", bounds=SEED)
    max_examples: int = option(5, "Duplicate pairs kept as examples for the curation report.", bounds=at_least(0))

    def __post_init__(self) -> None:
        check_values(self, prefix="data.dedup.")


@dataclass
class PiiConfig:
    enabled: bool = option(False, "Replace personal data with placeholders. Off by default: public legal, medical and finance sources carry none, and every pattern has some false positives.")
    kinds: list[str] = option(list(PII_KINDS), "Which kinds to replace: email, phone (US), ssn (US), card (Luhn-checked payment card numbers).")
    placeholders: dict[str, str] = option(
        {"email": "<EMAIL>", "phone": "<PHONE>", "ssn": "<SSN>", "card": "<CARD>"},
        "Replacement text per kind.",
    )
    max_examples: int = option(5, "Redacted snippets kept per kind for the curation report (they show the placeholder, never the data).", bounds=at_least(0))

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.kinds if kind not in PII_KINDS]
        if unknown:
            raise SlmkitError(f"data.pii.kinds has unknown kinds {unknown}; choose from {list(PII_KINDS)}.")
        missing = [kind for kind in self.kinds if kind not in self.placeholders]
        if missing:
            raise SlmkitError(f"data.pii.placeholders has no replacement for {missing}; add one per kind in data.pii.kinds.")


@dataclass
class DecontaminateConfig:
    eval_files: list[str] = option([], "Evaluation data to protect: files (.jsonl[.gz] records or plain .txt/.tokens), directories of them, or globs. Empty disables the step.")
    fields: list[str] = option(["text", "input", "question", "context", "contexts"], "Fields of jsonl records whose text is evaluation text (strings or lists of strings); missing fields are skipped.")
    n: int = option(13, "Words per n-gram (GPT-3 used 13): long enough that a shared n-gram means copied text, not a common phrase.", bounds=at_least(5))
    min_matches: int = option(1, "A document is contaminated when at least this many of its n-grams occur in the evaluation text.", bounds=at_least(1))
    action: str = option("drop", "drop: remove contaminated documents; report: keep them and only count them in the report.")
    max_examples: int = option(5, "Matched n-grams kept as examples for the curation report.", bounds=at_least(0))

    def __post_init__(self) -> None:
        check_values(self, prefix="data.decontaminate.")
        if self.action not in DECONTAMINATE_ACTIONS:
            raise SlmkitError(f"data.decontaminate.action is {self.action!r}; use one of {list(DECONTAMINATE_ACTIONS)}.")


@dataclass
class SlurmConfig:
    partition: str = option("", "SLURM partition the data tasks run on (data.executor=slurm needs one).")
    time: str = option("04:00:00", "Time limit of each SLURM task (sbatch --time).")
    cpus_per_task: int = option(1, "CPU cores per SLURM task.", bounds=at_least(1))
    mem_per_cpu_gb: int = option(2, "Memory per core in GB per SLURM task.", bounds=at_least(1))
    max_array_size: int = option(1001, "Largest job array the cluster accepts (MaxArraySize); bigger stages are cut into several arrays.", bounds=at_least(1))
    venv_path: str = option("", "Virtual environment the tasks activate before running (empty: the submitting shell's).")


@dataclass
class DataConfig:
    root: Optional[str] = option(None, "Folder that source paths are relative to; default $SLMKIT_DATA, else ./data.")
    sources: list[SourceConfig] = field(default_factory=list, metadata={"doc": "The corpus: a list of sources."})
    split: str = option("hash", "Train/val split: hash (by seeded document hash) or tail (last val_fraction of the token stream, as nanoGPT's char task).", choices=("hash", "tail"))
    val_fraction: float = option(0.01, "Fraction of documents (hash) or tokens (tail) held out for validation.", bounds=between(0, 1, high_open=True))
    seed: int = option(1337, "Seed of the document-level split and of mixture sampling.", bounds=SEED)
    prepared_dir: Optional[str] = option(None, "Where curated corpus and token shards go; default a cache folder keyed by inputs ($SLMKIT_CACHE, else ~/.cache/slmkit).")
    on_error: str = option("stop", "On a bad record or file: stop (error with file and line) or skip (count and report it).", choices=("stop", "skip"))
    num_workers: int = option(0, "Processes for tokenizing and curation; 0 = all cores.", bounds=at_least(0))
    shard_tokens: int = option(64 * 2**20, "Tokens per shard file at most (64Mi tokens = 128 MiB as uint16).", bounds=at_least(1))
    chunk_mb: float = option(2.0, "Text per work chunk in MB: the unit of parallel curation and of resuming after a crash. Small chunks keep every worker busy to the end of a run (16 MB left one of two cores idle for ~15% of the legal corpus).", bounds=above(0))
    memory_limit_mb: int = option(4096, "Bound on document text buffered at once (chunks in flight, tokenizer batches); chunks shrink to fit.", bounds=at_least(1))
    clean: CleanConfig = field(default_factory=CleanConfig, metadata={"doc": "Text cleaning (Unicode repair, invisible characters, whitespace)."})
    filter: FilterConfig = field(default_factory=FilterConfig, metadata={"doc": "Quality filters (Gopher heuristics, language)."})
    dedup: DedupConfig = field(default_factory=DedupConfig, metadata={"doc": "Exact and MinHash near-duplicate removal across all sources."})
    pii: PiiConfig = field(default_factory=PiiConfig, metadata={"doc": "Personal data redaction (off by default)."})
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig, metadata={"doc": "Removal of documents sharing long n-grams with evaluation sets."})
    # Where the stages run. None of these changes a byte of the output: every decision is made by document key.
    engine: str = option("local", "What runs the stages: local (one process pool on this machine) or datatrove (datatrove executors, needs `pip install 'slmkit[distributed]'`).", choices=("local", "datatrove"))
    executor: str = option("local", "datatrove executor: local (this machine), slurm (job arrays) or ray (a Ray cluster).", choices=("local", "slurm", "ray"))
    tasks: int = option(4, "datatrove: tasks per parallel stage (the units of work and of resuming; each reads whole input files).", bounds=at_least(1))
    workers: int = option(0, "datatrove local executor: tasks run at once on this machine; 0 = all cores.", bounds=at_least(0))
    bucket_tasks: int = option(0, "datatrove: tasks of the MinHash bucket stage; a multiple of its bucket count (LSH bands, plus one for exact digests); 0 = one per bucket.", bounds=at_least(0))
    nodes: int = option(1, "datatrove local executor: machines sharing the run over one folder; each runs its share of every stage's tasks (datatrove's local rank offsets).", bounds=at_least(1))
    node_rank: int = option(0, "datatrove local executor: which of data.nodes this machine is (0 .. nodes-1); node 0 publishes the result.", bounds=at_least(0))
    node_timeout_minutes: float = option(30.0, "datatrove local executor with data.nodes > 1: how long a node waits on another node that shows no sign of life (its heartbeat file, touched every few seconds, unchanged; or never started) before it stops with a message naming that node.", bounds=above(0))
    slurm: SlurmConfig = field(default_factory=SlurmConfig, metadata={"doc": "SLURM settings of data.executor=slurm."})
    publish_to: str = option("", "Also copy the prepared shards, tokenizer and report to this folder or fsspec URL (s3://, gs://), the manifest last; checked for writing before any work.")
    shards_from: str = option("", "Train on the prepared folder at this folder or fsspec URL (s3://, gs://; what data.publish_to wrote) instead of preparing data: each shard is fetched, checked against the manifest's sha256, into $SLMKIT_CACHE/streamed/ when first read. The sources and tokenizer settings are then unused.")


@dataclass
class TokenizerConfig:
    kind: str = option("bpe", "Tokenizer model by name.", choices="slmkit.tokenizer:TOKENIZER_KINDS")
    vocab_size: int = option(32000, "Target vocabulary size including special tokens (char: an upper bound).", bounds=at_least(1))
    special_tokens: list[str] = option(
        ["<|endoftext|>"],
        "Special tokens of a trained tokenizer, given ids 0, 1, ... in this order. The special token with the lowest id "
        "is the end-of-document token (EOS), here the first: it separates documents in the shards and marks where a "
        "text starts and ends in eval, generation and export. A special token added later (a mask token) comes after it.",
    )
    min_frequency: int = option(2, "Minimum pair/token frequency for a merge (bpe, wordpiece).", bounds=at_least(0))
    path: Optional[str] = option(None, "Use this existing tokenizer.json instead of training one.")
    train_chars: int = option(200_000_000, "Train on at most this many characters of the train split (bounds time and memory).", bounds=at_least(1))
    extend: int = option(0, "Domain vocabulary: add up to this many tokens to the tokenizer the run starts from (init_from's, or tokenizer.path), those that save the most tokens on the corpus (BPE merges learned on train_chars of the train split, continuing from that tokenizer's own segmentation); the model's embedding and head rows of each new token start as the mean of the rows of the tokens that spelled it. 0 = no extension.", bounds=at_least(0))
    extend_from: Optional[str] = option(None, "Domain vocabulary: take the new tokens only from the vocabulary of this domain tokenizer.json (still chosen by the tokens they save); with extend 0, every one of its tokens that saves any.")

    @property
    def extends(self) -> bool:
        """Whether the tokenizer at `path` gets a domain vocabulary added to it."""
        return bool(self.extend or self.extend_from)
