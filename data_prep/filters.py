"""Document quality filters: the Gopher heuristics (Rae et al. 2021, appendix A) and a stopword language check.

`filter_document(text, cfg)` returns the name of the first rule a document breaks, or None to keep it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from slmkit.data_config import STOPWORD_LANGUAGES, FilterConfig

# Function words per language, for the "is this the target language?" check. Short lists on purpose: the ratio of
# such words among all words is ~0.35-0.5 in running prose of that language and near zero in other languages.
STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "a about above after all also an and any are as at be been before being between both but by can could did do "
        "does each for from had has have he her his how i if in into is it its may might more most must my no nor not "
        "of on only or other our shall she should so some such than that the their them then there these they this "
        "those through to under upon was we were what when where which while who whom will with within without would "
        "you your".split()
    ),
    "fr": frozenset(
        "au aux avec ce ces cette dans de des du elle en est et il ils je la le les leur lui mais me même ne nous on ou "
        "par pas pour qu que qui sa se ses son sont sur ta te tu un une vous été être avait fait comme plus".split()
    ),
    "de": frozenset(
        "aber als am an auch auf aus bei bin bis das dass dem den der des die doch du ein eine einem einen einer eines "
        "er es für hat ich ihr im in ist ja kein mit nach nicht noch nur oder sich sie sind so über um und uns von vor "
        "war wie wir wird zu zum zur werden wurde".split()
    ),
    "es": frozenset(
        "a al como con de del el ella en entre es esta este fue ha la las le lo los más no o para pero por que se sin "
        "son su sus también un una uno y ya ser está han sobre".split()
    ),
}

for _language, _words in STOPWORDS.items():  # what makes a language valid for data.filter.language
    STOPWORD_LANGUAGES.register(_language)(_words)

# The eight words of Gopher's stop-word rule: text with fewer than two of them is rarely natural English prose.
GOPHER_STOPWORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])


def _with_attached_punctuation(words: frozenset[str]) -> frozenset[str]:
    """The words plus their forms with punctuation glued on ("the," "(of"), so whitespace-split words match by set lookup."""
    forms = set(words)
    for word in words:
        forms.update(word + p for p in ",.;:!?)\"”’")
        forms.update(p + word for p in "(\"“‘")
    return frozenset(forms)


_STOPWORD_FORMS = {language: _with_attached_punctuation(words) for language, words in STOPWORDS.items()}
_GOPHER_STOPWORD_FORMS = _with_attached_punctuation(GOPHER_STOPWORDS)

_BULLETS = frozenset("•●○■□▪▫‣⁃◦*-–")
_HAS_LETTER = re.compile(r"[^\W\d_]")
_HAS_ALNUM = re.compile(r"[^\W_]")
_PARAGRAPHS = re.compile(r"\n[ \t]*\n\s*")

# Word n-gram keys combine per-document word ids in wrapping 64-bit arithmetic (a multiplicative hash).
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class FilterStats:
    """What the filters dropped, per reason; mergeable across workers (merge in a fixed order for fixed examples)."""

    documents: int = 0
    characters: int = 0
    dropped_documents: dict[str, int] = field(default_factory=dict)
    dropped_characters: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def record(self, text: str, reason: Optional[str]) -> None:
        self.documents += 1
        self.characters += len(text)
        if reason is None:
            return
        self.dropped_documents[reason] = self.dropped_documents.get(reason, 0) + 1
        self.dropped_characters[reason] = self.dropped_characters.get(reason, 0) + len(text)
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(_snippet(text))

    def merge(self, other: "FilterStats") -> None:
        self.documents += other.documents
        self.characters += other.characters
        for reason, count in other.dropped_documents.items():
            self.dropped_documents[reason] = self.dropped_documents.get(reason, 0) + count
        for reason, count in other.dropped_characters.items():
            self.dropped_characters[reason] = self.dropped_characters.get(reason, 0) + count
        for reason, texts in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(texts[: max(0, self.max_examples - len(kept))])

    @property
    def total_dropped_documents(self) -> int:
        return sum(self.dropped_documents.values())

    @property
    def total_dropped_characters(self) -> int:
        return sum(self.dropped_characters.values())


def _snippet(text: str, limit: int = 160) -> str:
    flat = " ".join(text[: limit * 2].split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def filter_document(text: str, cfg: FilterConfig) -> Optional[str]:
    """The first rule `text` breaks (e.g. 'too_few_words', 'duplicate_5gram_chars'), or None to keep it.

    Rules run cheapest first and stop at the first failure, so a document is counted under one reason only.
    """
    # Long on purpose: the rules in their one order, cheapest first, each returning its reason; split up, that order
    # would live in no one place.
    if not cfg.enabled:
        return None
    n_chars = len(text)
    if cfg.min_chars is not None and n_chars < cfg.min_chars:
        return "too_few_chars"
    if cfg.max_chars is not None and n_chars > cfg.max_chars:
        return "too_many_chars"

    # Lowercased words serve every word-level rule: counts and lengths are unchanged by case folding, the
    # stopword lists are lowercase, and n-gram repetition should not depend on capitalisation.
    words = text.lower().split()
    n_words = len(words)
    if cfg.min_words is not None and n_words < cfg.min_words:
        return "too_few_words"
    if cfg.max_words is not None and n_words > cfg.max_words:
        return "too_many_words"
    if n_words == 0:
        return "empty"

    # One pass counts the words; every later word rule reads the (much smaller) table of distinct words.
    word_counts = Counter(words)
    counts = np.fromiter(word_counts.values(), dtype=np.int64, count=len(word_counts))
    distinct_lengths = np.fromiter(map(len, word_counts), dtype=np.int64, count=len(word_counts))
    word_chars = int(counts @ distinct_lengths)
    mean_length = word_chars / n_words
    if cfg.min_mean_word_length is not None and mean_length < cfg.min_mean_word_length:
        return "mean_word_length_low"
    if cfg.max_mean_word_length is not None and mean_length > cfg.max_mean_word_length:
        return "mean_word_length_high"

    if cfg.max_symbol_word_ratio is not None:
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n_words > cfg.max_symbol_word_ratio:
            return "symbol_word_ratio"

    if cfg.max_bullet_lines_fraction is not None or cfg.max_ellipsis_lines_fraction is not None:
        # one split and a string test per line: MULTILINE regexes try every character position and cost ~5x more
        lines = [line.lstrip(" \t") for line in text.split("\n")]
        n_lines = max(1, sum(1 for line in lines if line and not line[0].isspace()))
        if cfg.max_bullet_lines_fraction is not None:
            bullets = sum(1 for line in lines if line[:1] in _BULLETS)
            if bullets / n_lines > cfg.max_bullet_lines_fraction:
                return "bullet_lines"
        if cfg.max_ellipsis_lines_fraction is not None and ("..." in text or "…" in text):
            ellipses = sum(1 for line in lines if line.rstrip(" \t").endswith(("...", "…")))
            if ellipses / n_lines > cfg.max_ellipsis_lines_fraction:
                return "ellipsis_lines"

    if cfg.min_alpha_words_fraction is not None:
        # Words are lowercase, so upper-casing leaves exactly the words without a cased letter unchanged; only
        # those few need the regex that also recognises uncased letters (CJK, Arabic, ...).
        without_letter = sum(
            count for word, count in word_counts.items() if word == word.upper() and not _HAS_LETTER.search(word)
        )
        if 1.0 - without_letter / n_words < cfg.min_alpha_words_fraction:
            return "alpha_words_fraction"

    judged_by_gopher = n_words >= cfg.gopher_min_words
    if cfg.min_gopher_stopwords is not None and judged_by_gopher:
        if _count_of(_GOPHER_STOPWORD_FORMS, word_counts) < cfg.min_gopher_stopwords:
            return "gopher_stopwords"
    if cfg.min_stopword_ratio is not None:
        if _count_of(_STOPWORD_FORMS[cfg.language], word_counts) / n_words < cfg.min_stopword_ratio:
            return "not_target_language"

    reason = _repetition_reason(text, cfg)
    if reason is not None or not judged_by_gopher:
        return reason
    return _ngram_reason(words, word_counts, counts, distinct_lengths, word_chars, cfg)


def _count_of(vocabulary: frozenset[str], word_counts: Counter) -> int:
    """Occurrences of any of `vocabulary` among the counted words."""
    return sum(map(word_counts.__getitem__, vocabulary.intersection(word_counts)))


def _duplicate_fractions(elements: list[str]) -> tuple[float, float]:
    """(fraction of elements that repeat an earlier one, fraction of characters in those repeats)."""
    if len(set(elements)) == len(elements):  # the common case, decided in C
        return 0.0, 0.0
    seen: set[str] = set()
    duplicates = duplicate_chars = total_chars = 0
    for element in elements:
        total_chars += len(element)
        if element in seen:
            duplicates += 1
            duplicate_chars += len(element)
        else:
            seen.add(element)
    if not elements or total_chars == 0:
        return 0.0, 0.0
    return duplicates / len(elements), duplicate_chars / total_chars


def _repetition_reason(text: str, cfg: FilterConfig) -> Optional[str]:
    # Lines and paragraphs without a letter or digit ("——————", ".", "* * *") are separators and extraction
    # placeholders, not repeated content; statutes and opinions carry hundreds of them.
    if cfg.max_duplicate_lines_fraction is not None or cfg.max_duplicate_line_chars_fraction is not None:
        lines = [line for line in text.strip().split("\n") if _HAS_ALNUM.search(line)]
        line_fraction, line_chars_fraction = _duplicate_fractions(lines)
        if cfg.max_duplicate_lines_fraction is not None and line_fraction > cfg.max_duplicate_lines_fraction:
            return "duplicate_lines"
        if cfg.max_duplicate_line_chars_fraction is not None and line_chars_fraction > cfg.max_duplicate_line_chars_fraction:
            return "duplicate_line_chars"
    if cfg.max_duplicate_paragraphs_fraction is not None or cfg.max_duplicate_paragraph_chars_fraction is not None:
        paragraphs = [p for p in _PARAGRAPHS.split(text.strip()) if _HAS_ALNUM.search(p)]
        if len(paragraphs) > 1:
            par_fraction, par_chars_fraction = _duplicate_fractions(paragraphs)
            if cfg.max_duplicate_paragraphs_fraction is not None and par_fraction > cfg.max_duplicate_paragraphs_fraction:
                return "duplicate_paragraphs"
            if (
                cfg.max_duplicate_paragraph_chars_fraction is not None
                and par_chars_fraction > cfg.max_duplicate_paragraph_chars_fraction
            ):
                return "duplicate_paragraph_chars"
    return None


def _ngram_keys(word_ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit key per word n-gram (position i covers words i .. i+n-1); wraps around on overflow."""
    count = len(word_ids) - n + 1
    keys = word_ids[:count].copy()
    for offset in range(1, n):
        keys *= _NGRAM_MULTIPLIER
        keys += word_ids[offset : offset + count]
    return keys


