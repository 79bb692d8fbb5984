"""Text cleaning: Unicode repair and normalization, invisible and control characters, soft hyphens, whitespace,
words hyphenated across line breaks, and removal of boilerplate lines repeated across many documents.

`clean_text` is a pure function of its arguments, safe to run in worker processes; boilerplate lines are found
first by a `BoilerplateDetector` pass (mergeable counts, bounded memory) and handed to every worker.
"""

from __future__ import annotations

import hashlib
import heapq
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from slmkit.data_config import CleanConfig

@dataclass
class CleanStats:
    """What cleaning changed, per kind of fix; mergeable across workers (merge in a fixed order for fixed examples)."""

    documents: int = 0
    documents_changed: int = 0
    characters_in: int = 0
    characters_out: int = 0
    fixes: dict[str, int] = field(default_factory=dict)  # occurrences fixed, per kind
    fix_documents: dict[str, int] = field(default_factory=dict)  # documents with at least one such fix
    replacement_characters: int = 0  # U+FFFD left in the text: the original character is lost, nothing can restore it
    documents_with_replacement_characters: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def _count(self, kind: str, occurrences: int) -> None:
        self.fixes[kind] = self.fixes.get(kind, 0) + occurrences
        self.fix_documents[kind] = self.fix_documents.get(kind, 0) + 1

    def _wants_example(self, kind: str) -> bool:
        return len(self.examples.get(kind, ())) < self.max_examples

    def _add_example(self, kind: str, before: str, after: str) -> None:
        self.examples.setdefault(kind, []).append(_before_after(before, after))

    def merge(self, other: "CleanStats") -> None:
        self.documents += other.documents
        self.documents_changed += other.documents_changed
        self.characters_in += other.characters_in
        self.characters_out += other.characters_out
        self.replacement_characters += other.replacement_characters
        self.documents_with_replacement_characters += other.documents_with_replacement_characters
        for kind, count in other.fixes.items():
            self.fixes[kind] = self.fixes.get(kind, 0) + count
        for kind, count in other.fix_documents.items():
            self.fix_documents[kind] = self.fix_documents.get(kind, 0) + count
        for kind, texts in other.examples.items():
            kept = self.examples.setdefault(kind, [])
            kept.extend(texts[: max(0, self.max_examples - len(kept))])


