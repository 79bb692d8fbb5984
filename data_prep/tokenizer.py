"""Trains a Hugging Face `tokenizers` tokenizer of a kind picked by name and saves tokenizer.json.

Each kind registers in slmkit's TOKENIZER_KINDS, so tokenizer.kind is checked when the recipe resolves. Every kind
gives the recipe's special tokens ids 0, 1, ... in order: the first is the end-of-document token (see
`slmkit.tokenizer.end_of_document_id`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from slmkit.atomic import atomic_path
from slmkit.data_config import TokenizerConfig
from slmkit.errors import SlmkitError
from slmkit.tokenizer import TOKENIZER_KINDS, UNK, tokenizer_sha256


def with_unk(special_tokens: list[str]) -> list[str]:
    """Unigram and WordPiece need an unknown token; it follows the recipe's specials so EOS keeps id 0."""
    return special_tokens if UNK in special_tokens else [*special_tokens, UNK]


@TOKENIZER_KINDS.register("bpe")
def train_bpe(config: TokenizerConfig, texts: Iterator[str]) -> Tokenizer:
    """Byte-level BPE, as GPT-2: every string is encodable (no unknown token) and decoding restores it exactly."""
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
    """SentencePiece-style unigram: spaces become ▁ so decoding restores them."""
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
    """BERT-style pieces of whitespace-split words; decoding joins words with single spaces."""
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
    """One token per character seen, as nanoGPT's char task: the vocabulary is exactly specials + characters seen."""
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
