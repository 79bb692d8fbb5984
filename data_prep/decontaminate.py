"""Decontamination: find training documents that share long word n-grams with the evaluation sets a recipe names.

As in GPT-3's contamination analysis, text is lowercased, punctuation dropped and 13-word n-grams compared; the
evaluation n-grams become one sorted array of stable 64-bit hashes that worker processes can hold and search.
"""

from __future__ import annotations

import glob
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from data_prep.dedup import normalized_words, word_ngram_hashes
from slmkit.data_config import DecontaminateConfig
from slmkit.errors import SlmkitError

# Files taken from a directory of evaluation data; READMEs and provenance notes are not evaluation text.
_EVAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".txt", ".txt.gz", ".tokens")


@dataclass
class DecontaminateStats:
    documents: int = 0
    characters: int = 0
    contaminated_documents: int = 0
    contaminated_characters: int = 0
    dropped_documents: int = 0
    dropped_characters: int = 0
    matched_ngrams: int = 0
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def merge(self, other: "DecontaminateStats") -> None:
        for name in ("documents", "characters", "contaminated_documents", "contaminated_characters",
                     "dropped_documents", "dropped_characters", "matched_ngrams"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.examples.extend(other.examples[: max(0, self.max_examples - len(self.examples))])


def _expand(paths: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(_EVAL_SUFFIXES))
            if not found:
                raise SlmkitError(f"evaluation folder {path} holds no {'/'.join(_EVAL_SUFFIXES)} files; name the files to decontaminate against.")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise SlmkitError(f"evaluation file {raw!r} does not exist (nor matches any file as a glob); fix the path in data.decontaminate.eval_files.")
            files.extend(matches)
    return files


def _field_texts(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _field_texts(item)


def iter_eval_texts(path: Path, fields: Sequence[str]) -> Iterator[str]:
    """The evaluation texts of one file: the named fields of each jsonl record, or the whole of a text file."""
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            if not name.removesuffix(".gz").endswith(".jsonl"):
                yield handle.read()
                return
            found_any = False
            first_keys: list[str] = []
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise SlmkitError(f"{path}:{line_number} is not valid JSON ({error.msg}); evaluation .jsonl files need one JSON object per line.") from None
                if not isinstance(record, dict):
                    raise SlmkitError(f"{path}:{line_number} is not a JSON object; evaluation .jsonl files need one object per line.")
                first_keys = first_keys or sorted(record)
                for key in fields:
                    if key in record:
                        for text in _field_texts(record[key]):
                            found_any = True
                            yield text
            if not found_any:
                raise SlmkitError(
                    f"{path} has none of the fields {list(fields)} (its records have {first_keys}); "
                    f"set data.decontaminate.fields to the fields that hold the evaluation text."
                )
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise SlmkitError(f"cannot read evaluation file {path}: {error}; check the path and that it is UTF-8 text, jsonl or gzip.") from None


class Decontaminator:
    """A sorted array of evaluation n-gram hashes; `check` counts a document's n-grams found in it. Picklable."""

    def __init__(self, ngram_hashes: np.ndarray, n: int, sources: Sequence[str] = (), min_matches: int = 1,
                 action: str = "drop"):
        self.ngram_hashes = np.unique(np.asarray(ngram_hashes, dtype=np.uint64))
        self.n = n
        self.sources = list(sources)
        self.min_matches = min_matches
        self.action = action

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = 13, **kwargs) -> "Decontaminator":
        parts = []
        for text in texts:
            words = normalized_words(text)
            if len(words) >= n:
                parts.append(word_ngram_hashes(words, n))
        hashes = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        return cls(hashes, n, **kwargs)

    @classmethod
    def from_files(cls, paths: Iterable[str], fields: Sequence[str] = ("text",), n: int = 13, **kwargs) -> "Decontaminator":
        files = _expand(paths)
        texts = (text for path in files for text in iter_eval_texts(path, fields))
        return cls.from_texts(texts, n, sources=[str(path) for path in files], **kwargs)

    @classmethod
    def from_config(cls, cfg: DecontaminateConfig) -> Optional["Decontaminator"]:
        """The decontaminator the recipe asks for, or None when it names no evaluation files."""
        if not cfg.eval_files:
            return None
        return cls.from_files(cfg.eval_files, cfg.fields, cfg.n, min_matches=cfg.min_matches, action=cfg.action)

    def __len__(self) -> int:
        return len(self.ngram_hashes)

    def _matched(self, words: list[str]) -> np.ndarray:
        if len(words) < self.n or len(self.ngram_hashes) == 0:
            return np.zeros(0, dtype=bool)
        hashes = word_ngram_hashes(words, self.n)
        positions = np.searchsorted(self.ngram_hashes, hashes).clip(max=len(self.ngram_hashes) - 1)
        return self.ngram_hashes[positions] == hashes

    def check(self, text: str) -> int:
        """How many of the document's word n-grams (counted per position) occur in the evaluation text."""
        return int(self._matched(normalized_words(text)).sum())

    def keep(self, text: str, stats: Optional[DecontaminateStats] = None) -> bool:
        """False when the document is contaminated and the action is drop; counts the decision in `stats`."""
        words = normalized_words(text)
        matched = self._matched(words)
        count = int(matched.sum())
        contaminated = count >= self.min_matches
        drop = contaminated and self.action == "drop"
        if stats is not None:
            stats.documents += 1
            stats.characters += len(text)
            stats.matched_ngrams += count
            if contaminated:
                stats.contaminated_documents += 1
                stats.contaminated_characters += len(text)
                if len(stats.examples) < stats.max_examples:
                    first = int(np.argmax(matched))
                    stats.examples.append(f"{count} shared {self.n}-grams, e.g. {' '.join(words[first : first + self.n])!r}")
            if drop:
                stats.dropped_documents += 1
                stats.dropped_characters += len(text)
        return not drop
