"""Cleaning: each fix on short synthetic strings, stats and examples, boilerplate detection, and real legal text."""

from __future__ import annotations

import gzip
import json
import pickle
from itertools import islice

import pytest

from data_prep.clean import BoilerplateDetector, BoilerplateLines, CleanStats, boilerplate_line_key, clean_text
from slmkit.data_config import CleanConfig
from slmkit.errors import SlmkitError


def clean(text: str, **overrides) -> str:
    return clean_text(text, CleanConfig(**overrides))


def test_nfc_composes_accents_and_nfkc_also_folds_compatibility_forms():
    assert clean("re\u0301sume\u0301") == "résumé"
    assert clean("\ufb01nal x\u00b2") == "\ufb01nal x\u00b2"  # NFC keeps ligatures and superscripts
    assert clean("\ufb01nal x\u00b2", unicode_normalization="NFKC") == "final x2"
    assert clean("re\u0301sume\u0301", unicode_normalization="none") == "re\u0301sume\u0301"


def test_soft_hyphens_are_removed_and_the_split_word_rejoined():
    assert clean("respondent Jac\u00ad quelyn Abbott") == "respondent Jacquelyn Abbott"
    assert clean("the regu\u00adlation applies") == "the regulation applies"
    assert clean("Wash\u00ad\nington, D. C.") == "Washington, D. C."
    # before a capital or digit it stood for a real hyphen
    assert clean("out-of\u00adState tuition") == "out-of-State tuition"
    assert clean("held on January 26-\u00ad27, 2016") == "held on January 26-27, 2016"


def test_zero_width_and_control_characters_are_removed_but_newlines_and_tabs_kept():
    assert clean("a\u200bb\u200dc\ufeffd\u2060e") == "abcde"
    assert clean("one\x00two\x07\tthree\r\nfour\rfive\x0csix") == "onetwo\tthree\nfour\nfive\nsix"


def test_mojibake_is_repaired_with_ftfy_and_can_be_switched_off():
    assert clean("caf\u00c3\u00a9 au lait") == "café au lait"
    assert clean("\u00e2\u20ac\u0153quoted\u00e2\u20ac\x9d") == "\u201cquoted\u201d"
    assert clean("caf\u00c3\u00a9", fix_mojibake=False) == "caf\u00c3\u00a9"
    # text that merely contains accents and curly quotes is left alone
    assert clean("na\u00efve \u201cr\u00e9sum\u00e9\u201d \u00a7 5") == "na\u00efve \u201cr\u00e9sum\u00e9\u201d \u00a7 5"


def test_replacement_characters_are_counted_not_invented_away():
    stats = CleanStats()
    out = clean_text("an increase of \ufffd percentage point", CleanConfig(), stats=stats)
    assert out == "an increase of \ufffd percentage point"
    assert stats.replacement_characters == 1 and stats.documents_with_replacement_characters == 1


def test_whitespace_is_normalized():
    text = "  Title  \n\n\n\nfirst\u00a0line   \nsecond\u2009line\t\n\n\n\n\nend \n"
    assert clean(text) == "Title\n\nfirst line\nsecond line\n\nend"
    assert clean(text, max_blank_lines=0) == "Title\nfirst line\nsecond line\nend"
    assert clean(text, normalize_whitespace=False).startswith("  Title  \n\n\n\n")


def test_words_hyphenated_across_lines_are_rejoined_but_real_compounds_kept():
    assert clean("the regu-\nlation of trade") == "the regulation of trade"
    assert clean("provi-\n  sion\u2019s language") == "provision\u2019s language"
    # a capital or a digit on the next line: a real compound or a number range
    assert clean("the Kennedy-\nBaker rule") == "the Kennedy-\nBaker rule"
    assert clean("D.C. Code \u00a7 16-\n2301") == "D.C. Code \u00a7 16-\n2301"
    # the hyphenated form appears elsewhere in the document: keep the hyphen
    assert clean("a well-known rule, well-\nknown to all") == "a well-known rule, well-known to all"
    assert clean("the regu-\nlation", rejoin_hyphenated_words=False) == "the regu-\nlation"


def test_stats_count_each_fix_with_short_examples_and_merge():
    cfg = CleanConfig(max_examples=2)
    first, second = CleanStats(max_examples=2), CleanStats(max_examples=2)
    clean_text("a\u200bb regu-\nlation", cfg, stats=first)
    clean_text("plain ascii text", cfg, stats=first)
    clean_text("x\u200by\u200bz", cfg, stats=second)
    assert first.documents == 2 and first.documents_changed == 1
    assert first.fixes == {"invisible_chars": 1, "hyphenated_line_breaks": 1}
    assert first.characters_in - first.characters_out == 3
    assert "regulation" in first.examples["hyphenated_line_breaks"][0]
    first.merge(second)
    assert first.fixes["invisible_chars"] == 3 and first.fix_documents["invisible_chars"] == 2
    assert len(first.examples["invisible_chars"]) == 2


