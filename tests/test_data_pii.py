"""PII redaction: each kind replaced by its placeholder and counted, legal citations and dates left alone."""

from __future__ import annotations

import gzip
import json
from itertools import islice

import pytest

from data_prep.pii import PiiStats, luhn_valid, redact_pii
from slmkit.data_config import PiiConfig
from slmkit.errors import SlmkitError

ON = PiiConfig(enabled=True)


def test_off_by_default():
    text = "Write to jane.doe@example.com or call 202-555-0143."
    assert redact_pii(text, PiiConfig()) == text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Write to jane.doe+law@example.co.uk today.", "Write to <EMAIL> today."),
        ("Call 202-555-0143 now.", "Call <PHONE> now."),
        ("Call (202) 555-0143 now.", "Call <PHONE> now."),
        ("Call (202)555-0143 now.", "Call <PHONE> now."),
        ("Call 202.555.0143 now.", "Call <PHONE> now."),
        ("Call +1 202-555-0143 now.", "Call <PHONE> now."),
        ("Call 1-800-555-0199 now.", "Call <PHONE> now."),
        ("SSN 219-09-9999 on file.", "SSN <SSN> on file."),
        ("Card 4111 1111 1111 1111 expired.", "Card <CARD> expired."),
        ("Card 5500-0000-0000-0004 expired.", "Card <CARD> expired."),
        ("Card 378282246310005 expired.", "Card <CARD> expired."),
    ],
)
def test_each_kind_is_replaced_by_its_placeholder(text, expected):
    assert redact_pii(text, ON) == expected


@pytest.mark.parametrize(
    "text",
    [
        "D.C. Code \u00a7 16-2301 and D.C. Official Code \u00a7 38-1800.01 et seq.",
        "See 123 F.3d 456, 459 (D.C. Cir. 1997); 495 F. Supp. 2d 635, 637.",
        "Pub. L. 111-148, 124 Stat. 119; 29 U.S.C. \u00a7 701 et seq.; 42 U.S.C. \u00a7 1983.",
        "D.C. Law 10-295, effective May 17, 2010 (2010-05-17), No. 08-1301, Nos. 12-1573, 12-1653.",
        "Tenn. Code Ann. \u00a7 39-13-1002 and \u00a7 123-45-6789 of the title.",
        "amounts of 250 500 1000 and 2,500,000 in fiscal years 2019-2020; section 47-2313.",
        "Not a card: 4111 1111 1111 1112 (checksum fails); docket 1234567890123.",
        "Invalid SSNs 000-12-3456 and 666-12-3456 and 912-12-3456; phone-like 123-456-7890.",
    ],
)
def test_legal_citations_dates_and_numbers_are_left_alone(text):
    assert redact_pii(text, ON) == text


def test_counts_per_kind_and_examples_never_show_the_data():
    stats = PiiStats()
    redact_pii("Mail a@b.org or c@d.org, phone 202-555-0143.", ON, stats)
    redact_pii("Nothing personal here at all.", ON, stats)
    redact_pii("SSN 219-09-9999; reach me at e@f.net.", ON, stats)
    assert stats.documents == 3 and stats.documents_changed == 2
    assert stats.replaced == {"email": 3, "phone": 1, "ssn": 1}
    assert stats.documents_per_kind == {"email": 2, "phone": 1, "ssn": 1}
    shown = " ".join(example for examples in stats.examples.values() for example in examples)
    assert "<EMAIL>" in shown and "@" not in shown and "0143" not in shown and "9999" not in shown
    other = PiiStats()
    redact_pii("x@y.com", ON, other)
    stats.merge(other)
    assert stats.replaced["email"] == 4 and stats.documents == 4


def test_kinds_and_placeholders_are_configurable():
    cfg = PiiConfig(enabled=True, kinds=["email"], placeholders={"email": "[email]"})
    assert redact_pii("a@b.org, 202-555-0143", cfg) == "[email], 202-555-0143"


@pytest.mark.parametrize(
    "overrides, message",
    [({"kinds": ["email", "address"]}, "unknown kinds"), ({"placeholders": {"email": "<E>"}}, "no replacement")],
)
def test_bad_config_values_raise_slmkit_error(overrides, message):
    with pytest.raises(SlmkitError, match=message):
        PiiConfig(enabled=True, **overrides)


def test_luhn_checksum():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


def test_real_statutes_are_almost_untouched(legal_corpus):
    stats = PiiStats()
    with gzip.open(legal_corpus / "dc_code_sections.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in islice(handle, 3000):
            text = json.loads(line)["text"]
            out = redact_pii(text, ON, stats)
            assert "\u00a7" not in text or out.count("\u00a7") == text.count("\u00a7")
    # thousands of section numbers, citations and dates: at most a published agency phone number may match
    assert stats.documents_changed <= 3, stats.examples
