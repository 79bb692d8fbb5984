"""Tokenizer training: every kind trains and round-trips with the recipe's first special token as the end-of-document
token, the char kind gives nanoGPT's 65 characters, and errors are clear."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models

from data_prep.tokenizer import tokenizer_sha256, train_tokenizer
from slmkit.data_config import TokenizerConfig
from slmkit.errors import SlmkitError
from slmkit.recipe import resolve_recipe
from slmkit.tokenizer import TOKENIZER_KINDS, end_of_document_id, load_tokenizer

TEXTS = [
    "The court held that the statute applies to every contract signed after 1990.",
    "Section 2. The Mayor shall publish the rules within thirty days.",
    "Appeal denied; the judgment of the district court is affirmed.",
] * 30


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece", "char"])
def test_every_kind_trains_saves_and_round_trips(tmp_path, kind):
    path = tmp_path / "tokenizer.json"
    report = train_tokenizer(TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1), TEXTS, path, TEXTS[:3])
    tokenizer = load_tokenizer(path)
    assert end_of_document_id(tokenizer) == tokenizer.token_to_id("<|endoftext|>") == 0
    text = "The court held that the rules apply."
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert report["vocab_size"] == tokenizer.get_vocab_size() <= 300
    assert report["bytes_per_token"] >= 1.0 and report["sha256"] == tokenizer_sha256(path)


def test_char_tokenizer_on_tinyshakespeare_has_65_characters_plus_eos(tmp_path, shared_dir):
    text = (shared_dir / "corpora" / "general" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    path = tmp_path / "tokenizer.json"
    report = train_tokenizer(TokenizerConfig(kind="char", vocab_size=1024), [text], path, [text[-1000:]])
    tokenizer = load_tokenizer(path)
    assert tokenizer.get_vocab_size() == 66 == report["vocab_size"]
    sample = text[:500]
    ids = tokenizer.encode(sample).ids
    assert len(ids) == len(sample) and tokenizer.decode(ids) == sample
    assert report["bytes_per_token"] == pytest.approx(1.0)
    assert tokenizer.decode(tokenizer.encode("hi\u00e9!").ids) == "hi!"  # unseen characters are dropped, not fatal


def test_train_chars_bounds_the_training_text(tmp_path):
    report = train_tokenizer(TokenizerConfig(kind="char", train_chars=10), ["abcdefgh", "ijklmnop"], tmp_path / "t.json", [])
    assert report["train_chars"] == 10 and report["vocab_size"] == 11  # a..j plus EOS


def test_unknown_kind_names_the_choices(tmp_path):
    with pytest.raises(SlmkitError, match="did you mean 'bpe'"):
        train_tokenizer(TokenizerConfig(kind="bpee"), TEXTS, tmp_path / "t.json", [])
    assert set(TOKENIZER_KINDS.names()) == {"bpe", "char", "unigram", "wordpiece"}


def test_a_misspelt_kind_is_refused_when_the_recipe_resolves():
    with pytest.raises(SlmkitError, match=r"tokenizer\.kind — did you mean 'unigram'\?; choose one of: bpe, char"):
        resolve_recipe("legal-tiny", ["tokenizer.kind=unigam"])


def test_missing_or_corrupt_tokenizer_file_is_a_user_error(tmp_path):
    with pytest.raises(SlmkitError, match="does not exist"):
        load_tokenizer(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SlmkitError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_the_end_of_document_token_is_the_lowest_special_token_and_stays_so(tmp_path):
    path = tmp_path / "t.json"
    train_tokenizer(TokenizerConfig(kind="unigram", vocab_size=100, special_tokens=["<eos>", "<pad>"]), TEXTS, path, [])
    tokenizer = load_tokenizer(path)
    tokenizer.add_special_tokens(["<mask>"])  # as an encoder recipe will: the document separator does not move
    assert end_of_document_id(tokenizer) == tokenizer.token_to_id("<eos>") == 0


def test_a_tokenizer_without_special_tokens_is_refused():
    with pytest.raises(SlmkitError, match="no special token"):
        end_of_document_id(Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token=None)))
