"""The prepare pipeline: manifest, splits without overlap, reuse of unchanged inputs, and clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
from types import SimpleNamespace

import pytest

import data_prep.prepare as prepare_module
from data_helpers import curated_documents
from data_prep.plugin import prepare_command
from data_prep.pipeline import prepare
from data_prep.prepare import describe_status
from slmkit.data import TokenShards, read_manifest
from slmkit.data_config import CleanConfig, DataConfig, DedupConfig, FilterConfig, SourceConfig, TokenizerConfig
from slmkit.errors import SlmkitError

MANIFEST_KEYS = {"format", "dtype", "eos_id", "vocab_size", "tokenizer_sha256", "inputs_sha256", "sources", "splits"}


def legal_sample(legal_corpus, **overrides) -> DataConfig:
    fields = dict(
        root=str(legal_corpus),
        sources=[
            SourceConfig(name="rules", path="federal_rules.jsonl.gz", max_documents=60),
            SourceConfig(name="scotus", path="scotus_opinions.jsonl.gz", max_documents=6, weight=2.0),
        ],
        val_fraction=0.2,
        shard_tokens=20_000,
        num_workers=1,
    )
    fields.update(overrides)
    return DataConfig(**fields)


TOKENIZER = TokenizerConfig(kind="bpe", vocab_size=600)


def test_prepare_writes_shards_manifest_and_disjoint_splits(tmp_path, legal_corpus):
    prepared = prepare(legal_sample(legal_corpus), TOKENIZER, tmp_path / "out", progress=False)
    manifest = read_manifest(prepared.shards_dir)
    assert set(manifest) == MANIFEST_KEYS and manifest == prepared.manifest and not prepared.reused
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] <= 600 and manifest["eos_id"] == 0
    train_ids = [r["id"] for r in curated_documents(tmp_path / "out", "train")]
    val_ids = [r["id"] for r in curated_documents(tmp_path / "out", "val")]
    assert train_ids and val_ids and not set(train_ids) & set(val_ids)
    splits = manifest["splits"]
    sources = {s["name"]: s for s in manifest["sources"]}
    assert splits["train"]["documents"] + splits["val"]["documents"] == sum(s["documents_used"] for s in sources.values())
    for split in ("train", "val"):
        shards = TokenShards(prepared.shards_dir, split)
        assert len(shards) == splits[split]["tokens"] > 0
        assert (shards.window(0, len(shards)) == 0).sum() == splits[split]["documents"]  # one EOS per document
    assert sources["scotus"]["documents"] == 6 and sources["scotus"]["documents_used"] == 12  # weight 2: twice
    assert sum(s["share"] for s in sources.values()) == pytest.approx(1.0, abs=1e-4)
    assert sum(s["tokens"] for s in sources.values()) == splits["train"]["tokens"] + splits["val"]["tokens"]
    report = json.loads((tmp_path / "out" / "tokenizer_report.json").read_text())
    assert report["bytes_per_token"] > 1.5 and report["vocab_size"] == manifest["vocab_size"]


def test_unchanged_inputs_are_reused_and_changes_invalidate(tmp_path, legal_corpus, monkeypatch):
    data = legal_sample(legal_corpus, prepared_dir=str(tmp_path / "prep"))
    first = prepare(data, TOKENIZER, progress=False)
    assert "prepared at" in describe_status(data, TOKENIZER)

    def no_packing(*args, **kwargs):
        raise AssertionError("retokenized although nothing changed")

    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "build_corpus", no_packing)
        patch.setattr(prepare_module, "pack_shards", no_packing)
        second = prepare(data, TOKENIZER, progress=False)
    assert second.reused and second.manifest == first.manifest

    # a different shard size repacks, but the tokenizer trained on the same corpus is reused from the cache
    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer retrained"))
        third = prepare(legal_sample(legal_corpus, prepared_dir=str(tmp_path / "prep"), shard_tokens=50_000), TOKENIZER,
                        progress=False)
    assert not third.reused and third.manifest["inputs_sha256"] != first.manifest["inputs_sha256"]
    assert third.manifest["tokenizer_sha256"] == first.manifest["tokenizer_sha256"]

    changed = prepare(legal_sample(legal_corpus, val_fraction=0.3), TOKENIZER, tmp_path / "prep", progress=False)
    assert not changed.reused and changed.manifest["splits"]["val"]["documents"] > first.manifest["splits"]["val"]["documents"]


def test_a_changed_source_file_invalidates_the_cache(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"text number {i} here"}) + "\n" for i in range(30)))
    data = DataConfig(root=str(tmp_path), sources=[SourceConfig(path="a.jsonl")], val_fraction=0.1, num_workers=1,
                      filter=FilterConfig(enabled=False), dedup=DedupConfig(exact=False, near=False))
    tokenizer = TokenizerConfig(kind="char")
    first = prepare(data, tokenizer, progress=False)
    assert prepare(data, tokenizer, progress=False).reused
    with open(tmp_path / "a.jsonl", "a") as handle:
        handle.write(json.dumps({"text": "one more"}) + "\n")
    os.utime(tmp_path / "a.jsonl", ns=(1, 10**18))
    again = prepare(data, tokenizer, progress=False)
    assert not again.reused and again.shards_dir != first.shards_dir
    assert sum(s["documents"] for s in again.manifest["splits"].values()) == 31


def test_tinyshakespeare_char_recipe_splits_the_tail(tmp_path, shared_dir):
    data = DataConfig(root=str(shared_dir / "corpora"), sources=[SourceConfig(path="general/tinyshakespeare.txt")],
                      split="tail", val_fraction=0.1, num_workers=1, clean=CleanConfig(enabled=False),
                      filter=FilterConfig(enabled=False), dedup=DedupConfig(exact=False, near=False))
    prepared = prepare(data, TokenizerConfig(kind="char", vocab_size=1024), tmp_path / "out", progress=False)
    manifest = prepared.manifest
    total = len((shared_dir / "corpora" / "general" / "tinyshakespeare.txt").read_text(encoding="utf-8")) + 1  # + EOS
    assert manifest["vocab_size"] == 66
    assert manifest["splits"]["train"]["tokens"] == int(total * 0.9)
    assert manifest["splits"]["val"]["tokens"] == total - int(total * 0.9)


def test_empty_corpus_names_the_sources(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    data = DataConfig(root=str(tmp_path), sources=[SourceConfig(name="mine", path="a.jsonl")], on_error="skip", num_workers=1)
    with pytest.raises(SlmkitError, match=r"corpus is empty.*mine.*missing_text_field"):
        prepare(data, TokenizerConfig(kind="char"), tmp_path / "out", progress=False)


def test_bad_records_skipped_are_counted_in_the_manifest(tmp_path):
    lines = [json.dumps({"text": f"good document {i}"}) for i in range(20)] + ["{broken"]
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    data = DataConfig(root=str(tmp_path), sources=[SourceConfig(name="a", path="a.jsonl.gz")], on_error="skip",
                      num_workers=1, filter=FilterConfig(enabled=False), dedup=DedupConfig(exact=False, near=False))
    prepared = prepare(data, TokenizerConfig(kind="char"), tmp_path / "out", progress=False)
    source = prepared.manifest["sources"][0]
    assert source["skipped"] == {"bad_json": 1} and "a.jsonl.gz:21" in source["errors"][0]
    with pytest.raises(SlmkitError, match=r"a\.jsonl\.gz:21"):
        prepare(DataConfig(root=str(tmp_path), sources=[SourceConfig(path="a.jsonl.gz")]), TokenizerConfig(kind="char"),
                tmp_path / "out2", progress=False)


def test_the_prepare_command_names_the_shards_and_the_report_whether_written_or_reused(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"text number {i} here"}) + "\n" for i in range(30)))
    data = DataConfig(root=str(tmp_path), sources=[SourceConfig(path="a.jsonl")], prepared_dir=str(tmp_path / "prep"),
                      num_workers=1, filter=FilterConfig(enabled=False), dedup=DedupConfig(exact=False, near=False))
    recipe = SimpleNamespace(data=data, tokenizer=TokenizerConfig(kind="char"))
    for state in ("written", "reused (inputs unchanged)"):
        lines = prepare_command(recipe, argparse.Namespace()).splitlines()
        assert lines == [f"token shards {state}: {tmp_path / 'prep'}",
                         f"curation report: {tmp_path / 'prep' / 'report' / 'report.md'}"]


@pytest.mark.parametrize("field, value", [("shards_from", "s3://bucket/prepared/legal"), ("publish_to", "memory://x"),
                                          ("num_workers", 7)])
def test_settings_that_do_not_change_the_data_do_not_change_its_key(tmp_path, legal_corpus, field, value):
    """Where the shards are published or streamed from, or how many workers make them, leaves the prepared folder's
    key (and so its reuse) as it was."""
    data = legal_sample(legal_corpus, prepared_dir=str(tmp_path / "prep"))
    first = prepare_module.make_plan(data, TOKENIZER, None)
    second = prepare_module.make_plan(dataclasses.replace(data, **{field: value}), TOKENIZER, None)
    assert (second.corpus_sha256, second.inputs_sha256) == (first.corpus_sha256, first.inputs_sha256)
