"""The run-time tokenizer: its file name, loading it with a clear error, and the one end-of-document rule.

Everything that reads token ids agrees on the end-of-document token through `end_of_document_id`: the packer that
writes it between documents, eval, generation and export. Tokenizer kinds are trained by a plugin (data_prep).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterator

from tokenizers import Tokenizer

from slmkit.data_config import TokenizerConfig
from slmkit.errors import SlmkitError
from slmkit.registry import Registry

TOKENIZER_FILE = "tokenizer.json"
UNK = "<unk>"  # the unknown token of the kinds that need one (unigram, wordpiece); byte-level BPE and char have none

TOKENIZER_KINDS: Registry[Callable[[TokenizerConfig, Iterator[str]], Tokenizer]] = Registry(
    "tokenizer kind", "Builds and trains a tokenizer from the tokenizer config and an iterator of training texts; "
    "the config's special tokens must get ids 0, 1, ... in their order."
)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A Hugging Face tokenizers file; a missing or unreadable one is a SlmkitError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SlmkitError(
            f"tokenizer file {path} does not exist; point at a tokenizer.json (tokenizer.path, or the one in a run "
            f"folder), or leave tokenizer.path unset to train one"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a bare Exception for any parse failure
        raise SlmkitError(
            f"{path} is not a valid tokenizer.json ({error}); point at a Hugging Face tokenizers file, or leave "
            f"tokenizer.path unset to train one"
        ) from None


def tokenizer_sha256(path: str | Path) -> str:
    """The tokenizer file's identity: the sha256 of its bytes, as shard manifests record it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def end_of_document_id(tokenizer: Tokenizer) -> int:
    """The end-of-document token (EOS): the special token with the lowest id.

    It needs nothing but the tokenizer: slmkit's tokenizers give the recipe's special tokens ids 0, 1, ... in order,
    so it is the first of tokenizer.special_tokens, and a foreign tokenizer's lowest special token (e.g. <s>,
    <|endoftext|>) plays the same part. Special tokens added later (a mask token) get higher ids and never take over.
    """
    special = [i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special]
    if not special:
        raise SlmkitError(
            "the tokenizer has no special token, so it has no end-of-document token (EOS) to separate documents: "
            "train one with tokenizer.special_tokens (the first is the EOS), or use a tokenizer.json that has one"
        )
    return min(special)