def _repeated_starts(keys: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(mask of positions whose key occurs more than once, count of the most frequent key, one of its positions)."""
    repeated, run_starts, run_lengths, order = _runs(keys)
    return repeated, *_most_frequent(run_starts, run_lengths, order)


def _most_frequent(run_starts: np.ndarray, run_lengths: np.ndarray, order: np.ndarray) -> tuple[int, int]:
    """(count of the most frequent key, one of its positions), from the runs of `_runs`."""
    top = int(np.argmax(run_lengths))
    return int(run_lengths[top]), int(order[run_starts[top]])


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(repeated mask, start and length of each run of equal keys in sorted order, the sorting permutation)."""
    order = np.argsort(keys)  # unstable is fine: every occurrence of a key is the same n-gram
    ordered = keys[order]
    same_as_next = ordered[1:] == ordered[:-1]
    repeated_sorted = np.zeros(len(keys), dtype=bool)
    repeated_sorted[1:] |= same_as_next
    repeated_sorted[:-1] |= same_as_next
    repeated = np.empty(len(keys), dtype=bool)
    repeated[order] = repeated_sorted
    run_starts = np.flatnonzero(np.concatenate(([True], ~same_as_next)))
    run_lengths = np.diff(np.append(run_starts, len(keys)))
    return repeated, run_starts, run_lengths, order


def _ngram_reason(
    words: list[str], word_counts: Counter, counts: np.ndarray, distinct_lengths: np.ndarray, word_chars: int, cfg: FilterConfig
) -> Optional[str]:
    """The Gopher n-gram rules; `counts` and `distinct_lengths` describe the distinct words in `word_counts` order."""
    top_rules = cfg.max_top_ngram_chars_fraction
    dup_rules = cfg.max_duplicate_ngram_chars_fraction
    if (not top_rules and not dup_rules) or word_chars == 0:
        return None
    # Cheap upper bounds from word counts decide some documents without looking at n-grams:
    # an n-gram g of words w_i has count(g) * chars(g) <= sum_i count(w_i) * len(w_i) <= n * heaviest word mass,
    # and only words that occur twice can lie inside a repeated n-gram.
    masses = counts * distinct_lengths
    repeated_words = counts > 1
    repeated_word_chars = int(masses[repeated_words].sum())
    heaviest = max(int(masses[repeated_words].max(initial=0)), int(distinct_lengths.max()))
    top_to_check = [n for n in sorted(top_rules) if n * heaviest / word_chars > top_rules[n]]
    dup_to_check = [n for n in sorted(dup_rules) if repeated_word_chars / word_chars > dup_rules[n]]
    if not top_to_check and not dup_to_check:
        return None

    n_words = len(words)
    ids = dict(zip(word_counts, range(len(word_counts))))
    word_ids = np.fromiter(map(ids.__getitem__, words), dtype=np.int64, count=n_words)
    lengths = distinct_lengths[word_ids]
    word_ids = word_ids.astype(np.uint64)
    with np.errstate(over="ignore"):
        # One bigram pass bounds every longer n-gram, which spares most documents the sorts for larger n:
        # - an n-gram that occurs k times holds n // 2 disjoint bigrams that each occur at least k times (and one
        #   more word when n is odd), so k * chars <= (n // 2) * heaviest bigram mass + (n % 2) * heaviest word mass;
        # - a word inside a repeated n-gram is inside a repeated bigram, so the bigrams' covered fraction bounds
        #   every n's (the covered fraction only shrinks as n grows: once at or below a threshold, skip that n).
        heaviest_bigram, covered_fraction = None, 1.0
        if n_words >= 2:
            repeated, run_starts, run_lengths, order = _runs(_ngram_keys(word_ids, 2))
            bigram_chars = lengths[:-1] + lengths[1:]
            heaviest_bigram = int((run_lengths * bigram_chars[order[run_starts]]).max())
            top_bigram = _most_frequent(run_starts, run_lengths, order)
            covered_fraction = _covered_fraction(repeated, 2, lengths, word_chars)
        for n in top_to_check:
            if n_words < n:
                continue
            if n == 2:
                count, start = top_bigram
            elif ((n // 2) * heaviest_bigram + (n % 2) * heaviest) / word_chars <= top_rules[n]:
                continue
            else:
                _, count, start = _repeated_starts(_ngram_keys(word_ids, n))
            if count > 1 and count * int(lengths[start : start + n].sum()) / word_chars > top_rules[n]:
                return f"top_{n}gram_chars"
        for n in dup_to_check:
            if n_words < n or covered_fraction <= dup_rules[n]:
                continue
            repeated, _, _ = _repeated_starts(_ngram_keys(word_ids, n))
            covered_fraction = _covered_fraction(repeated, n, lengths, word_chars)
            if covered_fraction > dup_rules[n]:
                return f"duplicate_{n}gram_chars"
    return None


def _covered_fraction(repeated: np.ndarray, n: int, lengths: np.ndarray, word_chars: int) -> float:
    """Fraction of word characters inside an n-gram that occurs more than once (`repeated` marks their starts)."""
    covered = np.zeros(len(lengths), dtype=bool)
    for offset in range(n):  # word j is covered when a repeated n-gram starts at one of j-n+1 .. j
        covered[offset : offset + len(repeated)] |= repeated
    return float(lengths[covered].sum()) / word_chars
