"""Packing token shards and reading them back: EOS between documents, dtype choice, tail split, windows across shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.pack import ShardPacker, encode_texts, split_of, write_manifest
from data_prep.tokenizer import train_tokenizer
from slmkit.data import FORMAT, MANIFEST, TokenShards, read_manifest, token_dtype
from slmkit.data_config import TokenizerConfig
from slmkit.errors import SlmkitError
from slmkit.tokenizer import load_tokenizer

DOCS = [f"document {i}: " + "abcdefghij"[i % 10] * (5 + i % 7) for i in range(40)]


@pytest.fixture
def char_tokenizer(tmp_path):
    path = tmp_path / "tokenizer.json"
    train_tokenizer(TokenizerConfig(kind="char"), DOCS, path, [])
    return path


def pack(tmp_path, tokenizer_path, items, shard_tokens=37, chunk_documents=7, dtype=np.dtype(np.uint16),
         val_fraction=0.0, batch_chars=200):
    """Packs (split, source, text) items the way prepare does: encoded chunk by chunk, then appended per split."""
    out = tmp_path / f"shards-{chunk_documents}-{batch_chars}-{dtype.name}"
    tokenizer = load_tokenizer(tokenizer_path)
    packer = ShardPacker(out, dtype, shard_tokens, val_fraction)
    for first in range(0, len(items), chunk_documents):
        chunk = items[first : first + chunk_documents]
        for split in sorted({split for split, _, _ in chunk}):
            texts = [text for s, _, text in chunk if s == split]
            packer.add(split, *encode_texts(tokenizer, texts, 0, dtype, batch_chars=batch_chars))
    splits = packer.finish()
    manifest = {"format": FORMAT, "dtype": dtype.name, "eos_id": 0, "vocab_size": 100, "tokenizer_sha256": "",
                "inputs_sha256": "", "sources": [], "splits": {k: v.as_dict() for k, v in splits.items()}}
    write_manifest(out, manifest)
    return out, splits


def expected_stream(tokenizer_path, texts):
    tokenizer = load_tokenizer(tokenizer_path)
    return [t for text in texts for t in tokenizer.encode(text).ids + [0]]


def test_documents_are_separated_by_eos_and_windows_cross_shard_boundaries(tmp_path, char_tokenizer):
    out, result = pack(tmp_path, char_tokenizer, [("train", "s", d) for d in DOCS])
    stream = expected_stream(char_tokenizer, DOCS)
    shards = TokenShards(out, "train")
    assert len(shards) == len(stream) == result["train"].tokens
    assert len(result["train"].shards) == -(-len(stream) // 37)
    assert all(shard["tokens"] <= 37 for shard in result["train"].shards)
    assert np.count_nonzero(shards.window(0, len(shards)) == 0) == len(DOCS)
    for start, length in [(0, 10), (30, 20), (35, 80), (len(stream) - 5, 5), (3, len(stream) - 3)]:
        assert shards.window(start, length).tolist() == stream[start : start + length]
    with pytest.raises(IndexError):
        shards.window(len(stream) - 2, 5)


def test_shards_do_not_depend_on_chunk_or_batch_sizes(tmp_path, char_tokenizer):
    items = [("train" if i % 3 else "val", "s", d) for i, d in enumerate(DOCS)]
    one, _ = pack(tmp_path, char_tokenizer, items, chunk_documents=1, batch_chars=10)
    two, _ = pack(tmp_path, char_tokenizer, items, chunk_documents=len(items), batch_chars=10**6)
    files = sorted(p.name for p in one.glob("*.bin"))
    assert files == sorted(p.name for p in two.glob("*.bin"))
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


def test_dtype_is_uint16_when_the_vocabulary_fits_else_uint32(tmp_path, char_tokenizer):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    out, _ = pack(tmp_path, char_tokenizer, [("train", "s", d) for d in DOCS], dtype=np.dtype(np.uint32))
    assert (out / "train_00000.bin").stat().st_size == 37 * 4
    shards = TokenShards(out, "train")
    assert shards.window(0, 5).dtype == np.uint32
    assert shards.window(0, 5).tolist() == expected_stream(char_tokenizer, DOCS)[:5]


def test_tail_split_puts_the_last_fraction_of_tokens_in_val(tmp_path, char_tokenizer):
    out, result = pack(tmp_path, char_tokenizer, [("stream", "s", d) for d in DOCS], val_fraction=0.1)
    stream = expected_stream(char_tokenizer, DOCS)
    cut = int(len(stream) * 0.9)
    train, val = TokenShards(out, "train"), TokenShards(out, "val")
    assert len(train) == cut and len(val) == len(stream) - cut
    assert train.window(0, cut).tolist() == stream[:cut] and val.window(0, len(val)).tolist() == stream[cut:]
    assert result["train"].documents + result["val"].documents == len(DOCS)
    assert not list(out.glob("stream_*"))


def test_hash_split_is_by_document_and_seeded():
    ids = [f"doc{i}" for i in range(5000)]
    val = [i for i in ids if split_of(i, 1, 0.1) == "val"]
    assert 400 < len(val) < 600
    assert val == [i for i in ids if split_of(i, 1, 0.1) == "val"]
    assert val != [i for i in ids if split_of(i, 2, 0.1) == "val"]


def test_missing_or_incomplete_manifest_says_to_prepare(tmp_path, char_tokenizer):
    with pytest.raises(SlmkitError, match="slmkit data prepare"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": FORMAT}))
    with pytest.raises(SlmkitError, match="lacks dtype"):
        read_manifest(tmp_path)
    out, _ = pack(tmp_path, char_tokenizer, [("train", "s", d) for d in DOCS])
    (out / "train_00001.bin").write_bytes(b"\0\0")
    with pytest.raises(SlmkitError, match="damaged"):
        TokenShards(out, "train")


def test_token_shards_only_memory_map(tmp_path, char_tokenizer):
    out, _ = pack(tmp_path, char_tokenizer, [("train", "s", d) for d in DOCS])
    shards = TokenShards(out, "train")
    opened = [shards.shard(index) for index in range(len(shards.entries))]  # each opened when first read
    assert all(isinstance(shard, np.memmap) and shard.mode == "r" for shard in opened)
