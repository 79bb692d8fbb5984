"""The CRF on a token head (objective.decoding=crf): its likelihood and its Viterbi path against brute force over
every tag sequence, the packing of tagged sub-tokens, and the loss a fine-tune trains with."""

from __future__ import annotations

import itertools

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.model import IGNORE_INDEX, TOKEN_HEAD, HeadSpec, Model
from slmkit.model.config import ModelConfig
from slmkit.model.crf import TagTransitions
from slmkit.model.tag_decoding import crf_tags, is_bio
from slmkit.objectives.token_classification import tagged_positions

NAMES = ["O", "B-Disease", "I-Disease"]


def random_crf(num_labels: int, seed: int) -> TagTransitions:
    generator = torch.Generator().manual_seed(seed)
    crf = TagTransitions(num_labels)
    with torch.no_grad():
        for weight in (crf.start, crf.transitions, crf.end):
            weight.copy_(torch.randn(weight.shape, generator=generator))
    return crf


def path_score(crf: TagTransitions, emissions: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    score = crf.start[path[0]] + crf.end[path[-1]] + sum(emissions[i, tag] for i, tag in enumerate(path))
    return score + sum(crf.transitions[a, b] for a, b in zip(path, path[1:]))


def test_the_likelihood_is_the_gold_path_against_every_path_for_rows_of_any_length():
    crf, labels = random_crf(3, seed=0), 3
    emissions = torch.randn(3, 4, labels, generator=torch.Generator().manual_seed(1))
    lengths = [4, 2, 1]
    tags = torch.tensor([[0, 1, 2, 0], [2, 1, 0, 0], [1, 0, 0, 0]])
    mask = torch.arange(4)[None] < torch.tensor(lengths)[:, None]
    nll = crf.negative_log_likelihood(emissions, tags, mask)
    for row, length in enumerate(lengths):
        every = torch.stack([path_score(crf, emissions[row], p)
                             for p in itertools.product(range(labels), repeat=length)])
        gold = path_score(crf, emissions[row], tuple(tags[row, :length].tolist()))
        assert float(nll[row].detach()) == pytest.approx(float(torch.logsumexp(every, 0) - gold), abs=1e-5)
    assert float(crf.negative_log_likelihood(emissions, tags, torch.zeros_like(mask))[0]) == 0.0  # a row of no tags


def test_the_crf_decoding_finds_the_best_valid_bio_path():
    crf = random_crf(3, seed=2)
    for seed in range(20):
        scores = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed)) * 3
        path = crf_tags(scores, NAMES, crf)
        valid = [p for p in itertools.product(range(3), repeat=5)
                 if all(not (NAMES[b] == "I-Disease" and NAMES[a] == "O") for a, b in zip((0,) + p, p))]
        best = max(valid, key=lambda p: float(path_score(crf, scores, p)))
        assert tuple(path) == best
    assert crf_tags(torch.zeros(0, 3), NAMES, crf) == []


def test_without_bio_labels_the_crf_path_is_the_unconstrained_best():
    crf, names = random_crf(3, seed=3), ["PER", "LOC", "NONE"]
    assert not is_bio(names)
    scores = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    best = max(itertools.product(range(3), repeat=4), key=lambda p: float(path_score(crf, scores, p)))
    assert tuple(crf_tags(scores, names, crf)) == best


def test_a_head_without_transitions_is_refused_by_the_crf_decoding():
    with pytest.raises(SlmkitError, match="has none: it was trained under another decoding"):
        crf_tags(torch.zeros(2, 3), NAMES, None)


def test_tagged_positions_packs_each_words_first_sub_token_in_order():
    logits = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    labels = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX, 2, 0], [IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX]])
    emissions, tags, mask = tagged_positions(logits, labels)
    assert tags[0].tolist() == [1, 2, 0] and mask.tolist() == [[True, True, True], [True, False, False]]
    assert torch.equal(emissions[0], logits[0, [1, 3, 4]]) and torch.equal(emissions[1, 0], logits[1, 2])


def test_only_the_crf_decoding_gives_the_head_weights_and_they_learn():
    config = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, d_model=16, causal=False).validate()
    plain = Model(config, [HeadSpec(TOKEN_HEAD, tuple(NAMES), decoding="bio")])
    assert plain.heads[TOKEN_HEAD].crf is None
    model = Model(config, [HeadSpec(TOKEN_HEAD, tuple(NAMES), decoding="crf")])
    assert {k for k in model.state_dict() if ".crf." in k} == {f"heads.{TOKEN_HEAD}.crf.{n}" for n in ("start", "transitions", "end")}
    crf = model.heads[TOKEN_HEAD].crf
    emissions = torch.zeros(1, 3, 3, requires_grad=True)
    crf.negative_log_likelihood(emissions, torch.tensor([[1, 2, 0]]), torch.ones(1, 3, dtype=torch.bool)).sum().backward()
    assert crf.transitions.grad[1, 2] < 0 and crf.start.grad[1] < 0  # the gold steps' scores are pushed up


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_the_crf_scores_take_their_own_learning_rate_multiple(name):
    from slmkit.config import OptimConfig
    from slmkit.training.optimizers import OPTIMIZERS

    config = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, d_model=16, causal=False).validate()
    model = Model(config, [HeadSpec(TOKEN_HEAD, tuple(NAMES), decoding="crf")])
    optimizer = OPTIMIZERS.get(name)(list(model.named_parameters()), OptimConfig(name=name, lr=1e-3, crf_lr_multiplier=30.0), config)
    crf = {id(p) for p in model.heads[TOKEN_HEAD].crf.parameters()}
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert [rates[i] for i in crf] == pytest.approx([3e-2] * 3)
    assert rates[id(model.heads[TOKEN_HEAD].score.weight)] == pytest.approx(1e-3)