def _first_difference(a: str, b: str) -> int:
    """Index of the first character where a and b differ, by bisection over C-level prefix comparisons."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _before_after(before: str, after: str, context: int = 30) -> str:
    """A short 'before' -> 'after' snippet around the first change, with newlines shown as ⏎."""
    start = max(0, _first_difference(before, after) - context)
    end = start + 2 * context + 10
    return f"{before[start:end].replace(chr(10), '⏎')!r} -> {after[start:end].replace(chr(10), '⏎')!r}"


# Mojibake is UTF-8 read as Latin-1/cp1252: a lead byte shown as Â..ô followed by a continuation byte shown as a
# cp1252 symbol or Latin-1 sign; C1 controls come from the same mistake. Only text with such a pair goes to ftfy,
# which is ~100x slower than this check.
_MOJIBAKE_HINT = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]|[\u0080-\u009f]"
)
_LINE_BREAKS = re.compile("\r\n?|[\v\f\x85\u2028\u2029]")
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_INVISIBLE_CHARS = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
# A soft hyphen marks where a typesetter may break a word. PDF extraction leaves it, often followed by the line
# break or a space ("Jac\u00ad quelyn"): drop both. Before a capital or digit it stood in for a real hyphen
# ("out-of\u00adState"), so it becomes one.
_SOFT_HYPHEN_BEFORE_CAPITAL = re.compile("(?<=\\w)\u00ad[ \t]*(?:\n[ \t]*)?(?=[A-Z0-9])")
_SOFT_HYPHEN = re.compile("\u00ad[ \t]*(?:\n[ \t]*)?")
_UNICODE_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACES = re.compile(r"[ \t]+(?=\n)")
# A word split by a hyphen at the end of a line: "regu-\nlation". Rejoined only when the next line starts with a
# lowercase letter; "Kennedy-\nBaker" or "Title 16-\n2301" keep their hyphen because a capital or digit after a
# line-end hyphen is far more often a real compound or number range than a broken word.
# The pattern starts at the hyphen (a literal the regex engine scans for quickly); the word before it is found
# in `_rejoin`.
_HYPHENATED_LINE_BREAK = re.compile(r"-[ \t]*\n[ \t]*([^\W\d_]\w*)")
_WORD_BEFORE = re.compile(r"\w+\Z")

# Boilerplate line keys ignore case, digits (page numbers), punctuation and spacing, so "Page 3 of 10" and
# "PAGE 4 OF 10" are one line.
_NOT_LETTER_OR_DIGIT = re.compile(r"[\W_]+")
_DIGITS = re.compile(r"\d+")


def _ftfy_config():
    """Only the encoding repairs of ftfy: no quote uncurling, width folding, ligatures or normalization."""
    import ftfy

    return ftfy.TextFixerConfig(
        unescape_html=False, remove_terminal_escapes=False, fix_encoding=True, restore_byte_a0=True,
        replace_lossy_sequences=True, decode_inconsistent_utf8=True, fix_c1_controls=True,
        fix_latin_ligatures=False, fix_character_width=False, uncurl_quotes=False, fix_line_breaks=False,
        fix_surrogates=True, remove_control_chars=False, normalization=None, explain=False,
    )


def _char_range(first: str, last: str) -> frozenset[str]:
    return frozenset(map(chr, range(ord(first), ord(last) + 1)))


# The characters each regex pass below can match; a pass runs only when the document contains one of them.
_MOJIBAKE_LEADS = _char_range("\u00c2", "\u00f4") | _char_range("\u0080", "\u009f")
_LINE_BREAK_CHARS = frozenset("\r\v\f\x85\u2028\u2029")
_CONTROL_CHAR_SET = _char_range("\x00", "\x08") | frozenset("\x0b\x0c") | _char_range("\x0e", "\x1f") | _char_range("\x7f", "\x9f")
_INVISIBLE_CHAR_SET = _char_range("\u200b", "\u200f") | _char_range("\u202a", "\u202e") | _char_range("\u2060", "\u2064") | {"\ufeff"}
_UNICODE_SPACE_SET = frozenset("\u00a0\u1680\u202f\u205f\u3000") | _char_range("\u2000", "\u200a")


def _unusual_characters(text: str) -> frozenset[str]:
    """The distinct characters of `text` outside printable ASCII, newline and tab, found in one vectorized pass.

    Nearly all text is made of those, so this small set tells which cleaning passes can have anything to do.
    """
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    unusual = codes[((codes < 32) & (codes != 9) & (codes != 10)) | (codes > 126)]
    return frozenset(map(chr, np.unique(unusual).tolist()))


def _rejoin(match: re.Match) -> str:
    right = match.group(1)
    before = _WORD_BEFORE.search(match.string, max(0, match.start() - 64), match.start())
    if before is None or not right[0].islower():
        return match.group(0)
    # the same compound written with its hyphen elsewhere in the document ("well-known") keeps the hyphen
    return "-" + right if f"{before.group(0)}-{right}" in match.string else right


def _apply(kind: str, pattern: re.Pattern, replacement, text: str, stats: Optional[CleanStats]) -> str:
    new, count = pattern.subn(replacement, text)
    if count and stats is not None:
        stats._count(kind, count)
        if stats._wants_example(kind):
            stats._add_example(kind, text, new)
    return new


def clean_text(
    text: str,
    cfg: CleanConfig,
    boilerplate: Optional["BoilerplateLines"] = None,
    stats: Optional[CleanStats] = None,
) -> str:
    """The cleaned document. Fixes run in a fixed order; `stats`, when given, counts each fix and keeps examples."""
    # Long on purpose: one fix after another, in the order they must run, each with its count; split up, the order
    # (which the tests pin) would live in no one place.
    if not cfg.enabled:
        return text
    original = text
    # Most documents need few fixes: every regex pass below runs only when a character it could match is present,
    # which keeps cleaning at a small fraction of tokenizer time.
    unusual = _unusual_characters(text)
    if cfg.fix_mojibake and unusual & _MOJIBAKE_LEADS and _MOJIBAKE_HINT.search(text):
        import ftfy

        fixed = ftfy.fix_text(text, config=_ftfy_config())
        if fixed != text and stats is not None:
            stats._count("mojibake", 1)
            if stats._wants_example("mojibake"):
                stats._add_example("mojibake", text, fixed)
        text = fixed
    if cfg.unicode_normalization != "none" and unusual and not unicodedata.is_normalized(cfg.unicode_normalization, text):
        normalized = unicodedata.normalize(cfg.unicode_normalization, text)
        if stats is not None and normalized != text:
            stats._count("unicode_normalization", 1)
            if stats._wants_example("unicode_normalization"):
                stats._add_example("unicode_normalization", text, normalized)
        text = normalized
    if text is not original:  # repair or normalization may have changed which characters occur
        unusual = _unusual_characters(text)
    if cfg.remove_control_chars:
        if unusual & _LINE_BREAK_CHARS:
            text = _apply("line_breaks", _LINE_BREAKS, "\n", text, stats)
        if unusual & _CONTROL_CHAR_SET:
            text = _apply("control_chars", _CONTROL_CHARS, "", text, stats)
    if cfg.remove_invisible_chars and unusual & _INVISIBLE_CHAR_SET:
        text = _apply("invisible_chars", _INVISIBLE_CHARS, "", text, stats)
    if cfg.remove_soft_hyphens and "\u00ad" in unusual:
        text = _apply("soft_hyphens", _SOFT_HYPHEN_BEFORE_CAPITAL, "-", text, stats)
        text = _apply("soft_hyphens", _SOFT_HYPHEN, "", text, stats)
    if cfg.normalize_whitespace and unusual & _UNICODE_SPACE_SET:
        text = _apply("unicode_spaces", _UNICODE_SPACES, " ", text, stats)
    if cfg.normalize_whitespace and (" \n" in text or "\t\n" in text):
        text = _apply("trailing_spaces", _TRAILING_SPACES, "", text, stats)
    if boilerplate is not None and boilerplate.keys:
        text = _remove_boilerplate(text, boilerplate, stats)
    # with whitespace normalized no space or tab is left between a hyphen and the line break that follows it
    if cfg.rejoin_hyphenated_words and ("-\n" if cfg.normalize_whitespace else "-") in text:
        text = _apply("hyphenated_line_breaks", _HYPHENATED_LINE_BREAK, _rejoin, text, stats)
    if cfg.normalize_whitespace:
        run = "\n" * (cfg.max_blank_lines + 2)
        if run in text:
            text = _apply("blank_lines", re.compile(run + "+"), "\n" * (cfg.max_blank_lines + 1), text, stats)
        stripped = text.strip()
        if stripped != text and stats is not None:
            stats._count("document_edges", 1)
        text = stripped

    if stats is not None:
        stats.documents += 1
        stats.characters_in += len(original)
        stats.characters_out += len(text)
        if text != original:
            stats.documents_changed += 1
        replacement = text.count("\ufffd")
        if replacement:
            stats.replacement_characters += replacement
            stats.documents_with_replacement_characters += 1
    return text


# ---- boilerplate lines ---------------------------------------------------------------------------------------


def boilerplate_line_key(line: str, min_chars: int) -> Optional[int]:
    """A stable 64-bit key of a line's letters and digits (digits as 0), or None for lines too short to judge."""
    normalized = _DIGITS.sub("0", _NOT_LETTER_OR_DIGIT.sub(" ", line.lower())).strip()
    if len(normalized) < min_chars:
        return None
    # blake2b, not hash(): keys must agree across worker processes, whose str hashes are salted differently
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class BoilerplateLines:
    """The keys of lines judged boilerplate; hand it to `clean_text` in every worker."""

    keys: frozenset[int] = frozenset()
    min_line_chars: int = 10


