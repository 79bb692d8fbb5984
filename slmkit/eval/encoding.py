"""Text to the token ids the scorer sees: context/continuation splits and tokenizer checks.

Every context starts with the end-of-document token (`slmkit.tokenizer.end_of_document_id`): it separates documents in
training, so it conditions the model on "a new document starts here" and lets it score a text's first token, which
bits per byte needs. Every score in the harness (and in the lm-eval adapter) goes through these functions, so both tokenize alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tokenizers import Tokenizer

from slmkit.errors import SlmkitError


@dataclass(frozen=True)
class Request:
    """Score `continuation` given `context`, both token ids; the context may be cut on the left, never the continuation."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str, prefix_id: int) -> Request:
    """Tokenizes context + continuation jointly and splits after the context's tokens; `prefix_id` starts the context.

    Trailing spaces move from the context to the continuation first, so " Yes" is one word token as in running
    text. Joint tokenization keeps the continuation's tokens as they would appear after this context.
    """
    stripped = context.rstrip(" ")
    continuation = context[len(stripped):] + continuation
    context_ids = encode(tokenizer, stripped) if stripped else []
    whole = encode(tokenizer, stripped + continuation)
    if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
        continuation_ids = whole[len(context_ids):]
    else:  # a merge across the boundary: fall back to tokenizing the continuation on its own
        continuation_ids = encode(tokenizer, continuation)
    if not continuation_ids:
        raise SlmkitError(f"continuation {continuation!r} encodes to no tokens: a task's choice or target is empty")
    return Request(tuple([prefix_id] + context_ids), tuple(continuation_ids))


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raises SlmkitError when the tokenizer can produce ids the model has no embedding for."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise SlmkitError(
            f"the tokenizer has {size} tokens but the model's vocabulary is {vocab_size}: this tokenizer does not "
            "belong to the checkpoint — use the tokenizer.json saved in the run folder"
        )


def sequence_input(tokenizer: Tokenizer, text: str, max_length: int, prefix_id: int | None, keep_start: bool = False) -> list[int]:
    """The ids a head reads for one text: the document-start token, then the text's tokens cut on the left to fit
    max_length — prompts put the question last, and a causal classifier reads its label off the last token; with
    keep_start, cut on the right instead (a passage to embed, whose opening says most about it)."""
    room = max_length - (prefix_id is not None)
    ids = encode(tokenizer, text)
    ids = ids[:room] if keep_start else ids[-room:]
    if not ids:
        raise SlmkitError(f"the text {text[:60]!r} encodes to no tokens; a head needs some text to read")
    return ([prefix_id] if prefix_id is not None else []) + ids


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, fill: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T] ids (pad_id, or `fill` for label rows) and the bool padding mask (True = real token)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id if fill is None else fill, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask
