"""Decoding with the KV cache: the one loop that `slmkit generate` and the evaluation harness both run.

Sampling settings (temperature, top-k, top-p, repetition penalty; temperature 0 = greedy) pick each next token;
`cut_at_stop` is the one place a stop string ends a text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from slmkit.errors import SlmkitError
from slmkit.model import LM_HEAD


def check_language_model(model) -> None:
    """Generation needs a causal model with a language-model head; anything else is refused with what it is."""
    if not model.config.causal:
        raise SlmkitError("this model is a bidirectional encoder (model.causal=false): it reads whole texts and cannot "
                          "generate one token after another; use it for embeddings, classification or spans")
    if LM_HEAD not in model.heads:
        raise SlmkitError(f"this model has a {model.default_head} head and no language-model head, so it cannot "
                          "generate text; run `slmkit predict` with it instead")


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """text up to the earliest stop string, and whether one was found."""
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@dataclass
class Sampling:
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def check(self) -> "Sampling":
        # Written so that NaN fails every test: it compares false with anything.
        if not 0 <= self.temperature < math.inf:
            raise SlmkitError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not self.top_k >= 0:
            raise SlmkitError(f"top_k={self.top_k} must be >= 0 (0 = no limit)")
        if not 0 < self.top_p <= 1:
            raise SlmkitError(f"top_p={self.top_p} must be in (0, 1]")
        if not 0 < self.repetition_penalty < math.inf:
            raise SlmkitError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1.0 = off)")
        return self


def next_token(logits: torch.Tensor, seen: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Picks the next token [B] from logits [B, V]; `seen` [B, N] holds the ids so far (for the repetition penalty).

    Processing order as transformers: repetition penalty, temperature, top-k, top-p, then sample (or argmax).
    """
    logits = logits.float()
    if s.repetition_penalty != 1.0:
        picked = logits.gather(1, seen)
        picked = torch.where(picked > 0, picked / s.repetition_penalty, picked * s.repetition_penalty)
        logits = logits.scatter(1, seen, picked)
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the most likely one always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= s.top_p
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate_ids(
    model, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling, eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yields new token ids one by one, decoding with a KV cache; stops at eos, max_new_tokens or the context end."""
    check_language_model(model)
    block_size = model.config.block_size
    if max_new_tokens < 0:
        raise SlmkitError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not prompt_ids:
        raise SlmkitError("the prompt is empty after tokenization; give some text to continue")
    if len(prompt_ids) >= block_size:
        raise SlmkitError(f"the prompt has {len(prompt_ids)} tokens but the model's context is {block_size}; shorten it")
    device = model.body.tok_embeddings.weight.device
    total = min(block_size, len(prompt_ids) + max_new_tokens)
    cache = model.new_cache(1, total, device=device)
    seen = torch.tensor([prompt_ids], device=device)
    logits = model(seen, cache=cache, head=LM_HEAD)[:, -1]
    for _ in range(total - len(prompt_ids)):
        token = next_token(logits, seen, sampling, generator)
        yield int(token)
        if eos_id is not None and int(token) == eos_id:
            return
        seen = torch.cat([seen, token[:, None]], dim=1)
        if seen.shape[1] < total:
            logits = model(token[:, None], cache=cache, head=LM_HEAD)[:, -1]