class BoilerplateDetector:
    """Counts, per distinct normalized line, the documents it occurs in; bounded memory, mergeable.

    Memory is bounded like the Misra-Gries frequent-items summary: when more than twice `max_tracked_lines` lines
    are tracked, the count just above the `max_tracked_lines`-th largest is subtracted from every line and lines
    at zero are forgotten. A line is undercounted by at most documents*lines_per_document/max_tracked_lines, so
    lines in a large fraction of documents (the only ones that matter) are always kept. Merging two detectors adds
    counts, then prunes the same way, so workers can count shards in parallel.
    """

    def __init__(self, cfg: CleanConfig):
        self.min_line_chars = cfg.boilerplate_min_line_chars
        self.max_tracked_lines = cfg.boilerplate_max_tracked_lines
        self.min_doc_fraction = cfg.boilerplate_min_doc_fraction
        self.min_docs = cfg.boilerplate_min_docs
        self.documents = 0
        self.counts: dict[int, int] = {}
        self.samples: dict[int, str] = {}  # one original line per key, for the report

    def add(self, text: str) -> None:
        """Count each distinct line of one document once."""
        self.documents += 1
        seen: set[int] = set()
        for line in text.split("\n"):
            key = boilerplate_line_key(line, self.min_line_chars)
            if key is None or key in seen:
                continue
            seen.add(key)
            self.counts[key] = self.counts.get(key, 0) + 1
            if key not in self.samples and len(self.samples) < self.max_tracked_lines:
                self.samples[key] = line.strip()[:200]
        if len(self.counts) > 2 * self.max_tracked_lines:
            self._prune()

    def merge(self, other: "BoilerplateDetector") -> None:
        self.documents += other.documents
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        for key, line in other.samples.items():
            self.samples.setdefault(key, line)
        if len(self.counts) > self.max_tracked_lines:
            self._prune()

    def _prune(self) -> None:
        floor = heapq.nlargest(self.max_tracked_lines + 1, self.counts.values())[-1]
        self.counts = {key: count - floor for key, count in self.counts.items() if count > floor}
        self.samples = {key: line for key, line in self.samples.items() if key in self.counts}

    def threshold(self) -> int:
        """Documents a line must occur in to count as boilerplate."""
        return max(self.min_docs, int(self.min_doc_fraction * self.documents) + 1)

    def boilerplate(self) -> BoilerplateLines:
        needed = self.threshold()
        return BoilerplateLines(
            keys=frozenset(key for key, count in self.counts.items() if count >= needed),
            min_line_chars=self.min_line_chars,
        )

    def report(self, limit: int = 20) -> list[tuple[str, int]]:
        """The most frequent boilerplate lines with their document counts, most frequent first."""
        needed = self.threshold()
        found = sorted(((count, key) for key, count in self.counts.items() if count >= needed), reverse=True)
        return [(self.samples.get(key, f"<line {key:016x}>"), count) for count, key in found[:limit]]


def _remove_boilerplate(text: str, boilerplate: BoilerplateLines, stats: Optional[CleanStats]) -> str:
    kept = []
    removed = 0
    for line in text.split("\n"):
        if boilerplate_line_key(line, boilerplate.min_line_chars) in boilerplate.keys:
            removed += 1
            if stats is not None and stats._wants_example("boilerplate_lines"):
                stats.examples.setdefault("boilerplate_lines", []).append(repr(line.strip()[:80]))
        else:
            kept.append(line)
    if not removed:
        return text
    if stats is not None:
        stats._count("boilerplate_lines", removed)
    return "\n".join(kept)
