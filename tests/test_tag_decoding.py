"""Token-classification decoding: argmax per token, the best valid BIO sequence (Viterbi) or the best sequence under
a learned CRF (tests/test_crf.py), chosen by objective.decoding and recorded with the head."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.model.crf import TagTransitions
from slmkit.model.tag_decoding import argmax_tags, check_decoding, viterbi_tags
from slmkit.model import TOKEN_HEAD
from slmkit.objectives.token_classification import TokenClassification
from slmkit.recipe import resolve_recipe

NAMES = ["O", "B-Disease", "I-Disease", "B-Gene", "I-Gene"]


def is_valid_bio(tags: list[str]) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def total(log_probs: torch.Tensor, path: list[int]) -> float:
    return sum(float(log_probs[i, label]) for i, label in enumerate(path))


def test_viterbi_repairs_the_invalid_sequence_argmax_reads():
    # argmax: O I-Disease I-Gene -- an inside tag first after O, then one of another type.
    probabilities = torch.tensor([
        [0.6, 0.3, 0.05, 0.03, 0.02],
        [0.1, 0.35, 0.5, 0.03, 0.02],
        [0.1, 0.05, 0.4, 0.0, 0.45],
    ])
    scores = probabilities.log()  # any logits: the decoding works on their log-softmax
    assert [NAMES[i] for i in argmax_tags(scores, NAMES)] == ["O", "I-Disease", "I-Gene"]
    # Valid candidates: O B-Disease I-Disease = log(.6*.35*.4) beats B-Disease I-Disease I-Disease = log(.3*.5*.4)
    # and O B-Disease O, O O B-Gene, ...
    assert [NAMES[i] for i in viterbi_tags(scores, NAMES)] == ["O", "B-Disease", "I-Disease"]


@pytest.mark.parametrize("seed", range(20))
def test_viterbi_equals_brute_force_over_every_valid_sequence(seed):
    generator = torch.Generator().manual_seed(seed)
    length = 1 + seed % 5
    scores = torch.randn(length, len(NAMES), generator=generator) * 3
    log_probs = scores.log_softmax(-1)
    valid = [list(path) for path in itertools.product(range(len(NAMES)), repeat=length)
             if is_valid_bio([NAMES[i] for i in path])]
    best = max(total(log_probs, path) for path in valid)
    path = viterbi_tags(scores, NAMES)
    assert is_valid_bio([NAMES[i] for i in path])
    assert math.isclose(total(log_probs, path), best, rel_tol=1e-6, abs_tol=1e-6)
    argmax = argmax_tags(scores, NAMES)
    if is_valid_bio([NAMES[i] for i in argmax]):  # already valid: the constraint changes nothing
        assert path == argmax


def test_an_empty_sentence_decodes_to_no_tags():
    assert viterbi_tags(torch.zeros(0, len(NAMES)), NAMES) == []


def test_bio_decoding_of_labels_without_bio_names_is_refused_naming_the_label():
    with pytest.raises(SlmkitError, match="decoding bio needs BIO label names .* 'positive'.*objective.decoding=argmax"):
        check_decoding("bio", ["positive", "negative"])
    check_decoding("argmax", ["positive", "negative"])  # argmax reads any labels
    with pytest.raises(SlmkitError, match="decoding bio needs BIO label names"):
        viterbi_tags(torch.zeros(2, 2), ["O", "Disease"])


def test_the_objectives_decoding_is_recorded_with_its_head_and_checked_before_training(shared_dir):
    config = TokenClassification.complete(resolve_recipe("ncbi-disease-ner", ["objective.decoding=bio"], follow_init_from=False))
    [head] = TokenClassification.heads(config)
    assert head.kind == TOKEN_HEAD and head.decoding == "bio" and head.labels == ("O", "B-Disease", "I-Disease")
    with pytest.raises(SlmkitError, match="'Disease'"):
        TokenClassification.complete(resolve_recipe(
            "ncbi-disease-ner", ["objective.decoding=bio", "objective.labels=[O,Disease]"], follow_init_from=False))
    with pytest.raises(SlmkitError, match="objective.decoding"):
        resolve_recipe("ncbi-disease-ner", ["objective.decoding=semi-markov"], follow_init_from=False)


@pytest.mark.parametrize("decoding", ["argmax", "bio", "crf"])
def test_a_word_without_its_own_token_is_o_and_bio_does_not_continue_an_entity_across_it(monkeypatch, decoding):
    """Punctuation the tokenizer joins to a neighbour has no first sub-token and is tagged O; under bio it is decoded
    as that O, so the word after it cannot be I-X (read naively, B-Disease O I-Disease)."""
    from types import SimpleNamespace

    import slmkit.eval.token_classification as token_classification

    scores = torch.full((4, len(NAMES)), -5.0)
    scores[0, NAMES.index("B-Disease")] = 5.0
    scores[1, NAMES.index("I-Disease")] = 5.0  # the third word's token, after the word that has none
    monkeypatch.setattr(token_classification, "encode_words", lambda *args: ([7, 8, 9, 10], [0, None, 1, None]))
    monkeypatch.setattr(token_classification, "head_outputs", lambda *args: [scores])
    head = SimpleNamespace(spec=SimpleNamespace(decoding=decoding),
                           crf=TagTransitions(len(NAMES)) if decoding == "crf" else None)
    scorer = SimpleNamespace(model=SimpleNamespace(heads={TOKEN_HEAD: head}), tokenizer=None, window=16,
                             prefix_id=None, pad_id=0, batch_size=1)
    [tags] = token_classification.predict_tags(scorer, [("a ) b c", [])], NAMES)
    assert tags[1] == tags[3] == "O" and len(tags) == 4
    if decoding in ("bio", "crf"):
        assert is_valid_bio(tags) and tags[0] == "B-Disease" and tags[2] != "I-Disease"
    else:
        assert tags == ["B-Disease", "O", "I-Disease", "O"]
