"""Personal data redaction: e-mail addresses, US phone numbers, US social security numbers and payment card
numbers (Luhn-checked) become typed placeholders such as <EMAIL>; off by default, as public legal text has none.

The patterns are deliberately narrow so that legal citations ("D.C. Code § 16-2301", "123 F.3d 456"), dates and
statute numbers survive: phone numbers need a NANP area code and one consistent separator, SSNs the SSA's ranges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from slmkit.data_config import PII_KINDS, PiiConfig

@dataclass
class PiiStats:
    documents: int = 0
    documents_changed: int = 0
    replaced: dict[str, int] = field(default_factory=dict)
    documents_per_kind: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def merge(self, other: "PiiStats") -> None:
        self.documents += other.documents
        self.documents_changed += other.documents_changed
        for kind, count in other.replaced.items():
            self.replaced[kind] = self.replaced.get(kind, 0) + count
        for kind, count in other.documents_per_kind.items():
            self.documents_per_kind[kind] = self.documents_per_kind.get(kind, 0) + count
        for kind, texts in other.examples.items():
            kept = self.examples.setdefault(kind, [])
            kept.extend(texts[: max(0, self.max_examples - len(kept))])


_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])")
# 13-19 digits, optionally grouped by single spaces or hyphens; validated by prefix and Luhn checksum below.
_CARD_CANDIDATE = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[47]|6(?:011|5)")
# SSA never issues area 000, 666 or 9xx, group 00 or serial 0000; a preceding "§" marks a statute number.
_SSN = re.compile(r"(?<![\w-])(?<!§ )(?<!§)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
# NANP: area code and exchange start with 2-9. Without parentheses the three groups must share one separator
# ("202-727-1000", "202.727.1000"), so number lists and ranges ("250 500 1000", "16-2301") are not phones.
_PHONE = re.compile(
    r"(?<![\w-])(?:\+?1[ .-]?)?"
    r"(?:\([2-9]\d{2}\)[ ]?[2-9]\d{2}[-.]\d{4}|[2-9]\d{2}([-.])[2-9]\d{2}\1\d{4})"
    r"(?![\w-])"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies (and ~90% of random digit strings fail)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _is_card(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) is not None and luhn_valid(digits)


_PATTERNS: dict[str, tuple[re.Pattern, Optional[Callable[[str], bool]]]] = {
    "email": (_EMAIL, None),
    "card": (_CARD_CANDIDATE, _is_card),
    "ssn": (_SSN, None),
    "phone": (_PHONE, None),
}


def redact_pii(text: str, cfg: PiiConfig, stats: Optional[PiiStats] = None) -> str:
    """The text with every enabled kind of personal data replaced by its placeholder."""
    if not cfg.enabled:
        return text
    found_kinds = []
    for kind in PII_KINDS:
        if kind not in cfg.kinds or (kind == "email" and "@" not in text):
            continue
        pattern, valid = _PATTERNS[kind]
        placeholder = cfg.placeholders[kind]
        if valid is None:
            new, count = pattern.subn(placeholder, text)
        else:
            found = [0]

            def replace(match: re.Match) -> str:
                if not valid(match.group(0)):
                    return match.group(0)
                found[0] += 1
                return placeholder

            new = pattern.sub(replace, text)
            count = found[0]
        if count:
            found_kinds.append(kind)
            if stats is not None:
                stats.replaced[kind] = stats.replaced.get(kind, 0) + count
                stats.documents_per_kind[kind] = stats.documents_per_kind.get(kind, 0) + 1
        text = new
    if stats is not None:
        # examples come from the fully redacted text, so no other kind of personal data can show in them
        for kind in found_kinds:
            kept = stats.examples.setdefault(kind, [])
            placeholder = cfg.placeholders[kind]
            if len(kept) < stats.max_examples and placeholder in text:
                at = text.index(placeholder)
                kept.append(" ".join(text[max(0, at - 40) : at + len(placeholder) + 40].split()))
        stats.documents += 1
        stats.documents_changed += bool(found_kinds)
    return text
