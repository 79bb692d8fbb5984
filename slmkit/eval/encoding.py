"""Text to the token ids the scorer sees: the document-start token, context/continuation splits, tokenizer checks.

Every score in the harness (and in the lm-eval adapter) goes through these functions, so both tokenize alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from slmkit.errors import SlmkitError


@dataclass(frozen=True)
class Request:
    """Score `continuation` given `context`, both token ids; the context may be cut on the left, never the continuation."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def document_start_id(tokenizer: Tokenizer) -> int | None:
    """The token that separates documents in training (slmkit's EOS: the special token with the lowest id).

    Prefixing it to every context conditions the model on "a new document starts here", and lets it score the
    very first token of a text, which bits per byte needs. None when the tokenizer has no special token.
    """
    special = [i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special]
    return min(special) if special else None


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str, prefix_id: int | None) -> Request:
    """Tokenizes context + continuation jointly and splits after the context's tokens.

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
    prefix = [prefix_id] if prefix_id is not None else []
    if not prefix and not context_ids:
        raise SlmkitError("an empty context needs a document-start token, and this tokenizer has no special token")
    return Request(tuple(prefix + context_ids), tuple(continuation_ids))


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raises SlmkitError when the tokenizer can produce ids the model has no embedding for."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise SlmkitError(
            f"the tokenizer has {size} tokens but the model's vocabulary is {vocab_size}: this tokenizer does not "
            "belong to the checkpoint — use the tokenizer.json saved in the run folder"
        )
