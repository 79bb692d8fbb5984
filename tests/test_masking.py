"""Masking for masked language modelling: the rate, BERT's 80/10/10 rule, whole words, and masks that depend only on
the seed and the window's offset (so resume is exact and validation fixed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from slmkit.errors import SlmkitError
from slmkit.model import IGNORE_INDEX
from slmkit.objectives.masked_lm import Masking, mask_token_id, word_boundaries

from export_helpers import EOS, TEXT

MASK = "<|mask|>"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    """Byte-level BPE with the end-of-document token first and the mask token after it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS, MASK], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    return tokenizer


def windows(tokenizer: Tokenizer, n: int = 200, length: int = 64) -> list[np.ndarray]:
    """n windows of running text with a document separator in each, as the token shards hold them."""
    ids = np.array([0, *tokenizer.encode(TEXT).ids] * 4, dtype=np.int64)
    step = (len(ids) - length) // n
    return [ids[i * step: i * step + length] for i in range(n)]


def masking(tokenizer: Tokenizer, rate: float = 0.15, whole_word: bool = False, seed: int = 7) -> Masking:
    return Masking.for_tokenizer(tokenizer, MASK, rate, whole_word, seed)


@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_the_chosen_fraction_of_ordinary_tokens_is_the_masking_rate(tokenizer, rate):
    m = masking(tokenizer, rate)
    chosen = eligible = 0
    for offset, ids in enumerate(windows(tokenizer)):
        _, targets = m(ids, offset)
        chosen += int((targets != IGNORE_INDEX).sum())
        eligible += int((ids != 0).sum())
    assert chosen / eligible == pytest.approx(rate, abs=0.015)


def test_chosen_tokens_follow_the_80_10_10_rule_and_separators_are_never_chosen(tokenizer):
    m = masking(tokenizer, 0.3)
    masked = replaced = kept = 0
    for offset, ids in enumerate(windows(tokenizer, n=400)):
        inputs, targets = m(ids, offset)
        chosen = targets != IGNORE_INDEX
        assert np.array_equal(targets[chosen], ids[chosen]) and not chosen[ids == 0].any()
        assert np.array_equal(inputs[~chosen], ids[~chosen])
        masked += int((inputs[chosen] == m.mask_id).sum())
        replaced += int(((inputs[chosen] != m.mask_id) & (inputs[chosen] != ids[chosen])).sum())
        kept += int((inputs[chosen] == ids[chosen]).sum())
        assert not m.special[inputs[chosen & (inputs != m.mask_id)]].any()  # a random token is never a special one
    total = masked + replaced + kept
    assert masked / total == pytest.approx(0.8, abs=0.02)
    # A random replacement equal to the original counts as kept: 1 in ~400 here.
    assert replaced / total == pytest.approx(0.1, abs=0.015)
    assert kept / total == pytest.approx(0.1, abs=0.015)


def test_masks_depend_only_on_the_seed_and_the_offset(tokenizer):
    ids = windows(tokenizer)[3]
    first, again = masking(tokenizer)(ids, 3), masking(tokenizer)(ids, 3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], masking(tokenizer)(ids, 4)[1])
    assert not np.array_equal(first[1], masking(tokenizer, seed=8)(ids, 3)[1])


def test_every_window_gets_at_least_one_target(tokenizer):
    m = masking(tokenizer, rate=0.001)
    for offset, ids in enumerate(windows(tokenizer, n=50, length=8)):
        assert (m(ids, offset)[1] != IGNORE_INDEX).sum() >= 1


def test_whole_word_masking_chooses_every_token_of_a_word_or_none(tokenizer):
    m = masking(tokenizer, 0.3, whole_word=True)
    split_words = 0
    for offset, ids in enumerate(windows(tokenizer, n=100)):
        _, targets = m(ids, offset)
        chosen = targets != IGNORE_INDEX
        words = m.words(ids)
        for word in np.unique(words):
            inside = chosen[(words == word) & (ids != 0)]
            assert inside.all() or not inside.any()
            split_words += len(inside) > 1 and inside.all()
    assert split_words > 0  # words of several tokens were chosen whole


def test_word_boundaries_are_read_from_the_tokenizer(tokenizer, tmp_path):
    begins, ends = word_boundaries(tokenizer)
    court = tokenizer.encode("The court held").ids
    assert [bool(begins[i]) for i in court[1:]] == [True, True]  # 'Ġcourt', 'Ġheld' start words
    assert not ends[court[0]]
    word_pieces = Tokenizer(models.WordPiece({"[UNK]": 0, "re": 1, "##re": 2, "the": 3}, unk_token="[UNK]"))
    word_pieces.decoder = decoders.WordPiece()
    begins, _ = word_boundaries(word_pieces)
    assert begins[1] and not begins[2]  # 're' begins a word, '##re' continues one


def test_a_tokenizer_without_the_mask_token_is_refused_with_the_fix(tmp_path):
    from export_helpers import train_tokenizer

    plain = Tokenizer.from_file(str(train_tokenizer(tmp_path / "tokenizer.json")))
    with pytest.raises(SlmkitError, match=r"no such special token: add it to tokenizer.special_tokens after the end-of-document"):
        mask_token_id(plain, MASK, str(Path(tmp_path / "tokenizer.json")))
