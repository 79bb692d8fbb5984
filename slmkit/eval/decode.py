"""Greedy decoding with the model's KV cache, stopping at a stop sequence, the document-end token or a length cap.

Prompts longer than the window minus the tokens to generate lose tokens on the left; generation takes at most
half the window.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tokenizers import Tokenizer

from slmkit.errors import SlmkitError
from slmkit.eval.encoding import document_start_id, encode


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """text up to the earliest stop sequence, and whether one was found."""
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@torch.inference_mode()
def greedy_until(
    model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, stops: Sequence[str], max_new_tokens: int
) -> str:
    window = model.config.block_size
    if max_new_tokens < 1:
        raise SlmkitError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    # At least half the window stays for the prompt, so a small model still sees its question.
    max_new_tokens = min(max_new_tokens, window // 2)
    # The document-start token both begins the prompt and ends generation: it separates documents in training.
    eos = document_start_id(tokenizer)
    ids = ([eos] if eos is not None else []) + encode(tokenizer, prompt)
    ids = ids[-(window - max_new_tokens):]
    if not ids:
        raise SlmkitError("cannot generate from an empty prompt with a tokenizer that has no special token")
    device = next(model.parameters()).device
    cache = model.new_cache(1, len(ids) + max_new_tokens)
    logits = model(torch.tensor([ids], device=device), cache=cache)
    generated: list[int] = []
    text = ""
    for _ in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        if token == eos:
            break
        generated.append(token)
        text, stopped = cut_at_stop(tokenizer.decode(generated), stops)
        if stopped:
            return text
        logits = model(torch.tensor([[token]], device=device), cache=cache)
    return text