def test_disabled_cleaning_returns_text_unchanged():
    assert clean("a\u200b  \n\n\n\nb", enabled=False) == "a\u200b  \n\n\n\nb"


@pytest.mark.parametrize(
    "overrides, message",
    [({"unicode_normalization": "NFD"}, "unicode_normalization"), ({"max_blank_lines": -1}, "max_blank_lines"),
     ({"boilerplate_min_doc_fraction": 0.0}, "boilerplate_min_doc_fraction")],
)
def test_bad_config_values_raise_slmkit_error(overrides, message):
    with pytest.raises(SlmkitError, match=message):
        CleanConfig(**overrides)


def _documents_with_header(count: int) -> list[str]:
    # numbers vary in the header only: line keys read digits as 0, so the bodies differ by their words
    return [
        f"Example Law Reporter, page {i + 3} of 40\n(a)\nSection {_words(i)[0]} covers topic {_words(i)[1]}.\n"
        f"Repealed.\nThe body of document {_words(i)[2]} says something of its own."
        for i in range(count)
    ]


def test_boilerplate_lines_found_in_most_documents_are_removed_and_structure_kept():
    docs = _documents_with_header(30)
    detector = BoilerplateDetector(CleanConfig(boilerplate=True))
    for doc in docs:
        detector.add(doc)
    lines = detector.boilerplate()
    assert len(lines.keys) == 1  # the header; '(a)' and 'Repealed.' are too short to judge
    assert detector.report()[0] == ("Example Law Reporter, page 3 of 40", 30)
    stats = CleanStats()
    out = clean_text(docs[5], CleanConfig(boilerplate=True), boilerplate=lines, stats=stats)
    assert out.startswith("(a)\nSection ") and "Reporter" not in out
    assert stats.fixes["boilerplate_lines"] == 1
    # below min_docs nothing counts as boilerplate, however frequent
    small = BoilerplateDetector(CleanConfig(boilerplate=True))
    for doc in docs[:5]:
        small.add(doc)
    assert not small.boilerplate().keys


def test_boilerplate_counts_merge_like_a_single_pass_and_pickle():
    docs = _documents_with_header(40)
    cfg = CleanConfig(boilerplate=True)
    whole, left, right = BoilerplateDetector(cfg), BoilerplateDetector(cfg), BoilerplateDetector(cfg)
    for i, doc in enumerate(docs):
        whole.add(doc)
        (left if i % 2 else right).add(doc)
    left.merge(pickle.loads(pickle.dumps(right)))
    assert left.documents == whole.documents == 40
    assert left.counts == whole.counts
    assert left.boilerplate() == whole.boilerplate()
    assert pickle.loads(pickle.dumps(whole.boilerplate())) == whole.boilerplate()


def test_boilerplate_counter_memory_is_bounded_and_keeps_frequent_lines():
    cfg = CleanConfig(boilerplate=True, boilerplate_max_tracked_lines=50, boilerplate_min_docs=5)
    detector = BoilerplateDetector(cfg)
    for i in range(400):
        unique_lines = "\n".join(f"unique line number {word} in document" for word in _words(i))
        detector.add(f"Confidential draft of the committee\n{unique_lines}")
        assert len(detector.counts) <= 2 * cfg.boilerplate_max_tracked_lines + 3
    key = boilerplate_line_key("Confidential draft of the committee", cfg.boilerplate_min_line_chars)
    assert key in detector.boilerplate().keys
    assert len(detector.boilerplate().keys) == 1


def _words(i: int) -> list[str]:
    # three distinct letter-only tokens per document (digits would normalize to the same key)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [letters[i % 26] + letters[(i // 26) % 26] + letters[j] + "x" * (i % 7) for j in range(3)]


def test_boilerplate_line_keys_ignore_case_digits_and_spacing():
    assert boilerplate_line_key("Page 3 of 10 -- Reporter", 5) == boilerplate_line_key("PAGE 12  of 10 ... reporter", 5)
    assert boilerplate_line_key("(a)", 10) is None
    assert BoilerplateLines().keys == frozenset()


def test_cleaning_real_legal_text_fixes_soft_hyphens_and_is_idempotent(legal_corpus):
    with gzip.open(legal_corpus / "scotus_opinions.jsonl.gz", "rt", encoding="utf-8") as handle:
        docs = [json.loads(line)["text"] for line in islice(handle, 40)]
    cfg, stats = CleanConfig(), CleanStats()
    cleaned = [clean_text(doc, cfg, stats=stats) for doc in docs]
    assert any("\u00ad" in doc for doc in docs)
    assert not any("\u00ad" in doc for doc in cleaned)
    assert stats.fix_documents.get("soft_hyphens", 0) > 0
    # cleaning removes a little and never rewrites the text wholesale
    assert 0.99 < stats.characters_out / stats.characters_in <= 1.0
    assert [clean_text(doc, cfg) for doc in cleaned] == cleaned
