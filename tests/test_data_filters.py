"""Quality filters: each Gopher rule and the language check on synthetic text, and survival of real legal prose."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from data_prep.filters import FilterStats, filter_document
from slmkit.data_config import FilterConfig
from slmkit.errors import SlmkitError

PROSE = (
    "The court held that the agency had acted within its authority when it issued the rule. "
    "Congress delegated to the agency the power to set standards for the industry, and the statute "
    "does not limit that power in the way the petitioners suggest. We have considered their remaining "
    "arguments and find them to be without merit. The petition for review is therefore denied, and the "
    "judgment of the district court is affirmed in all respects that were raised on appeal."
)


def reason(text: str, **overrides):
    return filter_document(text, FilterConfig(**overrides))


def test_ordinary_prose_passes_every_rule():
    assert reason(PROSE) is None


def test_length_bounds_in_words_and_characters():
    assert reason("Too short to be a document.") == "too_few_words"
    assert reason(PROSE, max_words=40) == "too_many_words"
    assert reason(PROSE, min_chars=10_000) == "too_few_chars"
    assert reason(PROSE, max_chars=100) == "too_many_chars"
    assert reason("Too short to be a document.", min_words=None, min_stopword_ratio=None) is None


def test_mean_word_length_bounds():
    assert reason(" ".join(["a b c d"] * 30)) == "mean_word_length_low"
    assert reason(" ".join(["incomprehensibilities"] * 30)) == "mean_word_length_high"


def test_hashtags_and_ellipses_per_word():
    tags = " ".join(f"#{w}" for w in "law court rule agency appeal judgment statute power".split() * 2)
    assert reason(PROSE + " " + tags) == "symbol_word_ratio"
    assert reason(PROSE + " " + tags, max_symbol_word_ratio=None) is None


def test_bullet_and_ellipsis_lines():
    bullets = "\n".join(f"\u2022 item about the {w} of the court" for w in "rule statute agency power appeal".split() * 3)
    assert reason(bullets) == "bullet_lines"
    subjects = "rule statute agency power appeal order motion brief record panel judge clerk docket writ bar".split()
    trailing = "\n".join(f"The court said that the {w} was..." for w in subjects)
    assert reason(trailing, max_symbol_word_ratio=None) == "ellipsis_lines"
    assert reason(trailing, max_symbol_word_ratio=None, max_ellipsis_lines_fraction=None) != "ellipsis_lines"


def test_words_without_letters():
    numbers = PROSE + " " + " ".join(str(n) for n in range(40))
    assert reason(numbers) == "alpha_words_fraction"
    assert reason(numbers, min_alpha_words_fraction=0.5) is None


def test_gopher_stopwords_and_target_language():
    no_stopwords = " ".join(["Quarterly revenue grew strongly across regions"] * 12)
    assert reason(no_stopwords) == "gopher_stopwords"
    french = (
        "La cour a jugé que le ministre avait agi dans les limites de ses pouvoirs et que la demande "
        "devait être rejetée. Les arguments des requérants ne sont pas fondés et la décision est confirmée "
        "pour les motifs qui ont été exposés par le tribunal dans son jugement du mois de mai, "
        "sans qu'il soit besoin de statuer sur les autres moyens de la requête présentée par les parties."
    )
    assert reason(french, min_gopher_stopwords=None) == "not_target_language"
    assert reason(french, min_gopher_stopwords=None, language="fr") is None


def test_repeated_lines_and_paragraphs():
    lines = "\n".join(["Click here to subscribe to the newsletter today"] * 6 + PROSE.split(". "))
    assert reason(lines) == "duplicate_lines"
    paragraphs = "\n\n".join([PROSE] * 3)
    assert reason(paragraphs, max_duplicate_lines_fraction=None, max_duplicate_line_chars_fraction=None) == (
        "duplicate_paragraphs"
    )
    # separator lines without letters or digits are not repeated content
    separated = "\n".join(part + "\n——————\n." for part in PROSE.split(". "))
    assert reason(separated) is None


def test_repeated_ngrams():
    spam = PROSE + " " + " ".join(["buy cheap legal forms online now"] * 25)
    assert reason(spam) == "top_2gram_chars"
    assert reason(spam, max_top_ngram_chars_fraction={}) in {f"duplicate_{n}gram_chars" for n in range(5, 11)}
    gopher_strict = FilterConfig(max_top_ngram_chars_fraction={}, max_duplicate_ngram_chars_fraction={10: 0.10})
    twice = PROSE + " " + PROSE[:120]
    assert filter_document(twice, gopher_strict) == "duplicate_10gram_chars"
    assert reason(twice) is None  # the relaxed default allows quoting a passage once


def test_repetition_rules_skip_short_documents():
    short = "The Soil and Water Conservation District is reestablished as the Soil and Water Conservation District."
    assert reason(short, min_words=5) is None
    assert reason(short, min_words=5, gopher_min_words=5) == "top_3gram_chars"


def test_stats_count_reasons_with_examples_and_merge():
    first, second = FilterStats(max_examples=1), FilterStats(max_examples=1)
    cfg = FilterConfig()
    for text in (PROSE, "tiny", "also tiny"):
        first.record(text, filter_document(text, cfg))
    second.record("small", filter_document("small", cfg))
    first.merge(second)
    assert first.documents == 4 and first.dropped_documents == {"too_few_words": 3}
    assert first.dropped_characters["too_few_words"] == len("tiny") + len("also tiny") + len("small")
    assert first.examples == {"too_few_words": ["tiny"]}
    assert first.total_dropped_documents == 3


@pytest.mark.parametrize(
    "overrides, message",
    [({"language": "xx"}, "language"), ({"min_alpha_words_fraction": 1.5}, "min_alpha_words_fraction"),
     ({"min_words": 100, "max_words": 10}, "min_words"), ({"max_top_ngram_chars_fraction": {0: 0.2}}, "n-gram")],
)
def test_bad_config_values_raise_slmkit_error(overrides, message):
    with pytest.raises(SlmkitError, match=message):
        FilterConfig(**overrides)


LEGAL_SOURCES = ["appellate_opinions", "dc_code_sections", "dc_session_laws", "federal_rules", "scotus_opinions"]


@pytest.mark.parametrize("source", LEGAL_SOURCES)
def test_default_filters_keep_real_legal_prose(legal_corpus, source):
    with gzip.open(legal_corpus / f"{source}.jsonl.gz", "rt", encoding="utf-8") as handle:
        docs = [json.loads(line)["text"] for line in handle]
    # statutes and opinions of at least 100 words are real prose: Gopher's web thresholds dropped 7-91% of them
    sample = [doc for doc in random.Random(0).sample(docs, min(len(docs), 150)) if len(doc.split()) >= 100][:60]
    cfg, stats = FilterConfig(), FilterStats()
    for doc in sample:
        stats.record(doc, filter_document(doc, cfg))
    assert stats.total_dropped_documents / stats.documents < 0.05, stats.dropped_documents
