"""The run-time tokenizer: its file name, loading it with a clear error, and the one end-of-document rule.

Everything that reads token ids agrees on the end-of-document token through `end_of_document_id`: the packer that
writes it between documents, eval, generation and export. Tokenizer kinds are trained by a plugin (data_prep).
"""

from __future__ import annotations

import hashlib
import json
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


def tokenizer_differences(first: str | Path, second: str | Path, names: tuple[str, str]) -> list[str]:
    """What differs between two tokenizer files, in words, naming them by `names` ("teacher", "student"); empty when
    they are the same tokenizer (the same bytes, or the same JSON written with other formatting)."""
    if not Path(second).is_file():
        return [f"{second} does not exist"]
    if tokenizer_sha256(first) == tokenizer_sha256(second):
        return []
    ours, theirs = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (first, second))
    if json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True):
        return []
    a, b = names
    ids_a, ids_b = ({i: t for t, i in load_tokenizer(p).get_vocab(with_added_tokens=True).items()} for p in (first, second))
    found = []
    if len(ids_a) != len(ids_b):
        found.append(f"the {a}'s has {len(ids_a)} tokens, the {b}'s {len(ids_b)}")
    differing = [i for i in sorted(set(ids_a) | set(ids_b)) if ids_a.get(i) != ids_b.get(i)]
    if differing:
        i = differing[0]
        found.append(f"{len(differing)} token ids stand for other tokens (first: id {i} is {ids_a.get(i)!r} in the "
                     f"{a}'s and {ids_b.get(i)!r} in the {b}'s)")
    model_a, model_b = ours.get("model") or {}, theirs.get("model") or {}
    if model_a.get("type") != model_b.get("type"):
        found.append(f"the {a}'s is a {model_a.get('type')} tokenizer, the {b}'s a {model_b.get('type')}")
    elif model_a.get("merges") != model_b.get("merges"):
        found.append("their merge rules differ")
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        if ours.get(part) != theirs.get(part):
            found.append(f"their {part.replace('_', '-')}s differ")
    return found or ["their files differ in settings beyond the vocabulary"]


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


# ---- a domain vocabulary (tokenizer.extend) ------------------------------------------------------------------------

def check_extension(config: TokenizerConfig) -> None:
    """Refuses a tokenizer.extend that cannot apply: new tokens are BPE merges added to the tokenizer the run starts
    from, so there must be one (tokenizer.path, which init_from sets), its model must be a BPE, and, the merges being
    learned within its pre-tokenized words, it must have a pre-tokenizer."""
    if not config.extends:
        return
    if not config.path:
        raise SlmkitError(
            "tokenizer.extend adds tokens to the tokenizer a run starts from (init_from's, or tokenizer.path), and "
            "this run trains its own tokenizer on the corpus: start from a model (init_from=...), or drop "
            "tokenizer.extend and set tokenizer.vocab_size for a larger vocabulary"
        )
    load_tokenizer(config.path)  # a missing or broken file, named
    data = json.loads(Path(config.path).read_text(encoding="utf-8"))
    kind = (data.get("model") or {}).get("type")
    if kind != "BPE" or data.get("pre_tokenizer") is None:
        what = f"a {kind} tokenizer" if kind != "BPE" else "a BPE tokenizer without a pre-tokenizer"
        raise SlmkitError(
            f"tokenizer.extend adds BPE merges to the tokenizer the run starts from, and tokenizer.path={config.path} "
            f"is {what}: extend a (byte-level) BPE tokenizer such as slmkit's bpe kind or GPT-2's, or drop "
            "tokenizer.extend and tokenizer.extend_from"
        )


def new_token_segmentations(base: str | Path, extended: str | Path) -> dict[int, list[int]]:
    """Each token of `extended` that `base` lacks (by id), with the ids `base` spells it with: its BPE model applied
    to the token's text, as it segments that text inside a word."""
    old, new = load_tokenizer(base), load_tokenizer(extended)
    known = old.get_vocab(with_added_tokens=True)
    return {i: [piece.id for piece in old.model.tokenize(token)]
            for token, i in sorted(new.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
            if token not in known}
