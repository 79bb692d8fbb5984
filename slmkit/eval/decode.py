"""Greedy decoding for generation tasks: the shared KV-cache loop, stopping at a stop string, the document-end token
or a length cap.

Prompts longer than the window minus the tokens to generate lose tokens on the left; generation takes at most
half the window.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tokenizers import Tokenizer

from slmkit.decoding import Sampling, cut_at_stop, generate_ids
from slmkit.errors import SlmkitError
from slmkit.eval.encoding import encode
from slmkit.tokenizer import end_of_document_id

GREEDY = Sampling(temperature=0.0)


def greedy_until(
    model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, stops: Sequence[str], max_new_tokens: int
) -> str:
    window = model.config.block_size
    if max_new_tokens < 1:
        raise SlmkitError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    # At least half the window stays for the prompt, so a small model still sees its question.
    max_new_tokens = min(max_new_tokens, window // 2)
    # The end-of-document token both begins the prompt and ends generation: it separates documents in training.
    eos = end_of_document_id(tokenizer)
    ids = ([eos] + encode(tokenizer, prompt))[-(window - max_new_tokens):]
    generated: list[int] = []
    text = ""
    for token in generate_ids(model, ids, max_new_tokens, GREEDY, eos_id=eos):
        if token == eos:
            break
        generated.append(token)
        text, stopped = cut_at_stop(tokenizer.decode(generated), stops)
        if stopped:
            break
    return text
