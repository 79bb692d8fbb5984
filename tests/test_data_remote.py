"""Sources named by fsspec URLs (memory://, file://; s3:// and gs:// go the same way): the same shards as the same
files on a local disk, on the pool and on datatrove, and a clear error for a URL that cannot be read."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import fsspec
import pytest

from data_helpers import write_mixed_corpus
from data_prep.pipeline import prepare
from data_prep.sources import SourceStats, iter_documents
from slmkit.data_config import DataConfig, SourceConfig, TokenizerConfig
from slmkit.errors import SlmkitError

TOKENIZER = TokenizerConfig(kind="bpe", vocab_size=400)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, legal_corpus) -> dict:
    source = SourceConfig(path="federal_rules.jsonl.gz", max_documents=120)
    texts = [d.text for d in iter_documents(source, legal_corpus, "stop", SourceStats("r")) if len(d.text.split()) > 60]
    return write_mixed_corpus(tmp_path_factory.mktemp("mixed") / "data", texts[:40])


def config(corpus: dict, **overrides) -> DataConfig:
    return DataConfig(**{**corpus, "val_fraction": 0.2, "num_workers": 1, "shard_tokens": 3000, "chunk_mb": 0.01,
                         **overrides})


def at(corpus: dict, prefix: str) -> list[SourceConfig]:
    """The corpus's sources, each path put under a URL prefix."""
    return [dataclasses.replace(s, path=f"{prefix}/{s.path}") for s in corpus["sources"]]


def shard_digests(folder: Path) -> dict[str, str]:
    names = ["tokenizer.json", *sorted(p.name for p in folder.glob("*.bin"))]
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}


@pytest.fixture(scope="module")
def local_digests(tmp_path_factory, corpus) -> dict[str, str]:
    return shard_digests(prepare(config(corpus), TOKENIZER, tmp_path_factory.mktemp("local") / "out", progress=False).shards_dir)


@pytest.fixture
def in_memory(corpus):
    memory = fsspec.filesystem("memory")
    memory.put(corpus["root"], "/mixed", recursive=True)
    yield "memory://mixed"
    memory.rm("/mixed", recursive=True)


@pytest.mark.parametrize("engine", ["local", "datatrove"])
def test_sources_in_memory_give_the_shards_of_the_same_files_on_disk(tmp_path, corpus, local_digests, in_memory, engine):
    data = config(corpus, sources=at(corpus, in_memory), engine=engine, tasks=3, workers=1)
    prepared = prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    assert shard_digests(prepared.shards_dir) == local_digests
    assert [s["path"] for s in prepared.manifest["sources"]][0] == f"{in_memory}/a.jsonl"


def test_file_urls_read_like_local_paths(tmp_path, corpus, local_digests):
    data = config(corpus, sources=at(corpus, f"file://{corpus['root']}"))
    assert shard_digests(prepare(data, TOKENIZER, tmp_path / "out", progress=False).shards_dir) == local_digests


def test_a_changed_remote_file_changes_the_inputs_hash(tmp_path, corpus, in_memory):
    data = config(corpus, sources=at(corpus, in_memory))
    first = prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    with fsspec.open(f"{in_memory}/c.csv", "ab") as handle:
        handle.write(b'"one more line of the csv source, added later"\n')
    again = prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    assert not again.reused and again.manifest["inputs_sha256"] != first.manifest["inputs_sha256"]


@pytest.mark.parametrize("url, message", [
    ("memory://nowhere/corpus.jsonl", "no supported data files at memory://nowhere/corpus.jsonl"),
    ("nosuchstore://bucket/corpus.jsonl", "nosuchstore://bucket/corpus.jsonl: .*use a local path or an fsspec URL"),
])
def test_an_unreadable_source_url_is_one_clear_error(tmp_path, url, message):
    data = DataConfig(sources=[SourceConfig(name="x", path=url)], num_workers=1)
    with pytest.raises(SlmkitError, match=message):
        prepare(data, TOKENIZER, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_prepared_data_is_published_to_a_url_manifest_last(tmp_path, corpus, local_digests):
    prepared = prepare(config(corpus, publish_to="memory://published/legal"), TOKENIZER, tmp_path / "out", progress=False)
    memory = fsspec.filesystem("memory")
    copied = {name: hashlib.sha256(memory.cat_file(f"/published/legal/{name}")).hexdigest() for name in local_digests}
    assert copied == local_digests
    assert memory.cat_file("/published/legal/manifest.json") == (prepared.shards_dir / "manifest.json").read_bytes()
    assert not memory.exists("/published/legal/work") and not memory.exists("/published/legal/.slmkit-write-probe")
    memory.rm("/published", recursive=True)


def test_an_unwritable_destination_stops_the_run_before_any_work(tmp_path, corpus):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(SlmkitError, match="cannot be written"):
        prepare(config(corpus, publish_to=str(tmp_path / "a-file" / "shards")), TOKENIZER, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_missing_store_backend_names_its_package(tmp_path, monkeypatch):
    def no_backend(url, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", no_backend)
    data = DataConfig(sources=[SourceConfig(name="x", path="s3://bucket/corpus.jsonl")], num_workers=1)
    with pytest.raises(SlmkitError, match="needs s3fs, which is not installed: pip install s3fs"):
        prepare(data, TOKENIZER, tmp_path / "out", progress=False)
