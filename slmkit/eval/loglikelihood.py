"""Log-likelihood of continuations under a causal model: batched, sorted by length, independent of the batch size.

Contexts longer than the window lose tokens on the left, continuations never. Continuations of one token that
share a context (Yes/No, A/B/C labels) are all read from a single forward pass of that context; longer ones that
share a context (the choices of a question) read it once into a KV cache and go on from copies of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from tokenizers import Tokenizer

from slmkit.errors import SlmkitError
from slmkit.eval.encoding import Request, check_tokenizer_fits, encode, encode_pair, pad_batch
from slmkit.model import LM_HEAD
from slmkit.tokenizer import end_of_document_id


@dataclass(frozen=True)
class Score:
    logprob: float  # natural log
    is_greedy: bool  # every continuation token is the argmax given what precedes it
    n_tokens: int


@dataclass
class _Row:
    """One sequence of a batch; each entry reads the log-probs of its targets at the given positions."""

    input_ids: list[int]
    entries: list[tuple[int, list[int], list[int]]] = field(default_factory=list)  # (request index, positions, targets)


class Scorer:
    """A model and its tokenizer as the tasks see them (eval mode, on its own device): log-likelihoods of token
    requests under the language-model head, and the settings head-based tasks share (window, padding, batch size)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, batch_size: int = 8):
        if batch_size < 1:
            raise SlmkitError(f"batch_size must be at least 1, got {batch_size}")
        check_tokenizer_fits(tokenizer, model.config.vocab_size)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.window = model.config.block_size
        self.prefix_id = end_of_document_id(tokenizer)
        # Padding is masked out, so any id will do; the document-start token is always in the vocabulary.
        self.pad_id = self.prefix_id if self.prefix_id is not None else 0
        self.device = next(model.parameters()).device

    def _check_language_model(self) -> None:
        if not self.model.config.causal:
            raise SlmkitError("log-likelihood evaluation needs a causal model; this one has model.causal=false")
        if LM_HEAD not in getattr(self.model, "heads", {LM_HEAD: None}):
            raise SlmkitError(
                f"this task scores text by its likelihood, which needs a language-model head; this model has "
                f"{', '.join(self.model.heads)}: evaluate it on the task it was fine-tuned for"
            )

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[Score]:
        """log P(continuation | context) for (context, continuation) strings."""
        return self.score([encode_pair(self.tokenizer, c, x, self.prefix_id) for c, x in pairs])

    def rolling(self, texts: Sequence[str], stride: int | None = None) -> list[Score]:
        """Log-likelihood of every token of each text, each text on its own, through windows `stride` apart.

        Each window sees up to `window` tokens; after the first, it scores only the `stride` tokens it adds, so
        every token is scored once, with at least window - stride tokens of context.
        """
        stride = self.window if stride is None else stride
        if not 1 <= stride <= self.window:
            raise SlmkitError(f"stride must be between 1 and the model's window ({self.window}), got {stride}")
        requests: list[Request] = []
        owners: list[int] = []
        for index, text in enumerate(texts):
            ids = [self.prefix_id] + encode(self.tokenizer, text)
            for request in _windows(ids, self.window, stride):
                requests.append(request)
                owners.append(index)
        totals = [0.0] * len(texts)
        counts = [0] * len(texts)
        greedy = [True] * len(texts)
        for owner, score in zip(owners, self.score(requests)):
            totals[owner] += score.logprob
            counts[owner] += score.n_tokens
            greedy[owner] &= score.is_greedy
        return [Score(t, g, n) for t, g, n in zip(totals, greedy, counts)]

    def score(self, requests: Sequence[Request]) -> list[Score]:
        self._check_language_model()
        results: list[Score | None] = [None] * len(requests)
        shared, alone = self._shared_contexts(requests)
        rows = self._rows([requests[i] for i in alone])
        # Longest first: padding stays small within a batch, and an out-of-memory error shows up at once.
        rows.sort(key=lambda row: -len(row.input_ids))
        with torch.inference_mode():
            for context, members in shared.items():
                self._score_shared(context, [(i, requests[i].continuation) for i in members], results)
            alone_results: list[Score | None] = [None] * len(alone)
            for start in range(0, len(rows), self.batch_size):
                self._run_batch(rows[start:start + self.batch_size], alone_results)
        for index, score in zip(alone, alone_results):
            results[index] = score
        return results  # type: ignore[return-value]

    def _shared_contexts(self, requests: Sequence[Request]) -> tuple[dict[tuple[int, ...], list[int]], list[int]]:
        """Requests whose context is read once for all of them (several continuations of more than one token, the
        choices of a question, that fit the window uncut), by context; and the indices of all the others."""
        by_context: dict[tuple[int, ...], list[int]] = {}
        for index, request in enumerate(requests):
            by_context.setdefault(request.context, []).append(index)
        shared, alone = {}, []
        for context, members in by_context.items():
            longest = max(len(requests[i].continuation) for i in members)
            if len(members) > 1 and longest > 1 and len(context) + longest - 1 <= self.window:
                shared[context] = members
            else:
                alone += members
        return shared, sorted(alone)

    def _score_shared(self, context: tuple[int, ...], members: list[tuple[int, tuple[int, ...]]],
                      results: list[Score | None]) -> None:
        """One forward pass of the context into a KV cache, then every continuation at once on copies of it."""
        cache = self.model.new_cache(1, len(context))
        first = self.model(torch.tensor([context], device=self.device), cache=cache, head=LM_HEAD)[0, -1].float().log_softmax(-1)
        # Continuation token j is predicted at the position of token j - 1: the first by the context's last position.
        follow = [list(continuation[:-1]) for _, continuation in members]
        width = max(len(f) for f in follow)
        steps = None
        if width:
            ids, mask = pad_batch(follow, self.pad_id)
            keys = torch.cat([torch.ones(len(members), len(context), dtype=torch.bool), mask], dim=1)
            expanded = cache.expanded(len(members), len(context) + width)
            steps = self.model(ids.to(self.device), cache=expanded, padding_mask=keys.to(self.device), head=LM_HEAD).float().log_softmax(-1)
        for row, (index, continuation) in enumerate(members):
            logprobs = [first] + ([steps[row, j] for j in range(len(continuation) - 1)] if steps is not None else [])
            targets = torch.tensor(continuation, device=first.device)
            picked = torch.stack(logprobs)
            token_logprobs = picked.gather(1, targets[:, None])[:, 0]
            results[index] = Score(logprob=float(token_logprobs.double().sum()),
                                   is_greedy=bool((picked.argmax(-1) == targets).all()), n_tokens=len(continuation))

    def _rows(self, requests: Sequence[Request]) -> list[_Row]:
        rows: list[_Row] = []
        shared: dict[tuple[int, ...], _Row] = {}
        for index, request in enumerate(requests):
            n_cont = len(request.continuation)
            if n_cont > self.window:
                raise SlmkitError(
                    f"a continuation of {n_cont} tokens does not fit the model's window of {self.window}: "
                    "continuations are never truncated — shorten the task's choices or targets"
                )
            if n_cont == 1:
                # All one-token continuations of a context are read off the context's last position.
                row = shared.get(request.context)
                if row is None:
                    row = shared[request.context] = _Row(list(request.context[-self.window:]))
                    rows.append(row)
                row.entries.append((index, [len(row.input_ids) - 1], list(request.continuation)))
                continue
            # The model reads everything but the last continuation token; the context is cut on the left to fit.
            sequence = list(request.context + request.continuation)[-(self.window + 1):]
            inputs = sequence[:-1]
            positions = list(range(len(inputs) - n_cont, len(inputs)))
            rows.append(_Row(inputs, [(index, positions, list(request.continuation))]))
        if any(not row.input_ids for row in rows):
            raise SlmkitError("a request has an empty context and the tokenizer has no document-start token")
        return rows

    def _run_batch(self, rows: list[_Row], results: list[Score | None]) -> None:
        width = max(len(row.input_ids) for row in rows)
        # Right padding: causal attention keeps the real positions blind to the pad tokens after them.
        batch = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            batch[i, : len(row.input_ids)] = torch.tensor(row.input_ids)
        logits = self.model(batch.to(self.device), head=LM_HEAD)
        row_index, positions, targets, spans = [], [], [], []
        for i, row in enumerate(rows):
            for request_index, pos, target in row.entries:
                spans.append((request_index, len(targets), len(targets) + len(target)))
                row_index += [i] * len(pos)
                positions += pos
                targets += target
        picked = logits[torch.tensor(row_index), torch.tensor(positions)].float().log_softmax(-1)
        target_tensor = torch.tensor(targets, device=picked.device)
        token_logprobs = picked.gather(1, target_tensor[:, None])[:, 0].cpu()
        token_greedy = (picked.argmax(-1) == target_tensor).cpu()
        for request_index, begin, end in spans:
            results[request_index] = Score(
                logprob=float(token_logprobs[begin:end].double().sum()),
                is_greedy=bool(token_greedy[begin:end].all()),
                n_tokens=end - begin,
            )


def _windows(ids: list[int], window: int, stride: int) -> list[Request]:
    """Requests that together score ids[1:] once each: the first window scores `window` tokens, later ones `stride`."""
    requests = []
    target_start = 1
    while target_start < len(ids):
        target_end = min(len(ids), target_start + (window if target_start == 1 else stride))
        context_start = max(0, target_end - 1 - window)
        requests.append(Request(tuple(ids[context_start:target_start]), tuple(ids[target_start:target_end])))
        target_start = target_end
    return requests
