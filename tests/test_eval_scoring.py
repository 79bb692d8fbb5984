"""The log-likelihood scorer: batch-size independence, left truncation, shared contexts and rolling windows."""

from __future__ import annotations

import random

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.eval.encoding import Request, encode, encode_pair
from slmkit.eval.loglikelihood import Scorer
from test_eval_fixtures import WINDOW, legal_texts, one_torch_thread, tiny_loaded, tiny_run, train_tokenizer  # noqa: F401


def manual_logprob(model, context: list[int], continuation: list[int]) -> float:
    """The reference: one unbatched forward pass over context + continuation, no truncation logic."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = model(ids[:, :-1]).log_softmax(-1)[0]
    return sum(float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(continuation))


@pytest.fixture(scope="module")
def token_stream(tiny_loaded, shared_dir):
    _, tokenizer = tiny_loaded
    return encode(tokenizer, " ".join(legal_texts(shared_dir, 400)[300:340]))


def mixed_requests(stream: list[int], n: int = 60) -> list[Request]:
    """Contexts from 1 to 2.5 windows long, continuations of 1-6 tokens, and groups of one-token choices."""
    rng = random.Random(0)
    requests = []
    while len(requests) < n:
        start = rng.randrange(0, len(stream) - 300)
        context = tuple(stream[start : start + rng.randint(1, int(2.5 * WINDOW))])
        if rng.random() < 0.3:
            requests += [Request(context, (t,)) for t in rng.sample(range(300), 4)]
        else:
            requests.append(Request(context, tuple(stream[start + len(context) : start + len(context) + rng.randint(1, 6)])))
    return requests


def test_loglikelihoods_agree_across_batch_sizes_1_8_32(tiny_loaded, token_stream):
    model, tokenizer = tiny_loaded
    requests = mixed_requests(token_stream)
    by_size = {bs: [s.logprob for s in Scorer(model, tokenizer, batch_size=bs).score(requests)] for bs in (1, 8, 32)}
    for bs in (8, 32):
        assert max(abs(a - b) for a, b in zip(by_size[1], by_size[bs])) < 1e-4
    greedy = [s.is_greedy for s in Scorer(model, tokenizer, batch_size=32).score(requests)]
    assert greedy == [s.is_greedy for s in Scorer(model, tokenizer, batch_size=1).score(requests)]


def test_scores_match_an_unbatched_forward_pass(tiny_loaded, token_stream):
    model, tokenizer = tiny_loaded
    requests = [r for r in mixed_requests(token_stream) if len(r.context) + len(r.continuation) <= WINDOW + 1][:10]
    assert requests
    scores = Scorer(model, tokenizer, batch_size=4).score(requests)
    for request, score in zip(requests, scores):
        assert score.logprob == pytest.approx(manual_logprob(model, list(request.context), list(request.continuation)), abs=1e-4)


def test_long_context_is_cut_on_the_left_and_the_continuation_kept(tiny_loaded, token_stream):
    model, tokenizer = tiny_loaded
    context, continuation = token_stream[:200], token_stream[200:205]
    score = Scorer(model, tokenizer).score([Request(tuple(context), tuple(continuation))])[0]
    kept = context[-(WINDOW + 1 - len(continuation)):]  # the window holds the kept context + all but the last target
    assert score.n_tokens == 5
    assert score.logprob == pytest.approx(manual_logprob(model, kept, continuation), abs=1e-4)
    one_token = Scorer(model, tokenizer).score([Request(tuple(context), (token_stream[200],))])[0]
    assert one_token.logprob == pytest.approx(manual_logprob(model, context[-WINDOW:], [token_stream[200]]), abs=1e-4)


def test_continuation_longer_than_the_window_is_refused(tiny_loaded, token_stream):
    model, tokenizer = tiny_loaded
    with pytest.raises(SlmkitError, match="never truncated"):
        Scorer(model, tokenizer).score([Request((0,), tuple(token_stream[: WINDOW + 1]))])


def test_one_token_choices_of_a_context_share_one_forward_pass(tiny_loaded, token_stream):
    model, tokenizer = tiny_loaded
    context = tuple(token_stream[:40])
    requests = [Request(context, (t,)) for t in (5, 17, 99, 200)]
    calls = []
    handle = model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    try:
        scores = Scorer(model, tokenizer, batch_size=8).score(requests)
    finally:
        handle.remove()
    assert calls == [torch.Size([1, 40])]
    for request, score in zip(requests, scores):
        assert score.logprob == pytest.approx(manual_logprob(model, list(context), list(request.continuation)), abs=1e-4)


@pytest.mark.parametrize("stride", [WINDOW, WINDOW // 4, 1])
def test_rolling_scores_every_token_exactly_once(tiny_loaded, shared_dir, stride):
    model, tokenizer = tiny_loaded
    text = legal_texts(shared_dir, 310)[305][:1500]
    scorer = Scorer(model, tokenizer, batch_size=8)
    score = scorer.rolling([text], stride=stride)[0]
    assert score.n_tokens == len(encode(tokenizer, text))  # the document-start token lets the first token count too


def test_rolling_within_one_window_is_the_plain_log_likelihood(tiny_loaded):
    model, tokenizer = tiny_loaded
    text = "The Mayor shall transmit the report to the Council."
    ids = [0] + encode(tokenizer, text)
    assert len(ids) <= WINDOW + 1
    rolled = Scorer(model, tokenizer).rolling([text], stride=8)[0]
    assert rolled.logprob == pytest.approx(manual_logprob(model, ids[:1], ids[1:]), abs=1e-4)


def test_context_spaces_move_to_the_continuation(tiny_loaded):
    _, tokenizer = tiny_loaded
    assert encode_pair(tokenizer, "Answer: ", "Yes", 0) == encode_pair(tokenizer, "Answer:", " Yes", 0)
    request = encode_pair(tokenizer, "Answer:", " Yes", 0)
    assert request.context[0] == 0 and tokenizer.decode(list(request.continuation)) == " Yes"


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tiny_loaded, shared_dir):
    model, _ = tiny_loaded
    bigger = train_tokenizer(legal_texts(shared_dir, 300), vocab_size=model.config.vocab_size + 200)
    with pytest.raises(SlmkitError, match="does not belong to the checkpoint"):
        Scorer(model, bigger)


def test_choices_sharing_a_context_score_as_if_each_were_scored_alone(tiny_loaded):
    from slmkit.eval.encoding import encode_pair

    model, tokenizer = tiny_loaded
    scorer = Scorer(model, tokenizer, batch_size=4)
    context = "The court held that the statute"
    choices = [" applies to every contract", " was void", " did not apply to the motion at all", " ."]
    requests = [encode_pair(tokenizer, context, c, scorer.prefix_id) for c in choices]
    shared, alone = scorer._shared_contexts(requests)
    assert list(shared.values()) == [[0, 1, 2, 3]] and alone == []
    together = scorer.score(requests)
    one_by_one = [scorer.score([r])[0] for r in requests]
    for a, b in zip(together, one_by_one):
        assert abs(a.logprob - b.logprob) < 1e-4 and a.is_greedy == b.is_greedy and a.n_tokens == b.n_tokens
