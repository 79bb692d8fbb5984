"""Trains a Hugging Face `tokenizers` tokenizer of a kind picked by name, saves tokenizer.json, and loads one back.

Kinds: bpe (byte-level, as GPT-2), unigram, wordpiece, char (every character seen is a token, as nanoGPT's char task).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from data_prep.config import TokenizerConfig
from slmkit.atomic import atomic_path
from slmkit.errors import SlmkitError
from slmkit.registry import Registry

UNK = "<unk>"

TOKENIZER_KINDS: Registry[Callable[[TokenizerConfig, Iterator[str]], Tokenizer]] = Registry(
    "tokenizer kind", "Builds and trains a tokenizer from a config and an iterator of training texts."
)


def with_unk(special_tokens: list[str]) -> list[str]:
    """Unigram and WordPiece need an unknown token; it follows the recipe's specials so EOS keeps id 0."""
    return special_tokens if UNK in special_tokens else [*special_tokens, UNK]


@TOKENIZER_KINDS.register("bpe")
def train_bpe(config: TokenizerConfig, texts: Iterator[str]) -> Tokenizer:
    # byte-level: every string is encodable (no unknown token) and decoding restores it exactly
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size, min_frequency=config.min_frequency, special_tokens=list(config.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


@TOKENIZER_KINDS.register("unigram")
def train_unigram(config: TokenizerConfig, texts: Iterator[str]) -> Tokenizer:
    # SentencePiece-style: spaces become ▁ so decoding restores them
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=config.vocab_size, special_tokens=with_unk(list(config.special_tokens)), unk_token=UNK,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


@TOKENIZER_KINDS.register("wordpiece")
def train_wordpiece(config: TokenizerConfig, texts: Iterator[str]) -> Tokenizer:
    # BERT-style pieces on whitespace-split words; decoding joins words with single spaces
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=config.vocab_size, min_frequency=config.min_frequency,
        special_tokens=with_unk(list(config.special_tokens)), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


@TOKENIZER_KINDS.register("char")
def train_char(config: TokenizerConfig, texts: Iterator[str]) -> Tokenizer:
    # one token per character and no unknown token, so the vocabulary is exactly specials + characters seen
    tokenizer = Tokenizer(models.WordLevel(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(
        vocab_size=config.vocab_size, min_frequency=1, special_tokens=list(config.special_tokens), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    # characters never seen in training are dropped on encoding instead of failing the whole batch
    specials = set(config.special_tokens)
    seen = sorted(token for token in tokenizer.get_vocab() if token not in specials)
    tokenizer.normalizer = normalizers.Replace(Regex("[^" + "".join(f"\\x{{{ord(c):X}}}" for c in seen) + "]"), "")
    return tokenizer


def limited(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """The texts up to a total of max_chars characters (the last one cut), so training time and memory stay bounded."""
    left = max_chars
    for text in texts:
        if left <= 0:
            return
        yield text[:left]
        left -= len(text)


def bytes_per_token(tokenizer: Tokenizer, texts: list[str]) -> float | None:
    if not texts:
        return None
    tokens = sum(len(encoding.ids) for encoding in tokenizer.encode_batch_fast(texts, add_special_tokens=False))
    return sum(len(text.encode("utf-8")) for text in texts) / max(tokens, 1)


def save_tokenizer(tokenizer: Tokenizer, out_path: Path) -> None:
    with atomic_path(out_path) as tmp:
        tokenizer.save(str(tmp))


def train_tokenizer(config: TokenizerConfig, texts: Iterable[str], out_path: Path, heldout: list[str]) -> dict[str, Any]:
    """Trains on at most config.train_chars characters of `texts`, saves to out_path; returns a report dict."""
    if not config.special_tokens:
        raise SlmkitError("tokenizer.special_tokens is empty; give at least one, the end-of-document token (EOS)")
    build = TOKENIZER_KINDS.get(config.kind)
    counter = {"chars": 0, "texts": 0}

    def counted(stream: Iterable[str]) -> Iterator[str]:
        for text in stream:
            counter["chars"] += len(text)
            counter["texts"] += 1
            yield text

    start = time.perf_counter()
    tokenizer = build(config, counted(limited(texts, config.train_chars)))
    if counter["chars"] == 0:
        raise SlmkitError("the tokenizer has no training text: the train split is empty; add data or lower data.val_fraction")
    save_tokenizer(tokenizer, out_path)
    return {
        "kind": config.kind,
        "vocab_size": tokenizer.get_vocab_size(),
        "special_tokens": list(config.special_tokens),
        "train_documents": counter["texts"],
        "train_chars": counter["chars"],
        "heldout_documents": len(heldout),
        "bytes_per_token": bytes_per_token(tokenizer, heldout),
        "seconds": round(time.perf_counter() - start, 3),
        "sha256": tokenizer_sha256(out_path),
    }


def load_tokenizer(path: Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise SlmkitError(f"tokenizer file {path} does not exist; check tokenizer.path, or leave it unset to train one")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a bare Exception for any parse failure
        raise SlmkitError(
            f"{path} is not a valid tokenizer.json ({error}); point tokenizer.path at a Hugging Face tokenizers file "
            f"or leave it unset to train one"
        ) from None


def tokenizer_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def eos_id(tokenizer: Tokenizer, special_tokens: list[str]) -> int:
    """The id of the first special token, which separates documents in the shards."""
    if not special_tokens:
        raise SlmkitError("tokenizer.special_tokens is empty; the first special token is the end-of-document (EOS) token")
    token_id = tokenizer.token_to_id(special_tokens[0])
    if token_id is None:
        raise SlmkitError(
            f"the tokenizer has no token {special_tokens[0]!r} (the EOS, first of tokenizer.special_tokens); "
            f"set tokenizer.special_tokens to tokens that the tokenizer has"
        )
    return token_id
